"""``pcgrad``: projecting conflicting gradients (PCGrad).

Yu, Kumar, Gupta, Levine, Hausman & Finn, "Gradient Surgery for Multi-Task Learning", NeurIPS 2020.

Alg. 1: for each task i, visit the other tasks j in a random order and, if the (already projected)
``g_i^PC`` conflicts with the original ``g_j`` (``g_i^PC · g_j < 0``), remove the conflicting
component,

    g_i^PC ← g_i^PC − (g_i^PC · g_j / ‖g_j‖²) g_j,

then sum the projected gradients (``reduction="sum"``, Alg. 1's Δθ = Σ_i g_i^PC; ``"mean"``
divides by T as several re-implementations do).

From the Gram matrix: every ``g_i^PC`` stays a linear combination of the original gradients, so we
track its coefficients ``C[i] ∈ R^T`` and use only inner products (``g_i^PC · g_j = (C G)[i, j]``).
The T chains are independent, so all tasks are processed at once: T − 1 vectorised steps per call
and no host synchronisation. The random orders come from a seeded ``torch.Generator`` on the
device, so every DDP rank visits the same order and a run is reproducible (its state is saved with
``state_dict``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlzoo import hookimpl
from mtlzoo.weighting import Weighting
from mtlzoo_builtin.weightings._device_solvers import SeededRandom, check_choice, check_gram, finish


def random_orders(num_tasks: int, generator: torch.Generator, device: torch.device) -> Tensor:
    """``[T, T-1]``: row i is a uniformly random order of the tasks other than i."""
    keys = torch.rand(num_tasks, num_tasks, generator=generator, device=device)
    keys = keys + 2.0 * torch.eye(num_tasks, device=device)  # task i itself sorts last, then is dropped
    return torch.argsort(keys, dim=1)[:, : num_tasks - 1]


class PCGrad(SeededRandom, Weighting):
    """Project each task gradient off the gradients it conflicts with, in random order; then sum."""

    needs = "gram"
    name = "pcgrad"
    head_grads = "unweighted"  # each head gets its own task gradient, as in the reference code

    def __init__(self, num_tasks: int, reduction: str = "sum", seed: int = 0) -> None:
        super().__init__(num_tasks)
        check_choice("pcgrad", "reduction", reduction, ("sum", "mean"))
        self.reduction = reduction
        self._init_random(seed)

    def weights_from_gram(self, gram: Tensor, losses: Tensor | None) -> Tensor:
        g = check_gram("pcgrad", gram, self.num_tasks)
        t = self.num_tasks
        eye = torch.eye(t, device=g.device, dtype=g.dtype)
        coef = eye
        if t > 1:
            order = random_orders(t, self.generator(g.device), g.device)
            sq_norms = g.diagonal()
            tiny = torch.finfo(g.dtype).tiny
            for step in range(t - 1):
                j = order[:, step]
                dots = torch.gather(coef @ g, 1, j[:, None]).squeeze(1)  # g_i^PC · g_j
                norm_j = sq_norms[j]
                shrink = torch.where((dots < 0) & (norm_j > 0), dots / norm_j.clamp_min(tiny), torch.zeros_like(dots))
                coef = coef - shrink[:, None] * eye[j]
        alpha = coef.sum(0)
        if self.reduction == "mean":
            alpha = alpha / t
        return finish(self, alpha, gram.dtype)


@hookimpl
def mtlzoo_register_weightings(register):
    register("pcgrad", PCGrad, tags={"gradient", "gram"},
             paper="Yu et al., NeurIPS 2020",
             summary="Project conflicting task gradients onto each other's normal planes, in random order")
