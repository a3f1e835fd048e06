"""Lookahead task affinity: TAG, Fifty, Amid, Zhao, Yu, Anil & Finn, "Efficiently Identifying Task
Groupings for Multi-Task Learning", NeurIPS 2021 (Section 3, the lookahead inter-task affinity).

At step t, on the step's batch X_t, take a plain SGD step on the shared parameters θ_s with the
gradient of task i alone, then see how task j's loss changed (the heads θ_j stay where they are)::

    θ_s^{t+1|i} = θ_s^t − η ∇_{θ_s} L_i(X_t, θ_s^t, θ_i^t)
    Z^t_{i→j}   = 1 − L_j(X_t, θ_s^{t+1|i}, θ_j^t) / L_j(X_t, θ_s^t, θ_j^t)

η is the optimiser's current learning rate for each parameter (its parameter group's ``lr``).
Z > 0: a step on i lowers j's loss (i helps j); Z < 0: it raises it. The matrix is asymmetric
(i→j is not j→i), and its diagonal is each task's own one-step improvement. The affinity is the
average of Z^t over the measured steps (TAG: every 10 steps, the default here). TAG's released
code also divides Z by the learning rate and, on momentum runs, takes the momentum step; both
change the scale only, and this follows the paper's plain-SGD definition.

A measurement costs T backward passes (the per-task gradients, which the gradient cosine reuses
at the same step) and T + 1 forward passes; θ_s is copied before and restored bit for bit after,
the random state is forked (the reference forward and every lookahead forward draw the same
dropout masks) and the buffers (BatchNorm running statistics) are restored, so measuring does not
change the training trajectory.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mtlzoo.affinity.gradient import frozen_state, shared_parameters, task_gradients, task_losses
from mtlzoo.affinity.matrix import AffinityMatrix
from mtlzoo.errors import InvalidArgumentError


def parameter_lrs(optimizer: torch.optim.Optimizer, params: Sequence[nn.Parameter]) -> list[float]:
    """The current learning rate of each parameter (its optimiser group's ``lr``; parameters the
    optimiser does not train get 0)."""
    by_id: dict[int, float] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            by_id[id(p)] = float(group["lr"])
    return [by_id.get(id(p), 0.0) for p in params]


class Lookahead:
    """Measures and averages TAG's lookahead affinity ``Z_{i→j}`` on a model (see the module docstring).

    ``lr``: a fixed lookahead step size for every shared parameter (default: pass the current
    learning rates to :meth:`measure`, as TAG does)."""

    def __init__(self, model: nn.Module, task_names: Sequence[str] | None = None, lr: float | None = None) -> None:
        self.model = model
        self.task_names = list(task_names or model.task_names)
        if lr is not None and (not isinstance(lr, (int, float)) or isinstance(lr, bool) or lr <= 0):
            raise InvalidArgumentError(f"lookahead lr must be a positive number, got {lr!r}")
        self.lr = lr
        self.params = shared_parameters(model)
        T = len(self.task_names)
        self._sum = torch.zeros(T, T, dtype=torch.float64)
        self._count = torch.zeros(T, T, dtype=torch.int64)
        self.measurements = 0
        self.step_sizes: list[float] = []

    def _lrs(self, lrs: float | Sequence[float] | None) -> list[float]:
        if self.lr is not None:
            return [float(self.lr)] * len(self.params)
        if lrs is None:
            raise InvalidArgumentError("lookahead affinity needs the learning rate: pass lrs= (the optimiser's, "
                                       "see parameter_lrs) or build Lookahead(..., lr=...)")
        if isinstance(lrs, (int, float)):
            return [float(lrs)] * len(self.params)
        lrs = [float(v) for v in lrs]
        if len(lrs) != len(self.params):
            raise InvalidArgumentError(f"lookahead: {len(lrs)} learning rates for {len(self.params)} shared parameters")
        return lrs

    def measure(self, batches: Sequence[Mapping[str, Any]], lrs: float | Sequence[float] | None = None, *,
                seed: int = 0) -> tuple[Tensor, Tensor]:
        """One measurement on a step's batches at the current parameters. Returns ``Z [T, T]`` of
        this step (NaN where undefined) and the per-task gradients ``G [T, P]`` it took (for the
        gradient cosine of the same step). The model's parameters, buffers and random state are
        as they were on return."""
        step_lrs = self._lrs(lrs)
        model, names, params = self.model, self.task_names, self.params
        device = params[0].device
        T = len(names)
        with frozen_state(model, seed, device):
            losses = task_losses(model, batches, names)
            G = task_gradients(losses, params, names)
        base = torch.stack([losses[t].detach().double() for t in names])
        Z = torch.full((T, T), float("nan"), dtype=torch.float64)
        saved = [p.detach().clone() for p in params]
        sizes = [p.numel() for p in params]
        try:
            with torch.no_grad():
                for i in range(T):
                    if not bool(G[i].any()):
                        continue  # no gradient (no label in this batch): the step is not defined
                    for p, s, g, lr in zip(params, saved, G[i].split(sizes), step_lrs):
                        p.copy_(s - lr * g.view_as(p).to(p.dtype))
                    with frozen_state(model, seed, device):
                        after = task_losses(model, batches, names)
                    new = torch.stack([after[t].detach().double() for t in names])
                    row = 1.0 - new / base
                    Z[i] = torch.where(base > 0, row, torch.full_like(row, float("nan"))).cpu()
        finally:
            with torch.no_grad():
                for p, s in zip(params, saved):
                    p.copy_(s)
        ok = torch.isfinite(Z)
        self._sum += torch.where(ok, Z, torch.zeros_like(Z))
        self._count += ok.long()
        self.measurements += 1
        self.step_sizes.append(float(np.mean(step_lrs)))
        return Z, G

    def result(self, meta: Mapping[str, Any] | None = None) -> AffinityMatrix:
        count = self._count.numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            values = np.where(count > 0, self._sum.numpy() / np.maximum(count, 1), np.nan)
        notes = []
        if self.measurements == 0:
            notes.append("no step was measured (too few steps for the interval?)")
        info = {"measurements": self.measurements,
                "mean_step_size": float(np.mean(self.step_sizes)) if self.step_sizes else math.nan,
                "step": "plain SGD on the shared parameters with the optimiser's current learning rate"
                if self.lr is None else f"plain SGD on the shared parameters with lr={self.lr}"}
        return AffinityMatrix(kind="lookahead", tasks=self.task_names, values=values, symmetric=False, counts=count,
                              notes=notes, meta={**info, **dict(meta or {})})
