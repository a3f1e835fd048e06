"""``cagrad``: conflict-averse gradient descent (CAGrad).

Liu, Liu, Jin, Stone & Liu, "Conflict-Averse Gradient Descent for Multi-task Learning",
NeurIPS 2021.

The update maximises the worst task improvement within a ball around the average gradient
``g₀ = (1/T) Σ_i g_i`` (Eq. 3):

    max_d min_i g_iᵀ d   s.t.  ‖d − g₀‖ ≤ c ‖g₀‖,

solved in the dual over the simplex (Sec. 3.2): with ``g_w = Σ_i w_i g_i`` and ``φ = c² ‖g₀‖²``,

    w* = argmin_{w ∈ Δ_T}  g_wᵀ g₀ + √φ ‖g_w‖,      d* = g₀ + (√φ / ‖g_w*‖) g_w*.

So ``d* = Σ_i α_i g_i`` with ``α = 1/T + (√φ / ‖g_w*‖) w*``, and everything needs only the Gram
matrix ``G``: ``g_wᵀ g₀ = wᵀ G 1 / T``, ``‖g_w‖² = wᵀ G w``, ``‖g₀‖² = 1ᵀ G 1 / T²``. ``c = 0``
gives the average gradient; larger ``c`` moves towards MGDA. The released code then rescales the
update: ``rescale=1`` divides by ``1 + c²`` (the default in the released NYUv2 code and in
Nash-MTL's and LibMTL's versions), ``2`` by ``1 + c``, ``0`` leaves it (only ``rescale=0`` satisfies
the ball constraint literally). Default ``c = 0.4`` (Nash-MTL's and the CAGrad NYUv2 setting).

Solver (the released code uses scipy's SLSQP on the CPU): for T <= 10, exactly, by enumerating the
supports of w. On a support S the stationarity condition ``b_S + √φ G_S w_S / ‖g_w‖ = λ 1`` with
``b = G 1 / T`` gives, for ``u = G_S⁻¹ 1``, ``v = G_S⁻¹ b_S``, ``a = Σu``, ``β = Σv``,
``γ = b_Sᵀ v``: ``D = √(a φ + β² − a γ)``, ``λ = (β + D) / a``, ``w_S = (λ u − v) / D``; the
feasible candidate with the lowest dual objective is the optimum. Above T = 10, ``max_iter`` steps
of projected gradient with the majorise-minimise step ``‖g_w‖ / (√φ λ_max(G))``, which decreases
the dual objective monotonically.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlzoo import hookimpl
from mtlzoo.weighting import Weighting
from mtlzoo_builtin.weightings._device_solvers import (
    _masked_systems,
    _ridge,
    check_choice,
    check_gram,
    check_range,
    finish,
    lipschitz_bound,
    pick_row,
    project_simplex,
    solver_choice,
)


def dual_objective(w: Tensor, gram: Tensor, linear: Tensor, radius: Tensor) -> Tensor:
    """``wᵀ b + √φ ‖g_w‖`` for each row of ``w`` (``b = G 1 / T``, ``radius = √φ``)."""
    quad = torch.einsum("...i,ij,...j->...", w, gram, w).clamp_min(0.0)
    return w @ linear + radius * quad.sqrt()


def cagrad_dual_exact(gram: Tensor, linear: Tensor, radius: Tensor, supports: Tensor) -> tuple[Tensor, Tensor]:
    """``(w*, found)``: the dual minimiser by support enumeration; ``found`` is False when no
    support has a stationary point (``radius`` = 0)."""
    s = supports.to(gram.dtype)
    systems = _masked_systems(_ridge(gram), s)
    rhs = torch.stack([s, s * linear[None]], dim=-1)  # [K, T, 2]
    x, _ = torch.linalg.solve_ex(systems, rhs)
    u, v = x[..., 0], x[..., 1]
    a, beta, gamma = u.sum(-1), v.sum(-1), (v * linear[None]).sum(-1)
    disc = a * radius**2 + beta * beta - a * gamma
    valid = (disc > 0) & (a > 0)
    root = disc.clamp_min(torch.finfo(gram.dtype).tiny).sqrt()
    lam = (beta + root) / torch.where(a > 0, a, torch.ones_like(a))
    w = ((lam[:, None] * u - v) / root[:, None]).clamp_min(0.0)
    total = w.sum(-1, keepdim=True)
    valid = valid & (total.squeeze(-1) > 0)
    w = w / torch.where(total > 0, total, torch.ones_like(total))
    objective = dual_objective(w, gram, linear, radius)
    valid = valid & torch.isfinite(objective)
    objective = torch.where(valid, objective, torch.full_like(objective, float("inf")))
    return pick_row(w, torch.argmin(objective)), valid.any()


def cagrad_dual_iterative(gram: Tensor, linear: Tensor, radius: Tensor, max_iter: int) -> Tensor:
    """Projected gradient on the dual; the step ``‖g_w‖ / (√φ L)`` minimises the quadratic upper
    bound ``wᵀb + √φ (‖g_w‖² / r + r) / 2`` of the objective at ``r = ‖g_w‖`` (majorise-minimise)."""
    t = gram.shape[0]
    tiny = torch.finfo(gram.dtype).tiny
    w = torch.full((t,), 1.0 / t, device=gram.device, dtype=gram.dtype)
    lip = lipschitz_bound(gram)
    for _ in range(max_iter):
        gw = gram @ w
        norm = (w @ gw).clamp_min(0.0).sqrt().clamp_min(tiny)
        grad = linear + radius * gw / norm
        step = norm / (radius * lip).clamp_min(tiny)
        w = project_simplex(w - step * grad)
    return w


class CAGrad(Weighting):
    """Maximise the worst task's improvement in a ball of radius c‖g₀‖ around the mean gradient."""

    needs = "gram"
    name = "cagrad"
    head_grads = "unweighted"  # the released code overwrites only the shared gradients

    def __init__(self, num_tasks: int, c: float = 0.4, rescale: int = 1, solver: str = "auto",
                 max_iter: int = 250) -> None:
        super().__init__(num_tasks)
        check_range("cagrad", "c", c, 0.0)
        check_choice("cagrad", "rescale", rescale, (0, 1, 2))
        check_range("cagrad", "max_iter", max_iter, 1)
        self.c = float(c)
        self.rescale = int(rescale)
        self.max_iter = int(max_iter)
        self.solver = solver
        self.register_buffer("supports", solver_choice("cagrad", solver, num_tasks), persistent=False)

    def weights_from_gram(self, gram: Tensor, losses: Tensor | None) -> Tensor:
        g = check_gram("cagrad", gram, self.num_tasks)
        t = self.num_tasks
        mean = torch.full((t,), 1.0 / t, device=g.device, dtype=g.dtype)
        if self.c == 0.0 or t == 1:
            return finish(self, mean, gram.dtype)  # the ball has radius 0 (or one task): d = g₀
        linear = g @ mean  # b_i = g_iᵀ g₀
        radius = self.c * (mean @ linear).clamp_min(0.0).sqrt()  # √φ = c ‖g₀‖
        if self.supports is not None:
            w, found = cagrad_dual_exact(g, linear, radius, self.supports)
            w = torch.where(found, w, mean)
        else:
            w = cagrad_dual_iterative(g, linear, radius, self.max_iter)
        norm = (w @ g @ w).clamp_min(0.0).sqrt()
        scale = radius / norm.clamp_min(torch.finfo(g.dtype).tiny)
        alpha = mean + torch.where(norm > 0, scale, torch.zeros_like(scale)) * w
        if self.rescale == 1:
            alpha = alpha / (1.0 + self.c**2)
        elif self.rescale == 2:
            alpha = alpha / (1.0 + self.c)
        return finish(self, alpha, gram.dtype)


@hookimpl
def mtlzoo_register_weightings(register):
    register("cagrad", CAGrad, tags={"gradient", "gram"},
             paper="Liu et al., NeurIPS 2021",
             summary="Conflict-averse gradient: best worst-case task improvement near the mean gradient")
