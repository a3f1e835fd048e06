"""``aligned_mtl``: Aligned-MTL, independent component alignment.

Senushkin, Patakin, Kuznetsov & Konushin, "Independent Component Alignment for Multi-Task
Learning", CVPR 2023.

The task gradient matrix ``G = U Σ Vᵀ`` (rows g_t) is replaced by the aligned matrix
``Ĝ = σ U Vᵀ``, whose singular values are all equal (condition number 1), and the update is
``Ĝᵀ ω`` (Alg. 1; ω = 1 in the released code, ``reduction="sum"``; ``"mean"`` uses ω = 1/T as
torchjd does). In terms of the Gram matrix ``M = G Gᵀ = V_M Λ V_Mᵀ``:

    Ĝ = B G,  B = σ V_M Λ^{-1/2} V_Mᵀ,    update = (B ω)ᵀ G,  so  α = B ω.

Only eigen-directions with ``λ > λ_max · T · ε_float32`` count (the released code's rank test);
the others get weight 0. ``scale_mode`` picks σ: ``min`` (the paper: the smallest kept singular
value, so no direction is amplified), ``median`` (the lower median, as ``torch.median``) or
``rmse`` (the root mean square), the options of the released code. With no direction kept (all
gradients zero) B is the identity.

Eigendecomposition: ``torch.linalg.eigh`` synchronises a CUDA device to check its result, so on
accelerators this uses Jacobi rotations on the device (``solver="auto"``; ``"jacobi"`` forces it,
``"lapack"`` forces ``eigh``); on the CPU, LAPACK.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlzoo import hookimpl
from mtlzoo.weighting import Weighting
from mtlzoo_builtin.weightings._device_solvers import (
    check_choice,
    check_gram,
    finish,
    jacobi_schedule,
    symmetric_eig,
)

SCALE_MODES = ("min", "median", "rmse")


class AlignedMTL(Weighting):
    """Rescale the principal components of the task gradients to equal singular values."""

    needs = "gram"
    name = "aligned_mtl"
    head_grads = "unweighted"  # the released code sets only the shared gradients

    def __init__(self, num_tasks: int, scale_mode: str = "min", reduction: str = "sum", solver: str = "auto") -> None:
        super().__init__(num_tasks)
        check_choice("aligned_mtl", "scale_mode", scale_mode, SCALE_MODES)
        check_choice("aligned_mtl", "reduction", reduction, ("sum", "mean"))
        check_choice("aligned_mtl", "solver", solver, ("auto", "jacobi", "lapack"))
        self.scale_mode = scale_mode
        self.reduction = reduction
        self.solver = solver
        p_idx, q_idx = jacobi_schedule(num_tasks)
        self.register_buffer("jacobi_p", p_idx, persistent=False)
        self.register_buffer("jacobi_q", q_idx, persistent=False)

    def balance_matrix(self, gram: Tensor) -> Tensor:
        """``B`` with ``B G`` = the aligned gradient matrix (equal singular values); ``[T, T]``."""
        g = check_gram("aligned_mtl", gram, self.num_tasks)
        t = self.num_tasks
        values, vectors = symmetric_eig(g, self.jacobi_p, self.jacobi_q, self.solver)
        tol = values.max() * t * torch.finfo(torch.float32).eps
        keep = values > tol
        rank = keep.sum()
        inf = torch.full_like(values, float("inf"))
        kept_ascending, _ = torch.sort(torch.where(keep, values, inf))
        if self.scale_mode == "min":
            chosen = kept_ascending[0]
        elif self.scale_mode == "median":
            chosen = torch.gather(kept_ascending, 0, ((rank - 1).clamp_min(0) // 2)[None]).squeeze(0)
        else:
            chosen = torch.where(keep, values, torch.zeros_like(values)).sum() / rank.clamp_min(1)
        safe = torch.where(keep, values, torch.ones_like(values))
        inv_sqrt = torch.where(keep, safe.rsqrt(), torch.zeros_like(values))
        sigma = torch.where(rank > 0, chosen, torch.ones_like(chosen)).clamp_min(0.0).sqrt()
        balance = sigma * (vectors * inv_sqrt[None, :]) @ vectors.T
        eye = torch.eye(t, device=g.device, dtype=g.dtype)
        return torch.where(rank > 0, balance, eye)

    def weights_from_gram(self, gram: Tensor, losses: Tensor | None) -> Tensor:
        balance = self.balance_matrix(gram)
        alpha = balance.sum(1)
        if self.reduction == "mean":
            alpha = alpha / self.num_tasks
        return finish(self, alpha, gram.dtype)


@hookimpl
def mtlzoo_register_weightings(register):
    register("aligned_mtl", AlignedMTL, tags={"gradient", "gram"},
             paper="Senushkin et al., CVPR 2023",
             summary="Align the principal components of the task gradients to condition number 1")
