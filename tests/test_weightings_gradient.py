"""Gradient-based weightings: each method's defining property on hand-made or random gradients,
their device solvers against independent references (scipy, closed forms), state round trips,
the absence of host synchronisation, ``mtlzoo.aggregate``, and one engine step with each."""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize, nnls

import mtlzoo
from mtlzoo.aggregate import aggregate, gradient_methods
from mtlzoo.errors import InvalidArgumentError, UnknownComponentError
from mtlzoo.plugins import default_zoo
from mtlzoo.weighting import Weighting
from mtlzoo_builtin.weightings import _device_solvers as solvers
from mtlzoo_builtin.weightings.aligned_mtl import AlignedMTL
from mtlzoo_builtin.weightings.cagrad import CAGrad
from mtlzoo_builtin.weightings.graddrop import GradDrop
from mtlzoo_builtin.weightings.gradvac import GradVac
from mtlzoo_builtin.weightings.imtl import IMTLG
from mtlzoo_builtin.weightings.mgda import MGDA
from mtlzoo_builtin.weightings.nash_mtl import NashMTL, nash_bargaining
from mtlzoo_builtin.weightings.pcgrad import PCGrad
from mtlzoo_builtin.weightings.upgrad import UPGrad

GRAM_METHODS = ["mgda", "pcgrad", "gradvac", "cagrad", "imtl", "nash_mtl", "aligned_mtl", "upgrad"]
ALL_METHODS = [*GRAM_METHODS, "graddrop"]
MY_FILES = ["_device_solvers", "mgda", "pcgrad", "graddrop", "gradvac", "cagrad", "imtl", "nash_mtl",
            "aligned_mtl", "upgrad"]
F64 = torch.float64


def rand_grads(t: int, p: int, seed: int, correlated: bool = False) -> torch.Tensor:
    g = torch.randn(t, p, dtype=F64, generator=torch.Generator().manual_seed(seed))
    if correlated:
        g[1:] += 2.0 * g[:1]
    return g


def build(name: str, t: int, **kw) -> Weighting:
    return default_zoo().weightings.create(name, num_tasks=t, **kw)


# -- registration -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL_METHODS)
def test_registered_with_paper_and_needs(name):
    entry = default_zoo().weightings.get(name)
    assert entry.paper and entry.summary
    w = build(name, 3)
    assert w.needs == ("grads" if name == "graddrop" else "gram")
    assert w.name == name
    assert w.allows_representation == (name in ("mgda", "imtl", "graddrop"))


@pytest.mark.parametrize("name", GRAM_METHODS)
def test_gram_methods_reject_a_wrong_gram_shape(name):
    with pytest.raises(InvalidArgumentError, match=rf"{name}.*3x3 Gram matrix"):
        build(name, 3).weights_from_gram(torch.eye(2), None)


@pytest.mark.parametrize(("name", "kw", "match"), [
    ("mgda", {"normalization": "l1"}, "normalization='l1'.*'l2'"),
    ("cagrad", {"c": -1.0}, "c must be >= 0"),
    ("cagrad", {"rescale": 3}, "rescale=3"),
    ("aligned_mtl", {"scale_mode": "mean"}, "scale_mode='mean'.*'median'"),
    ("pcgrad", {"reduction": "max"}, "reduction='max'"),
    ("upgrad", {"solver": "exact"} , None),
    ("gradvac", {"beta": 1.5}, "beta must be >= 0.0 and <= 1.0"),
    ("graddrop", {"leak": -0.1}, "leak"),
    ("nash_mtl", {"update_weights_every": 0}, "update_weights_every"),
])
def test_bad_hyper_parameters_raise_clearly(name, kw, match):
    if match is None:  # a valid choice builds
        build(name, 3, **kw)
        return
    with pytest.raises(InvalidArgumentError, match=match):
        build(name, 3, **kw)


def test_exact_solver_refuses_huge_task_counts():
    with pytest.raises(InvalidArgumentError, match="2\\*\\*T supports"):
        MGDA(20, solver="exact")


