"""``mtlzoo affinity``: every affinity asked for, its groups, pictures and numbers, in one run directory.

Layout of ``RUN_DIR``::

    affinity.json                  summary: methods, groups, timings, configuration
    affinity_<kind>.json / .csv    the matrix (rows: source task, columns: target task)
    affinity_<kind>.png            its heatmap
    affinity_<kind>_groups.png     the groups chosen from it
    train/                         the training run that measured gradient and lookahead affinity
    performance/                   the single-task and pair runs (performance affinity)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from mtlzoo import spec as specs
from mtlzoo.affinity.data import data_affinity
from mtlzoo.affinity.grouping import choose_groups
from mtlzoo.affinity.matrix import AffinityMatrix
from mtlzoo.affinity.measure import TRAINING_METHODS, measure_affinity
from mtlzoo.affinity.performance import load_runs, performance_affinity, train_pairs
from mtlzoo.affinity.plot import plot_affinity, plot_groups
from mtlzoo.errors import InvalidArgumentError, suggestion

METHODS = ("gradient", "lookahead", "data", "performance")
#: the methods run when none are named: performance affinity trains T + T(T-1)/2 models, so it is asked for
DEFAULT_METHODS = ("gradient", "lookahead", "data")
#: what an affinity run changes in the trainer's defaults: a constant learning rate (so the lookahead
#: step is the same size throughout) and no per-run extras
AFFINITY_DEFAULTS = {"scheduler": "constant", "progress": False, "tensorboard": False, "plots": False}


def parse_methods(text: str | Iterable[str]) -> list[str]:
    """``"gradient,lookahead"`` -> ``["gradient", "lookahead"]``, checked against :data:`METHODS`."""
    items = [m.strip() for m in text.split(",")] if isinstance(text, str) else [str(m).strip() for m in text]
    items = [m for m in items if m]
    if not items:
        raise InvalidArgumentError(f"--methods is empty; choose from {', '.join(METHODS)}")
    for m in items:
        if m not in METHODS:
            raise InvalidArgumentError(f"unknown affinity method {m!r}.{suggestion(m, METHODS)} "
                                       f"Methods: {', '.join(METHODS)}")
    return list(dict.fromkeys(items))


def write_matrix(matrix: AffinityMatrix, run_dir: Path, groups: int | None = None, overlap: bool = True
                 ) -> dict[str, Any]:
    """JSON, CSV and heatmap of ``matrix`` and, with ``groups``, the chosen groups and their chart."""
    stem = f"affinity_{matrix.kind}"
    record: dict[str, Any] = {
        "json": matrix.to_json(run_dir / f"{stem}.json").name,
        "csv": matrix.to_csv(run_dir / f"{stem}.csv").name,
        "png": plot_affinity(matrix, run_dir / f"{stem}.png").name,
        "notes": matrix.notes,
    }
    if groups is not None and len(matrix.tasks) >= 2:
        grouping = choose_groups(matrix, groups, overlap=overlap)
        record["groups"] = grouping.to_json_dict()
        record["groups_png"] = plot_groups(matrix, grouping, run_dir / f"{stem}_groups.png").name
    return record


def run_affinity(config: Any = None, *, methods: Sequence[str] = DEFAULT_METHODS, steps: int | None = 300,
                 every: int = 10, groups: int = 2, overlap: bool = True, run_dir: str | Path = "runs/affinity",
                 performance_epochs: int | None = 1, performance_results: str | Path | None = None,
                 lookahead_lr: float | None = None, max_samples: int = 20000, progress: bool = False,
                 log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Run the affinity methods asked for on ``config`` (a TrainConfig, a dict of its keys or None
    for the defaults; :data:`AFFINITY_DEFAULTS` fill in keys it does not set) and write everything to
    ``run_dir``. Returns the summary written to ``RUN_DIR/affinity.json``, with the matrices under
    ``"matrices"`` (as :class:`AffinityMatrix`)."""
    from mtlzoo.train.config import TrainConfig

    methods = parse_methods(methods)
    say = log or (lambda message: None)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    values = dict(AFFINITY_DEFAULTS)
    if isinstance(config, TrainConfig):
        values.update({k: v for k, v in config.to_dict().items() if v != getattr(TrainConfig(), k)})
    elif isinstance(config, Mapping):
        values.update(config)
    elif config is not None:
        raise InvalidArgumentError(f"affinity: config must be a TrainConfig or a dict, got {type(config).__name__}")
    cfg = TrainConfig.from_dict({**values, "run_dir": str(run_dir / "train")})
    matrices: dict[str, AffinityMatrix] = {}
    timings: dict[str, float] = {}
    start = time.perf_counter()

    if "data" in methods:
        tick = time.perf_counter()
        from mtlzoo import create_dataset

        dataset = create_dataset(cfg.data, split="train")
        model_ref = specs.coerce(cfg.model)
        tasks = None
        if "tasks" in model_ref.kwargs:  # the model's tasks, where it names them
            from mtlzoo.build import task_refs

            tasks = list(task_refs(model_ref.kwargs["tasks"]))
        matrices["data"] = data_affinity(dataset, tasks, max_samples=max_samples, seed=cfg.seed)
        timings["data"] = round(time.perf_counter() - tick, 2)
        say(f"data affinity: {timings['data']:.1f}s")
    training = [m for m in methods if m in TRAINING_METHODS]
    if training:
        tick = time.perf_counter()
        say(f"training {specs.format(specs.coerce(cfg.model))} on {specs.format(specs.coerce(cfg.data))} for "
            f"{steps if steps is not None else 'the configured epochs of'} steps, measuring {', '.join(training)} "
            f"every {every} steps")
        matrices.update(measure_affinity(cfg, methods=training, steps=steps, every=every, lookahead_lr=lookahead_lr,
                                         progress=progress))
        timings["training"] = round(time.perf_counter() - tick, 2)
        say(f"gradient / lookahead affinity: {timings['training']:.1f}s")
    if "performance" in methods:
        tick = time.perf_counter()
        if performance_results is not None:
            runs = load_runs(performance_results)
        else:
            perf_cfg = replace(cfg, run_dir=str(run_dir / "performance"),
                               epochs=performance_epochs if performance_epochs is not None else cfg.epochs)
            say(f"performance affinity: training the single-task and pair models ({perf_cfg.epochs} epoch(s) each)")
            runs = train_pairs(perf_cfg, log=lambda message: say("  " + message))
        matrices["performance"] = performance_affinity(runs["single"], runs["pairs"], runs["directions"],
                                                       tasks=runs.get("tasks"))
        timings["performance"] = round(time.perf_counter() - tick, 2)
        say(f"performance affinity: {timings['performance']:.1f}s")

    outputs: dict[str, Any] = {}
    for kind in METHODS:
        if kind in matrices:
            outputs[kind] = write_matrix(matrices[kind], run_dir, groups=groups, overlap=overlap)
    timings["total"] = round(time.perf_counter() - start, 2)
    summary = {"run_dir": str(run_dir), "methods": outputs, "seconds": timings, "groups": groups, "overlap": overlap,
               "config": cfg.to_dict(), "steps": steps, "every": every}
    (run_dir / "affinity.json").write_text(json.dumps(summary, indent=2, default=str))
    return {**summary, "matrices": matrices}


