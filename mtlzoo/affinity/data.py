"""Data-based task affinity: how strongly the tasks' labels go together over the samples.

No model is trained: only the targets are read. Each task is one of three kinds, from its task
preset (or, for a preset mtlzoo does not know, from its targets):

* **binary** (``binary``; a label in {0, 1}),
* **categorical** (``cls:K``; a class index),
* **numeric** (``regression`` with one output).

Vector, dense and structured targets (``multilabel``, ``regression(out>1)``, ``seg``, ``depth``,
``normal``, ``detect``) have no single value per sample; their rows and columns are NaN, with a note.
For CelebA-style attributes use one binary task per attribute (``celeba`` with ``as_multilabel=false``).

The measure used for a pair (computed over the samples labelled for both, ignored labels -1 left out):

=====================  ==================================================  ==================
pair                   measure                                             range
=====================  ==================================================  ==================
binary, binary         phi coefficient (= Pearson r of the 0/1 labels)     [-1, 1], signed
binary or numeric,     Pearson r (point-biserial with a binary one)        [-1, 1], signed
numeric
categorical, cat. or   Cramér's V = sqrt(χ² / (n (min(R, C) − 1)))          [0, 1]
binary                 (Cramér 1946), or ``categorical="nmi"``: normalised
                       mutual information 2 I(X;Y) / (H(X) + H(Y))
categorical, numeric   correlation ratio η = sqrt(Σ_c n_c (ȳ_c − ȳ)² /     [0, 1]
                       Σ (y − ȳ)²) (Pearson 1903)
=====================  ==================================================  ==================

A pair is NaN (with a note) when fewer than 3 samples carry both labels or a label is constant
over them. The diagonal is 1 for every task of a supported kind.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mtlzoo import spec as specs
from mtlzoo.affinity.matrix import AffinityMatrix
from mtlzoo.errors import InvalidArgumentError

KINDS = ("binary", "categorical", "numeric")
_VECTOR_PRESETS = {"multilabel": "a vector of labels per sample; give each label its own binary task "
                                 "(e.g. celeba with as_multilabel=false)",
                   "seg": "a dense (per-pixel) target", "depth": "a dense (per-pixel) target",
                   "normal": "a dense (per-pixel) target", "detect": "a structured (boxes) target"}


def task_kind(task_spec: Any, values: np.ndarray | None = None) -> tuple[str | None, str]:
    """``("binary" | "categorical" | "numeric" | None, reason)`` for a task spec (``"cls:10"``) and,
    optionally, its per-sample targets ``[N, ...]``."""
    ref = specs.coerce(task_spec) if not isinstance(task_spec, specs.Ref) else task_spec
    name = ref.name
    if values is not None and values.ndim > 1 and int(np.prod(values.shape[1:])) > 1:
        return None, _VECTOR_PRESETS.get(name, f"a target of shape {tuple(values.shape[1:])} per sample, not one value")
    if name == "binary":
        return "binary", "binary preset"
    if name == "cls":
        return "categorical", "cls preset"
    if name == "regression":
        out = specs.as_name(ref.kwargs.get("out", 1))
        if out not in (1, None):
            return None, f"regression with out={out}: a vector per sample"
        return "numeric", "regression preset"
    if name in _VECTOR_PRESETS:
        return None, _VECTOR_PRESETS[name]
    if values is None:
        return None, f"preset {name!r} is not one mtlzoo knows and no targets were given to infer its kind"
    flat = values.reshape(len(values))
    if np.issubdtype(flat.dtype, np.integer) or np.issubdtype(flat.dtype, np.bool_):
        uniques = np.unique(flat[flat >= 0])
        kind = "binary" if set(uniques.tolist()) <= {0, 1} else "categorical"
        return kind, f"inferred from the {flat.dtype} targets"
    return "numeric", f"inferred from the {flat.dtype} targets"


def _collect(dataset: Any, tasks: Sequence[str], max_samples: int, seed: int
             ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], int]:
    """Per task: the targets ``[N, ...]`` and a bool ``[N]`` of labelled samples (a seeded subset
    of at most ``max_samples``)."""
    n = len(dataset)
    if n == 0:
        raise InvalidArgumentError("data affinity: the dataset is empty")
    index = np.arange(n)
    if n > max_samples:
        index = np.sort(np.random.default_rng(seed).choice(n, size=max_samples, replace=False))
    values: dict[str, np.ndarray] = {}
    labelled: dict[str, np.ndarray] = {}
    stored = getattr(dataset, "targets", None)
    if isinstance(stored, dict) and all(t in stored for t in tasks) and hasattr(dataset, "labelled"):
        idx = torch.as_tensor(index)
        for t in tasks:  # the in-memory fast path: index the stored tensors directly
            values[t] = stored[t].detach().cpu()[idx].numpy()
            labelled[t] = dataset.labelled[t].detach().cpu()[idx].numpy().astype(bool)
        return values, labelled, len(index)
    rows: dict[str, list[Any]] = {t: [] for t in tasks}
    for i in index.tolist():
        targets = dataset[i]["targets"]
        for t in tasks:
            rows[t].append(targets.get(t))
    for t in tasks:
        present = [v for v in rows[t] if v is not None and not isinstance(v, dict)]
        if not present:
            values[t] = np.zeros((len(index),))
            labelled[t] = np.zeros(len(index), dtype=bool)
            continue
        example = np.asarray(torch.as_tensor(present[0]).cpu())
        filler = np.zeros_like(example)
        values[t] = np.stack([filler if v is None or isinstance(v, dict) else np.asarray(torch.as_tensor(v).cpu())
                              for v in rows[t]])
        labelled[t] = np.array([v is not None and not isinstance(v, dict) for v in rows[t]])
    return values, labelled, len(index)


def _valid(kind: str, x: np.ndarray) -> np.ndarray:
    if kind == "numeric":
        return np.isfinite(x)
    return x >= 0  # -1 marks an ignored label


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x.astype(np.float64), y.astype(np.float64)
    dx, dy = x - x.mean(), y - y.mean()
    denom = math.sqrt(float((dx * dx).sum()) * float((dy * dy).sum()))
    return float((dx * dy).sum() / denom) if denom > 0 else math.nan


def _contingency(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    _, xi = np.unique(x, return_inverse=True)
    _, yi = np.unique(y, return_inverse=True)
    table = np.zeros((xi.max() + 1, yi.max() + 1), dtype=np.float64)
    np.add.at(table, (xi, yi), 1.0)
    return table


def cramers_v(x: np.ndarray, y: np.ndarray) -> float:
    """Cramér's V of two categorical variables (no bias correction); NaN if either is constant."""
    table = _contingency(x, y)
    r, c = table.shape
    if min(r, c) < 2:
        return math.nan
    n = table.sum()
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / n
    chi2 = float(((table - expected) ** 2 / expected).sum())
    return math.sqrt(min(1.0, chi2 / (n * (min(r, c) - 1))))