@pytest.mark.parametrize("name", GRAM_METHODS)
def test_gram_combine_grads_is_alpha_times_grads(name):
    g = rand_grads(4, 9, seed=3)
    w = build(name, 4)
    update = w.combine_grads(g, torch.rand(4, dtype=F64))
    alpha = w.last_weights.to(F64)
    torch.testing.assert_close(update, alpha @ g, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("case", ["zeros", "duplicate", "one_zero", "single_task"])
@pytest.mark.parametrize("name", ALL_METHODS)
def test_degenerate_gradients_give_finite_updates(name, case):
    t = 1 if case == "single_task" else 3
    g = rand_grads(t, 5, seed=0)
    if case == "zeros":
        g.zero_()
    elif case == "duplicate":
        g[1] = g[0]
    elif case == "one_zero":
        g[0] = 0.0
    w = build(name, t)
    out = w.combine_grads(g, torch.rand(t, dtype=F64))
    assert torch.isfinite(out).all() and torch.isfinite(w.last_weights).all()
    if case == "zeros":
        assert (out == 0).all()


# -- MGDA -------------------------------------------------------------------------------------------
def mgda_two_task(g1: torch.Tensor, g2: torch.Tensor) -> float:
    """Sener & Koltun's Algorithm 1: the weight of g1."""
    return float(((g2 - g1) @ g2 / (g1 - g2).square().sum()).clamp(0.0, 1.0))


@pytest.mark.parametrize("solver", ["exact", "iterative"])
@pytest.mark.parametrize("seed", range(4))
def test_mgda_two_tasks_matches_the_closed_form(solver, seed):
    g = rand_grads(2, 5, seed)
    if seed == 3:
        g[1] = 3.0 * g[0]  # parallel: the shorter one wins outright (a clipped case)
    alpha = MGDA(2, solver=solver).weights_from_gram(g @ g.T, None)
    expected = mgda_two_task(g[0], g[1])
    tol = 1e-9 if solver == "exact" else 1e-4  # the iterative solver stops once a step moves < 1e-5
    torch.testing.assert_close(alpha, torch.tensor([expected, 1 - expected], dtype=F64), atol=tol, rtol=0)


def assert_min_norm_kkt(alpha: torch.Tensor, gram: torch.Tensor, tol: float) -> None:
    """KKT of min αᵀMα on the simplex: (Mα)_k >= αᵀMα for all k, with equality where α_k > 0."""
    assert alpha.min() >= -1e-12 and abs(alpha.sum().item() - 1) < 1e-9
    m_alpha = gram @ alpha
    value = alpha @ m_alpha
    scale = gram.diagonal().max()
    assert (m_alpha >= value - tol * scale).all()
    support = alpha > 1e-6
    assert ((m_alpha[support] - value).abs() <= tol * scale).all()


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), p=st.sampled_from([2, 4, 50]), correlated=st.booleans())
def test_mgda_exact_satisfies_kkt_on_random_four_task_grams(seed, p, correlated):
    g = rand_grads(4, p, seed, correlated)
    gram = g @ g.T
    assert_min_norm_kkt(MGDA(4).weights_from_gram(gram, None), gram, tol=1e-7)


@pytest.mark.parametrize("seed", range(3))
def test_mgda_iterative_solver_reaches_the_exact_minimum(seed):
    g = rand_grads(7, 30, seed, correlated=seed == 1)
    gram = g @ g.T
    exact = MGDA(7, solver="exact").weights_from_gram(gram, None)
    approx = MGDA(7, solver="iterative").weights_from_gram(gram, None)
    assert approx @ gram @ approx <= exact @ gram @ exact + 1e-6 * gram.diagonal().max()
    assert_min_norm_kkt(approx, gram, tol=1e-3)


def test_mgda_matches_scipy_on_five_tasks():
    g = rand_grads(5, 6, seed=11)
    gram = (g @ g.T).numpy()
    ref = minimize(lambda a: a @ gram @ a, np.full(5, 0.2), bounds=[(0, 1)] * 5, method="SLSQP",
                   constraints={"type": "eq", "fun": lambda a: a.sum() - 1}, options={"ftol": 1e-14})
    alpha = MGDA(5).weights_from_gram(torch.from_numpy(gram), None).numpy()
    assert alpha @ gram @ alpha <= ref.fun + 1e-10


