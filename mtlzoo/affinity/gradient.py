"""Gradient-based (model-based) task affinity: the cosine of per-task gradients on the shared parameters.

For tasks i and j at step t, with ``g_k = ∇_{θ_s} L_k(X_t)`` the gradient of task k's loss w.r.t.
the shared parameters θ_s::

    cos_ij^t = <g_i, g_j> / (‖g_i‖ ‖g_j‖) = G_ij / sqrt(G_ii G_jj),   G = the Gram matrix of the g_k

and the affinity is the mean of ``cos_ij^t`` over the steps where it was measured. Positive: a
step on one task also descends the other; negative: the tasks conflict (the quantity PCGrad,
Yu et al., NeurIPS 2020, projects away, and GradVac, Wang et al., ICLR 2021, tracks). Fifty et
al. (TAG, NeurIPS 2021) compare it with their lookahead affinity as the "CS" baseline, measured
every step.

Where the run's weighting already takes the Gram matrix (``needs == "gram"``: MGDA, CAGrad,
PCGrad, Nash-MTL, ...), :class:`GradientCosine` reads it from the engine's output at no cost;
otherwise :func:`task_gradients` takes the per-task gradients itself every ``every`` steps.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mtlzoo.affinity.matrix import AffinityMatrix
from mtlzoo.errors import IncompatibleComponentsError, InvalidArgumentError


def task_losses(model: Any, batches: Sequence[Mapping[str, Any]], task_names: Sequence[str] | None = None
                ) -> dict[str, Tensor]:
    """Each task's loss on a step's batches (one batch, or one per task for multi-input data),
    summed over the batches as the trainer does; a task labelled in no batch gets a zero that
    keeps the graph. The strategy's penalties (``extra_losses``) are left out: affinity is about
    the tasks. The forward runs in full precision and outside the engine's recording, so the
    gradients reach the shared parameters by plain autograd."""
    names = list(task_names or model.task_names)
    losses: dict[str, Tensor] = {}
    for batch in batches:
        preds = model(batch["input"], batch["targets"])
        for task in names:
            if task not in batch["targets"]:
                continue
            masks = batch.get("masks") or {}
            loss = model.tasks[task].loss(preds[task], batch["targets"][task], masks.get(task)).float()
            losses[task] = losses[task] + loss if task in losses else loss
    for task in names:
        if task not in losses:
            owned = list(model.task_parameters(task))
            device = next(model.parameters()).device
            losses[task] = sum((p.sum() * 0.0 for p in owned[1:]), owned[0].sum() * 0.0) if owned \
                else torch.zeros((), device=device)
    return losses


def shared_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The model's trainable shared parameters; an error naming the alternatives when it has none."""
    params = [p for p in model.shared_parameters() if p.requires_grad]
    if not params:
        raise IncompatibleComponentsError(
            f"strategy {type(model).__name__} has no shared parameters (every parameter belongs to one task, as "
            "in soft sharing), so gradient and lookahead affinity, which are defined on the shared parameters, do "
            "not apply; use data or performance affinity, or a strategy that shares a trunk (hard, mtan)")
    return params


def task_gradients(losses: Mapping[str, Tensor], params: Sequence[nn.Parameter], task_names: Sequence[str]
                   ) -> Tensor:
    """``G [T, P]``: row k is ``∇_params L_k`` flattened (zeros where a parameter is not reached).
    The graph is kept, so the caller may take more gradients from the same forward."""
    rows = []
    for task in task_names:
        loss = losses[task]
        if not loss.requires_grad:
            rows.append(torch.cat([torch.zeros(p.numel(), device=p.device) for p in params]))
            continue
        grads = torch.autograd.grad(loss, list(params), retain_graph=True, allow_unused=True)
        rows.append(torch.cat([torch.zeros(p.numel(), device=p.device) if g is None else g.reshape(-1).float()
                               for g, p in zip(grads, params)]))
    return torch.stack(rows)


def cosine_from_gram(gram: Tensor) -> Tensor:
    """``G_ij / sqrt(G_ii G_jj)``; NaN in the rows and columns of a zero gradient (undefined)."""
    gram = gram.detach().double()
    norms = gram.diagonal().clamp_min(0).sqrt()
    denom = norms[:, None] * norms[None, :]
    cos = gram / denom
    cos = torch.where(denom > 0, cos, torch.full_like(cos, float("nan")))
    return cos.clamp(-1.0, 1.0)


@contextlib.contextmanager
def frozen_state(model: nn.Module, seed: int, device: torch.device) -> Iterator[None]:
    """Run a measurement without side effects on training: the random state (dropout masks) is
    forked and seeded with ``seed`` (so repeated forwards draw the same masks), and the buffers
    (BatchNorm running statistics) are restored afterwards."""
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield
    finally:
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)


class GradientCosine:
    """Accumulates the per-step cosine matrix and averages it; feed it a Gram matrix
    (:meth:`add_gram`) or the per-task gradients (:meth:`add_grads`). An entry undefined at a
    step (a task with a zero gradient, e.g. no label in the batch) is left out of that entry's mean."""

    def __init__(self, task_names: Sequence[str]) -> None:
        self.task_names = list(task_names)
        T = len(self.task_names)
        self._sum = torch.zeros(T, T, dtype=torch.float64)
        self._count = torch.zeros(T, T, dtype=torch.int64)
        self.sources: set[str] = set()

    def add_gram(self, gram: Tensor, source: str = "engine") -> None:
        T = len(self.task_names)
        if tuple(gram.shape) != (T, T):
            raise InvalidArgumentError(f"gradient affinity: the Gram matrix must be {T} x {T}, got {tuple(gram.shape)}")
        cos = cosine_from_gram(gram).cpu()
        ok = torch.isfinite(cos)
        self._sum += torch.where(ok, cos, torch.zeros_like(cos))
        self._count += ok.long()
        self.sources.add(source)

    def add_grads(self, grads: Tensor) -> None:
        grads = grads.detach().double()
        self.add_gram(grads @ grads.T, source="autograd")

    @property
    def steps(self) -> int:
        return int(self._count.max()) if self._count.numel() else 0

    def result(self, meta: Mapping[str, Any] | None = None) -> AffinityMatrix:
        count = self._count.numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            values = np.where(count > 0, self._sum.numpy() / np.maximum(count, 1), np.nan)
        notes = []
        if not count.any():
            notes.append("no step was measured (too few steps for the interval?)")
        missing = [(a, b) for i, a in enumerate(self.task_names) for j, b in enumerate(self.task_names)
                   if count[i, j] == 0 and i < j]
        if missing and count.any():
            notes.append(f"never measured (a task's gradient was zero at every measured step): {missing}")
        return AffinityMatrix(kind="gradient", tasks=self.task_names, values=values, symmetric=True, counts=count,
                              notes=notes, meta={"sources": sorted(self.sources), **dict(meta or {})})
