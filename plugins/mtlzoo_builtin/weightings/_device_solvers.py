"""Small solvers shared by the gradient-based weightings; all run on the device, sync-free.

The gradient methods solve tiny problems on the ``T x T`` Gram matrix every step (a min-norm point
on the simplex, non-negative QPs, an eigendecomposition). Library routines either run on the CPU
(cvxpy, scipy, quadprog) or check their result on the host (``torch.linalg.eigh``, ``solve`` and
``svd`` synchronise a CUDA device to test ``info``). So these helpers use only element-wise ops,
matmuls and ``torch.linalg.solve_ex`` (which never checks on the host), with a fixed amount of
work per call:

* **Exact by enumeration** for ``T <= EXACT_MAX_TASKS``: the optimum of a convex QP on the
  simplex / orthant is the unconstrained optimum on the face of its support, so every non-empty
  support is solved at once (one batched ``solve_ex``), each candidate is made feasible
  (clamp, renormalise), and the candidate with the lowest objective wins. The optimum's own
  candidate is among them, and every candidate is feasible, so the winner is the optimum up to
  the accuracy of the linear solves (about 1e-12 relative in float64).
* Above that size, where ``2**T`` supports would cost too much: a fixed number of rounds of
  block principal pivoting (non-negative QPs) or of accelerated projected gradient (simplex).
* **Cyclic Jacobi** eigendecomposition with a parallel (round-robin) ordering.

Constant index tensors are built once, on the CPU, in a weighting's ``__init__`` and registered as
buffers, because creating a tensor from Python data on a CUDA device is a blocking copy.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import Tensor

from mtlzoo.errors import InvalidArgumentError

#: largest T solved exactly by enumerating the 2**T - 1 supports
EXACT_MAX_TASKS = 10


# -- dtype and validation ------------------------------------------------------------------------
def solver_dtype(device: torch.device) -> torch.dtype:
    """float64 for the tiny T x T problems (MPS has no float64: float32 there). Autocast never
    touches float64 tensors, so these solvers are safe inside a bf16 region."""
    return torch.float32 if device.type == "mps" else torch.float64


def check_gram(name: str, gram: Tensor, num_tasks: int) -> Tensor:
    """A detached, symmetrised copy of ``gram`` in the solver dtype; raises on a wrong shape."""
    if gram.dim() != 2 or gram.shape != (num_tasks, num_tasks):
        raise InvalidArgumentError(
            f"weighting {name!r}: expected a {num_tasks}x{num_tasks} Gram matrix (one row per task), "
            f"got shape {tuple(gram.shape)}; build the weighting with num_tasks={gram.shape[0] if gram.dim() else 0} "
            "or pass the Gram of all task gradients"
        )
    g = gram.detach().to(solver_dtype(gram.device))
    return 0.5 * (g + g.T)


def check_grads(name: str, grads: Tensor, num_tasks: int) -> None:
    if grads.dim() != 2 or grads.shape[0] != num_tasks:
        raise InvalidArgumentError(
            f"weighting {name!r}: expected per-task gradients of shape [{num_tasks}, P] (one row per task), "
            f"got shape {tuple(grads.shape)}"
        )


def check_choice(name: str, arg: str, value: Any, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        from mtlzoo.errors import suggestion

        hint = suggestion(str(value), [str(c) for c in choices]) if isinstance(value, str) else ""
        raise InvalidArgumentError(
            f"weighting {name!r}: {arg}={value!r} is not supported.{hint} Choose one of: "
            f"{', '.join(repr(c) for c in choices)}"
        )


def check_range(name: str, arg: str, value: float, low: float, high: float | None = None, *,
                low_open: bool = False) -> None:
    bad = value < low or (low_open and value == low) or (high is not None and value > high)
    if bad or value != value:  # NaN
        bound = f"{'>' if low_open else '>='} {low}" + (f" and <= {high}" if high is not None else "")
        raise InvalidArgumentError(f"weighting {name!r}: {arg} must be {bound}, got {value!r}")


# -- supports and projections --------------------------------------------------------------------
def all_supports(num_tasks: int) -> Tensor:
    """``[2**T - 1, T]`` 0/1 float matrix of every non-empty subset of the tasks (CPU)."""
    codes = torch.arange(1, 2**num_tasks, dtype=torch.int64)
    bits = (codes[:, None] >> torch.arange(num_tasks, dtype=torch.int64)) & 1
    return bits.to(torch.float64)


def project_simplex(x: Tensor) -> Tensor:
    """Euclidean projection of each row of ``x`` onto the probability simplex (sort-based,
    Held et al. 1974 / Duchi et al. 2008)."""
    n = x.shape[-1]
    u, _ = torch.sort(x, dim=-1, descending=True)
    css = torch.cumsum(u, dim=-1) - 1.0
    k = torch.arange(1, n + 1, device=x.device, dtype=x.dtype)
    active = (u - css / k) > 0
    rho = (active.to(x.dtype) * k).amax(dim=-1, keepdim=True).clamp_min(1.0)
    theta = torch.gather(css, -1, rho.long() - 1) / rho
    return (x - theta).clamp_min(0.0)


def pick_row(rows: Tensor, index: Tensor) -> Tensor:
    """``rows[index]`` for a 0-d index tensor. Plain indexing with a 0-d tensor converts it to a
    Python int (``.item()``), a host sync on CUDA; ``index_select`` stays on the device."""
    return torch.index_select(rows, 0, index.reshape(1)).squeeze(0)


def _masked_systems(matrix: Tensor, supports: Tensor) -> Tensor:
    """``matrix`` restricted to each support, identity on the complement: ``[K, T, T]``."""
    s = supports.to(matrix.dtype)
    return matrix[None] * (s[:, :, None] * s[:, None, :]) + torch.diag_embed(1.0 - s)


def _ridge(matrix: Tensor) -> Tensor:
    """A relative ridge that makes singular faces (duplicate or zero gradients) solvable while
    changing the optimum by ~1e-10 relative (float64)."""
    rel = 1e-10 if matrix.dtype == torch.float64 else 1e-5
    scale = matrix.diagonal().mean().abs()
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero Gram: any ridge will do
    return matrix + (rel * scale) * torch.eye(matrix.shape[0], device=matrix.device, dtype=matrix.dtype)


def lipschitz_bound(matrix: Tensor) -> Tensor:
    """An upper bound on the largest eigenvalue of a PSD matrix (its Frobenius norm), never zero."""
    return torch.linalg.matrix_norm(matrix) + torch.finfo(matrix.dtype).tiny


# -- min-norm point of the convex hull (MGDA) ----------------------------------------------------
def min_norm_simplex(gram: Tensor, supports: Tensor | None, max_iter: int = 250, stop: float = 1e-5) -> Tensor:
    """``argmin_{α ∈ Δ} αᵀ M α``: exact by enumeration when ``supports`` is given, else
    accelerated projected gradient for ``max_iter`` steps (steps stop moving once the update is
    below ``stop``, as the reference solver's stopping rule, without a host check)."""
    if supports is not None:
        return _min_norm_exact(gram, supports.to(gram.dtype))
    return _min_norm_iterative(gram, max_iter, stop)


def _min_norm_exact(gram: Tensor, supports: Tensor) -> Tensor:
    systems = _masked_systems(_ridge(gram), supports)
    x, _ = torch.linalg.solve_ex(systems, supports[:, :, None])
    x = x.squeeze(-1)
    total = x.sum(-1, keepdim=True)
    alpha = (x / total).clamp_min(0.0)
    alpha = alpha / alpha.sum(-1, keepdim=True)
    objective = torch.einsum("ki,ij,kj->k", alpha, gram, alpha)
    valid = torch.isfinite(objective) & (total.squeeze(-1) > 0)
    objective = torch.where(valid, objective, torch.full_like(objective, float("inf")))
    best = pick_row(alpha, torch.argmin(objective))
    uniform = torch.full_like(best, 1.0 / gram.shape[0])
    return torch.where(valid.any() & torch.isfinite(best).all(), best, uniform)


def _min_norm_iterative(gram: Tensor, max_iter: int, stop: float) -> Tensor:
    t = gram.shape[0]
    step = 1.0 / lipschitz_bound(gram)
    alpha = torch.full((t,), 1.0 / t, device=gram.device, dtype=gram.dtype)
    y, momentum = alpha, 1.0
    done = torch.zeros((), dtype=torch.bool, device=gram.device)
    for _ in range(max_iter):
        new = project_simplex(y - step * (gram @ y))
        # the reference solver breaks once a step moves less than `stop`; freeze instead of breaking
        done = done | ((new - alpha).abs().sum() < stop)
        new = torch.where(done, alpha, new)
        next_momentum = 0.5 * (1.0 + (1.0 + 4.0 * momentum**2) ** 0.5)
        y = new + ((momentum - 1.0) / next_momentum) * (new - alpha)
        alpha, momentum = new, next_momentum
    return alpha


# -- non-negative QPs (UPGrad) -------------------------------------------------------------------
def nonneg_qp(matrix: Tensor, linear: Tensor, supports: Tensor | None, max_iter: int = 500) -> Tensor:
    """``argmin_{z >= 0} ½ zᵀ A z + bᵀ z`` for each row ``b`` of ``linear`` ([R, T] -> [R, T]);
    ``A`` must be positive definite. Exact by enumeration when ``supports`` is given, else block
    principal pivoting for at most ``max_iter`` rounds."""
    if supports is not None:
        return _nonneg_exact(matrix, linear, supports.to(matrix.dtype))
    return _nonneg_iterative(matrix, linear, max_iter)


def _nonneg_exact(matrix: Tensor, linear: Tensor, supports: Tensor) -> Tensor:
    systems = _masked_systems(matrix, supports)  # [K, T, T]
    rhs = -(linear.T[None] * supports[:, :, None])  # [K, T, R]
    z, _ = torch.linalg.solve_ex(systems, rhs)
    z = z.permute(2, 0, 1).clamp_min(0.0)  # [R, K, T]
    objective = 0.5 * torch.einsum("rki,ij,rkj->rk", z, matrix, z) + torch.einsum("rki,ri->rk", z, linear)
    objective = torch.where(torch.isfinite(objective), objective, torch.full_like(objective, float("inf")))
    best = torch.argmin(objective, dim=1)  # [R]
    return torch.gather(z, 1, best[:, None, None].expand(-1, 1, z.shape[-1])).squeeze(1)


def _nonneg_iterative(matrix: Tensor, linear: Tensor, max_iter: int) -> Tensor:
    """Block principal pivoting (Júdice & Pires 1994; Kim & Park 2011) for the LCP
    ``w = A z + b, z >= 0, w >= 0, zᵀw = 0``, batched over the rows of ``linear``: guess the free
    set, solve on it, flip every infeasible index (or, when that stops reducing their number for
    3 rounds, only the last one, which guarantees termination). It usually ends in a few rounds;
    finished problems stop changing, and ``max_iter`` bounds the rounds with no host check."""
    r, t = linear.shape
    tol = 1e-12 * (matrix.diagonal().abs().max() + linear.abs().amax(-1)) if matrix.dtype == torch.float64 \
        else 1e-6 * (matrix.diagonal().abs().max() + linear.abs().amax(-1))
    tol = tol[:, None]
    free = torch.zeros(r, t, dtype=torch.bool, device=linear.device)
    best = torch.full((r,), t + 1, dtype=torch.int64, device=linear.device)
    budget = torch.full((r,), 3, dtype=torch.int64, device=linear.device)
    order = torch.arange(t, device=linear.device)
    z = torch.zeros_like(linear)
    for _ in range(max_iter):
        mask = free.to(matrix.dtype)
        systems = matrix[None] * (mask[:, :, None] * mask[:, None, :]) + torch.diag_embed(1.0 - mask)
        z, _ = torch.linalg.solve_ex(systems, (-linear * mask)[:, :, None])
        z = z.squeeze(-1) * mask
        w = (z @ matrix + linear) * (1.0 - mask)
        infeasible = (free & (z < -tol)) | (~free & (w < -tol))
        count = infeasible.sum(-1)
        improved = count < best
        best = torch.where(improved, count, best)
        budget = torch.where(improved, torch.full_like(budget, 3), budget - 1)
        last = torch.where(infeasible, order, torch.full_like(order, -1)).amax(-1, keepdim=True)
        single = order[None, :] == last
        flip = torch.where((budget > 0)[:, None], infeasible, single & infeasible)
        free = free ^ flip
    return z.clamp_min(0.0)


# -- symmetric eigendecomposition (Aligned-MTL) --------------------------------------------------
def jacobi_schedule(num_tasks: int) -> tuple[Tensor, Tensor]:
    """Round-robin pairing for parallel Jacobi: ``n - 1`` rounds of ``n / 2`` disjoint pairs
    (``n`` = T rounded up to even; index ``n - 1`` is a dummy when T is odd). CPU int64."""
    n = num_tasks + (num_tasks % 2)
    players = list(range(n))
    ps, qs = [], []
    for _ in range(n - 1):
        pairs = [(players[i], players[n - 1 - i]) for i in range(n // 2)]
        ps.append([min(a, b) for a, b in pairs])
        qs.append([max(a, b) for a, b in pairs])
        players = [players[0], players[-1], *players[1:-1]]  # rotate all but the first
    return torch.tensor(ps, dtype=torch.int64), torch.tensor(qs, dtype=torch.int64)


def default_sweeps(num_tasks: int) -> int:
    """Jacobi sweeps reaching ~1e-12 relative accuracy in float64 (measured up to T = 40)."""
    return 6 if num_tasks <= 6 else 10 if num_tasks <= 16 else 12


def jacobi_eigh(matrix: Tensor, p_idx: Tensor, q_idx: Tensor, sweeps: int | None = None) -> tuple[Tensor, Tensor]:
    """Eigenvalues (unsorted) and eigenvectors (columns) of a symmetric ``matrix`` by cyclic
    Jacobi rotations (Golub & Van Loan, Alg. 8.5.3) with the parallel ordering from
    :func:`jacobi_schedule`: each round rotates ``n / 2`` disjoint pairs at once. Converges
    quadratically; :func:`default_sweeps` is checked against ``torch.linalg.eigh`` in the tests."""
    t = matrix.shape[0]
    n = t + (t % 2)  # the schedule pads odd T with a dummy index that is never rotated
    sweeps = default_sweeps(t) if sweeps is None else sweeps
    a = torch.zeros(n, n, device=matrix.device, dtype=matrix.dtype)
    a[:t, :t] = matrix
    v = torch.eye(n, device=matrix.device, dtype=matrix.dtype)
    eye = torch.eye(n, device=matrix.device, dtype=matrix.dtype)
    for _, r in itertools.product(range(sweeps), range(p_idx.shape[0])):
        p, q = p_idx[r], q_idx[r]
        app, aqq, apq = a[p, p], a[q, q], a[p, q]
        zero = apq == 0
        tau = (aqq - app) / (2.0 * torch.where(zero, torch.ones_like(apq), apq))
        sign = torch.where(tau >= 0, torch.ones_like(tau), -torch.ones_like(tau))
        tan = sign / (tau.abs() + torch.sqrt(1.0 + tau * tau))
        tan = torch.where(zero, torch.zeros_like(tan), tan)
        cos = torch.rsqrt(1.0 + tan * tan)
        sin = tan * cos
        rot = eye.clone()
        rot[p, p] = cos
        rot[q, q] = cos
        rot[p, q] = sin
        rot[q, p] = -sin
        a = rot.T @ a @ rot
        v = v @ rot
    return a.diagonal()[:t], v[:t, :t]


def symmetric_eig(matrix: Tensor, p_idx: Tensor, q_idx: Tensor, solver: str = "auto") -> tuple[Tensor, Tensor]:
    """``(eigenvalues, eigenvectors)`` of a symmetric matrix. ``auto``: LAPACK on the CPU (there is
    no device to synchronise) and Jacobi on accelerators (``torch.linalg.eigh`` synchronises a
    CUDA device to check its result)."""
    if solver == "lapack" or (solver == "auto" and matrix.device.type == "cpu"):
        return torch.linalg.eigh(matrix)
    return jacobi_eigh(matrix, p_idx, q_idx)


# -- seeded randomness ---------------------------------------------------------------------------
class SeededRandom:
    """Mixin for a weighting that draws random numbers on the device from its own seeded
    ``torch.Generator`` (so every DDP rank draws the same numbers, and a run is reproducible).
    The generator state travels in ``state_dict`` through ``get_extra_state``."""

    seed: int

    def _init_random(self, seed: int) -> None:
        self.seed = int(seed)
        self._generator: torch.Generator | None = None
        self._pending_rng: tuple[str, Tensor] | None = None

    def generator(self, device: torch.device) -> torch.Generator:
        gen = self._generator
        if gen is None or gen.device != device:
            gen = torch.Generator(device=device)
            gen.manual_seed(self.seed)
            if self._pending_rng is not None and self._pending_rng[0] == device.type:
                gen.set_state(self._pending_rng[1])
            self._pending_rng = None
            self._generator = gen
        return gen

    def get_extra_state(self) -> dict[str, Any]:
        gen = self._generator
        if gen is not None:
            return {"seed": self.seed, "rng_device": gen.device.type, "rng_state": gen.get_state()}
        if self._pending_rng is not None:
            return {"seed": self.seed, "rng_device": self._pending_rng[0], "rng_state": self._pending_rng[1]}
        return {"seed": self.seed, "rng_device": None, "rng_state": None}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.seed = int(state.get("seed", self.seed))
        self._generator = None
        rng = state.get("rng_state")
        self._pending_rng = None if rng is None else (state["rng_device"], rng)


def finish(module: Any, alpha: Tensor, dtype: torch.dtype) -> Tensor:
    """Record ``alpha`` as the module's ``last_weights`` (float32, on alpha's device) and return it
    in the caller's dtype. Reassigning the buffer (rather than ``copy_``) keeps it on the device the
    gradients live on, so logging never forces a cross-device copy inside the step."""
    module.last_weights = alpha.detach().to(torch.float32)
    return alpha.to(dtype)


def solver_choice(name: str, solver: str, num_tasks: int) -> Tensor | None:
    """Validate ``solver`` ("auto", "exact", "iterative") and return the support table for the exact
    path (bool, CPU) or None for the iterative one."""
    check_choice(name, "solver", solver, ("auto", "exact", "iterative"))
    if solver == "exact" and num_tasks > 16:
        raise InvalidArgumentError(
            f"weighting {name!r}: solver='exact' enumerates 2**T supports, too many for T={num_tasks}; "
            "use solver='auto' or 'iterative'"
        )
    if solver == "iterative" or (solver == "auto" and num_tasks > EXACT_MAX_TASKS):
        return None
    return all_supports(num_tasks).to(torch.bool)