def test_mgda_l2_normalisation_ignores_gradient_scale_and_loss_modes_need_losses():
    g = rand_grads(3, 8, seed=5)
    scaled = g * torch.tensor([[10.0], [1.0], [0.1]], dtype=F64)
    a = MGDA(3, normalization="l2").weights_from_gram(g @ g.T, None)
    b = MGDA(3, normalization="l2").weights_from_gram(scaled @ scaled.T, None)
    torch.testing.assert_close(a, b)
    with pytest.raises(InvalidArgumentError, match="normalization='loss\\+' needs the task losses"):
        MGDA(3, normalization="loss+").weights_from_gram(g @ g.T, None)
    # loss+: the min-norm point of g_k / (L_k ‖g_k‖), applied to the raw gradients
    losses = torch.tensor([0.5, 2.0, 1.0], dtype=F64)
    n = losses * g.norm(dim=1)
    normalised = g / n[:, None]
    expected = MGDA(3).weights_from_gram(normalised @ normalised.T, None)
    torch.testing.assert_close(MGDA(3, normalization="loss+").weights_from_gram(g @ g.T, losses), expected)


# -- PCGrad -----------------------------------------------------------------------------------------
def pcgrad_reference(g: torch.Tensor, orders: list[list[int]]) -> torch.Tensor:
    """Yu et al.'s Algorithm 1 on explicit vectors, with the given visiting order per task."""
    out = []
    for i, order in enumerate(orders):
        gi = g[i].clone()
        for j in order:
            dot = gi @ g[j]
            if dot < 0:
                gi = gi - dot / g[j].square().sum() * g[j]
        out.append(gi)
    return torch.stack(out).sum(0)


def test_pcgrad_two_conflicting_tasks():
    g = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=F64)
    update = PCGrad(2).combine_grads(g, None)
    torch.testing.assert_close(update, pcgrad_reference(g, [[1], [0]]))
    torch.testing.assert_close(update, torch.tensor([0.5, 1.5], dtype=F64))
    assert (g @ update >= -1e-12).all()


@pytest.mark.parametrize("seed", range(5))
def test_pcgrad_output_never_conflicts_with_either_of_two_tasks(seed):
    g = rand_grads(2, 6, seed)
    update = PCGrad(2).combine_grads(g, None)
    assert (g @ update >= -1e-10).all()


def test_pcgrad_equals_the_plain_sum_without_conflict():
    g = rand_grads(4, 6, seed=2).abs()  # non-negative vectors: no negative inner product
    torch.testing.assert_close(PCGrad(4).combine_grads(g, None), g.sum(0))
    torch.testing.assert_close(PCGrad(4, reduction="mean").combine_grads(g, None), g.mean(0))


def test_pcgrad_three_tasks_matches_the_vector_algorithm_for_some_order():
    g = rand_grads(3, 5, seed=7)
    update = PCGrad(3, seed=4).combine_grads(g, None)
    others = [[j for j in range(3) if j != i] for i in range(3)]
    candidates = [pcgrad_reference(g, [list(p) for p in perms])
                  for perms in itertools.product(*[itertools.permutations(o) for o in others])]
    assert min((update - c).abs().max().item() for c in candidates) < 1e-10


def test_pcgrad_random_order_is_seeded_and_its_state_round_trips():
    g = rand_grads(5, 7, seed=1)
    a, b = PCGrad(5, seed=3), PCGrad(5, seed=3)
    assert torch.equal(a.combine_grads(g, None), b.combine_grads(g, None))
    restored = PCGrad(5, seed=99)
    restored.load_state_dict(a.state_dict())
    assert restored.seed == 3
    for _ in range(3):  # the restored generator continues a's sequence
        torch.testing.assert_close(restored.combine_grads(g, None), a.combine_grads(g, None))


# -- GradDrop ---------------------------------------------------------------------------------------
def test_graddrop_keeps_consistent_coordinates_and_one_sign_of_the_others():
    g = torch.tensor([[1.0, -2.0, 3.0, 0.5], [2.0, -1.0, -1.0, 0.0], [0.5, -0.5, 2.0, -0.5]], dtype=F64)
    update = GradDrop(3).combine_grads(g, None)
    # purity 1 and 0: kept whole
    assert update[0] == 3.5 and update[1] == -3.5
    # mixed signs: exactly the positive part or exactly the negative part survives
    for k in (2, 3):
        assert update[k] in (g[:, k].clamp_min(0).sum(), g[:, k].clamp_max(0).sum())