def normalized_mutual_information(x: np.ndarray, y: np.ndarray) -> float:
    """``2 I(X;Y) / (H(X) + H(Y))`` (the arithmetic normalisation); NaN if both are constant."""
    p = _contingency(x, y)
    p /= p.sum()
    px, py = p.sum(1), p.sum(0)

    def entropy(q: np.ndarray) -> float:
        q = q[q > 0]
        return float(-(q * np.log(q)).sum())

    hx, hy = entropy(px), entropy(py)
    if hx + hy == 0:
        return math.nan
    nz = p > 0
    mi = float((p[nz] * np.log(p[nz] / (px[:, None] * py[None, :])[nz])).sum())
    return max(0.0, 2.0 * mi / (hx + hy))


def correlation_ratio(categories: np.ndarray, y: np.ndarray) -> float:
    """Pearson's correlation ratio η of a numeric ``y`` on a categorical variable; NaN if y is constant."""
    y = y.astype(np.float64)
    total = float(((y - y.mean()) ** 2).sum())
    if total == 0:
        return math.nan
    _, ci = np.unique(categories, return_inverse=True)
    counts = np.bincount(ci).astype(np.float64)
    means = np.bincount(ci, weights=y) / counts
    between = float((counts * (means - y.mean()) ** 2).sum())
    return math.sqrt(min(1.0, between / total))


