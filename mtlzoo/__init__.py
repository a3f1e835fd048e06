"""mtlzoo: a multi-task-learning architecture zoo for PyTorch.

The public API is what this module exports; everything else may change between releases.
"""

from __future__ import annotations

from typing import Any

from mtlzoo import errors
from mtlzoo.aggregate import aggregate
from mtlzoo.build import create_model, load, save
from mtlzoo.hookspecs import hookimpl
from mtlzoo.model import MTLModel
from mtlzoo.plugins import plugins
from mtlzoo.registry import Zoo
from mtlzoo.train import TrainConfig, Trainer

__version__ = "0.1.0"

__all__ = [
    "MTLModel",
    "TrainConfig",
    "Trainer",
    "Zoo",
    "__version__",
    "aggregate",
    "create_dataset",
    "create_model",
    "errors",
    "hookimpl",
    "list_components",
    "load",
    "plugins",
    "save",
]


def list_components(kind: str, pattern: str = "*", **filters: Any) -> list[str]:
    """Registered names of one kind (``"strategies"`` or ``"strategy"``) matching a shell-style
    pattern, in natural order. ``filters``: ``tags=[...]``, ``plugin="name"``."""
    from mtlzoo.plugins import default_zoo

    return [entry.name for entry in default_zoo()[kind].list(pattern, **filters)]


def create_dataset(spec: Any, split: str = "train", *, zoo: Zoo | None = None) -> Any:
    """Build a registered dataset from a spec string or dict, e.g. ``"multidigits(size=500)"``."""
    from mtlzoo import spec as specs
    from mtlzoo.errors import InvalidArgumentError
    from mtlzoo.plugins import default_zoo

    ref = specs.coerce(spec)
    if "split" in ref.kwargs:
        raise InvalidArgumentError(
            f"dataset spec {specs.format(ref)!r} sets split=; pass the split as the argument instead, "
            f"as in create_dataset({ref.name!r}, split={specs.as_name(ref.kwargs['split'])!r})"
        )
    entry = (zoo or default_zoo()).datasets.get(ref.name)
    return entry.create(split=split, **{k: specs.as_name(v) for k, v in ref.kwargs.items()})