def test_graddrop_keeps_the_positive_sign_with_probability_purity():
    p = 20_000
    g = torch.stack([torch.full((p,), 3.0), torch.full((p,), -1.0)]).to(F64)  # P = ½(1 + 2/4) = 0.75
    update = GradDrop(2, seed=1).combine_grads(g, None)
    positive = (update == 3.0).to(F64).mean().item()
    assert set(update.unique().tolist()) == {3.0, -1.0}
    assert abs(positive - 0.75) < 0.02


def test_graddrop_full_leak_is_the_sum_and_state_round_trips():
    g = rand_grads(3, 10, seed=2)
    torch.testing.assert_close(GradDrop(3, leak=1.0).combine_grads(g, None), g.sum(0))
    a = GradDrop(3, seed=5)
    a.combine_grads(g, None)
    b = GradDrop(3)
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(b.combine_grads(g, None), a.combine_grads(g, None))


def test_graddrop_rejects_a_wrong_gradient_matrix():
    with pytest.raises(InvalidArgumentError, match=r"shape \[3, P\]"):
        GradDrop(3).combine_grads(torch.randn(2, 5), None)


# -- GradVac ----------------------------------------------------------------------------------------
def test_gradvac_with_zero_targets_is_pcgrad_and_updates_its_ema():
    g = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=F64)
    w = GradVac(2, beta=0.1)
    torch.testing.assert_close(w.combine_grads(g, None), PCGrad(2).combine_grads(g, None))
    cos = (g[0] @ g[1] / (g[0].norm() * g[1].norm())).item()
    torch.testing.assert_close(w.target, torch.tensor([[0.0, 0.1 * cos], [0.1 * cos, 0.0]]))


def test_gradvac_adjustment_reaches_the_target_cosine():
    g = torch.tensor([[2.0, 0.5, 0.0], [0.1, 1.0, 0.3]], dtype=F64)  # cosine ≈ 0.27 < 0.8
    w = GradVac(2, beta=0.01)
    w.load_state_dict({**w.state_dict(), "target": torch.tensor([[0.0, 0.8], [0.8, 0.0]])})
    alpha = w.weights_from_gram(g @ g.T, None)
    # T = 2: α = (1 + lift_21, 1 + lift_12), g_1' = g_1 + lift_12 g_2, g_2' = g_2 + lift_21 g_1
    g1 = g[0] + (alpha[1] - 1) * g[1]
    g2 = g[1] + (alpha[0] - 1) * g[0]
    for adjusted, other in ((g1, g[1]), (g2, g[0])):
        assert abs((adjusted @ other / (adjusted.norm() * other.norm())).item() - 0.8) < 1e-6
    phi = (g[0] @ g[1] / (g[0].norm() * g[1].norm())).item()
    torch.testing.assert_close(w.target[0, 1], torch.tensor(0.99 * 0.8 + 0.01 * phi, dtype=torch.float32))


def test_gradvac_state_round_trips_through_state_dict():
    g = rand_grads(4, 6, seed=9)
    a = GradVac(4, beta=0.3, seed=2)
    for _ in range(3):
        a.combine_grads(g + 0.1 * torch.randn_like(g), None)
    assert a.target.abs().sum() > 0
    b = GradVac(4, beta=0.3)
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(b.target, a.target)
    torch.testing.assert_close(b.combine_grads(g, None), a.combine_grads(g, None))
    torch.testing.assert_close(b.target, a.target)


# -- CAGrad -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("rescale", [0, 1, 2])
def test_cagrad_with_c_zero_is_the_mean_gradient(rescale):
    g = rand_grads(3, 7, seed=4)
    torch.testing.assert_close(CAGrad(3, c=0.0, rescale=rescale).combine_grads(g, None), g.mean(0))


@pytest.mark.parametrize(("t", "c", "solver"), [(2, 0.4, "auto"), (3, 0.4, "auto"), (4, 1.0, "auto"),
                                               (5, 0.4, "iterative")])
def test_cagrad_solves_its_primal_problem(t, c, solver):
    g = rand_grads(t, 8, seed=t)
    d = CAGrad(t, c=c, rescale=0, solver=solver, max_iter=1000).combine_grads(g, None)
    g0 = g.mean(0)
    radius = c * g0.norm()
    assert (d - g0).norm() <= radius * (1 + 1e-6)  # the constraint ‖d − g₀‖ <= c‖g₀‖
    # no point of the ball does better on the worst task (its boundary holds the maximiser)
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(4000, g.shape[1], dtype=F64, generator=gen)
    ball = g0 + radius * u / u.norm(dim=1, keepdim=True)
    assert (g @ d).min() >= (ball @ g.T).min(1).values.max() - 1e-6


