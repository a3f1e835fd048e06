"""The adversarial (ASP-MTL) and mixture-of-experts (MMoE, CGC, PLE) strategies: contracts on several
backbones, save/load round trips, each method's defining property, and bad input."""

from __future__ import annotations

import itertools
import re

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import mtlzoo
from mtlzoo.errors import InvalidArgumentError, UnknownComponentError
from mtlzoo.testing import check_strategy
from mtlzoo_builtin.strategies.adversarial import difference_loss, grad_reverse, pool
from mtlzoo_builtin.strategies.mmoe import Gate, mix

STRATEGIES = {
    "adversarial": "adversarial(backbone={bb}, tasks={tasks})",
    "mmoe": "mmoe(backbone={bb}, tasks={tasks}, num_experts=3, expert_hidden=[16], dropout=0.1)",
    "cgc": "cgc(backbone={bb}, tasks={tasks}, specific_experts=2, shared_experts=2, expert_hidden=[16])",
    "ple": "ple(backbone={bb}, tasks={tasks}, num_levels=3, specific_experts=1, shared_experts=2, "
           "expert_hidden=[16, 8])",
}
IMAGE = (2, 3, 32, 32)
BACKBONES = {  # backbone spec, tasks, input shape
    "tiny": ("tiny(widths=[8, 16, 16, 32])", "[seg:3, cls:4]", IMAGE),
    "mlp": ("mlp(in_features=16, hidden=[32, 24])", "[cls:3, binary]", (2, 16)),
    "resnet": ("timm(model=resnet10t)", "[seg:3, binary]", IMAGE),
    "convnext": ("timm(model=convnext_atto)", "[cls:3, binary]", IMAGE),
    "vit": ("timm(model=vit_tiny_patch16_224, img_size=32)", "[cls:3, regression]", IMAGE),
}


def build(strategy: str, backbone: str = "mlp", tasks: str | None = None, **overrides) -> mtlzoo.MTLModel:
    bb, default_tasks, _ = BACKBONES[backbone]
    return mtlzoo.create_model(STRATEGIES[strategy].format(bb=bb, tasks=tasks or default_tasks), **overrides)


def reaches(output: torch.Tensor, params: list[nn.Parameter]) -> list[bool]:
    """Whether ``output`` depends on each parameter (structurally: it is in the autograd graph)."""
    grads = torch.autograd.grad(output, params, retain_graph=True, allow_unused=True)
    return [g is not None for g in grads]


# ----------------------------------------------------------------------------- contracts, round trip
@pytest.mark.parametrize("backbone", list(BACKBONES))
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_builds_and_passes_the_contract_on_every_backbone(strategy, backbone):
    model = build(strategy, backbone)
    x = torch.randn(*BACKBONES[backbone][2])
    outputs = check_strategy(model, x)
    assert all(o.shape[0] == x.shape[0] for o in outputs.values())
    if strategy == "adversarial":
        assert set(model.extra_losses()) == {"adversarial", "difference"}


# the round trip exercises the strategy's own modules; the timm backbones' is theirs to test
@pytest.mark.parametrize(("backbone", "suffix"), [("tiny", ".pt"), ("mlp", ".safetensors")])
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_save_load_round_trip_gives_identical_outputs(strategy, backbone, suffix, tmp_path):
    model = build(strategy, backbone)
    x = torch.randn(*BACKBONES[backbone][2])
    model.train()
    model(x)  # move the BatchNorm running statistics away from their initial values
    loaded = mtlzoo.load(mtlzoo.save(model, tmp_path / f"m{suffix}")).eval()
    model.eval()
    with torch.no_grad():
        before, after = model(x), loaded(x)
    for task in before:
        torch.testing.assert_close(after[task], before[task], rtol=0, atol=0)


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_parameter_partition_follows_the_gradient(strategy):
    """A task's parameters are reached by its own loss only; with the gated strategies every shared
    parameter is reached by at least two tasks (the partition is also tight)."""
    tasks = "[cls:3, binary]" if strategy == "adversarial" else "{a: cls:3, b: binary, c: regression}"
    model = build(strategy, "mlp", tasks)
    outputs = model(torch.randn(4, 16))
    shared = list(model.shared_parameters())
    owned = {t: list(model.task_parameters(t)) for t in model.task_names}
    for task, out in outputs.items():
        for other, params in owned.items():
            hit = reaches(out.float().sum(), params)
            if other == task:
                assert all(hit), f"{strategy}: a parameter of {task!r} is not reached by its own loss"
            else:
                assert not any(hit), f"{strategy}: {task!r}'s loss reaches parameters owned by {other!r}"
    if strategy == "adversarial":
        # the discriminator is trained by the adversarial loss alone: shared, reached by no task output
        disc = list(model.discriminator.parameters())
        assert all(any(p is q for q in shared) for p in disc)
        assert not any(any(reaches(o.float().sum(), disc)) for o in outputs.values())
        assert all(reaches(model.extra_losses()["adversarial"], disc))
        return
    counts = torch.zeros(len(shared), dtype=torch.long)
    for out in outputs.values():
        counts += torch.tensor(reaches(out.float().sum(), shared), dtype=torch.long)
    assert bool((counts >= 2).all()), f"{strategy}: {int((counts < 2).sum())} 'shared' parameter(s) serve one task"


