"""Performance-based task affinity: the pairwise transfer gain, from single-task and pairwise runs.

For tasks i and j, with ``B_j`` the validation metrics of task j trained alone and ``N_j^{(i,j)}``
those of task j in the model trained on the pair {i, j}::

    A_{i→j} = −Δm_j = 100% · (1/M_j) Σ_m w_m (N_{j,m}^{(i,j)} − B_{j,m}) / |B_{j,m}|

the Δm of Maninis et al. (CVPR 2019) restricted to task j's M_j metrics, with the sign flipped so
that positive means "j is better when trained with i" (``w`` = +1 where higher is better, −1
where lower is better; :func:`mtlzoo.train.delta.delta_m`). It is asymmetric: i may help j while j
hurts i. The diagonal is 0 (a task trained with itself is the single-task model). This is the
pairwise signal that Standley et al. (ICML 2020) and TAG's HOA baseline (Fifty et al., NeurIPS
2021) group tasks from; it costs T single-task and T(T−1)/2 pair trainings.

Pass results you have (:func:`performance_affinity` with ``single=`` and ``pairs=``), or let
:func:`train_pairs` train them with the :class:`~mtlzoo.train.trainer.Trainer` on your data.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from mtlzoo import spec as specs
from mtlzoo.affinity.matrix import AffinityMatrix
from mtlzoo.affinity.measure import QUIET
from mtlzoo.errors import InvalidArgumentError
from mtlzoo.train.delta import delta_m

Metrics = Mapping[str, Mapping[str, float]]


def _pair_key(key: Any) -> tuple[str, str]:
    if isinstance(key, str):
        for sep in ("+", "|", ","):
            if sep in key:
                parts = [p.strip() for p in key.split(sep)]
                if len(parts) == 2:
                    return parts[0], parts[1]
        raise InvalidArgumentError(f"pair key {key!r} must name two tasks, as 'left+right' (or a tuple)")
    if isinstance(key, (tuple, list, frozenset, set)) and len(key) == 2:
        a, b = sorted(key) if isinstance(key, (frozenset, set)) else key
        return str(a), str(b)
    raise InvalidArgumentError(f"pair key {key!r} must name two tasks, as 'left+right' or ('left', 'right')")


def performance_affinity(single: Metrics, pairs: Mapping[Any, Metrics], directions: Mapping[str, Mapping[str, int]],
                         tasks: Sequence[str] | None = None) -> AffinityMatrix:
    """The pairwise transfer-gain matrix (see the module docstring).

    ``single``: ``{task: {metric: value}}`` of the single-task models. ``pairs``: per pair
    (``"a+b"``, ``("a", "b")`` or a frozenset) the pair model's ``{task: {metric: value}}`` for
    both tasks. ``directions``: ``{task: {metric: +1 | -1}}`` (``model.tasks[t].directions``).
    A pair that is missing leaves its two entries NaN."""
    names = list(tasks) if tasks is not None else list(single)
    missing = [t for t in names if t not in single]
    if missing:
        raise InvalidArgumentError(f"performance affinity: no single-task result for {missing}; single-task "
                                   f"results cover {sorted(single)}")
    index = {t: i for i, t in enumerate(names)}
    T = len(names)
    values = np.full((T, T), np.nan)
    np.fill_diagonal(values, 0.0)
    counts = np.zeros((T, T), dtype=np.int64)
    np.fill_diagonal(counts, 1)
    seen: set[tuple[str, str]] = set()
    for key, results in pairs.items():
        a, b = _pair_key(key)
        if a not in index or b not in index:
            continue
        for source, target in ((a, b), (b, a)):
            if target not in results:
                raise InvalidArgumentError(f"performance affinity: the results of pair {a}+{b} have no task {target!r}")
            if target not in directions:
                raise InvalidArgumentError(f"performance affinity: no metric directions for task {target!r}")
            # Δm over task j's metrics only; negated so that positive means "better with i"
            gain = -delta_m({target: results[target]}, {target: single[target]}, {target: directions[target]})
            values[index[source], index[target]] = gain
            counts[index[source], index[target]] = 1
        seen.add((min(a, b), max(a, b)))
    notes = []
    absent = [(a, b) for a, b in itertools.combinations(names, 2) if (min(a, b), max(a, b)) not in seen]
    if absent:
        notes.append(f"no pairwise result for {absent}")
    if np.isnan(values[~np.eye(T, dtype=bool)]).any() and not absent:
        notes.append("some gains are undefined (a baseline metric of 0)")
    return AffinityMatrix(kind="performance", tasks=names, values=values, symmetric=False, counts=counts, notes=notes,
                          meta={"unit": "percent (-Δm of the target task; positive = better with the source task)",
                                "diagonal": "0 by definition (a task with itself is the single-task model)"})


def train_pairs(config: Any = None, tasks: Sequence[str] | None = None, *,
                log: Callable[[str], None] | None = None, **overrides: Any) -> dict[str, Any]:
    """Train every single-task model and every pair model with the trainer; returns
    ``{"single", "pairs", "directions", "seconds"}`` for :func:`performance_affinity` and writes
    it to ``RUN_DIR/performance_runs.json``. Runs go to ``RUN_DIR/single/<task>`` and
    ``RUN_DIR/pairs/<a>+<b>``; each uses the config's model, weighting and epochs."""
    from mtlzoo import create_dataset
    from mtlzoo.build import task_refs
    from mtlzoo.train.config import TrainConfig
    from mtlzoo.train.trainer import Trainer

    config = TrainConfig.coerce(QUIET if config is None else config, **overrides)
    ref = specs.coerce(config.model)
    if "tasks" in ref.kwargs:
        available = {name: r for name, r in task_refs(ref.kwargs["tasks"]).items()}
    else:
        available = {name: specs.coerce(s) for name, s in create_dataset(config.data, split="train").tasks.items()}
    names = list(tasks) if tasks is not None else list(available)
    unknown = [t for t in names if t not in available]
    if unknown:
        raise InvalidArgumentError(f"performance affinity: no task(s) {unknown}; the tasks are {list(available)}")
    if len(names) < 2:
        raise InvalidArgumentError(f"performance affinity needs at least two tasks, got {names}")
    root = Path(config.run_dir)
    say = log or (lambda message: None)

    def fit(task_names: Sequence[str], run_dir: Path) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
        model = ref.replace(tasks={t: available[t] for t in task_names})
        cfg = replace(config, model=specs.format(model), run_dir=str(run_dir), baseline=None, single_task=False,
                      plots=False)
        trainer = Trainer(cfg)
        final = trainer.fit()
        scored = {t: {k: v for k, v in final["results"][t].items() if k != "loss"} for t in task_names}
        return scored, trainer.directions

    start = time.perf_counter()
    single: dict[str, dict[str, float]] = {}
    directions: dict[str, dict[str, int]] = {}
    for t in names:
        tick = time.perf_counter()
        results, dirs = fit([t], root / "single" / t)
        single[t] = results[t]
        directions.update(dirs)
        say(f"single-task {t}: {_brief(results[t])} ({time.perf_counter() - tick:.1f}s)")
    pairs: dict[str, dict[str, dict[str, float]]] = {}
    for a, b in itertools.combinations(names, 2):
        tick = time.perf_counter()
        results, dirs = fit([a, b], root / "pairs" / f"{a}+{b}")
        pairs[f"{a}+{b}"] = results
        directions.update(dirs)
        say(f"pair {a}+{b}: {a} {_brief(results[a])}; {b} {_brief(results[b])} ({time.perf_counter() - tick:.1f}s)")
    out = {"single": single, "pairs": pairs, "directions": directions, "tasks": names,
           "seconds": round(time.perf_counter() - start, 2), "model": specs.format(ref),
           "data": specs.format(specs.coerce(config.data)), "epochs": config.epochs}
    root.mkdir(parents=True, exist_ok=True)
    (root / "performance_runs.json").write_text(json.dumps(out, indent=2))
    return out


def _brief(metrics: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v))


def load_runs(path: str | Path) -> dict[str, Any]:
    """Read a ``performance_runs.json`` (as :func:`train_pairs` writes, or written by hand with the
    keys ``single``, ``pairs`` and ``directions``)."""
    path = Path(path)
    if not path.is_file():
        raise InvalidArgumentError(f"performance results file {str(path)!r} does not exist")
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InvalidArgumentError(f"performance results file {str(path)!r} is not JSON: {exc}") from exc
    absent = [k for k in ("single", "pairs", "directions") if k not in record]
    if absent:
        raise InvalidArgumentError(f"performance results file {str(path)!r} lacks {absent}; it needs 'single' "
                                   "({task: {metric: value}}), 'pairs' ({'a+b': {task: {metric: value}}}) and "
                                   "'directions' ({task: {metric: 1 or -1}})")
    return record