def test_cagrad_dual_matches_scipy_and_rescale_divides():
    g = rand_grads(4, 6, seed=21)
    gram = (g @ g.T).numpy()
    b, k = gram.mean(1), 0.4 * math.sqrt(gram.mean())
    ref = min((minimize(lambda w: w @ b + k * math.sqrt(max(w @ gram @ w, 1e-18)), x0, bounds=[(0, 1)] * 4,
                        method="SLSQP", constraints={"type": "eq", "fun": lambda w: w.sum() - 1},
                        options={"ftol": 1e-15}) for x0 in [np.full(4, 0.25), *np.eye(4) * 0.9 + 0.025]),
              key=lambda r: r.fun)
    d_ref = g.mean(0).numpy() + k / math.sqrt(ref.x @ gram @ ref.x) * (ref.x @ g.numpy())
    d0 = CAGrad(4, rescale=0).combine_grads(g, None)
    assert (g @ d0).min().item() >= (g.numpy() @ d_ref).min() - 1e-7  # at least as good as SLSQP
    torch.testing.assert_close(d0, torch.from_numpy(d_ref), atol=1e-4, rtol=0)
    torch.testing.assert_close(CAGrad(4, rescale=1).combine_grads(g, None), d0 / 1.16)
    torch.testing.assert_close(CAGrad(4, rescale=2).combine_grads(g, None), d0 / 1.4)
    iterative = CAGrad(4, rescale=0, solver="iterative").combine_grads(g, None)
    torch.testing.assert_close(iterative, d0, atol=1e-5, rtol=1e-5)


# -- IMTL-G -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("t", "seed"), [(2, 0), (3, 1), (5, 2), (5, 3)])
def test_imtl_update_projects_equally_on_every_unit_gradient(t, seed):
    g = rand_grads(t, 9, seed) * torch.logspace(-1, 1, t, dtype=F64)[:, None]  # very different scales
    for eps, tol in ((0.0, 1e-9), (1e-8, 1e-6)):  # eps (for a singular D Uᵀ) perturbs the answer slightly
        alpha = IMTLG(t, eps=eps).weights_from_gram(g @ g.T, None)
        projections = g @ (alpha @ g) / g.norm(dim=1)
        torch.testing.assert_close(projections, projections[:1].expand(t), rtol=tol, atol=0)
        assert abs(alpha.sum().item() - 1.0) < 1e-9


def test_imtl_survives_parallel_gradients():
    g = torch.tensor([[1.0, 2.0], [2.0, 4.0], [0.0, 1.0]], dtype=F64)
    alpha = IMTLG(3).weights_from_gram(g @ g.T, None)
    assert torch.isfinite(alpha).all()


# -- Nash-MTL ---------------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), t=st.integers(2, 8), log_cond=st.floats(0.0, 3.0))
def test_nash_solution_satisfies_the_bargaining_condition(seed, t, log_cond):
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(t, t, dtype=F64, generator=gen))
    m = q @ torch.diag(torch.logspace(0, log_cond, t, dtype=F64)) @ q.T
    m = m / torch.linalg.matrix_norm(m)
    start = torch.rand(t, dtype=F64, generator=gen) * 5
    alpha = nash_bargaining(m, start, iterations=20)
    assert (alpha > 0).all()
    torch.testing.assert_close((m @ alpha) * alpha, torch.ones(t, dtype=F64), atol=1e-7, rtol=0)


def test_nash_weights_solve_the_normalised_gram_and_max_norm_caps_the_update():
    g = rand_grads(3, 10, seed=8) * 5
    gram = g @ g.T
    free = NashMTL(3, max_norm=0.0).weights_from_gram(gram, None)
    m = gram / torch.linalg.matrix_norm(gram)
    torch.testing.assert_close((m @ free) * free, torch.ones(3, dtype=F64), atol=1e-8, rtol=0)
    capped = NashMTL(3, max_norm=1.0).weights_from_gram(gram, None)
    assert abs((capped @ g).norm().item() - 1.0) < 1e-9  # this update was longer than 1
    torch.testing.assert_close(capped / capped.sum(), free / free.sum())


