"""A testing kit for plugin authors (and for mtlzoo's own tests).

Opt in from a ``conftest.py``::

    pytest_plugins = ["mtlzoo.testing"]

Fixtures: ``zoo`` (a fresh, empty :class:`~mtlzoo.registry.Zoo` that never scans entry points).
Context manager: :func:`registered` adds a plugin for the duration of a ``with`` block.
Contract checkers, one line each: :func:`check_backbone`, :func:`check_head`,
:func:`check_strategy`, :func:`check_task`. They raise ``AssertionError`` naming the broken rule.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from mtlzoo.model import Backbone, FeatureInfo, MTLModel, input_size_of
from mtlzoo.registry import PluginInfo, Zoo
from mtlzoo.task import HIGHER, LOWER, Task

__all__ = ["check_backbone", "check_head", "check_strategy", "check_task", "registered", "zoo"]


@pytest.fixture
def zoo() -> Zoo:
    """A fresh, empty zoo; fill it with ``zoo.add_plugin(module)``."""
    return Zoo()


@contextlib.contextmanager
def registered(plugin: object, name: str | None = None, *, zoo: Zoo | None = None,
               distribution: str | None = "test") -> Iterator[PluginInfo]:
    """Register ``plugin`` (a module or object with ``@hookimpl`` functions) in ``zoo`` (default:
    the process-wide zoo) for the duration of the block, then remove everything it added."""
    if zoo is None:
        from mtlzoo.plugins import default_zoo

        zoo = default_zoo()
    name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
    info = zoo.add_plugin(plugin, name, distribution=distribution)
    try:
        yield info
    finally:
        for registry in zoo.registries.values():
            registry.remove_plugin(name)
        zoo.plugins.pop(name, None)


def _input_for(backbone: Backbone, batch: int, size: int) -> Tensor:
    if backbone.input_rank == 2:
        return torch.randn(batch, backbone.in_channels or 8)
    return torch.randn(batch, backbone.in_channels or 3, size, size)


def check_backbone(backbone: Backbone, x: Tensor | None = None, *, tags: frozenset[str] | set[str] = frozenset(),
                   size: int = 32) -> list[Tensor]:
    """Forward/backward, features match ``feature_info``; with ``stages`` in ``tags``, running
    ``stem`` then ``stages`` reproduces ``forward``."""
    assert isinstance(backbone, Backbone), f"{type(backbone).__name__} is not a mtlzoo.model.Backbone"
    info = backbone.feature_info
    assert isinstance(info, FeatureInfo), "feature_info must be a FeatureInfo"
    x = _input_for(backbone, 2, size) if x is None else x
    backbone.eval()
    features = backbone(x)
    assert isinstance(features, list) and len(features) == len(info), (
        f"forward must return a list of {len(info)} tensors (one per feature_info level), got "
        f"{type(features).__name__} of length {len(features) if isinstance(features, list) else '?'}"
    )
    for level, (f, channels, reduction) in enumerate(zip(features, info.channels, info.reductions)):
        assert f.shape[0] == x.shape[0], f"level {level}: batch dimension changed"
        assert f.shape[1] == channels, f"level {level}: {f.shape[1]} channels, feature_info says {channels}"
        if info.spatial:
            assert f.dim() == 4, f"level {level}: spatial features must be [B, C, H, W], got {tuple(f.shape)}"
            expected = math.ceil(x.shape[-1] / reduction)
            assert abs(f.shape[-1] - expected) <= 1, (
                f"level {level}: width {f.shape[-1]} does not match reduction {reduction} of {x.shape[-1]}"
            )
        else:
            assert f.dim() == 2, f"level {level}: vector features must be [B, C], got {tuple(f.shape)}"
    if "stages" in tags:
        stages, stem = getattr(backbone, "stages", None), getattr(backbone, "stem", None)
        assert stages is not None and len(stages) == len(info), (
            "a backbone tagged 'stages' needs `stages` with one module per feature level"
        )
        with torch.no_grad():
            h = stem(x) if stem is not None else x
            for level, stage in enumerate(stages):
                h = stage(h)
                torch.testing.assert_close(h, features[level].detach(), msg=f"stage {level} differs from forward")
    if "spatial" in tags:
        assert info.spatial, "tagged 'spatial' but feature_info.spatial is False"
    backbone.train()
    out = backbone(x)
    sum(f.float().mean() for f in out).backward()
    assert any(p.grad is not None for p in backbone.parameters()), "no parameter received a gradient"
    return features


def check_head(factory: Callable[..., nn.Module], *, out: int = 3,
               feature_info: FeatureInfo | None = None, input_size: tuple[int, int] | None = (32, 32),
               **kwargs: Any) -> Tensor:
    """Build a head from ``feature_info`` and run it on matching random features."""
    info = feature_info or FeatureInfo((8, 16), (2, 4), spatial=True)
    head = factory(feature_info=info, out=out, **kwargs)
    assert isinstance(head, nn.Module), "a head factory must return an nn.Module"
    if info.spatial:
        h, w = input_size or (32, 32)
        features = [torch.randn(2, c, max(h // r, 1), max(w // r, 1)) for c, r in zip(info.channels, info.reductions)]
    else:
        input_size = None
        features = [torch.randn(2, c) for c in info.channels]
    pred = head(features, input_size)
    assert isinstance(pred, Tensor), "a head must return a Tensor"
    assert pred.shape[0] == 2, f"the head changed the batch dimension: {tuple(pred.shape)}"
    assert pred.shape[1] == out, f"expected {out} outputs on dim 1, got {tuple(pred.shape)}"
    if pred.dim() == 4:
        assert tuple(pred.shape[2:]) == tuple(input_size), "a dense head must predict at the input size"
    pred.float().mean().backward()
    return pred


def check_task(task: Task, pred: Tensor | None = None) -> dict[str, float]:
    """Loss is a finite scalar with a gradient, masking everything gives zero, metrics have
    directions and compute on one batch."""
    assert isinstance(task, Task), f"{type(task).__name__} is not a mtlzoo.task.Task"
    if pred is None:
        shape = (4, task.out or 1, 8, 8) if task.dense else (4, task.out or 1)
        pred = torch.randn(*shape)
    pred = pred.clone().requires_grad_(True)
    target = task.example_target(pred, torch.Generator().manual_seed(0))
    loss = task.loss(pred, target)
    assert isinstance(loss, Tensor) and loss.dim() == 0, "loss must be a scalar tensor"
    assert torch.isfinite(loss), f"loss is not finite: {loss}"
    loss.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all(), "loss must give a finite gradient"
    none = task.loss(pred, target, mask=torch.zeros(pred.shape[0], dtype=torch.bool))
    assert float(none.detach()) == 0.0, "with every sample masked out the loss must be 0"
    metric = task.metrics()
    assert metric.directions and set(metric.directions.values()) <= {HIGHER, LOWER}, (
        "metrics need a direction each (mtlzoo.task.HIGHER or LOWER)"
    )
    metric.update(pred.detach(), target)
    values = metric.compute()
    assert set(values) == set(metric.directions), (
        f"compute() returned {sorted(values)} but directions name {sorted(metric.directions)}"
    )
    metric.reset()
    return values


def check_strategy(model: MTLModel, x: Tensor | None = None, *, size: int = 32) -> dict[str, Tensor]:
    """Forward gives one prediction per task, parameters are partitioned (shared and per-task sets
    are disjoint and cover every trainable parameter), param groups hold each parameter once,
    extra losses are scalars, and a backward through everything reaches the shared parameters."""
    assert isinstance(model, MTLModel), f"{type(model).__name__} is not an MTLModel"
    if x is None:
        backbone = next((m for m in model.modules() if isinstance(m, Backbone)), None)
        assert backbone is not None, "pass an input x: no Backbone found inside the model"
        x = _input_for(backbone, 2, size)
    model.train()
    outputs = model(x)
    assert set(outputs) == set(model.task_names), (
        f"forward returned {sorted(outputs)}, expected the tasks {sorted(model.task_names)}"
    )
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    shared = [id(p) for p in model.shared_parameters()]
    assert len(shared) == len(set(shared)), "shared_parameters() yields a parameter twice"
    owned: dict[int, str] = {}
    for task in model.task_names:
        for p in model.task_parameters(task):
            assert id(p) not in owned, f"a parameter belongs to both {owned[id(p)]!r} and {task!r}"
            assert id(p) not in set(shared), f"a parameter of task {task!r} is also shared"
            owned[id(p)] = task
    assert set(shared) | set(owned) == trainable, (
        f"{len(trainable - set(shared) - set(owned))} trainable parameter(s) are neither shared nor task-specific"
    )
    grouped = [id(p) for g in model.param_groups(1e-3) for p in g["params"]]
    assert len(grouped) == len(set(grouped)) and set(grouped) == trainable, (
        "param_groups() must hold every trainable parameter exactly once"
    )
    extra = model.extra_losses()
    for name, value in extra.items():
        assert isinstance(value, Tensor) and value.dim() == 0 and torch.isfinite(value), (
            f"extra loss {name!r} must be a finite scalar tensor"
        )
    def leaves(value: Any) -> list[Tensor]:  # detection heads return dicts of losses in training
        if isinstance(value, Tensor):
            return [value]
        if isinstance(value, dict):
            return [t for v in value.values() for t in leaves(v)]
        if isinstance(value, (list, tuple)):
            return [t for v in value for t in leaves(v)]
        return []

    total = sum(t.float().mean() for o in outputs.values() for t in leaves(o) if t.is_floating_point())
    total = total + sum(extra.values())
    model.zero_grad(set_to_none=True)
    total.backward()
    shared_params = list(model.shared_parameters())
    if shared_params:
        assert any(p.grad is not None for p in shared_params), "no shared parameter received a gradient"
    for task in model.task_names:
        params = list(model.task_parameters(task))
        if params:
            assert any(p.grad is not None for p in params), f"no parameter of task {task!r} received a gradient"
    model.eval()
    with torch.no_grad():
        evaluated = model(x)
    assert set(evaluated) == set(model.task_names)
    if input_size_of(x) is not None:
        for task, out in evaluated.items():
            if isinstance(out, Tensor) and out.dim() == 4:
                assert tuple(out.shape[2:]) == input_size_of(x), f"dense task {task!r} is not at the input size"
    return outputs
