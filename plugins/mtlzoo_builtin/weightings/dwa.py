"""``dwa``: Dynamic Weight Average (Liu, Johns & Davison, "End-to-End Multi-Task Learning with
Attention", CVPR 2019, Eq. 7).

With ``L_k(t)`` the average training loss of task k in epoch t:

    w_k(t−1) = L_k(t−1) / L_k(t−2)
    λ_k(t)   = T_tasks · exp(w_k(t−1)/τ) / Σ_i exp(w_i(t−1)/τ)        (τ = ``temperature`` = 2)

and ``λ_k = 1`` for the first two epochs; the objective is ``Σ_k λ_k L_k`` (``reduction="sum"``) or
its mean. A task whose loss falls more slowly gets more weight. The epoch averages arrive through
:meth:`on_epoch_end` (the engine's ``on_epoch_end`` averages them across ranks); the last two are
kept in ``state_dict``. The authors advise ``τ`` between 0.5 and 5.

``window=n`` switches to the per-iteration variant of the Nash-MTL code base: the ratio compares the
mean loss of the last ``n`` iterations with that of the ``n`` before, and the weights are updated
every step. Here the weights stay 1 until ``2n`` iterations have been seen (the Nash-MTL code
starts from a buffer of ones instead).

Everything is computed on the device with ``torch.where``; no step waits for the host.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlzoo import hookimpl
from mtlzoo.errors import InvalidArgumentError
from mtlzoo.weighting import Weighting


class DynamicWeightAverage(Weighting):
    """Weights from the rate of change of each task's loss (Liu et al., CVPR 2019)."""

    name = "dwa"

    def __init__(self, num_tasks: int, temperature: float = 2.0, window: int | None = None,
                 reduction: str = "sum") -> None:
        super().__init__(num_tasks)
        if not temperature > 0:
            raise InvalidArgumentError(f"weighting 'dwa': temperature must be > 0, got {temperature}")
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
            raise InvalidArgumentError(f"weighting 'dwa': window must be a positive integer or None, got {window!r}")
        if reduction not in ("sum", "mean"):
            raise InvalidArgumentError(f"weighting 'dwa': reduction must be 'sum' or 'mean', got {reduction!r}")
        self.temperature, self.window, self.reduction = float(temperature), window, reduction
        rows = 2 if window is None else 2 * window
        #: epoch mode: rows 0 and 1 are L(t−2) and L(t−1); window mode: a ring of the last 2n losses
        self.register_buffer("history", torch.zeros(rows, num_tasks))
        #: epochs (or iterations) recorded so far
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def weights(self) -> Tensor:
        """``λ [T]`` from the history (ones until two epochs / ``2n`` iterations are recorded)."""
        if self.window is None:
            older, newer, needed = self.history[0], self.history[1], 2
        else:
            n = self.window
            # the ring slot written last is (count − 1) mod 2n; the newer half is the n before it
            ages = torch.arange(2 * n, device=self.history.device)
            slots = (self.count - 1 - ages) % (2 * n)
            newer, older, needed = self.history[slots[:n]].mean(0), self.history[slots[n:]].mean(0), 2 * n
        ratio = newer / older
        lam = self.num_tasks * torch.softmax(ratio / self.temperature, dim=0)
        return torch.where(self.count >= needed, lam, torch.ones_like(lam))

    def combine_losses(self, losses: Tensor) -> Tensor:
        if self.window is not None:
            slot = (self.count % (2 * self.window)).reshape(1)
            self.history.index_copy_(0, slot, losses.detach().reshape(1, -1).to(self.history.dtype))
            self.count += 1
        lam = self.weights().to(losses.dtype)
        self.last_weights = lam
        total = (lam * losses).sum()
        return total if self.reduction == "sum" else total / self.num_tasks

    def on_epoch_end(self, epoch_losses: Tensor) -> None:
        if self.window is not None:
            return
        epoch_losses = torch.as_tensor(epoch_losses, dtype=self.history.dtype, device=self.history.device)
        if epoch_losses.shape != (self.num_tasks,):
            raise InvalidArgumentError(f"weighting 'dwa': on_epoch_end needs {self.num_tasks} epoch losses, "
                                       f"got shape {tuple(epoch_losses.shape)}")
        self.history[0] = self.history[1]
        self.history[1] = epoch_losses
        self.count += 1


def dwa(num_tasks: int, temperature: float = 2.0, window: int | None = None, reduction: str = "sum"
        ) -> DynamicWeightAverage:
    """Dynamic Weight Average; ``window=n`` for the per-iteration variant."""
    return DynamicWeightAverage(num_tasks, temperature=temperature, window=window, reduction=reduction)


@hookimpl
def mtlzoo_register_weightings(register):
    register("dwa", dwa, tags={"loss"}, paper="Liu, Johns & Davison, CVPR 2019",
             summary="Dynamic Weight Average: weights from the ratio of the last two epoch losses")