def test_nash_update_every_reuses_weights_and_state_round_trips():
    w = NashMTL(3, max_norm=0.0, update_weights_every=2)
    g1, g2 = rand_grads(3, 6, 1), rand_grads(3, 6, 2)
    a1 = w.weights_from_gram(g1 @ g1.T, None)
    a2 = w.weights_from_gram(g2 @ g2.T, None)  # reused
    torch.testing.assert_close(a1, a2)
    fresh = NashMTL(3, max_norm=0.0, update_weights_every=2)
    fresh.load_state_dict(w.state_dict())
    assert fresh.steps == 2
    torch.testing.assert_close(fresh.prev_alpha, w.prev_alpha)
    torch.testing.assert_close(fresh.weights_from_gram(g2 @ g2.T, None), w.weights_from_gram(g2 @ g2.T, None))


# -- Aligned-MTL ------------------------------------------------------------------------------------
def test_aligned_mtl_hand_made_case():
    g = torch.tensor([[3.0, 0.0], [0.0, 1.0]], dtype=F64)  # σ = (3, 1): B = 1 · diag(1/3, 1)
    w = AlignedMTL(2)
    torch.testing.assert_close(w.weights_from_gram(g @ g.T, None), torch.tensor([1 / 3, 1.0], dtype=F64))
    torch.testing.assert_close(w.combine_grads(g, None), torch.tensor([1.0, 1.0], dtype=F64))


@pytest.mark.parametrize("solver", ["lapack", "jacobi"])
@pytest.mark.parametrize("scale_mode", ["min", "median", "rmse"])
def test_aligned_mtl_balances_all_singular_values(solver, scale_mode):
    g = rand_grads(4, 10, seed=6) * torch.tensor([[5.0], [1.0], [0.2], [1.0]], dtype=F64)
    w = AlignedMTL(4, scale_mode=scale_mode, solver=solver)
    aligned = w.balance_matrix(g @ g.T) @ g
    sigma = torch.linalg.svdvals(g)
    expected = {"min": sigma.min(), "median": sigma.sort().values[1], "rmse": sigma.square().mean().sqrt()}
    torch.testing.assert_close(torch.linalg.svdvals(aligned), expected[scale_mode].expand(4), rtol=1e-9, atol=0)
    torch.testing.assert_close(w.combine_grads(g, None), aligned.sum(0))


def test_aligned_mtl_drops_null_directions():
    base = rand_grads(2, 6, seed=3)
    g = torch.cat([base, base.sum(0, keepdim=True)])  # rank 2
    aligned = AlignedMTL(3).balance_matrix(g @ g.T) @ g
    sv = torch.linalg.svdvals(aligned)
    torch.testing.assert_close(sv[:2], torch.linalg.svdvals(g)[1].expand(2))
    assert sv[2] < 1e-9