def run_command(args: Any) -> int:
    """``mtlzoo affinity``: the parsed command-line arguments (see :mod:`mtlzoo.cli`) to a run, printed."""
    from mtlzoo.train.config import TrainConfig, overrides_from_args, parse_overrides

    methods = parse_methods(args.methods)
    for name in ("steps", "every", "groups", "epochs"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise InvalidArgumentError(f"--{name} must be a positive integer, got {value}")
    overrides = overrides_from_args(args, ("model", "data", "weighting", "batch_size", "lr", "seed", "device"))
    values = TrainConfig.load(args.config).to_dict() if args.config else {}
    values.update(parse_overrides(overrides))
    summary = run_affinity(values, methods=methods, steps=args.steps, every=args.every, groups=args.groups,
                           overlap=not args.no_overlap, run_dir=args.run_dir, performance_epochs=args.epochs,
                           performance_results=args.performance_results, lookahead_lr=args.lookahead_lr,
                           progress=args.progress)
    for kind, matrix in summary["matrices"].items():
        record = summary["methods"][kind]
        print(f"\n{kind} affinity (rows: source task i, columns: target task j)")
        print(matrix.table())
        for note in matrix.notes:
            print(f"  note: {note}")
        if "groups" in record:
            groups = record["groups"]
            print(f"  groups (k<={groups['k']}): " + " | ".join(" + ".join(g) for g in groups["groups"])
                  + f"   score {groups['score']:.4g} ({groups['method']})")
    if "performance" not in methods:
        print("\n(performance affinity, the pairwise transfer gain, trains T + T(T-1)/2 models: add "
              "--methods ...,performance)")
    print(f"\nrun directory: {summary['run_dir']} (affinity.json, affinity_<kind>.json/.csv/.png, "
          f"affinity_<kind>_groups.png); {summary['seconds']['total']:.0f}s")
    return 0
