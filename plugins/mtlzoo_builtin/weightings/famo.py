"""``famo``: Fast Adaptive Multitask Optimization (Liu, Liang, Chen & Liu, "FAMO: Fast Adaptive
Multitask Optimization", NeurIPS 2023).

Task logits ``ξ`` (initialised to 0), weights ``z = softmax(ξ)``, ``D_k = L_k − L*_k + ε``:

* the objective back-propagated at step t is ``Σ_k z_k log D_k / c`` with ``c = Σ_k z_k / D_k``
  held constant, so the update direction is ``Σ_k (z_k / (c D_k)) ∇L_k`` with coefficients that sum
  to 1 (FAMO's Eq. for ``d_t``);
* after the optimiser step the losses are re-evaluated on the same batch (``after_step(closure)``)
  and ``δ_k = log D_k(old) − log D_k(new)`` (how much each task improved). The logits take one Adam
  step (lr ``w_lr`` = 0.025, L2 weight decay ``gamma`` = 1e-3; 1e-2 for CityScapes in the paper) along
  ``J_softmax(ξ)ᵀ δ``: tasks that improved less gain weight.

``L*`` (``min_losses``) defaults to 0, ``ε`` to 1e-8. The paper's runs also clip the network's
gradient norm to 1.0: that is a trainer setting, not part of the weighting.

``recompute=False`` skips the extra forward: the δ of step t is formed at step t+1 from that step's
losses, on a different batch (cheaper, an approximation the paper does not use).

The logits and the Adam moments are buffers, so they are in ``state_dict``; the logits are not
returned by :meth:`extra_parameters` (FAMO trains them itself).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from mtlzoo import hookimpl
from mtlzoo.errors import InvalidArgumentError
from mtlzoo.weighting import Weighting


class FAMO(Weighting):
    """Loss weights that balance the rate of improvement of each task, at O(1) extra cost."""

    name = "famo"

    def __init__(self, num_tasks: int, gamma: float = 1e-3, w_lr: float = 0.025, eps: float = 1e-8,
                 min_losses: float | Sequence[float] = 0.0, recompute: bool = True,
                 betas: tuple[float, float] = (0.9, 0.999), adam_eps: float = 1e-8) -> None:
        super().__init__(num_tasks)
        if not w_lr > 0 or not gamma >= 0:
            raise InvalidArgumentError(f"weighting 'famo': needs w_lr > 0 and gamma >= 0, got w_lr={w_lr}, "
                                       f"gamma={gamma}")
        mins = [float(min_losses)] * num_tasks if isinstance(min_losses, (int, float)) else list(map(float, min_losses))
        if len(mins) != num_tasks:
            raise InvalidArgumentError(f"weighting 'famo': min_losses has {len(mins)} values for {num_tasks} tasks")
        self.gamma, self.w_lr, self.eps, self.recompute = float(gamma), float(w_lr), float(eps), bool(recompute)
        self.betas, self.adam_eps = (float(betas[0]), float(betas[1])), float(adam_eps)
        self.register_buffer("logits", torch.zeros(num_tasks))
        self.register_buffer("min_losses", torch.tensor(mins))
        self.register_buffer("prev_losses", torch.zeros(num_tasks))  # L(old) of the last step
        self.register_buffer("has_prev", torch.zeros((), dtype=torch.bool))
        self.register_buffer("exp_avg", torch.zeros(num_tasks))
        self.register_buffer("exp_avg_sq", torch.zeros(num_tasks))
        self.register_buffer("adam_step", torch.zeros(()))

    def _log_gap(self, losses: Tensor) -> Tensor:
        return torch.log(losses - self.min_losses + self.eps)

    def combine_losses(self, losses: Tensor) -> Tensor:
        detached = losses.detach().to(self.logits.dtype)
        if not self.recompute:  # δ of the previous step from this step's (different) batch
            self.update(detached, only_if_prev=True)
        z = torch.softmax(self.logits, dim=0)
        gap = losses - self.min_losses.to(losses.dtype) + self.eps
        c = (z / gap).sum().detach()
        self.last_weights = (z / (c * gap)).detach()  # the coefficients of ∇L_k in the update
        self.prev_losses.copy_(detached)
        self.has_prev.fill_(True)
        return (z.to(losses.dtype) * torch.log(gap) / c).sum()

    @torch.no_grad()
    def logit_gradient(self, new_losses: Tensor) -> Tensor:
        """``J_softmax(ξ)ᵀ δ`` with ``δ = log D(old) − log D(new)``."""
        delta = self._log_gap(self.prev_losses) - self._log_gap(new_losses.to(self.logits.dtype))
        z = torch.softmax(self.logits, dim=0)
        return z * (delta - (z * delta).sum())  # J = diag(z) − z zᵀ is symmetric

    @torch.no_grad()
    def update(self, new_losses: Tensor, only_if_prev: bool = False) -> None:
        """One Adam step of the logits (Kingma & Ba, ICLR 2015; L2 decay as torch.optim.Adam)."""
        grad = self.logit_gradient(new_losses) + self.gamma * self.logits
        apply = self.has_prev if only_if_prev else torch.ones_like(self.has_prev)
        b1, b2 = self.betas
        step = self.adam_step + apply.to(self.adam_step.dtype)
        exp_avg = torch.where(apply, b1 * self.exp_avg + (1 - b1) * grad, self.exp_avg)
        exp_avg_sq = torch.where(apply, b2 * self.exp_avg_sq + (1 - b2) * grad * grad, self.exp_avg_sq)
        safe = step.clamp(min=1)
        denom = (exp_avg_sq / (1 - b2**safe)).sqrt() + self.adam_eps
        new_logits = self.logits - self.w_lr * (exp_avg / (1 - b1**safe)) / denom
        self.logits.copy_(torch.where(apply, new_logits, self.logits))
        self.exp_avg.copy_(exp_avg)
        self.exp_avg_sq.copy_(exp_avg_sq)
        self.adam_step.copy_(step)

    def after_step(self, closure: Callable[[], Tensor]) -> None:
        if self.recompute:
            self.update(closure())


def famo(num_tasks: int, gamma: float = 1e-3, w_lr: float = 0.025, eps: float = 1e-8,
         min_losses: float | Sequence[float] = 0.0, recompute: bool = True) -> FAMO:
    """FAMO with logit learning rate ``w_lr`` and logit weight decay ``gamma``."""
    return FAMO(num_tasks, gamma=gamma, w_lr=w_lr, eps=eps, min_losses=min_losses, recompute=recompute)


@hookimpl
def mtlzoo_register_weightings(register):
    register("famo", famo, tags={"loss"}, paper="Liu et al., NeurIPS 2023",
             summary="FAMO: logits that favour slowly improving tasks, one extra forward per step")