@pytest.mark.parametrize("t", [2, 3, 7, 12])
def test_jacobi_eigendecomposition_matches_lapack(t):
    g = rand_grads(t, max(t // 2, 2), seed=t) * torch.logspace(0, 2, max(t // 2, 2), dtype=F64)
    m = g @ g.T
    values, vectors = solvers.jacobi_eigh(m, *solvers.jacobi_schedule(t))
    torch.testing.assert_close(values.sort().values, torch.linalg.eigvalsh(m), atol=1e-10 * m.abs().max(), rtol=0)
    torch.testing.assert_close(vectors @ torch.diag(values) @ vectors.T, m, atol=1e-10 * m.abs().max(), rtol=0)
    torch.testing.assert_close(vectors.T @ vectors, torch.eye(t, dtype=F64), atol=1e-10, rtol=0)


# -- UPGrad -----------------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), t=st.integers(2, 6), p=st.sampled_from([3, 8, 40]))
def test_upgrad_never_conflicts_with_a_task(seed, t, p):
    g = rand_grads(t, p, seed)
    gram = g @ g.T
    strict = UPGrad(t, reg_eps=1e-12).weights_from_gram(gram, None)
    assert (gram @ strict >= -1e-7 * gram.diagonal().max()).all()
    # with the default regularisation: g_jᵀ d >= −reg_eps · tr(G) · α_j (KKT of the regularised QP)
    alpha = UPGrad(t).weights_from_gram(gram, None)
    assert (gram @ alpha >= -1e-4 * gram.trace() * alpha - 1e-9).all()


def test_upgrad_averages_when_nothing_conflicts_and_matches_explicit_projections():
    g = rand_grads(3, 5, seed=1).abs()
    torch.testing.assert_close(UPGrad(3).weights_from_gram(g @ g.T, None), torch.full((3,), 1 / 3, dtype=F64))
    # an independent computation: project each g_i onto {x : g x >= 0} with SLSQP, then average
    g = rand_grads(3, 4, seed=2)
    projections = []
    for i in range(3):
        res = minimize(lambda x, i=i: ((x - g[i].numpy()) ** 2).sum(), g[i].numpy(), method="SLSQP",
                       constraints={"type": "ineq", "fun": lambda x: g.numpy() @ x}, options={"ftol": 1e-14})
        projections.append(res.x)
    expected = torch.from_numpy(np.mean(projections, axis=0))
    torch.testing.assert_close(UPGrad(3, reg_eps=0.0).combine_grads(g, None), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("seed", range(3))
def test_nonneg_qp_solvers_match_scipy_nnls(seed):
    g = rand_grads(12, 5 if seed else 40, seed)
    a = g @ g.T
    a = a / a.trace() + 1e-4 * torch.eye(12, dtype=F64)
    b = torch.randn(3, 12, dtype=F64, generator=torch.Generator().manual_seed(seed))
    chol = torch.linalg.cholesky(a)
    for z in (solvers.nonneg_qp(a, b, None, 36), solvers.nonneg_qp(a[:8, :8], b[:, :8], solvers.all_supports(8))):
        n = z.shape[1]
        c = torch.linalg.cholesky(a[:n, :n]) if n < 12 else chol
        for row in range(3):  # ½zᵀAz + bᵀz = ½‖Cᵀz + C⁻¹b‖² + const
            ref, _ = nnls(c.T.numpy(), -torch.linalg.solve(c, b[row, :n]).numpy())
            np.testing.assert_allclose(z[row].numpy(), ref, atol=1e-9)


def test_upgrad_iterative_and_exact_agree():
    g = rand_grads(6, 4, seed=5)
    gram = g @ g.T
    torch.testing.assert_close(UPGrad(6, solver="iterative").weights_from_gram(gram, None),
                               UPGrad(6).weights_from_gram(gram, None), atol=1e-10, rtol=0)


# -- no host synchronisation ------------------------------------------------------------------------
FORBIDDEN = [r"\.item\(", r"\.cpu\(", r"\.tolist\(", r"\.numpy\(", r"linalg\.solve\(", r"linalg\.inv\(",
             r"linalg\.svd", r"linalg\.eigh\(", r"linalg\.cholesky\(", r"linalg\.lstsq", r"nonzero\(",
             r"torch\.tensor\("]


def test_no_host_sync_calls_in_the_weightings():
    """Calls that read a device tensor on the host, check a result there (linalg routines without
    ``_ex``) or copy Python data to the device are absent from the weightings, but for the listed
    lines (a CPU-only branch, a CPU table built at construction). Conversions such as ``bool(t)``
    are caught by the meta-device test below."""
    root = Path(mtlzoo.__file__).parent.parent / "plugins" / "mtlzoo_builtin" / "weightings"
    allowed = {
        ("_device_solvers", "return torch.linalg.eigh(matrix)"),  # the CPU branch of symmetric_eig
        ("_device_solvers", "return torch.tensor(ps, dtype=torch.int64), torch.tensor(qs, dtype=torch.int64)"),
    }
    found = []
    for stem in MY_FILES:
        in_docstring = False
        for line in (root / f"{stem}.py").read_text().splitlines():
            quotes = line.count('"""') % 2 == 1
            if in_docstring or '"""' in line:
                in_docstring ^= quotes
                continue
            code = line.split("#")[0].strip()
            if code and any(re.search(p, code) for p in FORBIDDEN) and (stem, code) not in allowed:
                found.append(f"{stem}.py: {code}")
    assert not found, "possible host synchronisation:\n" + "\n".join(found)


@pytest.mark.parametrize("name", ALL_METHODS)
def test_methods_run_on_meta_tensors(name, monkeypatch):
    """The meta device has no data: any host read (.item(), bool(tensor), tensor indexing by a
    0-d tensor, nonzero) raises there, so this runs every code path with no data-dependent sync."""
    kwargs = {"normalization": "loss+"} if name == "mgda" else {}
    iterative = {"solver": "iterative", "max_iter": 3}  # a few iterations exercise the loop body
    for solver_kw in ({}, iterative) if name in ("mgda", "cagrad", "upgrad") else ({},):
        w = build(name, 4, **kwargs, **solver_kw).to("meta")
        if isinstance(w, solvers.SeededRandom):
            monkeypatch.setattr(w, "generator", lambda device: None)  # meta has no generator
        grads = torch.randn(4, 6, device="meta")
        out = w.combine_grads(grads, torch.rand(4, device="meta"))
        assert out.shape == (6,) and out.device.type == "meta"


@pytest.mark.gpu
@pytest.mark.parametrize("name", ALL_METHODS)
def test_methods_do_not_synchronise_a_cuda_device(name):
    grads = torch.randn(4, 1000, device="cuda")
    w = build(name, 4).to("cuda")
    w.combine_grads(grads, torch.rand(4, device="cuda"))  # warm-up: generators, caches
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = w.combine_grads(grads, torch.rand(4, device="cuda"))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(out).all()


# -- mtlzoo.aggregate -------------------------------------------------------------------------------
def test_aggregate_round_trip_matches_the_weighting():
    g = rand_grads(3, 5, seed=12)
    torch.testing.assert_close(aggregate("pcgrad", g, seed=7), PCGrad(3, seed=7).combine_grads(g, None))
    torch.testing.assert_close(aggregate("cagrad", g, c=0.0), g.mean(0))
    losses = torch.rand(3, dtype=F64)
    torch.testing.assert_close(aggregate("mgda", g, losses, normalization="loss"),
                               MGDA(3, normalization="loss").combine_grads(g, losses))
    w = GradVac(3)
    aggregate(w, g)
    assert w.target.abs().sum() > 0  # an instance keeps its state


def test_aggregate_errors_name_the_problem():
    g = torch.randn(2, 4)
    with pytest.raises(UnknownComponentError, match="Did you mean 'pcgrad'"):
        aggregate("pcgard", g)
    with pytest.raises(UnknownComponentError, match=r"no argument 'cc'.*Did you mean 'c'"):
        aggregate("cagrad", g, cc=0.5)
    with pytest.raises(InvalidArgumentError, match=r"'ew' works on the task losses.*mgda.*upgrad") as info:
        aggregate("ew", g)
    assert "pcgrad" in str(info.value) and "uw" not in str(info.value).split("methods:")[1]
    with pytest.raises(InvalidArgumentError, match=r"2-D tensor \[T, P\]"):
        aggregate("mgda", torch.randn(4))
    with pytest.raises(InvalidArgumentError, match=r"task\(s\) \[1\] contain NaN"):
        aggregate("mgda", torch.tensor([[1.0, 2.0], [float("nan"), 0.0]]))
    with pytest.raises(InvalidArgumentError, match="num_tasks is taken from grads"):
        aggregate("mgda", g, num_tasks=2)
    with pytest.raises(InvalidArgumentError, match="built for 3 tasks"):
        aggregate(MGDA(3), g)
    assert set(ALL_METHODS) <= set(gradient_methods())


# -- one engine step with each method ---------------------------------------------------------------
ENGINE_CASES = [(name, False) for name in ALL_METHODS] + [(name, True) for name in ("mgda", "imtl", "graddrop")]


@pytest.mark.parametrize(("name", "representation"), ENGINE_CASES)
def test_one_engine_step_gives_finite_gradients(name, representation):
    from mtlzoo.train import GradientEngine

    torch.manual_seed(0)
    model = mtlzoo.create_model("hard(backbone=tiny(widths=[4, 8]), tasks=[cls:3, seg:3])")
    engine = GradientEngine(model, build(name, 2), representation=representation)
    x = torch.randn(2, 3, 8, 8)
    targets = {"cls": torch.tensor([0, 2]), "seg": torch.randint(0, 3, (2, 8, 8))}
    with engine.recording():
        out = model(x)
    stats = engine.backward({t: model.tasks[t].loss(out[t], targets[t]) for t in model.task_names})
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(p.grad.abs().sum() > 0 for p in model.backbone.parameters())  # the shared part got an update
    assert torch.isfinite(stats["weights"]).all() and stats["weights"].shape == (2,)
