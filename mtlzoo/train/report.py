"""End-of-run outputs: PNG plots of the curves and a Markdown report with the results table."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mtlzoo.train.logs import read_records


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in records:
        value = r.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            xs.append(r.get("step", len(xs)))
            ys.append(value)
    return xs, ys


def plot_run(run_dir: Path, task_names: list[str]) -> list[Path]:
    """Per-task loss curves, per-task validation metrics, and task weights over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = read_records(run_dir, "train")
    evals = read_records(run_dir, "eval")
    written = []

    fig, ax = plt.subplots(figsize=(7, 4))
    for task in task_names:
        ax.plot(*_series(train, f"loss/{task}"), label=task)
    ax.set(xlabel="step", ylabel="training loss", title="Per-task training loss", yscale="log")
    ax.legend()
    fig.tight_layout()
    written.append(run_dir / "loss.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    metric_keys = sorted({k for r in evals for k in r if k.startswith("val/") and k.count("/") == 2})
    if metric_keys:
        cols = min(3, len(metric_keys))
        rows = math.ceil(len(metric_keys) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
        for ax, key in zip(axes.flat, metric_keys):
            xs, ys = _series(evals, key)
            ax.plot(xs, ys, marker="o")
            ax.set(title=key.removeprefix("val/"), xlabel="step")
        for ax in list(axes.flat)[len(metric_keys):]:
            ax.axis("off")
        fig.tight_layout()
        written.append(run_dir / "metrics.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    for task in task_names:
        ax.plot(*_series(train, f"weight/{task}"), label=task)
    ax.set(xlabel="step", ylabel="weight", title="Task weights")
    ax.legend()
    fig.tight_layout()
    written.append(run_dir / "weights.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)
    return written


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def results_table(results: Mapping[str, Mapping[str, float]], directions: Mapping[str, Mapping[str, int]]) -> str:
    """A Markdown table: one row per task metric, with its direction."""
    lines = ["| task | metric | value | better |", "|---|---|---|---|"]
    for task, metrics in results.items():
        for name, value in metrics.items():
            arrow = {1: "higher ↑", -1: "lower ↓"}.get(directions.get(task, {}).get(name, 0), "")
            lines.append(f"| {task} | {name} | {_fmt(value)} | {arrow} |")
    return "\n".join(lines)


def write_report(run_dir: Path, *, spec: str, results: Mapping[str, Mapping[str, float]],
                 directions: Mapping[str, Mapping[str, int]], summary: Mapping[str, Any],
                 plots: list[Path]) -> Path:
    """``report.md``: the model, the results table, Δm in both conventions, and the plots."""
    lines = [f"# mtlzoo run: `{spec}`", "", results_table(results, directions), ""]
    if "delta_p" in summary:
        lines += [
            f"- **Δp (LibMTL)** = {summary['delta_p']:+.2f}% (higher is better; positive beats single-task)",
            f"- **Δm% (Nash-MTL / FAMO)** = {summary['delta_m']:+.2f}% (lower is better; negative beats single-task)",
            "",
        ]
    for key, value in summary.items():
        if key not in ("delta_p", "delta_m"):
            lines.append(f"- {key}: {_fmt(value)}")
    lines.append("")
    for plot in plots:
        lines.append(f"![{plot.stem}]({plot.name})")
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
