"""The ``mtlzoo`` command line.

``mtlzoo plugins | list | info | build | train | affinity``. A user's mistake (a misspelled name, a malformed spec)
prints one message and exits with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from collections.abc import Sequence
from typing import Any

from mtlzoo.errors import InvalidArgumentError, MtlzooError

EXIT_USAGE = 2


def _zoo() -> Any:
    from mtlzoo.plugins import default_zoo

    return default_zoo()


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- commands
def cmd_plugins(args: argparse.Namespace) -> int:
    infos = [info.as_dict() for info in _zoo().plugins.values()]
    print(json.dumps(infos, indent=2))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from mtlzoo.registry import KINDS, kind_of

    zoo = _zoo()
    kinds = [kind_of(args.kind)] if args.kind else list(KINDS)
    records = []
    for kind in kinds:
        for entry in zoo[kind].list(args.pattern, tags=args.tag or (), plugin=args.plugin):
            records.append({"kind": kind, "name": entry.name, "plugin": entry.plugin,
                            "distribution": entry.distribution, "tags": sorted(entry.tags),
                            "summary": entry.summary or "",
                            "deprecated": entry.replaced_by is not None})
    if args.json:
        print(json.dumps(records, indent=2))
        return 0
    if not records:
        print(f"no {args.kind or 'components'} match {args.pattern!r}")
        return 0
    rows = [[r["kind"], r["name"] + (" (deprecated)" if r["deprecated"] else ""),
             f"{r['plugin']} [{r['distribution'] or '-'}]", ",".join(r["tags"]), r["summary"]]
            for r in records]
    print(_table(rows, ["kind", "name", "plugin [distribution]", "tags", "summary"]))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from mtlzoo.registry import kind_of

    entry = _zoo()[kind_of(args.kind)].get(args.name)
    doc = inspect.getdoc(entry.factory) if entry.factory is not None else None
    record = {
        "kind": entry.kind, "name": entry.name, "signature": f"{entry.name}{entry.signature}"
        if entry.signature else None, "aliases": list(entry.aliases), "tags": sorted(entry.tags),
        "requires": sorted(entry.requires), "summary": entry.summary, "paper": entry.paper,
        "replaced_by": entry.replaced_by, "plugin": entry.plugin,
        "distribution": entry.distribution, "version": entry.version,
    }
    if args.json:
        print(json.dumps({**record, "doc": doc}, indent=2))
        return 0
    for key, value in record.items():
        if value not in (None, [], ""):
            print(f"{key + ':':<14}{', '.join(value) if isinstance(value, list) else value}")
    if doc:
        print()
        print(doc)
    return 0


def parse_input_shape(text: str) -> tuple[int, ...]:
    """``3x64x64`` -> (3, 64, 64); ``16`` -> (16,)."""
    try:
        shape = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        shape = ()
    if not shape or any(d < 1 for d in shape):
        raise InvalidArgumentError(
            f"--input {text!r} is not a shape; write channels x height x width (3x64x64) or features (16)"
        )
    return shape


def _describe(value: Any) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        return list(value.shape)
    if isinstance(value, dict):
        return {k: _describe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_describe(v) for v in value[:2]] + (["..."] if len(value) > 2 else [])
    return type(value).__name__


def cmd_build(args: argparse.Namespace) -> int:
    import torch

    from mtlzoo import spec as specs
    from mtlzoo.build import create_model
    from mtlzoo.model import Backbone

    model = create_model(args.spec)
    backbone = next((m for m in model.modules() if isinstance(m, Backbone)), None)
    if args.input:
        shape = parse_input_shape(args.input)
    elif backbone is not None and backbone.input_rank == 2:
        shape = (backbone.in_channels or 16,)
    else:
        shape = ((backbone.in_channels if backbone else None) or 3, 64, 64)
    torch.manual_seed(0)
    x = torch.randn(args.batch, *shape)
    model.eval()
    with torch.no_grad():
        outputs = model(x)
    counts = model.count_parameters()
    result = {
        "spec": specs.format(specs.from_dict(model.spec)),
        "input": [args.batch, *shape],
        "parameters": counts,
        "outputs": {task: _describe(out) for task, out in outputs.items()},
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"model   {result['spec']}")
    print(f"input   {result['input']}")
    rows = [[part, f"{n:,}"] for part, n in counts.items()]
    print(_table(rows, ["parameters", "count"]))
    print()
    rows = [[task, str(desc)] for task, desc in result["outputs"].items()]
    print(_table(rows, ["task", "output shape"]))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from mtlzoo.train.config import TrainConfig, overrides_from_args
    from mtlzoo.train.trainer import Trainer, single_task_baselines

    overrides = overrides_from_args(args, ("model", "data", "weighting", "epochs", "batch_size", "lr", "run_dir",
                                           "baseline", "seed", "device"))
    if args.resume:
        overrides.append("resume=true")
    if args.no_progress:
        overrides.append("progress=false")
    config = TrainConfig.load(args.config, overrides)
    if args.single_task:
        out = single_task_baselines(config)
        print(f"single-task baselines written to {config.run_dir}/baselines.json")
        for task, metrics in out["results"].items():
            print(f"  {task}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        return 0
    trainer = Trainer(config)
    final = trainer.fit()
    if trainer.is_main:
        print()
        print(trainer.results_markdown(final))
        summary = final["summary"]
        if "delta_p" in summary:
            print(f"\nΔp (LibMTL, higher is better): {summary['delta_p']:+.2f}%   "
                  f"Δm% (Nash-MTL/FAMO, lower is better): {summary['delta_m']:+.2f}%")
        else:
            print("\n(no single-task baseline given: run `mtlzoo train --single-task` and pass --baseline "
                  "RUN_DIR/baselines.json for Δm)")
        print(f"\nrun directory: {trainer.run_dir} (report.md, plots, metrics.jsonl, TensorBoard, checkpoints)")
    return 0


def cmd_affinity(args: argparse.Namespace) -> int:
    """Task affinity (gradient, lookahead, data, performance), groups and heatmaps into a run directory."""
    from mtlzoo.affinity.run import run_command

    return run_command(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mtlzoo", description="Multi-task learning architecture zoo")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("plugins", help="list installed plugins as JSON (with load errors)")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("list", help="list registered components")
    p.add_argument("kind", nargs="?", help="backbones, strategies, heads, tasks, weightings, datasets")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style pattern, e.g. 'res*'")
    p.add_argument("--tag", action="append", help="only components with this tag (repeatable)")
    p.add_argument("--plugin", help="only components from this plugin or distribution")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("info", help="show one component: signature, tags, paper, provenance")
    p.add_argument("kind")
    p.add_argument("name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("build", help="build a model from a spec; print parameters and output shapes")
    p.add_argument("spec", help="e.g. 'hard(backbone=tiny, tasks=[cls:10, binary])'")
    p.add_argument("--input", help="input shape without batch: 3x64x64 or 16")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("train", help="train a multi-task model (default: the bundled multidigits data)")
    p.add_argument("--config", help="YAML config file (keys as in TrainConfig)")
    p.add_argument("-o", "--override", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.add_argument("--model", help="model spec; tasks default to the dataset's")
    p.add_argument("--data", help="dataset spec, e.g. multidigits or 'nyuv2(root=/data/nyuv2)'")
    p.add_argument("--weighting", help="weighting spec, e.g. ew, uw, 'cagrad(c=0.4)'")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto, cpu or cuda")
    p.add_argument("--run-dir", dest="run_dir", help="where logs, plots, report and checkpoints go")
    p.add_argument("--baseline", help="baselines.json from `mtlzoo train --single-task`, for Δm")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt")
    p.add_argument("--single-task", dest="single_task", action="store_true",
                   help="train one single-task model per task and write RUN_DIR/baselines.json")
    p.add_argument("--no-progress", dest="no_progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("affinity", help="which tasks help each other: affinity matrices, groups and heatmaps")
    p.add_argument("--data", help="dataset spec (default: multidigits)")
    p.add_argument("--model", help="model spec; tasks default to the dataset's")
    p.add_argument("--weighting", help="weighting of the training run (a Gram-based one supplies the gradient cosine)")
    p.add_argument("--methods", default="gradient,lookahead,data",
                   help="comma-separated: gradient, lookahead, data, performance (default: gradient,lookahead,data; "
                        "performance trains T + T(T-1)/2 models)")
    p.add_argument("--steps", type=int, default=300, help="training steps for gradient/lookahead (default 300)")
    p.add_argument("--every", type=int, default=10, help="measure every K steps (TAG: 10)")
    p.add_argument("--groups", type=int, default=2, help="choose at most K groups (default 2)")
    p.add_argument("--no-overlap", dest="no_overlap", action="store_true",
                   help="groups form a partition (default: TAG's selection, a task may sit in several groups)")
    p.add_argument("--epochs", type=int, default=1, help="epochs of each single-task and pair run (performance)")
    p.add_argument("--performance-results", dest="performance_results", metavar="FILE",
                   help="JSON with single, pairs and directions (as performance_runs.json) instead of training")
    p.add_argument("--lookahead-lr", dest="lookahead_lr", type=float,
                   help="fixed lookahead step size (default: the optimiser's current learning rate)")
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto, cpu or cuda")
    p.add_argument("--config", help="YAML config file (keys as in TrainConfig)")
    p.add_argument("-o", "--override", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.add_argument("--run-dir", dest="run_dir", default="runs/affinity", help="where matrices, heatmaps and runs go")
    p.add_argument("--progress", action="store_true", help="show a progress bar while training")
    p.set_defaults(func=cmd_affinity)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from mtlzoo import __version__

        print(__version__)
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except MtlzooError as exc:
        print(f"mtlzoo: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("mtlzoo: interrupted", file=sys.stderr)
        return 130
