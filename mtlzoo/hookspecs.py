"""The hooks a plugin implements: one per kind of component.

A plugin is a module (or any object) with functions decorated ``@mtlzoo.hookimpl`` whose names
are the hook names below. Each hook receives one argument, ``register``, and calls it once per
component::

    from mtlzoo import hookimpl

    @hookimpl
    def mtlzoo_register_strategies(register):
        register("cross_stitch", CrossStitch, requires={"stages"},
                 paper="Misra et al., CVPR 2016", summary="Learned linear mixing of task columns")

``register(name, factory, *, aliases=(), tags=(), requires=(), summary=None, paper=None,
replaced_by=None)``:

``name``
    snake_case; unique within its kind across all installed plugins.
``factory``
    a callable returning the component; its keyword arguments are what a spec may pass.
``aliases``
    other names that resolve to this entry (``resnet50`` for ``timm(model=resnet50)``).
``tags``
    capabilities the component offers (a backbone's ``stages``, ``spatial``; a head's ``dense``).
``requires``
    tags the component needs from its partner (a strategy's needs from the backbone).
``summary``, ``paper``
    one line for ``mtlzoo list`` and the citation for ``mtlzoo info``.
``replaced_by``
    marks the name deprecated: using it warns and resolves to the named replacement (or to this
    entry's own factory when the replacement is not registered).

A factory may carry a ``tags_for(**kwargs)`` attribute when its tags depend on its arguments;
the builder checks compatibility against ``tags ∩ factory.tags_for(**kwargs)``.

Plugins never see each other's entries. The host records which plugin, distribution and version
registered each name. The contract each kind of factory must meet is in :mod:`mtlzoo.model`
(backbones, heads, strategies), :mod:`mtlzoo.task` (tasks); weightings and datasets document
theirs in the pages that introduce them.
"""

from __future__ import annotations

from typing import Protocol

import pluggy

hookspec = pluggy.HookspecMarker("mtlzoo")
hookimpl = pluggy.HookimplMarker("mtlzoo")


class Register(Protocol):
    """The ``register`` callable each hook receives."""

    def __call__(self, name: str, factory: object, *, aliases: tuple[str, ...] = (),
                 tags: tuple[str, ...] = (), requires: tuple[str, ...] = (),
                 summary: str | None = None, paper: str | None = None,
                 replaced_by: str | None = None) -> None: ...


@hookspec
def mtlzoo_register_backbones(register: Register) -> None:
    """Register backbones: factories returning an :class:`mtlzoo.model.Backbone`.

    Tag a backbone ``spatial`` when its features are maps ``[B, C, H, W]`` and ``stages`` when it
    exposes ``stem`` and ``stages`` for strategies that act between stages.
    """


@hookspec
def mtlzoo_register_strategies(register: Register) -> None:
    """Register sharing strategies: ``factory(backbone, heads, **hyper) -> MTLModel``.

    ``backbone`` is a :class:`mtlzoo.model.BackboneFactory` (call it for a fresh copy), ``heads``
    maps each task name to a :class:`mtlzoo.model.HeadFactory`. ``requires`` lists the backbone
    tags the strategy needs.
    """


@hookspec
def mtlzoo_register_heads(register: Register) -> None:
    """Register task heads: ``factory(feature_info, out, **kw) -> nn.Module``.

    The module maps ``(features, input_size)`` to a prediction. Tag heads that need spatial
    features ``dense``.
    """


@hookspec
def mtlzoo_register_tasks(register: Register) -> None:
    """Register task presets: ``factory(out=None, **kw) -> mtlzoo.task.Task``."""


@hookspec
def mtlzoo_register_weightings(register: Register) -> None:
    """Register loss weightings and gradient-manipulation methods."""


@hookspec
def mtlzoo_register_datasets(register: Register) -> None:
    """Register datasets: ``factory(split="train", **kw)`` returning a dataset with ``.tasks``."""


#: The hook names, in the order :class:`mtlzoo.registry.Zoo` keeps its kinds.
HOOKS: dict[str, str] = {
    "backbone": "mtlzoo_register_backbones",
    "strategy": "mtlzoo_register_strategies",
    "head": "mtlzoo_register_heads",
    "task": "mtlzoo_register_tasks",
    "weighting": "mtlzoo_register_weightings",
    "dataset": "mtlzoo_register_datasets",
}