# ----------------------------------------------------------------------------------- adversarial
def test_gradient_reversal_is_identity_forward_and_minus_lambda_backward():
    x = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    upstream = torch.tensor([0.5, 4.0, -1.0])
    y = grad_reverse(x, 0.3)
    assert torch.equal(y, x)
    (y * upstream).sum().backward()
    torch.testing.assert_close(x.grad, -0.3 * upstream)


def test_difference_loss_matches_the_formula_and_vanishes_for_orthogonal_features():
    g = torch.Generator().manual_seed(1)
    s, h = torch.randn(5, 3, generator=g), torch.randn(5, 4, generator=g)
    raw = sum(float(s[:, j] @ h[:, k]) ** 2 for j in range(3) for k in range(4))  # Σ_jk (Σ_i s_ij h_ik)²
    assert difference_loss(s, h, normalize=False).item() == pytest.approx(raw, rel=1e-5)
    # normalised: Σ_{i,i'} cos-Gram(S)_{ii'} · cos-Gram(H)_{ii'} / B²  (an independent identity)
    su, hu = s / s.norm(dim=1, keepdim=True), h / h.norm(dim=1, keepdim=True)
    expected = float(((su @ su.T) * (hu @ hu.T)).sum()) / 25
    assert difference_loss(s, h).item() == pytest.approx(expected, rel=1e-5)
    assert difference_loss(100 * s, 0.01 * h).item() == pytest.approx(expected, rel=1e-4)  # scale-free
    # private features in the orthogonal complement of the shared columns: SᵀH = 0
    q = torch.linalg.qr(torch.randn(6, 6, generator=g)).Q
    s_orth, h_orth = q[:, :2], q[:, 2:] @ torch.randn(4, 3, generator=g)
    assert difference_loss(s_orth, h_orth, normalize=False).item() == pytest.approx(0.0, abs=1e-10)
    # unit mode: shared and private features active on disjoint samples are orthogonal too
    s_half = torch.cat([torch.randn(3, 2, generator=g), torch.zeros(3, 2)])
    h_half = torch.cat([torch.zeros(3, 5), torch.randn(3, 5, generator=g)])
    assert difference_loss(s_half, h_half).item() == 0.0


def test_difference_loss_reported_by_the_model_is_gamma_times_the_formula():
    model = build("adversarial", tasks="[cls:3, binary]", diff_weight=0.7)
    x = torch.randn(6, 16)
    model(x)
    with torch.no_grad():
        s = pool(model.shared(x)[-1])
        expected = sum(difference_loss(s, pool(model.task_modules[t](x)[-1])) for t in model.task_names)
    torch.testing.assert_close(model.extra_losses()["difference"].detach(), 0.7 * expected)


def test_discriminator_descends_the_cross_entropy_and_the_shared_encoder_ascends_it():
    model = build("adversarial", tasks="[cls:3, binary]", adv_weight=0.25)
    x = torch.randn(6, 16)
    source = torch.tensor([0, 1, 1, 0, 1, 0])
    model(x, source_task=source)
    model.zero_grad(set_to_none=True)
    model.extra_losses()["adversarial"].backward()
    disc, encoder = list(model.discriminator.parameters()), list(model.shared.parameters())
    # the same cross-entropy computed without the reversal layer
    ce = F.cross_entropy(model.discriminator(pool(model.shared(x)[-1])), source)
    expected = torch.autograd.grad(0.25 * ce, disc + encoder)
    for p, g in zip(disc, expected[: len(disc)]):
        torch.testing.assert_close(p.grad, g)  # the discriminator learns to classify the task
    for p, g in zip(encoder, expected[len(disc):]):
        torch.testing.assert_close(p.grad, -g)  # the shared encoder learns to fool it
    for t in model.task_names:
        assert all(p.grad is None for p in model.task_modules[t].parameters())


