"""Δm: one number for "how much better than single-task learning", in both conventions in use.

Given per-task metrics ``N`` of the multi-task model and ``B`` of the single-task baselines, with
``w`` = +1 where higher is better and −1 where lower is better:

**Δp** (LibMTL, Lin & Zhang, JMLR 2023 ``count_improvement``; higher is better)::

    Δp = 100% · (1/T) Σ_t (1/M_t) Σ_m  w_{t,m} · (N_{t,m} − B_{t,m}) / B_{t,m}

averaged first over each task's M_t metrics, then over tasks. Positive: better than single-task.

**Δm%** (Maninis et al., CVPR 2019; the convention of the MTAN / CAGrad / Nash-MTL / FAMO tables;
lower is better)::

    Δm% = 100% · (1/K) Σ_k (−1)^{δ_k} (M_{m,k} − M_{b,k}) / M_{b,k},   δ_k = 1 if higher is better

averaged over all K metrics of all tasks at once. Negative: better than single-task.

The two differ in sign and in how metrics are averaged (per task, or flat over metrics), so the
output always says which is which.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from mtlzoo.errors import InvalidArgumentError

Metrics = Mapping[str, Mapping[str, float]]
Directions = Mapping[str, Mapping[str, int]]


def _pairs(results: Metrics, baseline: Metrics, directions: Directions) -> dict[str, list[float]]:
    """Signed relative improvements per task: w · (N − B) / |B|."""
    out: dict[str, list[float]] = {}
    for task, metrics in results.items():
        if task not in baseline:
            raise InvalidArgumentError(
                f"no single-task baseline for task {task!r}; baselines cover {sorted(baseline)}. "
                "Train them with `mtlzoo train --single-task` on the same data."
            )
        for name, value in metrics.items():
            if name not in directions.get(task, {}):
                continue  # not a scored metric (e.g. a loss); Δm uses metrics with a direction
            base = baseline[task].get(name)
            if base is None:
                raise InvalidArgumentError(f"baseline for task {task!r} has no metric {name!r}")
            if base == 0 or math.isnan(base) or math.isnan(value):
                continue  # relative change undefined; leave the metric out rather than divide by zero
            out.setdefault(task, []).append(directions[task][name] * (value - base) / abs(base))
    return out


def delta_p(results: Metrics, baseline: Metrics, directions: Directions) -> float:
    """LibMTL's Δp in percent; higher is better (positive = better than the baseline)."""
    per_task = _pairs(results, baseline, directions)
    if not per_task:
        return float("nan")
    return 100.0 * sum(sum(v) / len(v) for v in per_task.values()) / len(per_task)


def delta_m(results: Metrics, baseline: Metrics, directions: Directions) -> float:
    """The Nash-MTL/FAMO Δm% in percent; lower is better (negative = better than the baseline)."""
    flat = [v for values in _pairs(results, baseline, directions).values() for v in values]
    if not flat:
        return float("nan")
    return -100.0 * sum(flat) / len(flat)