def association(kind_a: str, a: np.ndarray, kind_b: str, b: np.ndarray, categorical: str = "cramers_v"
                ) -> tuple[float, str]:
    """The measure for a pair of kinds (see the module docstring) and its name."""
    kinds = {kind_a, kind_b}
    if kinds <= {"binary", "numeric"}:
        return pearson(a, b), ("phi" if kinds == {"binary"} else "pearson")
    if "numeric" in kinds:
        cat, num = (a, b) if kind_a != "numeric" else (b, a)
        return correlation_ratio(cat, num), "correlation_ratio"
    if categorical == "nmi":
        return normalized_mutual_information(a, b), "nmi"
    return cramers_v(a, b), "cramers_v"


def data_affinity(dataset: Any, tasks: Sequence[str] | None = None, *, max_samples: int = 20000,
                  categorical: str = "cramers_v", seed: int = 0) -> AffinityMatrix:
    """Label association between every pair of tasks of ``dataset`` (a dataset object or a spec
    string such as ``"multidigits(size=2000)"``, read from its train split); see the module
    docstring for the measure used per pair. ``tasks``: a subset, in this order. ``max_samples``:
    read at most this many samples (a seeded random subset). ``categorical``: ``"cramers_v"`` or
    ``"nmi"`` for pairs of categorical tasks."""
    if categorical not in ("cramers_v", "nmi"):
        raise InvalidArgumentError(f"data affinity: categorical must be 'cramers_v' or 'nmi', got {categorical!r}")
    if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 3:
        raise InvalidArgumentError(f"data affinity: max_samples must be an integer >= 3, got {max_samples!r}")
    if isinstance(dataset, (str, dict, specs.Ref)):
        from mtlzoo import create_dataset

        dataset = create_dataset(dataset, split="train")
    declared = dict(getattr(dataset, "tasks", {}) or {})
    if not declared:
        raise InvalidArgumentError("data affinity: the dataset declares no tasks (.tasks is empty)")
    names = list(tasks) if tasks is not None else list(declared)
    unknown = [t for t in names if t not in declared]
    if unknown:
        raise InvalidArgumentError(f"data affinity: the dataset has no task(s) {unknown}; "
                                   f"its tasks are {list(declared)}")
    values, labelled, n = _collect(dataset, names, max_samples, seed)
    kinds: dict[str, str | None] = {}
    notes: list[str] = []
    for t in names:
        kind, reason = task_kind(declared[t], values[t])
        kinds[t] = kind
        if kind is None:
            notes.append(f"{t}: skipped, {reason}")
    T = len(names)
    matrix = np.full((T, T), np.nan)
    counts = np.zeros((T, T), dtype=np.int64)
    measures: dict[str, str] = {}
    for i, a in enumerate(names):
        if kinds[a] is not None:
            matrix[i, i] = 1.0
            counts[i, i] = int(labelled[a].sum())
        for j in range(i + 1, T):
            b = names[j]
            ka, kb = kinds[a], kinds[b]
            if ka is None or kb is None:
                continue
            xa, xb = values[a].reshape(n), values[b].reshape(n)
            keep = labelled[a] & labelled[b] & _valid(ka, xa) & _valid(kb, xb)
            counts[i, j] = counts[j, i] = int(keep.sum())
            if keep.sum() < 3:
                why = "no sample carries both labels (each task has its own inputs?)" if not keep.any() \
                    else "fewer than 3 samples carry both labels"
                notes.append(f"{a}, {b}: {why}")
                continue
            value, measure = association(ka, xa[keep], kb, xb[keep], categorical)
            measures[f"{a}|{b}"] = measure
            if math.isnan(value):
                notes.append(f"{a}, {b}: {measure} undefined (a label is constant over the shared samples)")
                continue
            matrix[i, j] = matrix[j, i] = value
    return AffinityMatrix(kind="data", tasks=names, values=matrix, symmetric=True, counts=counts, notes=notes,
                          meta={"samples": n, "kinds": kinds, "measures": measures, "categorical": categorical})
