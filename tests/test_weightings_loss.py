"""Loss-based weightings (ew, si, rlw, uw, dwa, gradnorm, famo) and DB-MTL: each method's defining
property, computed independently, and a state round trip."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

import mtlzoo
from mtlzoo.errors import InvalidArgumentError, UnknownComponentError
from mtlzoo.plugins import default_zoo
from mtlzoo.train import GradientEngine

SPEC = "hard(backbone=tiny(widths=[4, 8]), tasks=[seg(out=3, head=fcn(dropout=0.0)), cls:4, regression:2])"


def make(name, num_tasks=2, **kw):
    return default_zoo().weightings.create(name, num_tasks=num_tasks, **kw)


def step_losses(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 3, 8, 8, generator=g)
    targets = {"seg": torch.randint(0, 3, (4, 8, 8), generator=g), "cls": torch.randint(0, 4, (4,), generator=g),
               "regression": torch.randn(4, 2, generator=g)}
    out = model(x)
    return {t: model.tasks[t].loss(out[t], targets[t]) for t in model.task_names}


# -- ew, si, rlw ---------------------------------------------------------------------------------
def test_ew_sums_or_averages():
    losses = torch.tensor([1.0, 2.0, 6.0])
    assert make("ew", 3).combine_losses(losses).item() == 9.0
    assert make("ew", 3, reduction="mean").combine_losses(losses).item() == 3.0
    assert make("ls", 3).name == "ew"  # the alias used by the Nash-MTL and FAMO tables
    with pytest.raises(InvalidArgumentError, match="reduction must be 'sum' or 'mean'"):
        make("ew", 3, reduction="max")
    with pytest.raises(UnknownComponentError, match="has no argument 'temperature'"):
        make("ew", 3, temperature=2)


def test_si_is_the_sum_of_log_losses_and_scale_invariant():
    losses = torch.tensor([0.5, 2.0, 7.0])
    torch.testing.assert_close(make("si", 3, eps=0.0).combine_losses(losses), torch.log(losses).sum())
    theta = torch.tensor([1.0, -2.0], requires_grad=True)
    grads = []
    for scale in (1.0, 100.0):  # multiplying a task's loss by a constant leaves the gradient unchanged
        L = torch.stack([scale * (theta**2).sum(), (theta[0] - 3) ** 2])
        grads.append(torch.autograd.grad(make("si", 2, eps=0.0).combine_losses(L), theta)[0])
    torch.testing.assert_close(grads[0], grads[1])


def test_rlw_weights_sum_to_one_differ_between_steps_and_resume():
    rlw = make("rlw", 4, seed=3)
    losses = torch.ones(4)
    draws = []
    for _ in range(3):
        rlw.combine_losses(losses)
        draws.append(rlw.last_weights.clone())
    for w in draws:
        assert w.min() > 0 and abs(w.sum().item() - 1) < 1e-6
    assert not torch.allclose(draws[0], draws[1]) and not torch.allclose(draws[1], draws[2])
    # weights are softmax(ε), ε ~ N(0, I) from the seeded generator
    eps = torch.randn(4, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(draws[0], torch.softmax(eps, 0))
    resumed = make("rlw", 4, seed=99)
    resumed.load_state_dict(rlw.state_dict())
    rlw.combine_losses(losses)
    resumed.combine_losses(losses)
    torch.testing.assert_close(rlw.last_weights, resumed.last_weights)


# -- uw ------------------------------------------------------------------------------------------
def test_uw_objective_and_learned_log_variances():
    uw = make("uw", 2, init=[-0.5, 0.0])
    losses = torch.tensor([0.5, 4.0])
    s = torch.tensor([-0.5, 0.0])
    expected = (0.5 * (torch.exp(-s) * losses + s)).sum()
    torch.testing.assert_close(uw.combine_losses(losses), expected)
    # the minimiser in s is log L: a few steps move s there
    optimizer = torch.optim.SGD(uw.extra_parameters(), lr=0.5)
    start = (uw.log_vars.detach() - losses.log()).abs()
    for _ in range(100):
        optimizer.zero_grad()
        uw.combine_losses(losses).backward()
        optimizer.step()
    assert ((uw.log_vars.detach() - losses.log()).abs() < 0.05 * start).all()


def test_uw_log_variances_get_their_gradient_through_the_engine():
    torch.manual_seed(0)
    model = mtlzoo.create_model(SPEC)
    uw = make("uw", 3)
    GradientEngine(model, uw).backward(losses := step_losses(model))
    L = torch.stack([losses[t] for t in model.task_names]).detach()
    torch.testing.assert_close(uw.log_vars.grad, 0.5 * (1 - L))  # ∂/∂s ½(e^-s L + s) at s = 0
    assert len(list(uw.extra_parameters())) == 1


# -- dwa -----------------------------------------------------------------------------------------
def test_dwa_follows_its_formula_on_a_known_history():
    dwa = make("dwa", 3)
    losses = torch.tensor([1.0, 1.0, 1.0])
    history = [torch.tensor([2.0, 1.0, 4.0]), torch.tensor([1.0, 0.9, 3.0]), torch.tensor([0.9, 0.3, 2.0])]
    dwa.combine_losses(losses)
    torch.testing.assert_close(dwa.last_weights, torch.ones(3))  # epoch 1: λ = 1
    dwa.on_epoch_end(history[0])
    dwa.combine_losses(losses)
    torch.testing.assert_close(dwa.last_weights, torch.ones(3))  # epoch 2: λ = 1
    for t in (1, 2):
        dwa.on_epoch_end(history[t])
        objective = dwa.combine_losses(losses * 2)
        ratio = [history[t][k].item() / history[t - 1][k].item() for k in range(3)]
        e = [math.exp(r / 2.0) for r in ratio]
        expected = torch.tensor([3 * v / sum(e) for v in e])
        torch.testing.assert_close(dwa.last_weights, expected)
        torch.testing.assert_close(objective, (expected * 2).sum())
    assert dwa.last_weights[1] < dwa.last_weights[0]  # the task whose loss fell fastest gets less weight


def test_dwa_window_variant_uses_the_means_of_the_last_two_windows():
    dwa = make("dwa", 2, window=2, temperature=1.0)
    seen = [torch.tensor([4.0, 1.0]), torch.tensor([2.0, 1.0]), torch.tensor([2.0, 2.0]), torch.tensor([1.0, 2.0]),
            torch.tensor([1.0, 4.0])]
    for i, losses in enumerate(seen):
        dwa.combine_losses(losses)
        if i < 3:
            torch.testing.assert_close(dwa.last_weights, torch.ones(2))
    newer = (seen[3] + seen[4]) / 2
    older = (seen[1] + seen[2]) / 2
    torch.testing.assert_close(dwa.last_weights, 2 * torch.softmax(newer / older, 0))


def test_dwa_rejects_bad_arguments():
    with pytest.raises(InvalidArgumentError, match="temperature must be > 0"):
        make("dwa", 2, temperature=0)
    with pytest.raises(InvalidArgumentError, match="on_epoch_end needs 2 epoch losses"):
        make("dwa", 2).on_epoch_end(torch.ones(3))


# -- gradnorm ------------------------------------------------------------------------------------
def test_gradnorm_gradient_and_renormalisation_on_a_constructed_case():
    gn = make("gradnorm", 2, alpha=1.5)
    first = torch.tensor([2.0, 1.0])
    gn.combine_losses(first)  # records L(0)
    losses = torch.tensor([1.0, 0.8])  # task 0 has trained faster: L̃ = [0.5, 0.8]
    grads = torch.tensor([[3.0, 4.0], [0.0, 1.0]])  # ‖∇_W L_k‖ = [5, 1]
    gn.task_weights.grad = None
    gn.combine_losses(losses, last_shared_grads=grads).backward()
    ratio = torch.tensor([0.5, 0.8])
    r = ratio / ratio.mean()
    G = torch.tensor([5.0, 1.0])
    target = G.mean() * r**1.5
    expected = torch.sign(G - target) * torch.tensor([5.0, 1.0])  # ∂|w_k n_k − target_k| / ∂w_k at w = 1
    torch.testing.assert_close(gn.task_weights.grad, expected)
    # descent lowers the weight of the task with the larger gradient norm and faster progress
    with torch.no_grad():
        gn.task_weights -= 0.1 * gn.task_weights.grad
    gn.after_step(None)
    assert abs(gn.task_weights.sum().item() - 2) < 1e-6
    assert gn.task_weights[0] < 1 < gn.task_weights[1]


def test_gradnorm_network_sees_the_weighted_loss_only():
    gn = make("gradnorm", 2)
    with torch.no_grad():
        gn.task_weights.copy_(torch.tensor([0.5, 1.5]))
    losses = torch.tensor([1.0, 2.0], requires_grad=True)
    gn.combine_losses(losses, last_shared_grads=torch.ones(2, 3)).backward()
    torch.testing.assert_close(losses.grad, torch.tensor([0.5, 1.5]))


def test_gradnorm_through_the_engine_trains_its_weights():
    torch.manual_seed(0)
    model = mtlzoo.create_model(SPEC)
    gn = make("gradnorm", 3)
    engine = GradientEngine(model, gn)
    optimizer = torch.optim.SGD([*model.parameters(), *gn.extra_parameters()], lr=0.05)
    for seed in range(3):
        optimizer.zero_grad()
        engine.backward(step_losses(model, seed))
        assert gn.task_weights.grad is not None and gn.task_weights.grad.abs().sum() > 0
        optimizer.step()
        engine.after_step(lambda: None)
        assert abs(gn.task_weights.sum().item() - 3) < 1e-5
    assert not torch.allclose(gn.task_weights, torch.ones(3))


def test_gradnorm_takes_the_same_step_with_or_without_a_recorded_representation():
    results = []
    for record in (False, True):
        torch.manual_seed(0)
        model = mtlzoo.create_model(SPEC)
        gn = make("gradnorm", 3)
        engine = GradientEngine(model, gn)
        for seed in range(2):  # the first step records L(0); the second has non-trivial ratios
            model.zero_grad()
            gn.zero_grad()
            with engine.recording() if record else contextlib.nullcontext():
                losses = step_losses(model, seed)
            engine.backward(losses)
        results.append([p.grad.clone() for p in [*model.parameters(), gn.task_weights]])
    for plain, split in zip(*results):
        torch.testing.assert_close(split, plain, rtol=1e-5, atol=1e-7)


# -- famo ----------------------------------------------------------------------------------------
def test_famo_objective_coefficients_sum_to_one():
    famo = make("famo", 3)
    with torch.no_grad():
        famo.logits.copy_(torch.tensor([0.3, -0.2, 0.1]))
    losses = torch.tensor([0.5, 2.0, 1.0], requires_grad=True)
    famo.combine_losses(losses).backward()
    z = torch.softmax(torch.tensor([0.3, -0.2, 0.1]), 0)
    coeff = (z / losses.detach()) / (z / losses.detach()).sum()
    torch.testing.assert_close(losses.grad, coeff)
    torch.testing.assert_close(famo.last_weights, coeff)


def test_famo_logit_update_follows_the_formula():
    gamma = 0.01
    famo = make("famo", 3, gamma=gamma, w_lr=0.025)
    reference = torch.zeros(3, requires_grad=True)
    adam = torch.optim.Adam([reference], lr=0.025, weight_decay=gamma)
    history = [([1.0, 2.0, 0.5], [0.5, 1.9, 0.45]), ([0.6, 1.8, 0.4], [0.55, 1.5, 0.39]),
               ([0.5, 1.5, 0.4], [0.3, 1.45, 0.35])]
    for old, new in history:
        old, new = torch.tensor(old), torch.tensor(new)
        famo.combine_losses(old)
        famo.after_step(lambda new=new: new)
        # δ = log L_old − log L_new; the logits' gradient is J_softmax(ξ)ᵀ δ, then one Adam step
        delta = torch.log(old + 1e-8) - torch.log(new + 1e-8)
        reference.grad = torch.autograd.grad(torch.softmax(reference, 0), reference, grad_outputs=delta)[0]
        adam.step()
        torch.testing.assert_close(famo.logits, reference.detach())
    z = torch.softmax(famo.logits, 0)
    assert z[0] < z[1]  # task 0 improved most, so it lost weight


def test_famo_without_recompute_uses_the_next_steps_losses():
    famo = make("famo", 2, recompute=False)
    famo.combine_losses(torch.tensor([1.0, 1.0]))
    famo.after_step(lambda: pytest.fail("recompute=False must not re-evaluate the losses"))
    famo.combine_losses(torch.tensor([0.5, 1.0]))
    assert famo.logits[0] < famo.logits[1]


# -- db_mtl --------------------------------------------------------------------------------------
def test_db_mtl_update_equals_its_formula():
    db = make("db_mtl", 2, beta=0.9, beta_sigma=0.5)
    g1 = torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.1, 0.0]])
    g2 = torch.tensor([[0.5, 1.0, 0.0], [0.2, 0.0, 0.1]])
    db.combine_grads(g1, torch.ones(2))
    out = db.combine_grads(g2, torch.ones(2))
    ema = (1 - 0.9) * g1  # ĝ starts at 0, β_1 = β / 1^β_σ
    beta2 = 0.9 / 2**0.5
    ema = beta2 * ema + (1 - beta2) * g2
    norms = ema.norm(dim=1)
    alpha = norms.max() / (norms + 1e-8)
    torch.testing.assert_close(out, alpha @ ema)
    torch.testing.assert_close(db.last_weights, alpha)
    scaled = alpha[:, None] * ema  # every task's contribution has the largest norm
    torch.testing.assert_close(scaled.norm(dim=1), torch.full((2,), norms.max().item()))


def test_db_mtl_through_the_engine_balances_log_losses():
    torch.manual_seed(0)
    model = mtlzoo.create_model(SPEC)
    losses = step_losses(model)
    shared = list(model.shared_parameters())
    rows = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(losses[t], shared, retain_graph=True)]) / losses[t]
            for t in model.task_names]  # ∇ log L_k = ∇L_k / L_k
    ema = 0.1 * torch.stack(rows).detach()
    norms = ema.norm(dim=1)
    expected = (norms.max() / (norms + 1e-8)) @ ema
    db = make("db_mtl", 3)
    GradientEngine(model, db).backward(losses)
    got = torch.cat([p.grad.reshape(-1) for p in shared])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    head = list(model.task_parameters("cls"))
    own = torch.autograd.grad(losses["cls"], head)
    for p, g in zip(head, own):  # the heads get ∇ log L_k, unweighted
        torch.testing.assert_close(p.grad, g / losses["cls"].detach())


# -- state ---------------------------------------------------------------------------------------
def test_weighting_state_round_trips_through_state_dict():
    dwa = make("dwa", 2)
    dwa.on_epoch_end(torch.tensor([1.0, 2.0]))
    dwa.on_epoch_end(torch.tensor([0.5, 1.5]))
    famo = make("famo", 2)
    famo.combine_losses(torch.tensor([1.0, 2.0]))
    famo.after_step(lambda: torch.tensor([0.5, 1.9]))
    uw = make("uw", 2)
    with torch.no_grad():
        uw.log_vars.copy_(torch.tensor([0.3, -1.0]))
    db = make("db_mtl", 2)
    db.combine_grads(torch.randn(2, 5), torch.ones(2))
    gn = make("gradnorm", 2)
    gn.combine_losses(torch.tensor([3.0, 4.0]))
    for name, original in [("dwa", dwa), ("famo", famo), ("uw", uw), ("db_mtl", db), ("gradnorm", gn)]:
        restored = make(name, 2)
        restored.load_state_dict(original.state_dict())
        for key, value in original.state_dict().items():
            torch.testing.assert_close(restored.state_dict()[key], value, msg=key)
    restored_db = make("db_mtl", 2)
    restored_db.load_state_dict(db.state_dict())
    g = torch.randn(2, 5)
    torch.testing.assert_close(restored_db.combine_grads(g, torch.ones(2)), db.combine_grads(g, torch.ones(2)))
    restored_famo = make("famo", 2)
    restored_famo.load_state_dict(famo.state_dict())
    for f in (famo, restored_famo):
        f.combine_losses(torch.tensor([0.5, 1.9]))
        f.after_step(lambda: torch.tensor([0.4, 1.0]))
    torch.testing.assert_close(famo.logits, restored_famo.logits)
