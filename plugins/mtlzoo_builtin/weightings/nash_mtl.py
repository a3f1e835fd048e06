"""``nash_mtl``: multi-task learning as a Nash bargaining game (Nash-MTL).

Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik & Fetaya, "Multi-Task Learning as a
Bargaining Game", ICML 2022.

The update ``Δθ = Σ_i α_i g_i`` is the Nash bargaining solution, characterised (Thm. 3.1 / Eq. 4)
by

    Gᵀ G α = 1 / α,   α > 0   (element-wise; here ``GᵀG`` is the T x T Gram matrix),

with the Gram normalised by its Frobenius norm first, as in the released code. The released code
solves a sequence of convex approximations with cvxpy + ECOS on the CPU (``optim_niter`` = 20 of
them). Here the same solution is the unique minimiser of the strictly convex, self-concordant

    f(α) = ½ αᵀ M α − Σ_i log α_i        (∇f = M α − 1/α),

found on the device by ``optim_niter`` Newton steps, each with a line search over 16 step sizes
evaluated at once (no host check; the objective never increases, every iterate stays positive,
and near the solution the full step converges quadratically). Each call warm-starts from the previous solution,
rescaled so that ``αᵀ M α = T`` (true at the solution). The tests check ``(M α)_i α_i = 1`` on random
well-conditioned Grams.

Options as in the paper's code: ``update_weights_every`` k reuses the last α for k − 1 steps
(the engine still computes the Gram on those steps); ``max_norm`` (1.0) caps the norm of the
shared update, as the released code clips the shared parameters' gradient after setting it. The
cap is applied here by scaling α from the Gram (``‖Σ α_i g_i‖² = αᵀ G α``), so it touches only the
shared update, like the original; ``max_norm=0`` disables it (then clip in the trainer if wanted).
The last bargaining solution is the ``prev_alpha`` buffer and the step counter travels in the
extra state, so ``state_dict`` round-trips both.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtlzoo import hookimpl
from mtlzoo.weighting import Weighting
from mtlzoo_builtin.weightings._device_solvers import check_gram, check_range, finish, pick_row

#: how many step sizes (1, 1/2, ..., 2**-(LINE_SEARCH - 1)) are tried at once along each Newton direction
LINE_SEARCH = 16


def nash_bargaining(matrix: Tensor, start: Tensor, iterations: int) -> Tensor:
    """Solve ``M α = 1/α``, ``α > 0`` by Newton's method on ``f(α) = ½ αᵀMα − Σ log α`` from
    ``start``. Far from the solution each step tries :data:`LINE_SEARCH` step sizes at once and
    keeps the one with the lowest ``f`` among those that stay positive (a line search without a
    host check); once the Newton decrement is below ¼ it takes full steps, which stay positive and
    converge quadratically (f is self-concordant)."""
    t = matrix.shape[0]
    tiny = torch.finfo(matrix.dtype).tiny
    # built on the device: a tensor from Python data would be a blocking host-to-device copy
    steps = 2.0 ** -torch.arange(LINE_SEARCH, device=matrix.device, dtype=matrix.dtype)

    def objective(a: Tensor) -> Tensor:
        positive = (a > 0).all(-1)
        value = 0.5 * torch.einsum("...i,ij,...j->...", a, matrix, a) - torch.log(a.clamp_min(tiny)).sum(-1)
        return torch.where(positive, value, torch.full_like(value, float("inf")))

    alpha = start.clamp_min(1e-6)
    curvature = alpha @ matrix @ alpha
    alpha = alpha * torch.where(curvature > 0, (t / curvature.clamp_min(tiny)).sqrt(), torch.ones_like(curvature))
    for _ in range(iterations):
        inv = 1.0 / alpha
        grad = matrix @ alpha - inv
        hessian = matrix + torch.diag_embed(inv * inv)
        direction, _ = torch.linalg.solve_ex(hessian, grad[:, None])
        direction = direction.squeeze(1)
        candidates = torch.cat([alpha[None], alpha[None, :] - steps[:, None] * direction[None, :]])  # [1 + S, T]
        searched = pick_row(candidates, torch.argmin(objective(candidates)))
        # inside the Newton decrement's quadratic region (λ < ¼) the full step is safe and f can no
        # longer tell candidates apart in floating point, so take it
        decrement = (grad @ direction).clamp_min(0.0).sqrt()
        alpha = torch.where(decrement < 0.25, candidates[1], searched)
    return alpha


class NashMTL(Weighting):
    """The Nash bargaining solution of the tasks' utilities ``log(g_iᵀ Δθ)``."""

    needs = "gram"
    name = "nash_mtl"
    head_grads = "weighted"  # the released code back-propagates Σ α_k L_k, heads included

    def __init__(self, num_tasks: int, max_norm: float = 1.0, update_weights_every: int = 1,
                 optim_niter: int = 20) -> None:
        super().__init__(num_tasks)
        check_range("nash_mtl", "max_norm", max_norm, 0.0)
        check_range("nash_mtl", "update_weights_every", update_weights_every, 1)
        check_range("nash_mtl", "optim_niter", optim_niter, 1)
        self.max_norm = float(max_norm)
        self.update_weights_every = int(update_weights_every)
        self.optim_niter = int(optim_niter)
        self.steps = 0
        #: the last bargaining solution (before the max_norm cap); warm start and reuse
        self.register_buffer("prev_alpha", torch.ones(num_tasks))

    def weights_from_gram(self, gram: Tensor, losses: Tensor | None) -> Tensor:
        g = check_gram("nash_mtl", gram, self.num_tasks)
        previous = self.prev_alpha.to(device=g.device, dtype=g.dtype)
        if self.steps % self.update_weights_every == 0:
            norm = torch.linalg.matrix_norm(g).clamp_min(torch.finfo(g.dtype).tiny)
            alpha = nash_bargaining(g / norm, previous, self.optim_niter)
            self.prev_alpha = alpha.detach().to(torch.float32)
        else:
            alpha = previous
        self.steps += 1
        if self.max_norm > 0:
            update_norm = (alpha @ g @ alpha).clamp_min(0.0).sqrt()
            alpha = alpha * (self.max_norm / update_norm.clamp_min(self.max_norm))  # = min(1, max_norm/‖d‖)
        return finish(self, alpha, gram.dtype)

    def get_extra_state(self) -> dict[str, Any]:
        return {"steps": self.steps}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.steps = int(state.get("steps", 0))


@hookimpl
def mtlzoo_register_weightings(register):
    register("nash_mtl", NashMTL, aliases=("nashmtl",), tags={"gradient", "gram"},
             paper="Navon et al., ICML 2022",
             summary="Nash bargaining solution of the tasks: solve GᵀGα = 1/α on the device")
