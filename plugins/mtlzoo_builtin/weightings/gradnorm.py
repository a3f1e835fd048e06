"""``gradnorm``: Gradient Normalization (Chen, Badrinarayanan, Lee & Rabinovich, "GradNorm: Gradient
Normalization for Adaptive Loss Balancing in Deep Multitask Networks", ICML 2018).

Learnable task weights ``w_k`` (initialised to 1). At each step, on the last shared layer ``W``
(Algorithm 1 of the paper):

    G_k   = ‖∇_W w_k L_k‖₂ = w_k ‖∇_W L_k‖₂           Ḡ = mean_k G_k
    L̃_k   = L_k(t) / L_k(0)                           r_k = L̃_k / mean_j L̃_j
    L_grad = Σ_k | G_k − Ḡ · r_k^α |                   (the target Ḡ·r_k^α is a constant, Eq. 2)

``∇_w L_grad`` trains the weights and ``Σ_k w_k L_k`` (weights held constant) trains the network;
after each update the weights are renormalised to ``Σ_k w_k = T``. ``α`` (``alpha``, 1.5 as for
NYUv2 in the paper) sets how strongly slow tasks are pulled up; ``α = 0`` asks for equal gradient
norms.

The weighting declares ``needs = "last_shared"``: the engine computes the per-task gradients
``∇_W L_k`` on ``W`` only and passes them as ``last_shared_grads``. The objective returned here is
``Σ_k sg(w_k) L_k + L_grad(w)``: the network sees the weighted loss and the weights see only
``L_grad`` (its other factors are constants), so one backward trains both and the trainer's
optimiser updates ``w`` through :meth:`extra_parameters` (give them their own group, without weight
decay). The renormalisation runs before every use and in :meth:`after_step`; weights are kept
above ``1e-6`` so the renormalisation is defined.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mtlzoo import hookimpl
from mtlzoo.errors import InvalidArgumentError
from mtlzoo.weighting import Weighting


class GradNorm(Weighting):
    """Adaptive loss weights that equalise the gradient norms at the last shared layer."""

    name = "gradnorm"
    needs = "last_shared"

    def __init__(self, num_tasks: int, alpha: float = 1.5) -> None:
        super().__init__(num_tasks)
        if not alpha >= 0:
            raise InvalidArgumentError(f"weighting 'gradnorm': alpha must be >= 0, got {alpha}")
        self.alpha = float(alpha)
        #: the task weights w_k, trained by the main optimiser on L_grad
        self.task_weights = nn.Parameter(torch.ones(num_tasks))
        #: L_k(0), recorded at the first step
        self.register_buffer("initial_losses", torch.ones(num_tasks))
        self.register_buffer("has_initial", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def renormalize(self) -> None:
        """``w ← T · w / Σ w`` (weights kept positive)."""
        w = self.task_weights.clamp_(min=1e-6)
        w.mul_(self.num_tasks / w.sum())

    def gradnorm_loss(self, losses: Tensor, grad_norms: Tensor) -> Tensor:
        """``L_grad(w)``; ``grad_norms[k] = ‖∇_W L_k‖``, ``losses`` detached."""
        G = self.task_weights * grad_norms
        ratios = losses / self.initial_losses
        r = ratios / ratios.mean()
        target = (G.mean() * r**self.alpha).detach()
        return (G - target).abs().sum()

    def combine_losses(self, losses: Tensor, last_shared_grads: Tensor | None = None) -> Tensor:
        self.renormalize()
        detached = losses.detach().to(self.initial_losses.dtype)
        self.initial_losses.copy_(torch.where(self.has_initial, self.initial_losses, detached))
        self.has_initial.fill_(True)
        w = self.task_weights.detach()
        self.last_weights = w.clone()
        objective = (w.to(losses.dtype) * losses).sum()
        if last_shared_grads is not None:
            norms = last_shared_grads.float().norm(dim=1)
            objective = objective + self.gradnorm_loss(detached, norms).to(objective.dtype)
        return objective

    def after_step(self, closure) -> None:
        self.renormalize()


def gradnorm(num_tasks: int, alpha: float = 1.5) -> GradNorm:
    """GradNorm with asymmetry ``alpha`` on the last shared layer."""
    return GradNorm(num_tasks, alpha=alpha)


@hookimpl
def mtlzoo_register_weightings(register):
    register("gradnorm", gradnorm, tags={"loss", "learnable"}, paper="Chen et al., ICML 2018",
             summary="GradNorm: learn weights that balance gradient norms at the last shared layer")
