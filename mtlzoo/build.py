"""From a spec to a model: resolve, check compatibility, build; and save/load round trips.

``create_model("hard(backbone=tiny, tasks=[cls:10, binary])")`` resolves the strategy, backbone,
task presets and heads against the zoo, checks that they fit together *before* building anything,
and returns an :class:`~mtlzoo.model.MTLModel` carrying ``model.spec`` (the canonical dict) and
``model.provenance`` (which plugin, distribution and version supplied each part).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mtlzoo import spec as specs
from mtlzoo.errors import IncompatibleComponentsError, InvalidArgumentError, MtlzooError
from mtlzoo.model import BackboneFactory, HeadFactory, MTLModel
from mtlzoo.registry import Entry, Zoo
from mtlzoo.spec import Ref
from mtlzoo.task import Task

FORMAT_VERSION = "1"


def _zoo(zoo: Zoo | None) -> Zoo:
    if zoo is not None:
        return zoo
    from mtlzoo.plugins import default_zoo

    return default_zoo()


def _plain_kwargs(ref: Ref) -> dict[str, Any]:
    """Keyword arguments for a factory: bare names become strings (``model=resnet18``)."""
    return {k: specs.as_name(v) for k, v in ref.kwargs.items()}


def task_refs(tasks: Any) -> dict[str, Ref]:
    """Normalise ``tasks=[seg:13, depth]`` or ``tasks={left: cls:10}`` to ``{name: Ref}``."""
    if isinstance(tasks, (str, Ref)) or (isinstance(tasks, Mapping) and "name" in tasks):
        tasks = [tasks]
    out: dict[str, Ref] = {}
    if isinstance(tasks, Mapping):
        for key, value in tasks.items():
            out[str(key)] = specs.as_ref(value, f"task {key!r}")
    elif isinstance(tasks, (list, tuple)):
        for value in tasks:
            ref = specs.as_ref(value, "each task")
            if ref.name in out:
                raise InvalidArgumentError(
                    f"task {ref.name!r} appears twice in the task list; name them with a dict, e.g. "
                    f"tasks={{left: {specs.format(ref)}, right: {specs.format(ref)}}}"
                )
            out[ref.name] = ref
    else:
        raise InvalidArgumentError(
            f"tasks must be a list (tasks=[cls:10, binary]) or a dict (tasks={{left: cls:10}}), got {tasks!r}"
        )
    if not out:
        raise InvalidArgumentError("a model needs at least one task, e.g. tasks=[cls:10]")
    for name in out:
        if not name.isidentifier():
            raise InvalidArgumentError(f"task name {name!r} must be an identifier (letters, digits, '_')")
    return out


def _canonical(ref: Ref, backbone: Ref) -> Ref:
    """The spec with component positions spelled as refs, so dict and string specs compare equal."""
    def task(value: Any) -> Ref:
        task_ref = specs.as_ref(value, "task")
        if "head" in task_ref.kwargs:
            task_ref = task_ref.replace(head=specs.as_ref(task_ref.kwargs["head"], "head"))
        return task_ref

    tasks = ref.kwargs["tasks"]
    if isinstance(tasks, Mapping) and "name" not in tasks:
        tasks = {k: task(v) for k, v in tasks.items()}
    elif isinstance(tasks, (list, tuple)):
        tasks = [task(v) for v in tasks]
    else:
        tasks = [task(tasks)]
    return ref.replace(backbone=backbone, tasks=tasks)


def _fitting(zoo: Zoo, kind: str, wanted: frozenset[str], attr: str) -> list[str]:
    return [e.name for e in zoo[kind].list() if wanted <= getattr(e, attr)][:12]


def check_compatible(zoo: Zoo, strategy: Entry, backbone: Entry, tags: frozenset[str] | None = None,
                     described: str | None = None) -> None:
    """Raise :class:`IncompatibleComponentsError` if the backbone lacks tags the strategy needs.

    ``tags`` are the backbone's tags for its arguments (:meth:`Entry.tags_for`), by default its
    registered tags; ``described`` names it in the message (``timm(model=dpn48b)``).
    """
    tags = backbone.tags if tags is None else tags
    missing = strategy.requires - tags
    if not missing:
        return
    fits = _fitting(zoo, "backbone", strategy.requires, "tags")
    works = [e.name for e in zoo.strategies.list() if e.requires <= tags]
    raise IncompatibleComponentsError(
        f"strategy {strategy.name!r} needs a backbone tagged {sorted(missing)}, but backbone "
        f"{described or backbone.name!r} has tags {sorted(tags) or '[]'}. Backbones that fit: "
        f"{', '.join(fits) or 'none registered'}. Strategies that work with {backbone.name!r}: "
        f"{', '.join(works) or 'none'}."
    )


def resolve_tasks(zoo: Zoo, tasks: Any) -> tuple[dict[str, Task], dict[str, Ref], dict[str, Entry]]:
    """Task objects, head refs and task entries, by task name."""
    task_objs: dict[str, Task] = {}
    head_refs: dict[str, Ref] = {}
    entries: dict[str, Entry] = {}
    for name, ref in task_refs(tasks).items():
        entry = zoo.tasks.get(ref.name)
        kwargs = _plain_kwargs(ref)
        head = ref.kwargs.get("head")
        kwargs.pop("head", None)
        task = entry.create(**kwargs)
        if not isinstance(task, Task):
            raise InvalidArgumentError(
                f"task preset {ref.name!r} from {entry.origin} returned {type(task).__name__}, not a mtlzoo.task.Task"
            )
        task.name = name
        task_objs[name] = task
        head_refs[name] = specs.as_ref(head if head is not None else task.default_head, f"head of task {name!r}")
        entries[name] = entry
    return task_objs, head_refs, entries


def create_model(spec: str | Mapping[str, Any] | Ref, *, zoo: Zoo | None = None, **overrides: Any) -> MTLModel:
    """Build a multi-task model from a spec string, dict or :class:`~mtlzoo.spec.Ref`.

    ``overrides`` replace top-level arguments: ``create_model("hard(backbone=tiny)", tasks=["cls:10"])``.
    """
    zoo = _zoo(zoo)
    ref = specs.coerce(spec)
    if overrides:
        ref = ref.replace(**{k: specs.from_dict(v) for k, v in overrides.items()})
    strategy = zoo.strategies.get(ref.name)
    kwargs = dict(ref.kwargs)
    if "backbone" not in kwargs:
        raise InvalidArgumentError(
            f"strategy {ref.name!r} needs backbone=..., e.g. {ref.name}(backbone=tiny, tasks=[cls:10])"
        )
    if "tasks" not in kwargs:
        raise InvalidArgumentError(
            f"strategy {ref.name!r} needs tasks=[...], e.g. {ref.name}(backbone=tiny, tasks=[cls:10, binary])"
        )
    backbone_ref = specs.as_ref(kwargs.pop("backbone"), "backbone")
    backbone = zoo.backbones.get(backbone_ref.name)
    backbone_kwargs = _plain_kwargs(backbone_ref)
    backbone.check_kwargs(backbone_kwargs)
    backbone_tags = backbone.tags_for(backbone_kwargs)
    described = specs.format(backbone_ref) if backbone_tags != backbone.tags else None
    check_compatible(zoo, strategy, backbone, backbone_tags, described)

    tasks, head_refs, task_entries = resolve_tasks(zoo, kwargs.pop("tasks"))
    heads: dict[str, HeadFactory] = {}
    head_entries: dict[str, Entry] = {}
    for name, task in tasks.items():
        head_entry = zoo.heads.get(head_refs[name].name)
        head_kwargs = _plain_kwargs(head_refs[name])
        head_entry.check_kwargs(head_kwargs, skip=("feature_info", "out"))
        for key in ("feature_info", "out"):
            if key in head_kwargs:
                raise InvalidArgumentError(
                    f"head {head_entry.name!r} of task {name!r}: {key!r} is set by mtlzoo "
                    f"({'the task' if key == 'out' else 'the backbone'}); remove it from the head spec"
                )
        spatial = "spatial" in backbone_tags
        if (task.dense or "dense" in head_entry.tags) and not spatial:
            dense_heads = [e.name for e in zoo.heads.list(tags=["dense"])]
            raise IncompatibleComponentsError(
                f"task {name!r} ({task.preset}) with head {head_entry.name!r} predicts per pixel and needs "
                f"spatial features, but backbone {backbone.name!r} is not tagged 'spatial'. Use a backbone "
                f"such as {', '.join(_fitting(zoo, 'backbone', frozenset({'spatial'}), 'tags')[:5])}."
            )
        if not task.head_tags <= head_entry.tags:
            fitting = [e.name for e in zoo.heads.list(tags=sorted(task.head_tags))]
            raise IncompatibleComponentsError(
                f"task {name!r} ({task.preset}) needs a head tagged {sorted(task.head_tags)}, but head "
                f"{head_entry.name!r} has tags {sorted(head_entry.tags) or '[]'}; use one of: {', '.join(fitting)}"
            )
        if task.dense and "dense" not in head_entry.tags:
            dense_heads = [e.name for e in zoo.heads.list(tags=["dense"])]
            raise IncompatibleComponentsError(
                f"task {name!r} ({task.preset}) predicts per pixel, but head {head_entry.name!r} is not a dense "
                f"head; use one of: {', '.join(dense_heads)}"
            )
        heads[name] = HeadFactory(name, head_entry, task.out, head_kwargs)
        head_entries[name] = head_entry

    hyper = {k: specs.as_name(v) for k, v in kwargs.items()}
    ref = _canonical(ref, backbone_ref)
    strategy.check_kwargs(hyper, skip=("backbone", "heads"))
    model = strategy.factory(backbone=BackboneFactory(backbone, backbone_kwargs), heads=heads, **hyper)
    if not isinstance(model, MTLModel):
        raise InvalidArgumentError(
            f"strategy {strategy.name!r} from {strategy.origin} returned {type(model).__name__}, not an MTLModel"
        )
    model.tasks = tasks
    model.spec = specs.to_dict(ref)
    model.provenance = {
        "strategy": strategy.provenance(),
        "backbone": backbone.provenance(),
        "tasks": {n: e.provenance() for n, e in task_entries.items()},
        "heads": {n: e.provenance() for n, e in head_entries.items()},
    }
    return model


# ------------------------------------------------------------------------------------ save/load
def _atomic_write(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(model: MTLModel, path: str | os.PathLike[str]) -> Path:
    """Write the model's spec, provenance and weights. ``.safetensors`` uses safetensors; any other
    suffix a ``torch.save`` file of plain tensors and strings (loadable with ``weights_only=True``).
    The file is written to a temporary name and renamed, so a crash never leaves half a file."""
    if not isinstance(model, MTLModel) or not model.spec:
        raise InvalidArgumentError("save() takes a model built by mtlzoo.create_model (it needs model.spec)")
    path = Path(path)
    meta = {"mtlzoo.format": FORMAT_VERSION, "mtlzoo.spec": json.dumps(model.spec),
            "mtlzoo.provenance": json.dumps(model.provenance)}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_model

        _atomic_write(path, lambda tmp: save_model(model, tmp, metadata=meta))
    else:
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        _atomic_write(path, lambda tmp: torch.save({"meta": meta, "state_dict": state}, tmp))
    return path


def _without_pretrained(spec: dict[str, Any]) -> dict[str, Any]:
    """The weights come from the file, so do not fetch or read pretrained ones again."""
    spec = dict(spec)
    # strategies that initialise task columns from single-task checkpoints (cross_stitch, nddr)
    spec.pop("init_from", None)
    backbone = spec.get("backbone")
    if isinstance(backbone, dict):
        backbone = {k: v for k, v in backbone.items() if k != "pretrained_file"}
        if "pretrained" in backbone:
            backbone["pretrained"] = False
        spec["backbone"] = backbone
    return spec


def load(path: str | os.PathLike[str], *, zoo: Zoo | None = None, map_location: str | torch.device = "cpu") -> MTLModel:
    """Rebuild a model saved by :func:`save` from its spec, then load its weights (strictly)."""
    path = Path(path)
    if not path.is_file():
        raise MtlzooError(f"no model file at {str(path)!r}")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
    else:
        blob = torch.load(path, map_location=map_location, weights_only=True)
        meta = blob.get("meta", {}) if isinstance(blob, dict) else {}
    if "mtlzoo.spec" not in meta:
        raise MtlzooError(f"{str(path)!r} is not an mtlzoo model file (no mtlzoo.spec metadata)")
    model = create_model(_without_pretrained(json.loads(meta["mtlzoo.spec"])), zoo=zoo)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_model

        load_model(model, str(path), strict=True, device=str(map_location))
    else:
        model.load_state_dict(blob["state_dict"], strict=True)
    return model
