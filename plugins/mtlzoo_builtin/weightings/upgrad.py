"""``upgrad``: unconflicting projection of gradients (UPGrad).

Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024 (arXiv:2406.16232).

Each task gradient ``g_i`` is projected onto the dual cone of the task gradients,
``{x : g_jᵀ x ≥ 0 for all j}``, and the projections are averaged (Sec. 3, Eq. 7 with the uniform
preference vector). The projection of ``Jᵀ u`` is ``Jᵀ w`` with (Prop. 1)

    w = argmin_{v ≥ u} vᵀ G v,         G = J Jᵀ (the Gram matrix),

so UPGrad's weights are ``α = Σ_i w(e_i / T)`` and the update ``Σ_k α_k g_k`` has a non-negative
inner product with every task gradient (no task is made worse to first order). Writing
``v = u + z`` turns each projection into the non-negative QP ``min_{z ≥ 0} ½ zᵀ G z + (G u)ᵀ z``.

As in torchjd (the authors' library), ``G`` is first divided by its trace (set to 0 when the trace
is below ``norm_eps``) and ``reg_eps · I`` is added so the QP is strictly convex; this changes the
guarantee to ``g_jᵀ d ≥ −reg_eps · tr(G) · α_j``, negligible for the default 1e-4. torchjd solves
the QPs with quadprog on the CPU; here, for T <= 10, all T QPs are solved exactly by support
enumeration on the device, and above that by block principal pivoting, batched over the T QPs, for
``max_iter`` rounds (default 3T; it terminates exactly, and needed at most 39 rounds on random
rank-deficient Grams with T up to 40).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlzoo import hookimpl
from mtlzoo.weighting import Weighting
from mtlzoo_builtin.weightings._device_solvers import check_gram, check_range, finish, nonneg_qp, solver_choice


class UPGrad(Weighting):
    """Average of the task gradients' projections onto the cone of non-conflicting directions."""

    needs = "gram"
    name = "upgrad"
    head_grads = "unweighted"  # torchjd's mtl_backward gives each head its own gradient

    def __init__(self, num_tasks: int, norm_eps: float = 1e-4, reg_eps: float = 1e-4, solver: str = "auto",
                 max_iter: int | None = None) -> None:
        super().__init__(num_tasks)
        check_range("upgrad", "norm_eps", norm_eps, 0.0)
        check_range("upgrad", "reg_eps", reg_eps, 0.0)
        max_iter = 3 * num_tasks if max_iter is None else max_iter
        check_range("upgrad", "max_iter", max_iter, 1)
        self.norm_eps = float(norm_eps)
        self.reg_eps = float(reg_eps)
        self.max_iter = int(max_iter)
        self.solver = solver
        self.register_buffer("supports", solver_choice("upgrad", solver, num_tasks), persistent=False)

    def projection_weights(self, gram: Tensor) -> Tensor:
        """``[T, T]``: row i holds the weights of the projection of ``g_i / T`` onto the dual cone."""
        g = check_gram("upgrad", gram, self.num_tasks)
        t = self.num_tasks
        trace = g.diagonal().sum()
        scaled = g / trace.clamp_min(torch.finfo(g.dtype).tiny)
        normalised = torch.where(trace < self.norm_eps, torch.zeros_like(g), scaled)
        eye = torch.eye(t, device=g.device, dtype=g.dtype)
        regularised = normalised + self.reg_eps * eye
        start = eye / t  # rows u_i = e_i / T
        z = nonneg_qp(regularised, start @ regularised, self.supports, self.max_iter)
        return start + z

    def weights_from_gram(self, gram: Tensor, losses: Tensor | None) -> Tensor:
        alpha = self.projection_weights(gram).sum(0)
        return finish(self, alpha, gram.dtype)


@hookimpl
def mtlzoo_register_weightings(register):
    register("upgrad", UPGrad, tags={"gradient", "gram"},
             paper="Quinton & Rey, 2024 (Jacobian Descent for Multi-Objective Optimization)",
             summary="Average of the task gradients projected onto the dual cone: conflicts with no task")
