"""``gradvac``: Gradient Vaccine.

Wang, Tsvetkov, Firat & Cao, "Gradient Vaccine: Investigating and Improving Multi-task
Optimization in Massively Multilingual Models", ICLR 2021.

PCGrad only acts when two gradients conflict (cosine < 0). GradVac instead keeps, per task pair,
an exponential moving average of their cosine similarity as a *target* (Eq. 3),

    φ̂_ij ← (1 − β) φ̂_ij + β φ_ij,    φ̂_ij = 0 initially,

and whenever the observed cosine ``φ_ij = cos(g_i', g_j)`` is below the target it adds the
multiple of ``g_j`` that lifts the cosine exactly to the target (Eq. 2, law of sines):

    g_i' ← g_i' + ‖g_i'‖ (φ̂_ij √(1 − φ_ij²) − φ_ij √(1 − φ̂_ij²)) / (‖g_j‖ √(1 − φ̂_ij²)) · g_j.

As in PCGrad (Alg. 1), each task i visits the other tasks in a random order, the cosine uses the
already adjusted ``g_i'`` and the original ``g_j``, the EMA is updated with every observed
``φ_ij`` (after the adjustment test), and the adjusted gradients are summed. With a constant target
of 0 this is PCGrad.

From the Gram matrix: ``g_i'`` stays a combination of the original gradients, so we track its
coefficients ``C[i]`` (``g_i'·g_j = (C G)[i, j]``, ``‖g_i'‖² = (C G Cᵀ)[i, i]``) and process all
tasks at once, T − 1 vectorised steps. The targets live in the ``target`` buffer, so
``state_dict`` round-trips them. This is the paper's whole-model granularity (one cosine per task
pair over all shared parameters); its per-layer variant needs one Gram per parameter group.

β: the paper's value is 1e-2 (as in torchjd's first implementation); LibMTL defaults to 0.5.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlzoo import hookimpl
from mtlzoo.weighting import Weighting
from mtlzoo_builtin.weightings._device_solvers import SeededRandom, check_choice, check_gram, check_range, finish
from mtlzoo_builtin.weightings.pcgrad import random_orders


class GradVac(SeededRandom, Weighting):
    """Lift each pairwise gradient cosine to its EMA target, in random order; then sum."""

    needs = "gram"
    name = "gradvac"
    head_grads = "unweighted"  # each head gets its own task gradient

    def __init__(self, num_tasks: int, beta: float = 0.01, reduction: str = "sum", eps: float = 1e-8,
                 seed: int = 0) -> None:
        super().__init__(num_tasks)
        check_range("gradvac", "beta", beta, 0.0, 1.0)
        check_range("gradvac", "eps", eps, 0.0, low_open=True)
        check_choice("gradvac", "reduction", reduction, ("sum", "mean"))
        self.beta = float(beta)
        self.eps = float(eps)
        self.reduction = reduction
        self._init_random(seed)
        #: EMA of the cosine between task i's adjusted gradient and task j's gradient (φ̂_ij)
        self.register_buffer("target", torch.zeros(num_tasks, num_tasks))

    def weights_from_gram(self, gram: Tensor, losses: Tensor | None) -> Tensor:
        g = check_gram("gradvac", gram, self.num_tasks)
        t = self.num_tasks
        eye = torch.eye(t, device=g.device, dtype=g.dtype)
        coef = eye
        if t > 1:
            order = random_orders(t, self.generator(g.device), g.device)
            target = self.target.to(device=g.device, dtype=g.dtype)
            norms = g.diagonal().clamp_min(0.0).sqrt()
            for step in range(t - 1):
                j = order[:, step]
                cg = coef @ g
                dots = torch.gather(cg, 1, j[:, None]).squeeze(1)  # g_i' · g_j
                norm_i = (cg * coef).sum(1).clamp_min(0.0).sqrt()  # ‖g_i'‖
                norm_j = norms[j]
                phi = dots / (norm_i * norm_j + self.eps)
                goal = torch.gather(target, 1, j[:, None]).squeeze(1)
                sin_phi = (1.0 - phi * phi).clamp_min(0.0).sqrt()
                sin_goal = (1.0 - goal * goal).clamp_min(0.0).sqrt()
                lift = norm_i * (goal * sin_phi - phi * sin_goal) / (norm_j * sin_goal + self.eps)
                lift = torch.where(phi < goal, lift, torch.zeros_like(lift))
                coef = coef + lift[:, None] * eye[j]
                target = target.scatter(1, j[:, None], ((1.0 - self.beta) * goal + self.beta * phi)[:, None])
            self.target = target.to(torch.float32)
        alpha = coef.sum(0)
        if self.reduction == "mean":
            alpha = alpha / t
        return finish(self, alpha, gram.dtype)


@hookimpl
def mtlzoo_register_weightings(register):
    register("gradvac", GradVac, tags={"gradient", "gram"},
             paper="Wang et al., ICLR 2021",
             summary="Gradient Vaccine: lift pairwise gradient cosines to their moving-average targets")