def test_task_membership_from_source_task_and_targets():
    model = build("adversarial", tasks="[cls:3, binary]")
    x = torch.randn(4, 16)
    with torch.no_grad():  # the discriminator always answers task 0 ('cls')
        model.discriminator.weight.zero_()
        model.discriminator.bias.copy_(torch.tensor([5.0, 0.0]))
    model(x, source_task=torch.tensor([0, 1, 1, 1]))
    assert model.extra_metrics()["discriminator_accuracy"] == pytest.approx(0.25)
    model(x, source_task="binary")
    assert model.extra_metrics()["discriminator_accuracy"] == 0.0
    expected = 0.05 * F.cross_entropy(model.discriminator(pool(model.shared(x)[-1])), torch.ones(4, dtype=torch.long))
    torch.testing.assert_close(model.extra_losses()["adversarial"], expected)
    # a multi-input batch: only the source task's labels are present
    model(x, targets={"cls": torch.tensor([0, 1, 2, 0])})
    assert model.extra_metrics()["discriminator_accuracy"] == 1.0
    # single-input data labelled for every task carries no task identity: zero loss, still in the graph
    model(x, targets={"cls": torch.tensor([0, 1, 2, 0]), "binary": torch.ones(4)})
    loss = model.extra_losses()["adversarial"]
    assert loss.item() == 0.0 and loss.requires_grad
    assert "discriminator_accuracy" not in model.extra_metrics()


# ------------------------------------------------------------------------------ MMoE, CGC, PLE
def test_mmoe_mixes_experts_with_per_task_softmax_gates():
    model = build("mmoe", "tiny").eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        features = model.backbone(x)
        z = features[-1]
        experts = [e(z) for e in model.experts]
        for task, head in model.heads.items():
            gate = model.last_gates[task]
            assert gate.shape == (3, 3)
            assert bool((gate >= 0).all()) and torch.allclose(gate.sum(1), torch.ones(3))
            logits = z.mean((2, 3)) @ model.gates[task].proj.weight.T  # softmax(W_k x)
            torch.testing.assert_close(gate, torch.softmax(logits, 1))
            mixed = sum(gate[:, i, None, None, None] * experts[i] for i in range(3))  # Σ_i g_i · f_i
            torch.testing.assert_close(out[task], head([*features[:-1], mixed], (32, 32)))
    assert not torch.allclose(model.last_gates["seg"], model.last_gates["cls"])


def test_mmoe_with_one_expert_is_a_shared_bottom_model():
    model = build("mmoe", num_experts=1).eval()
    x = torch.randn(4, 16)
    with torch.no_grad():
        out = model(x)
        features = model.backbone(x)
        bottom = model.experts[0](features[-1])
        for task, head in model.heads.items():
            assert torch.equal(model.last_gates[task], torch.ones(4, 1))
            torch.testing.assert_close(out[task], head([*features[:-1], bottom], None))


def test_mmoe_accepts_a_single_task():
    model = build("mmoe", tasks="[cls:3]")
    check_strategy(model, torch.randn(2, 16))
    assert set(model.last_gates) == {"cls"}


def test_cgc_gates_mix_own_specific_and_shared_experts():
    model = build("cgc", "tiny").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        features = model.backbone(x)
        z = features[-1]
        (level,) = model.levels
        assert level.shared_gate is None
        shared = [e(z) for e in level.shared]
        for task, head in model.heads.items():
            (gate,) = model.last_task_gates[task]
            assert gate.shape == (2, 4) and bool((gate >= 0).all())
            torch.testing.assert_close(gate.sum(1), torch.ones(2))
            pool_ = [e(z) for e in level.specific[task]] + shared  # S^k = [E_k ; E_s]
            mixed = sum(gate[:, i, None, None, None] * e for i, e in enumerate(pool_))
            torch.testing.assert_close(out[task], head([*features[:-1], mixed], (32, 32)))
    assert model.last_shared_gates == []


