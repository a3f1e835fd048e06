"""``imtl``: impartial multi-task learning, gradient part (IMTL-G).

Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, "Towards Impartial Multi-task Learning", ICLR 2021.

IMTL-G finds the update ``g = Σ_t α_t g_t`` (with ``Σ_t α_t = 1``) whose projections onto every
unit task gradient ``u_t = g_t / ‖g_t‖`` are equal, ``g·u_1 = g·u_t`` for all t. In closed form
(Sec. 3.2), with rows ``D = [g_1 − g_t]_{t=2..T}`` and ``U = [u_1 − u_t]_{t=2..T}``,

    α_{2:T} = g_1 Uᵀ (D Uᵀ)⁻¹,        α_1 = 1 − Σ_{t≥2} α_t.

The α scale the *raw* task gradients (the update is ``Σ α_t g_t`` of the unnormalised ``g_t``;
IMTL-L, the loss-scaling half of the paper, is a separate loss weighting). Everything is an inner
product, ``g_i·u_j = G_ij / ‖g_j‖``, so this works from the Gram matrix; ``D Uᵀ`` is solved with
``torch.linalg.solve_ex`` after adding ``eps`` times its mean diagonal, which keeps the solve
defined when two task gradients are parallel (``D Uᵀ`` singular). The paper computes the task
gradients w.r.t. the shared feature (like MGDA-UB), hence ``allows_representation``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlzoo import hookimpl
from mtlzoo.weighting import Weighting
from mtlzoo_builtin.weightings._device_solvers import check_gram, check_range, finish


class IMTLG(Weighting):
    """Weights whose combined update projects equally onto every unit task gradient."""

    needs = "gram"
    name = "imtl"
    head_grads = "unweighted"  # IMTL-G balances the shared update only
    allows_representation = True

    def __init__(self, num_tasks: int, eps: float = 1e-8) -> None:
        super().__init__(num_tasks)
        check_range("imtl", "eps", eps, 0.0)
        self.eps = float(eps)

    def weights_from_gram(self, gram: Tensor, losses: Tensor | None) -> Tensor:
        g = check_gram("imtl", gram, self.num_tasks)
        t = self.num_tasks
        if t == 1:
            return finish(self, torch.ones(1, device=g.device, dtype=g.dtype), gram.dtype)
        tiny = torch.finfo(g.dtype).tiny
        norms = g.diagonal().clamp_min(0.0).sqrt().clamp_min(tiny)
        proj = g / norms[None, :]  # proj[i, j] = g_i · u_j
        head = proj[0, 0] - proj[0, 1:]  # g_1 Uᵀ
        du = proj[0, 0] - proj[0, 1:][None, :] - proj[1:, 0][:, None] + proj[1:, 1:]  # D Uᵀ
        ridge = self.eps * du.diagonal().abs().mean() + tiny
        system = du.T + ridge * torch.eye(t - 1, device=g.device, dtype=g.dtype)
        rest, _ = torch.linalg.solve_ex(system, head[:, None])  # (D Uᵀ)ᵀ x = (g_1 Uᵀ)ᵀ
        rest = rest.squeeze(1)
        alpha = torch.cat([1.0 - rest.sum(0, keepdim=True), rest])
        return finish(self, alpha, gram.dtype)


@hookimpl
def mtlzoo_register_weightings(register):
    register("imtl", IMTLG, aliases=("imtl_g",), tags={"gradient", "gram", "representation"},
             paper="Liu et al., ICLR 2021",
             summary="IMTL-G: the update projects equally onto every unit task gradient")
