"""The task contract: a loss with masking, metrics with directions, a default head.

A task preset (``cls``, ``seg``, ...) is a factory registered with ``mtlzoo_register_tasks`` that
returns a :class:`Task`. Targets arrive batched; ``mask`` (bool ``[B]``) marks the samples that
carry a label for this task, so partially labelled data trains without fake labels. Dense tasks
also mask invalid pixels themselves (ignore index, zero depth, zero normals).

Metrics accumulate sufficient statistics (sums, counts, confusion matrices) in tensors, so an
epoch's value is exact (never a mean of per-batch ratios) and ``sync()`` all-reduces them across
``torch.distributed`` ranks with a plain sum.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtlzoo.errors import InvalidArgumentError

HIGHER = 1  #: metric direction: higher is better
LOWER = -1  #: metric direction: lower is better


class Metric:
    """Accumulates over batches. Subclasses keep their state in tensors listed by :meth:`state`."""

    #: metric name -> HIGHER or LOWER
    directions: dict[str, int] = {}

    def reset(self) -> None:
        raise NotImplementedError

    def update(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        raise NotImplementedError

    def compute(self) -> dict[str, float]:
        raise NotImplementedError

    def state(self) -> list[Tensor]:
        """Tensors that are summed across ranks by :meth:`sync`."""
        return []

    def sync(self) -> None:
        """All-reduce (sum) the state across ``torch.distributed`` ranks, if initialised."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        for tensor in self.state():
            torch.distributed.all_reduce(tensor)


class Task:
    """One task of a multi-task model. Subclasses implement :meth:`loss` and :meth:`metrics`."""

    #: preset name it was registered under
    preset: str = "task"
    #: head used when the spec names none
    default_head: str = "linear"
    #: predictions are per pixel (needs spatial features and a dense head)
    dense: bool = False
    #: tags the task's head must carry (the ``detect`` task needs a head tagged ``detection``)
    head_tags: frozenset[str] = frozenset()

    def __init__(self, out: int | None = None) -> None:
        if out is not None and (isinstance(out, bool) or not isinstance(out, int) or out < 1):
            raise InvalidArgumentError(f"task {self.preset!r}: out must be a positive integer, got {out!r}")
        self.out = out
        self.name = self.preset  # the builder renames it to the key used in the spec

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, out={self.out})"

    def loss(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        """Scalar loss averaged over labelled samples (and valid pixels); 0 with no label."""
        raise NotImplementedError

    def metrics(self) -> Metric:
        """A fresh metric accumulator."""
        raise NotImplementedError

    @property
    def directions(self) -> dict[str, int]:
        return dict(self.metrics().directions)

    def example_target(self, pred: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """A random valid target for a prediction of this shape (for contract tests)."""
        raise NotImplementedError

    def error(self, message: str) -> InvalidArgumentError:
        return InvalidArgumentError(f"task {self.name!r} ({self.preset}): {message}")

    def config(self) -> dict[str, Any]:
        return {"out": self.out}


def select(mask: Tensor | None, *tensors: Tensor) -> tuple[Tensor, ...]:
    """Keep the samples whose ``mask`` is true (all of them when ``mask`` is None)."""
    if mask is None:
        return tensors
    mask = mask.to(device=tensors[0].device, dtype=torch.bool)
    return tuple(t[mask] for t in tensors)


def zero_loss(pred: Tensor) -> Tensor:
    """A zero that keeps the graph connected (so DDP and autograd see the head used)."""
    return pred.sum() * 0.0
