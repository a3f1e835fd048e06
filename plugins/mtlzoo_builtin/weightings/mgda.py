"""``mgda``: the multiple-gradient descent algorithm (MGDA) and its representation-level bound (MGDA-UB).

Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018.

Eq. (3)/(4): the common descent direction is the minimum-norm point of the convex hull of the task
gradients,

    α* = argmin_{α ∈ Δ_T} ‖Σ_k α_k g_k‖² = argmin_{α ∈ Δ_T} αᵀ G α,    update = Σ_k α*_k g_k,

with ``G`` the Gram matrix of the gradients ``g_k`` (only inner products are needed, so
``needs = "gram"``). For T = 2 the minimiser is closed form (Alg. 1):
``α₁ = clip((g₂ − g₁)·g₂ / ‖g₁ − g₂‖², 0, 1)``. MGDA-UB (Sec. 3.3) applies the same solver to the
gradients with respect to the shared representation Z instead of the shared parameters, which is
an upper bound that costs one backward through the encoder; hence ``allows_representation``.

Normalisation (the released code's ``gradient_normalizers``): the task gradients are divided by
``n_k`` before solving, where ``n_k`` is ``‖g_k‖`` (``l2``), ``L_k`` (``loss``), ``L_k ‖g_k‖``
(``loss+``) or 1 (``none``, the default, which is the paper's MGDA). As in the released code the
resulting α multiply the *raw* task losses / gradients (``scale[t] = sol[t]``). The released
``sample.json`` for CelebA uses ``loss+``.

Solver: the paper uses Frank–Wolfe (the released code projected gradient) with MAX_ITER 250 and
STOP 1e-5, both with host-side stopping tests. Here, for T <= 10 the problem is solved exactly by
enumerating the supports on the device (see ``_device_solvers``); above that, accelerated projected
gradient runs ``max_iter`` steps and freezes once a step moves less than ``stop``, with no host check.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlzoo import hookimpl
from mtlzoo.errors import InvalidArgumentError
from mtlzoo.weighting import Weighting
from mtlzoo_builtin.weightings._device_solvers import (
    check_choice,
    check_gram,
    check_range,
    finish,
    min_norm_simplex,
    solver_choice,
)

NORMALIZATIONS = ("none", "l2", "loss", "loss+")


class MGDA(Weighting):
    """Min-norm point of the convex hull of the (optionally normalised) task gradients."""

    needs = "gram"
    name = "mgda"
    head_grads = "weighted"  # the released code scales every loss, heads included: scale[t] * loss_t
    allows_representation = True

    def __init__(self, num_tasks: int, normalization: str = "none", solver: str = "auto",
                 max_iter: int = 250, stop: float = 1e-5) -> None:
        super().__init__(num_tasks)
        check_choice("mgda", "normalization", normalization, NORMALIZATIONS)
        check_range("mgda", "max_iter", max_iter, 1)
        check_range("mgda", "stop", stop, 0.0)
        self.normalization = normalization
        self.max_iter = int(max_iter)
        self.stop = float(stop)
        self.solver = solver
        self.register_buffer("supports", solver_choice("mgda", solver, num_tasks), persistent=False)

    def normalizers(self, gram: Tensor, losses: Tensor | None) -> Tensor:
        """``n_k`` of the chosen normalisation, in the Gram's dtype and device."""
        ones = torch.ones(self.num_tasks, device=gram.device, dtype=gram.dtype)
        if self.normalization == "none":
            return ones
        norms = gram.diagonal().clamp_min(0.0).sqrt()
        if self.normalization == "l2":
            return norms
        if losses is None:
            raise InvalidArgumentError(
                f"weighting 'mgda': normalization={self.normalization!r} needs the task losses; pass losses=... "
                "or use normalization='l2' or 'none'"
            )
        loss = losses.detach().to(device=gram.device, dtype=gram.dtype).reshape(-1)
        if loss.numel() != self.num_tasks:
            raise InvalidArgumentError(
                f"weighting 'mgda': expected {self.num_tasks} losses, got shape {tuple(losses.shape)}"
            )
        return loss if self.normalization == "loss" else loss * norms

    def weights_from_gram(self, gram: Tensor, losses: Tensor | None) -> Tensor:
        g = check_gram("mgda", gram, self.num_tasks)
        n = self.normalizers(g, losses).clamp_min(torch.finfo(g.dtype).tiny)
        normalised = g / (n[:, None] * n[None, :])
        alpha = min_norm_simplex(normalised, self.supports, self.max_iter, self.stop)
        return finish(self, alpha, gram.dtype)


@hookimpl
def mtlzoo_register_weightings(register):
    register("mgda", MGDA, tags={"gradient", "gram", "representation"},
             paper="Sener & Koltun, NeurIPS 2018",
             summary="Min-norm point of the convex hull of task gradients (MGDA-UB on the shared representation)")
