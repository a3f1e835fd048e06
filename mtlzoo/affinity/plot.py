"""Pictures: a heatmap of an affinity matrix and a chart of the chosen groups (PNG, matplotlib Agg)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from mtlzoo.affinity.grouping import Grouping, group_scores
from mtlzoo.affinity.matrix import AffinityMatrix, coerce_matrix

TITLES = {
    "gradient": "Gradient cosine affinity",
    "lookahead": "Lookahead affinity Z(i→j) (TAG)",
    "performance": "Pairwise transfer gain −Δm_j (%)",
    "data": "Label association",
}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _fmt(scale: float) -> str:
    if not math.isfinite(scale) or scale == 0 or 0.1 <= scale < 100:
        return "{:.2f}"
    if scale >= 100:
        return "{:.0f}"
    return "{:.1e}"


def _cmap(plt: Any) -> Any:
    # red: negative (conflict), blue: positive (helps), grey: not measured
    return plt.get_cmap("RdBu").with_extremes(bad="#d9d9d9")


def _annotate(ax: Any, values: np.ndarray, scale: float, fmt: str, fontsize: float,
              diagonal: bool = False) -> None:
    for (r, c), v in np.ndenumerate(values):
        if not math.isfinite(v):
            text, colour = "n/a", "#555555"
        elif diagonal and r == c:
            text, colour = fmt.format(v), "#444444"
        else:
            text, colour = fmt.format(v), ("white" if scale > 0 and abs(v) > 0.6 * scale else "black")
        ax.text(c, r, text, ha="center", va="center", fontsize=fontsize, color=colour,
                style="italic" if diagonal and r == c else "normal")


def _finish(plt: Any, fig: Any, ax: Any, image: Any, path: str | Path, dpi: int) -> Path:
    """Colour bar, layout, write the PNG, free the figure."""
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    bar.ax.tick_params(labelsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def plot_affinity(matrix: AffinityMatrix | np.ndarray, path: str | Path, *, title: str | None = None,
                  tasks: list[str] | None = None, dpi: int = 100) -> Path:
    """A heatmap of ``matrix`` (rows: source task i, columns: target task j) with the value in
    each cell, written to ``path`` as PNG. Colours: a diverging map centred at 0 (blue: positive,
    red: negative), scaled to the off-diagonal entries, which are what grouping reads; the diagonal
    (a task with itself: 1 for a cosine, a task's own lookahead gain) keeps its value in grey
    italics on a neutral cell, and grey "n/a" marks what could not be measured."""
    m = coerce_matrix(matrix, tasks)
    plt = _pyplot()
    T = len(m.tasks)
    values = m.values
    off = values.copy()
    if T > 1:
        np.fill_diagonal(off, np.nan)
    finite = off[np.isfinite(off)]
    scale = float(np.abs(finite).max()) if finite.size else 1.0
    limit = scale if scale > 0 else 1.0
    size = (2.2 + 0.75 * T, 1.6 + 0.65 * T)
    fig, ax = plt.subplots(figsize=(min(size[0], 16), min(size[1], 14)))
    image = ax.imshow(np.ma.masked_invalid(off), cmap=_cmap(plt), vmin=-limit, vmax=limit)
    if T > 1:  # the diagonal on a neutral background, distinct from "not measured"
        for i in range(T):
            ax.add_patch(plt.Rectangle((i - 0.5, i - 0.5), 1, 1, facecolor="#f2f2f2", edgecolor="none"))
    fontsize = max(5.0, min(10.0, 44.0 / T))
    scale_all = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else scale
    _annotate(ax, values, limit, _fmt(min(scale_all, scale) if scale > 0 else scale_all), fontsize, diagonal=T > 1)
    ax.set_xticks(range(T), m.tasks, rotation=45 if T > 4 else 0, ha="right" if T > 4 else "center")
    ax.set_yticks(range(T), m.tasks)
    if m.symmetric:
        ax.set(xlabel="task", ylabel="task")
    else:
        ax.set(xlabel="target task j", ylabel="source task i")
    ax.set_title(title or TITLES.get(m.kind, f"{m.kind} affinity"), fontsize=11)
    return _finish(plt, fig, ax, image, path, dpi)


def plot_groups(matrix: AffinityMatrix | np.ndarray, grouping: Grouping, path: str | Path, *,
                title: str | None = None, dpi: int = 100) -> Path:
    """The chosen groups as a grid (rows: groups, columns: tasks): each member's score s_g(j) in
    its group, on the heatmap's colour scale; a black frame marks the group that serves the task."""
    m = coerce_matrix(matrix)
    plt = _pyplot()
    T, G = len(m.tasks), len(grouping.groups)
    values = np.nan_to_num(m.values, nan=0.0)
    grid = np.full((G, T), np.nan)
    for gi, group in enumerate(grouping.groups):
        members = [m.index(t) for t in group]
        for j, s in group_scores(values, members).items():
            grid[gi, j] = s
    finite = grid[np.isfinite(grid)]
    scale = float(np.abs(finite).max()) if finite.size else 1.0
    limit = scale if scale > 0 else 1.0
    fig, ax = plt.subplots(figsize=(min(max(4.8, 2.6 + 0.75 * T), 16), min(2.0 + 0.6 * G, 10)))
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=_cmap(plt), vmin=-limit, vmax=limit, aspect="auto")
    fontsize = max(5.0, min(10.0, 44.0 / T))
    for (r, c), v in np.ndenumerate(grid):
        if math.isfinite(v):
            colour = "white" if abs(v) > 0.6 * limit else "black"
            ax.text(c, r, _fmt(scale).format(v), ha="center", va="center", fontsize=fontsize, color=colour)
    for task, gi in grouping.served_by.items():
        j = m.index(task)
        ax.add_patch(plt.Rectangle((j - 0.5, gi - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=2.2))
    ax.set_xticks(range(T), m.tasks, rotation=45 if T > 4 else 0, ha="right" if T > 4 else "center")
    ax.set_yticks(range(G), [f"group {i + 1}" for i in range(G)])
    ax.set_xlabel("task (framed: the group that serves it)")
    heading = title or (f"{G} group{'s' if G != 1 else ''} from {m.kind} affinity, score {grouping.score:.3g}\n"
                        f"({grouping.method} TAG selection{', groups may overlap' if grouping.overlap else ''})")
    ax.set_title(heading, fontsize=10)
    return _finish(plt, fig, ax, image, path, dpi)
