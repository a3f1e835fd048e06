"""The functional API: apply a gradient-based weighting to an explicit per-task gradient matrix.

    >>> import torch, mtlzoo
    >>> grads = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])   # two task gradients that conflict
    >>> mtlzoo.aggregate("pcgrad", grads)
    tensor([0.5000, 1.5000])

For research code and tests: it builds the registered weighting for ``T = grads.shape[0]`` tasks
with the given keyword arguments and returns its update ``[P]``. A name builds a fresh weighting
on every call, so stateful methods (GradVac's cosine targets, Nash-MTL's warm start, the random
order of PCGrad) start from scratch each time; pass a weighting instance to keep its state.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtlzoo.errors import InvalidArgumentError
from mtlzoo.registry import Zoo
from mtlzoo.weighting import Weighting

GRADIENT_NEEDS = ("gram", "grads")


def gradient_methods(zoo: Zoo | None = None) -> list[str]:
    """Registered weightings that act on per-task gradients: a factory class whose ``needs`` is gram
    or grads, or an entry tagged ``gradient`` (function factories)."""
    from mtlzoo.plugins import default_zoo

    zoo = zoo or default_zoo()
    return [e.name for e in zoo.weightings.list()
            if getattr(e.factory, "needs", None) in GRADIENT_NEEDS or "gradient" in e.tags]


def _check_inputs(grads: Any, losses: Any) -> None:
    if not isinstance(grads, Tensor) or grads.dim() != 2 or grads.shape[0] < 1:
        shape = tuple(grads.shape) if isinstance(grads, Tensor) else type(grads).__name__
        raise InvalidArgumentError(
            f"aggregate() needs the per-task gradients as a 2-D tensor [T, P] (one row per task), got {shape}; "
            "flatten each task's gradient and stack them: torch.stack([g.flatten() for g in task_grads])"
        )
    if not grads.is_floating_point():
        raise InvalidArgumentError(f"aggregate() needs floating-point gradients, got dtype {grads.dtype}")
    if losses is not None and (not isinstance(losses, Tensor) or losses.numel() != grads.shape[0]):
        got = tuple(losses.shape) if isinstance(losses, Tensor) else type(losses).__name__
        raise InvalidArgumentError(
            f"aggregate(): losses must be a tensor with one value per task ({grads.shape[0]}), got {got}"
        )
    bad = ~torch.isfinite(grads).all(dim=1)  # a host sync: fine here, this is not the training hot path
    if bool(bad.any()):
        rows = [int(i) for i in torch.nonzero(bad).flatten()]
        raise InvalidArgumentError(f"aggregate(): the gradients of task(s) {rows} contain NaN or inf")


def aggregate(name: str | Weighting, grads: Tensor, losses: Tensor | None = None, *, zoo: Zoo | None = None,
              **kwargs: Any) -> Tensor:
    """The update ``[P]`` that gradient-based weighting ``name`` makes of ``grads`` ``[T, P]``.

    ``name`` is a registered weighting (``"mgda"``, ``"pcgrad"``, ``"cagrad"``, ...) built with
    ``num_tasks=T`` and ``kwargs`` (unknown names and arguments raise with close matches), or an
    already built :class:`~mtlzoo.weighting.Weighting`. ``losses`` ``[T]`` is needed only by
    methods that use them (MGDA's ``loss`` normalisation). Loss-based weightings (``ew``, ``uw``,
    ...) have no gradient update and are rejected.
    """
    from mtlzoo.plugins import default_zoo

    _check_inputs(grads, losses)
    num_tasks = grads.shape[0]
    if isinstance(name, Weighting):
        if kwargs:
            raise InvalidArgumentError(
                f"aggregate(): keyword arguments {sorted(kwargs)} apply only when the weighting is given by name; "
                "set them when building the instance"
            )
        weighting = name
        label = weighting.name or type(weighting).__name__
        if weighting.num_tasks != num_tasks:
            raise InvalidArgumentError(
                f"aggregate(): weighting {label!r} was built for {weighting.num_tasks} tasks, but grads has "
                f"{num_tasks} rows"
            )
    else:
        if "num_tasks" in kwargs:
            raise InvalidArgumentError(
                "aggregate(): num_tasks is taken from grads.shape[0]; do not pass it"
            )
        zoo = zoo or default_zoo()
        entry = zoo.weightings.get(name)
        label = entry.name
        if getattr(entry.factory, "needs", None) not in (None, *GRADIENT_NEEDS):
            _reject_loss_based(label, entry.factory.needs, zoo)
        weighting = entry.create(num_tasks=num_tasks, **kwargs)
        if not isinstance(weighting, Weighting):
            raise InvalidArgumentError(f"weighting {label!r} built a {type(weighting).__name__}, not a Weighting")
    if weighting.needs not in GRADIENT_NEEDS:
        _reject_loss_based(label, weighting.needs, zoo)
    weighting.to(grads.device)
    return weighting.combine_grads(grads, losses)


def _reject_loss_based(label: str, needs: str, zoo: Zoo | None) -> None:
    raise InvalidArgumentError(
        f"aggregate() applies gradient-based methods to a gradient matrix, but weighting {label!r} works on "
        f"the task losses (needs={needs!r}) and has no gradient update. Gradient-based methods: "
        f"{', '.join(gradient_methods(zoo))}"
    )
