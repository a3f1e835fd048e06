"""The contracts between backbones, heads and strategies, and the :class:`MTLModel` base class.

**Backbone** (:class:`Backbone`): ``forward(x) -> list[Tensor]`` multi-scale features described by
``feature_info``. A backbone tagged ``stages`` also exposes ``stem`` and ``stages`` such that::

    x = backbone.stem(x)
    features = []
    for stage in backbone.stages:
        x = stage(x)
        features.append(x)

reproduces ``backbone(x)``: strategies act between stages (cross-stitch, MTAN, NDDR).

**Head**: built by ``factory(feature_info, out, **kw)``; ``forward(features, input_size)`` maps the
feature list to a prediction at the task's resolution (``input_size`` is the input's spatial size,
``None`` for vector inputs). A head that needs the targets in training (detection) sets
``needs_targets = True`` and takes ``targets=`` too.

**Strategy**: ``factory(backbone, heads, **hyper) -> MTLModel`` where ``backbone`` is a
:class:`BackboneFactory` (each call builds a fresh copy) and ``heads`` maps task names to
:class:`HeadFactory`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from mtlzoo.errors import InvalidArgumentError

if TYPE_CHECKING:
    from mtlzoo.registry import Entry
    from mtlzoo.task import Task


@dataclass(frozen=True)
class FeatureInfo:
    """Channels and reduction (input size / feature size) of each feature level."""

    channels: tuple[int, ...]
    reductions: tuple[int, ...]
    spatial: bool = True

    def __post_init__(self) -> None:
        if len(self.channels) != len(self.reductions) or not self.channels:
            raise InvalidArgumentError(
                f"FeatureInfo needs one reduction per level, got channels={self.channels} "
                f"reductions={self.reductions}"
            )

    def __len__(self) -> int:
        return len(self.channels)

    @property
    def last_channels(self) -> int:
        return self.channels[-1]

    def with_channels(self, channels: tuple[int, ...] | list[int]) -> FeatureInfo:
        """The same levels with other channel counts (e.g. after concatenating features)."""
        return replace(self, channels=tuple(channels))


class Backbone(nn.Module):
    """Base class of backbones: multi-scale features and their :class:`FeatureInfo`."""

    feature_info: FeatureInfo
    #: 4 for images ``[B, C, H, W]``, 2 for vectors ``[B, F]``
    input_rank: int = 4
    #: channels (images) or features (vectors) the input must have; ``None`` accepts any
    in_channels: int | None = None
    # ``stem`` and ``stages`` are set by staged backbones as submodules; no class-level default,
    # because a class attribute would shadow nn.Module's submodule lookup.

    def check_input(self, x: Tensor) -> None:
        """Raise :class:`InvalidArgumentError` naming the expected input layout."""
        layout = "[batch, channels, height, width]" if self.input_rank == 4 else "[batch, features]"
        if not isinstance(x, Tensor):
            raise InvalidArgumentError(f"{type(self).__name__} expects a Tensor {layout}, got {type(x).__name__}")
        if x.dim() != self.input_rank:
            raise InvalidArgumentError(
                f"{type(self).__name__} expects input of rank {self.input_rank} {layout}, "
                f"got shape {tuple(x.shape)}"
            )
        if self.in_channels is not None and x.shape[1] != self.in_channels:
            what = "channels" if self.input_rank == 4 else "features"
            raise InvalidArgumentError(
                f"{type(self).__name__} expects {self.in_channels} input {what}, got {x.shape[1]} "
                f"(input shape {tuple(x.shape)})"
            )

    def forward(self, x: Tensor) -> list[Tensor]:
        stages = getattr(self, "stages", None)
        if stages is None:
            raise NotImplementedError(f"{type(self).__name__} must implement forward or define stages")
        self.check_input(x)
        stem = getattr(self, "stem", None)
        x = stem(x) if stem is not None else x
        features = []
        for stage in stages:
            x = stage(x)
            features.append(x)
        return features


@dataclass
class BackboneFactory:
    """Builds fresh copies of one backbone; what a strategy receives as ``backbone``."""

    entry: Entry
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def tags(self) -> frozenset[str]:
        """Tags of the backbone these arguments build (see :meth:`mtlzoo.registry.Entry.tags_for`)."""
        return self.entry.tags_for(self.kwargs)

    def __call__(self) -> Backbone:
        backbone = self.entry.create(**self.kwargs)
        if not isinstance(getattr(backbone, "feature_info", None), FeatureInfo):
            raise InvalidArgumentError(
                f"backbone {self.entry.name!r} from {self.entry.origin} has no FeatureInfo "
                "`feature_info`; see mtlzoo.model.Backbone"
            )
        return backbone


@dataclass
class HeadFactory:
    """Builds the head of one task from the features it will see."""

    task: str
    entry: Entry
    out: int | None
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def dense(self) -> bool:
        return "dense" in self.entry.tags

    def __call__(self, feature_info: FeatureInfo) -> nn.Module:
        if self.dense and not feature_info.spatial:
            from mtlzoo.errors import IncompatibleComponentsError

            raise IncompatibleComponentsError(
                f"task {self.task!r}: head {self.entry.name!r} is a dense head and needs spatial "
                "features, but the features are vectors; use a 'linear' or 'mlp' head or a "
                "backbone tagged 'spatial'"
            )
        return self.entry.create(feature_info=feature_info, out=self.out, **self.kwargs)


def call_head(head: nn.Module, features: list[Tensor], input_size: tuple[int, ...] | None,
              target: Any = None) -> Tensor:
    """Run a head, passing the target only to heads that need it (detection)."""
    if getattr(head, "needs_targets", False):
        return head(features, input_size, targets=target)
    return head(features, input_size)


def input_size_of(x: Tensor) -> tuple[int, ...] | None:
    return tuple(x.shape[2:]) if x.dim() > 2 else None


class MTLModel(nn.Module):
    """Base class of every multi-task model a strategy builds.

    Subclasses implement ``forward(x, targets=None) -> {task: prediction}`` and keep task-specific
    modules in ``self.heads`` (a ``ModuleDict`` by task) and, if they have more, in
    ``self.task_modules`` (likewise); everything else counts as shared. Override
    :meth:`shared_parameters` / :meth:`task_parameters` when that convention does not fit.
    """

    #: True when the strategy has one shared representation that all heads read (hard sharing),
    #: so representation-level gradient methods (MGDA-UB) can use :meth:`representation_hook`.
    has_shared_representation: bool = False

    def __init__(self, task_names: list[str]) -> None:
        super().__init__()
        if not task_names:
            raise InvalidArgumentError("a multi-task model needs at least one task")
        self.task_names = list(task_names)
        self.spec: dict[str, Any] = {}
        self.provenance: dict[str, Any] = {}
        self.tasks: dict[str, Task] = {}
        self._representation_hook: Callable[[list[Tensor]], list[Tensor]] | None = None

    # -- parameters -------------------------------------------------------------------------
    def _task_modules(self, task: str) -> list[nn.Module]:
        modules = []
        for container_name in ("heads", "task_modules"):
            container = getattr(self, container_name, None)
            if isinstance(container, nn.ModuleDict) and task in container:
                modules.append(container[task])
        return modules

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        """Parameters that only ``task``'s loss trains."""
        if task not in self.task_names:
            from mtlzoo.errors import UnknownComponentError, suggestion

            raise UnknownComponentError(
                f"unknown task {task!r}.{suggestion(task, self.task_names)} Tasks: {self.task_names}"
            )
        seen: set[int] = set()
        for module in self._task_modules(task):
            for p in module.parameters():
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    yield p

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        """Trainable parameters that no single task owns."""
        owned = {id(p) for t in self.task_names for p in self.task_parameters(t)}
        for p in self.parameters():
            if p.requires_grad and id(p) not in owned:
                yield p

    def extra_losses(self) -> dict[str, Tensor]:
        """Penalties of the strategy from the last forward (soft sharing, adversarial): added to
        the weighted task losses as they are."""
        return {}

    def extra_metrics(self) -> dict[str, float]:
        """Scalars worth logging from the last forward (e.g. a discriminator's accuracy)."""
        return {}

    def param_groups(self, base_lr: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups; strategies with learning-rate multipliers override."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": base_lr}]

    # -- representation-level gradients -------------------------------------------------------
    @contextlib.contextmanager
    def representation_hook(self, hook: Callable[[list[Tensor]], list[Tensor]]) -> Iterator[None]:
        """While active, the shared representation passes through ``hook`` before the heads."""
        if not self.has_shared_representation:
            from mtlzoo.errors import IncompatibleComponentsError

            raise IncompatibleComponentsError(
                f"strategy {type(self).__name__} has no single shared representation "
                "(each task reads its own features), so representation-level gradients do not apply"
            )
        previous, self._representation_hook = self._representation_hook, hook
        try:
            yield
        finally:
            self._representation_hook = previous

    def apply_representation_hook(self, features: list[Tensor]) -> list[Tensor]:
        hook = self._representation_hook
        return features if hook is None else hook(features)

    # -- convenience ----------------------------------------------------------------------------
    def count_parameters(self) -> dict[str, int]:
        counts = {"shared": sum(p.numel() for p in self.shared_parameters())}
        for task in self.task_names:
            counts[task] = sum(p.numel() for p in self.task_parameters(task))
        counts["total"] = sum(p.numel() for p in self.parameters())
        return counts

    @torch.no_grad()
    def predict(self, x: Tensor) -> dict[str, Tensor]:
        was_training = self.training
        self.eval()
        try:
            return self(x)
        finally:
            self.train(was_training)