def test_ple_levels_are_wired_as_in_the_paper():
    """An independent re-computation of a two-level PLE: specific experts read their
    task's input, shared experts the shared input, the shared gate mixes every expert."""
    model = build("ple", "mlp", tasks="{a: cls:3, b: binary, c: regression}", num_levels=2).eval()
    first, last = model.levels
    assert first.shared_gate is not None and last.shared_gate is None  # no shared output at the top
    assert first.shared_gate.proj.out_features == 3 * 1 + 2
    assert all(g.proj.out_features == 1 + 2 for g in first.task_gates.values())
    x = torch.randn(4, 16)

    def gate(g, inp):
        return torch.softmax(pool(inp) @ g.proj.weight.T, dim=1)

    def mixture(w, outs):
        return sum(w[:, i, None] * o for i, o in enumerate(outs))

    with torch.no_grad():
        out = model(x)
        z = model.backbone(x)[-1]
        spec1 = {t: [e(z) for e in first.specific[t]] for t in model.task_names}
        shared1 = [e(z) for e in first.shared]
        task_in = {t: mixture(gate(first.task_gates[t], z), spec1[t] + shared1) for t in model.task_names}
        everything = list(itertools.chain(*(spec1[t] for t in model.task_names))) + shared1
        shared_in = mixture(gate(first.shared_gate, z), everything)
        shared2 = [e(shared_in) for e in last.shared]
        for t, head in model.heads.items():
            spec2 = [e(task_in[t]) for e in last.specific[t]]
            final = mixture(gate(last.task_gates[t], task_in[t]), spec2 + shared2)
            torch.testing.assert_close(out[t], head([*model.backbone(x)[:-1], final], None))
    assert len(model.last_shared_gates) == 1
    for weights in [*model.last_shared_gates, *itertools.chain(*model.last_task_gates.values())]:
        assert bool((weights >= 0).all())
        torch.testing.assert_close(weights.sum(1), torch.ones(4))


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 4), channels=st.integers(1, 6), experts=st.integers(1, 5), spatial=st.booleans())
def test_gate_weights_are_a_distribution_and_mix_is_their_weighted_sum(batch, channels, experts, spatial):
    shape = (batch, channels, 3, 2) if spatial else (batch, channels)
    x = torch.randn(*shape) * 10
    w = Gate(channels, experts)(x)
    assert w.shape == (batch, experts) and bool((w >= 0).all())
    torch.testing.assert_close(w.sum(1), torch.ones(batch))
    outs = torch.randn(batch, experts, *shape[1:])
    expected = sum(w[:, i].reshape(batch, *([1] * (len(shape) - 1))) * outs[:, i] for i in range(experts))
    torch.testing.assert_close(mix(w, outs), expected)


# -------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(("strategy", "overrides", "message"), [
    ("adversarial", {"adv_weight": -0.1}, "adv_weight must be a finite number >= 0"),
    ("adversarial", {"diff_weight": float("nan")}, "diff_weight must be a finite number >= 0"),
    ("adversarial", {"diff_norm": "l2"}, "diff_norm must be one of unit, none"),
    ("mmoe", {"num_experts": 0}, "num_experts must be a positive integer"),
    ("mmoe", {"expert_hidden": []}, "expert_hidden must be a non-empty list of positive integers"),
    ("mmoe", {"dropout": 1.0}, "dropout must be a number in [0, 1)"),
    ("cgc", {"specific_experts": 0}, "for shared experts only use mmoe"),
    ("ple", {"shared_experts": -1}, "shared_experts must be a positive integer"),
    ("ple", {"num_levels": 0}, "num_levels must be a positive integer"),
])
def test_invalid_hyper_parameters_say_what_would_work(strategy, overrides, message):
    with pytest.raises(InvalidArgumentError, match=re.escape(message)):
        build(strategy, **overrides)


def test_adversarial_needs_two_tasks():
    with pytest.raises(InvalidArgumentError, match=r"at least two tasks.*use hard\(\.\.\.\) for a single task"):
        build("adversarial", tasks="[cls:3]")


def test_bad_source_task_is_reported():
    model = build("adversarial", tasks="[cls:3, binary]")
    x = torch.randn(2, 16)
    with pytest.raises(UnknownComponentError, match="Did you mean 'binary'"):
        model(x, source_task="binar")
    with pytest.raises(InvalidArgumentError, match=r"indices must lie in 0\.\.1"):
        model(x, source_task=torch.tensor([0, 2]))
    with pytest.raises(InvalidArgumentError, match=r"\[2\] integer tensor of task indices"):
        model(x, source_task=torch.zeros(3, dtype=torch.long))


@settings(max_examples=15, deadline=None)
@given(value=st.one_of(st.integers(max_value=0), st.floats(allow_nan=True), st.booleans(), st.just("eight")))
def test_any_non_positive_or_non_integer_expert_count_is_refused(value):
    with pytest.raises(InvalidArgumentError, match="num_experts must be a positive integer"):
        build("mmoe", num_experts=value)
