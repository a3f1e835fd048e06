"""Stage-wise sharing strategies: soft, cross_stitch, mtan, nddr, sluice.

Each is checked for its contract (check_strategy, save/load), its defining property against an
independent computation, and its errors on bad input.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import mtlzoo
from mtlzoo import hookimpl
from mtlzoo.errors import DataError, IncompatibleComponentsError, InvalidArgumentError
from mtlzoo.model import Backbone, FeatureInfo
from mtlzoo.plugins import default_zoo, module_plugin
from mtlzoo.testing import check_strategy, registered
from mtlzoo_builtin.strategies.cross_stitch import CrossStitchUnit
from mtlzoo_builtin.strategies.mtan import AttentionMask
from mtlzoo_builtin.strategies.sluice import subspace_orthogonality
from mtlzoo_builtin.strategies.soft import tensor_trace_norm

TINY = "tiny(widths=[8, 16, 16])"
OWN = ["soft", "cross_stitch", "mtan", "nddr", "sluice"]
X = torch.randn(2, 3, 16, 16)


def build(strategy: str, tasks: str = "[cls:3, seg:2]", backbone: str = TINY, **hyper) -> mtlzoo.MTLModel:
    extra = "".join(f", {k}={v}" for k, v in hyper.items())
    return mtlzoo.create_model(f"{strategy}(backbone={backbone}, tasks={tasks}{extra})")


def independent(model, task: str, x: torch.Tensor) -> torch.Tensor:
    """Task ``task``'s column run on its own (stem, stages) and its head: a single-task network."""
    return model.heads[task](model.columns[task](x), tuple(x.shape[2:]))


# -------------------------------------------------------------------------------- contract
@pytest.mark.parametrize("name", OWN)
def test_three_tasks_on_tiny_pass_check_strategy_and_round_trip(name, tmp_path):
    model = build(name, "[cls:3, seg:2, regression]")
    outputs = check_strategy(model, X)
    assert outputs["seg"].shape == (2, 2, 16, 16) and outputs["regression"].shape == (2, 1)
    model.eval()
    path = mtlzoo.save(model, tmp_path / f"{name}.safetensors" if name in ("mtan", "sluice") else tmp_path / "m.pt")
    loaded = mtlzoo.load(path).eval()
    with torch.no_grad():
        before, after = model(X), loaded(X)
    for task in before:
        torch.testing.assert_close(after[task], before[task], rtol=0, atol=0)


@pytest.mark.parametrize("name", OWN)
def test_task_parameters_are_trained_by_their_own_task_loss_only(name):
    # what the gradient engine relies on: another task's loss never reaches task t's parameters
    model = build(name, "[cls:3, seg:2, regression]").train()
    out = model(X)
    for t in model.task_names:
        params = list(model.task_parameters(t))
        assert params
        for s in model.task_names:
            grads = torch.autograd.grad(out[s].square().mean(), params, retain_graph=True, allow_unused=True)
            reached = any(g is not None and g.abs().sum() > 0 for g in grads)
            assert reached == (s == t), f"loss of {s!r} {'reaches' if reached else 'misses'} parameters of {t!r}"


@pytest.mark.parametrize("name", ["soft", "cross_stitch", "nddr", "sluice"])
def test_vector_backbone_passes_check_strategy(name):
    model = build(name, "[cls:3, binary]", backbone="mlp(in_features=6, hidden=[8, 4])")
    outputs = check_strategy(model, torch.randn(4, 6))
    assert outputs["cls"].shape == (4, 3)


TIMM = {
    "resnet": "timm(model=resnet10t)",
    "convnext": "timm(model=convnext_atto)",
    "vit": "timm(model=vit_tiny_patch16_224, img_size=32)",
}


@pytest.mark.parametrize("family", list(TIMM))
@pytest.mark.parametrize("name", OWN)
def test_timm_cnn_and_vit_backbones_pass_check_strategy(name, family):
    model = build(name, backbone=TIMM[family])
    outputs = check_strategy(model, torch.randn(2, 3, 32, 32))
    assert outputs["seg"].shape == (2, 2, 32, 32) and outputs["cls"].shape == (2, 3)


def test_timm_convnext_cross_stitch_round_trips(tmp_path):
    model = build("cross_stitch", backbone=TIMM["convnext"], granularity="channel").eval()
    x = torch.randn(1, 3, 32, 32)
    loaded = mtlzoo.load(mtlzoo.save(model, tmp_path / "cs.safetensors")).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)["seg"], model(x)["seg"], rtol=0, atol=0)


def test_soft_works_on_a_backbone_without_stages_the_stagewise_ones_refuse_it():
    class Flat(Backbone):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, 2, 1)
            self.feature_info = FeatureInfo((4,), (2,))

        def forward(self, x):
            return [self.conv(x)]

    @hookimpl
    def mtlzoo_register_backbones(register):
        register("flat", Flat, tags={"spatial"})

    with registered(module_plugin(mtlzoo_register_backbones=mtlzoo_register_backbones), "flat_plugin"):
        check_strategy(build("soft", backbone="flat"), X)
        for name in ["cross_stitch", "mtan", "nddr", "sluice"]:
            with pytest.raises(IncompatibleComponentsError, match=r"'stages'.*Backbones that fit: .*tiny"):
                build(name, backbone="flat")


# ------------------------------------------------------------------------------------ soft
def _fill(model, values):
    """Set every tied weight of copy t to the constant values[t]; other parameters to random."""
    with torch.no_grad():
        for task, value in zip(model.task_names, values):
            params = dict(model.task_modules[task].named_parameters())
            for name, p in params.items():
                p.copy_(torch.full_like(p, value) if name in model.tied else torch.randn_like(p) * 10)


def test_soft_l2_equals_the_formula_on_known_weights_and_ignores_biases_and_norms():
    pairwise = build("soft", "[cls:3, seg:2, binary]", weight=0.5)
    mean = build("soft", "[cls:3, seg:2, binary]", weight=0.5, mode="mean")
    a, b, c = 1.0, 3.0, -2.0
    for model in (pairwise, mean):
        _fill(model, (a, b, c))
    n = sum(p.numel() for name, p in pairwise.task_modules["cls"].named_parameters() if name in pairwise.tied)
    # tiny: every conv weight is tied, no BN parameter or bias is
    assert all(name.endswith("0.weight") for name in pairwise.tied) and len(pairwise.tied) == 4
    expected_pairwise = n * ((a - b) ** 2 + (a - c) ** 2 + (b - c) ** 2)
    m = (a + b + c) / 3
    expected_mean = n * ((a - m) ** 2 + (b - m) ** 2 + (c - m) ** 2)
    assert pairwise.penalty_value().item() == pytest.approx(expected_pairwise, rel=1e-5)
    assert pairwise.extra_losses()["soft_l2"].item() == pytest.approx(0.5 * expected_pairwise, rel=1e-5)
    assert mean.penalty_value().item() == pytest.approx(expected_mean, rel=1e-5)


def test_soft_l2_is_zero_for_identical_copies_and_its_gradient_pulls_them_together():
    model = build("soft", weight=0.1)
    assert model.extra_losses()["soft_l2"].item() > 0  # copies start from independent inits
    cls, seg = model.task_modules["cls"], model.task_modules["seg"]
    seg.load_state_dict(cls.state_dict())
    assert model.extra_losses()["soft_l2"].item() == 0.0
    with torch.no_grad():
        seg.stem[0].weight.add_(1.0)
    model.zero_grad()
    model.extra_losses()["soft_l2"].backward()
    # d/dW_cls of λ‖W_cls - W_seg‖² = 2λ(W_cls - W_seg) = -0.2
    torch.testing.assert_close(cls.stem[0].weight.grad, torch.full_like(cls.stem[0].weight, -0.2))
    assert list(model.shared_parameters()) == []
    assert {id(p) for p in model.task_parameters("seg")} == {id(p) for p in [*seg.parameters(),
                                                                             *model.heads["seg"].parameters()]}


def _numpy_trace_norm(weights, unfolding):
    stacked = np.stack([w.detach().double().numpy() for w in weights], axis=-1)
    nuc = lambda m: np.linalg.svd(m, compute_uv=False).sum()  # noqa: E731
    if unfolding == "laf":
        return nuc(np.stack([w.detach().double().numpy().ravel() for w in weights]))
    if unfolding == "tucker":
        return sum(nuc(np.moveaxis(stacked, k, 0).reshape(stacked.shape[k], -1)) for k in range(stacked.ndim))
    return sum(nuc(stacked.reshape(int(np.prod(stacked.shape[:j])), -1)) for j in range(1, stacked.ndim))


@pytest.mark.parametrize("unfolding", ["laf", "tucker", "tt"])
def test_trace_norm_equals_the_sum_of_singular_values_of_the_unfolding(unfolding):
    weights = [torch.randn(5, 3, 2, 2) for _ in range(3)]
    got = tensor_trace_norm(weights, unfolding).item()
    assert got == pytest.approx(_numpy_trace_norm(weights, unfolding), rel=1e-4)
    model = build("soft", "[cls:3, seg:2, binary]", penalty="trace_norm", unfolding=unfolding, weight=2.0,
                  tie='"stages.*"')
    assert all(name.startswith("stages.") for name in model.tied)
    params = [dict(model.task_modules[t].named_parameters()) for t in model.task_names]
    expected = sum(_numpy_trace_norm([p[name] for p in params], unfolding) for name in model.tied)
    assert model.extra_losses()["soft_trace_norm"].item() == pytest.approx(2.0 * expected, rel=1e-4)


def test_trace_norm_laf_of_identical_copies_is_sqrt_t_times_the_weight_norm():
    # rank one: the only singular value of the T x D matrix of equal rows is sqrt(T) ‖w‖
    w = torch.randn(4, 6)
    assert tensor_trace_norm([w, w, w, w], "laf").item() == pytest.approx(2 * w.norm().item(), rel=1e-5)


# ---------------------------------------------------------------------------- cross-stitch
def test_cross_stitch_with_identity_alpha_equals_independent_single_task_networks():
    model = build("cross_stitch", "[cls:3, seg:2, binary]", alpha_self=1.0).eval()
    assert all(torch.equal(u.alpha, torch.eye(3)) for u in model.units)
    with torch.no_grad():
        out = model(X)
        for task in model.task_names:
            torch.testing.assert_close(out[task], independent(model, task, X))


def test_cross_stitch_unit_mixes_as_the_formula_says():
    alpha = torch.tensor([[0.9, 0.1], [0.3, 0.7]])
    xa, xb = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    ya, yb = CrossStitchUnit(alpha, 4, "scalar")([xa, xb])
    torch.testing.assert_close(ya, 0.9 * xa + 0.1 * xb)
    torch.testing.assert_close(yb, 0.3 * xa + 0.7 * xb)
    unit = CrossStitchUnit(alpha, 4, "channel")
    with torch.no_grad():
        unit.alpha[0, 1, 2] = 0.5  # channel 2 of task 0 takes more of task 1
    ya, _ = unit([xa, xb])
    torch.testing.assert_close(ya[:, 2], 0.9 * xa[:, 2] + 0.5 * xb[:, 2])
    torch.testing.assert_close(ya[:, 0], 0.9 * xa[:, 0] + 0.1 * xb[:, 0])


def test_cross_stitch_default_init_generalises_the_papers_rows_to_t_tasks():
    two = build("cross_stitch")
    torch.testing.assert_close(two.units[0].alpha.detach(), torch.tensor([[0.9, 0.1], [0.1, 0.9]]))
    four = build("cross_stitch", "[cls:3, seg:2, binary, regression]", alpha_self=0.7, granularity="channel")
    alpha = four.units[1].alpha.detach()
    assert alpha.shape == (4, 4, 16)
    torch.testing.assert_close(alpha.sum(1), torch.ones(4, 16))
    assert alpha[0, 0, 0].item() == pytest.approx(0.7) and alpha[0, 3, 5].item() == pytest.approx(0.1)


def test_cross_stitch_columns_start_from_single_task_checkpoints(tmp_path):
    singles = {}
    for task, spec in {"cls": "cls:3", "seg": "seg:2"}.items():
        single = mtlzoo.create_model(f"hard(backbone={TINY}, tasks=[{spec}])").eval()
        singles[task] = single
        mtlzoo.save(single, tmp_path / f"{task}.pt")
    # a plain state dict works too
    torch.save(singles["seg"].backbone.state_dict(), tmp_path / "seg_backbone.pt")
    model = build("cross_stitch", alpha_self=1.0,
                  init_from=f'{{cls: "{tmp_path / "cls.pt"}", seg: "{tmp_path / "seg_backbone.pt"}"}}').eval()
    for task in ("cls", "seg"):
        model.heads[task].load_state_dict(singles[task].heads[task].state_dict())
    with torch.no_grad():
        out = model(X)
        for task in ("cls", "seg"):
            torch.testing.assert_close(out[task], singles[task](X)[task])
    # the checkpoints are not needed to load the model again: the weights come from its own file
    saved = mtlzoo.save(model, tmp_path / "stitched.pt")
    (tmp_path / "cls.pt").unlink()
    with torch.no_grad():
        torch.testing.assert_close(mtlzoo.load(saved).eval()(X)["cls"], out["cls"])


def test_cross_stitch_init_from_errors_name_the_file_and_task(tmp_path):
    with pytest.raises(InvalidArgumentError, match=r"init_from\['cls'\].*is not a file"):
        build("cross_stitch", init_from=f'{{cls: "{tmp_path / "missing.pt"}"}}')
    with pytest.raises(InvalidArgumentError, match=r"not a task of this model.*Did you mean 'seg'"):
        build("cross_stitch", init_from=f'{{segm: "{tmp_path}"}}')
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pt")
    with pytest.raises(DataError, match="do not fit the backbone of task 'cls'"):
        build("cross_stitch", init_from=f'{{cls: "{tmp_path / "other.pt"}"}}')


@pytest.mark.parametrize("name, key, mult", [("cross_stitch", "alpha_lr_mult", 100.0), ("nddr", "nddr_lr_mult", 100.0),
                                             ("cross_stitch", "alpha_lr_mult", 7.0)])
def test_param_groups_apply_the_learning_rate_multiplier(name, key, mult):
    model = build(name, **({key: mult} if mult != 100.0 else {}))
    groups = model.param_groups(0.01)
    assert [g["lr"] for g in groups] == [0.01, pytest.approx(0.01 * mult)]
    if name == "cross_stitch":
        expected = {id(u.alpha) for u in model.units}
    else:
        expected = {id(p) for level in range(3) for layer in model.nddr_layers(level) for p in layer.parameters()}
    assert {id(p) for p in groups[1]["params"]} == expected
    optimizer = torch.optim.SGD(groups, lr=0.01)
    assert optimizer.param_groups[1]["lr"] == pytest.approx(0.01 * mult)


# ------------------------------------------------------------------------------------- MTAN
def _masks(model, x):
    seen = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.append(out.detach()))
             for m in model.modules() if isinstance(m, AttentionMask)]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def test_mtan_masks_lie_strictly_between_zero_and_one_and_match_the_stage_outputs():
    model = build("mtan", "[cls:3, seg:2, binary]").train()
    masks = _masks(model, X)
    assert len(masks) == 3 * 3
    shapes = [f.shape for f in model.backbone(X)]
    for i, mask in enumerate(masks):
        assert mask.shape == shapes[i // 3]  # stage-major, then task
        assert (mask > 0).all() and (mask < 1).all()


def test_mtan_mask_of_ones_reduces_to_the_shared_features():
    model = build("mtan").eval()
    hooks = [m.register_forward_hook(lambda _m, _i, out: torch.ones_like(out))
             for m in model.modules() if isinstance(m, AttentionMask)]
    with torch.no_grad():
        out = model(X)
        shared = model.backbone(X)
        for task in model.task_names:
            torch.testing.assert_close(out[task], model.heads[task](shared, (16, 16)))
    for h in hooks:
        h.remove()
    with torch.no_grad():  # and a real mask changes the prediction
        assert not torch.allclose(model(X)["seg"], out["seg"])


def test_mtan_partition_attention_per_task_trunk_and_refinement_shared():
    model = build("mtan")
    shared = {id(p) for p in model.shared_parameters()}
    assert shared == {id(p) for p in [*model.backbone.parameters(), *model.refine.parameters()]}
    own = {id(p) for p in model.task_parameters("cls")}
    assert own == {id(p) for p in [*model.task_modules["cls"].parameters(), *model.heads["cls"].parameters()]}


# ------------------------------------------------------------------------------------- NDDR
def test_nddr_with_alpha_one_beta_zero_equals_independent_columns():
    model = build("nddr", "[cls:3, seg:2, binary]", alpha=1.0, beta=0.0).eval()
    for module in [*model.fusion.modules(), *model.task_modules.modules()]:
        if isinstance(module, nn.BatchNorm2d):
            module.eps = 0.0  # BN at its initial statistics is then the identity; tiny's ReLU features pass ReLU
    with torch.no_grad():
        out = model(X)
        for task in model.task_names:
            torch.testing.assert_close(out[task], independent(model, task, X))


def test_nddr_init_is_the_constant_diagonal_and_the_last_layer_belongs_to_its_task():
    model = build("nddr", "[cls:3, seg:2, binary]")
    w = model.fusion[0]["seg"].reduce.weight.detach()[:, :, 0, 0]  # [8, 3*8]
    torch.testing.assert_close(w[:, 8:16], 0.9 * torch.eye(8))
    torch.testing.assert_close(w[:, :8], 0.05 * torch.eye(8))  # (1 - 0.9) / (3 - 1)
    own = {id(p) for p in model.task_parameters("seg")}
    assert {id(p) for p in model.task_modules["seg"].parameters()} <= own
    assert not own & {id(p) for p in model.fusion.parameters()}


# ----------------------------------------------------------------------------------- sluice
def test_sluice_identity_alpha_and_one_hot_beta_reduce_to_independent_columns():
    model = build("sluice", "[cls:3, seg:2, binary]", orthogonality=0.3, orthogonality_normalize="false").eval()
    with torch.no_grad():
        for stitch in model.stitch:
            stitch.alpha.copy_(torch.eye(6))
        for beta in model.task_modules.values():
            beta.beta.copy_(torch.tensor([0.0, 0.0, 1.0]))
        out = model(X)
        penalty = model.extra_losses()["sluice_orthogonality"]
        expected = 0.0
        for task in model.task_names:
            torch.testing.assert_close(out[task], independent(model, task, X))
            for h in model.columns[task](X):
                a, b = h.movedim(1, -1).reshape(-1, h.shape[1]).double().chunk(2, dim=1)
                expected += ((a.T @ b) ** 2).sum().item()
    assert penalty.item() == pytest.approx(0.3 * expected, rel=1e-4)


def test_sluice_alpha_mixes_subspaces_and_beta_mixes_layers():
    model = build("sluice", alpha_init="imbalanced", beta_init="balanced")
    alpha = model.stitch[0].alpha.detach()
    assert alpha.shape == (4, 4) and alpha[1, 1].item() == pytest.approx(0.9)
    assert alpha[1, 2].item() == pytest.approx(0.1 / 3)
    torch.testing.assert_close(model.task_modules["cls"].beta.detach(), torch.full((3,), 1 / 3))
    xa, xb = torch.randn(2, 4), torch.randn(2, 4)
    with torch.no_grad():
        model.stitch[0].alpha.zero_()
        model.stitch[0].alpha[0, 3] = 1.0  # task a, subspace 0 <- task b, subspace 1
    ya, _ = model.stitch[0]([xa, xb])
    torch.testing.assert_close(ya[:, :2], xb[:, 2:])
    torch.testing.assert_close(ya[:, 2:], torch.zeros(2, 2))


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 3))
def test_orthogonality_is_zero_for_orthogonal_subspaces_and_normalised_to_at_most_one(batch, half, size):
    h = torch.randn(batch, 2 * half, size, size)
    assert 0.0 <= subspace_orthogonality(h, 2).item() <= 1.0 + 1e-5
    # subspace 0 lives on even positions (batch x pixels), subspace 1 on odd ones: G_0ᵀ G_1 = 0
    even = (torch.arange(batch * size * size).reshape(batch, 1, size, size) % 2 == 0).float()
    disjoint = torch.cat([h[:, :half] * even, h[:, half:] * (1 - even)], dim=1)
    assert subspace_orthogonality(disjoint, 2, normalize=False).item() == 0.0
    assert subspace_orthogonality(torch.cat([h[:, :half], h[:, :half]], 1), 2).item() > 0.0


# --------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("name", ["soft", "cross_stitch", "nddr", "sluice"])
def test_a_single_task_is_refused_with_a_hint(name):
    with pytest.raises(InvalidArgumentError, match=r"at least 2 tasks.*use 'hard'"):
        build(name, "[cls:3]")


def test_mtan_on_a_vector_backbone_says_what_fits():
    with pytest.raises(IncompatibleComponentsError, match=r"'spatial'.*Backbones that fit: .*tiny"):
        build("mtan", backbone="mlp(in_features=4)")


@pytest.mark.parametrize("spec, message", [
    ("soft(weight=-0.1)", r"weight \(the penalty's λ\) must be a finite number >= 0"),
    ("soft(penalty=trace)", "not one of l2, trace_norm. Did you mean 'trace_norm'"),
    ("soft(mode=mean, penalty=trace_norm)", "mode= applies to penalty=l2"),
    ("soft(tie=\"heads.*\")", "matches no backbone parameter"),
    ("cross_stitch(alpha=[[0.9, 0.1]])", r"alpha must be a 2x2 matrix .* e.g. alpha=\[\[0.9, 0.1\], \[0.1, 0.9\]\]"),
    ("cross_stitch(alpha_self=1.2)", r"alpha_self must be in \[0.0, 1.0\], got 1.2"),
    ("cross_stitch(alpha_self=-0.5)", r"alpha_self must be in \[0.0, 1.0\]"),
    ("cross_stitch(granularity=channels)", "Did you mean 'channel'"),
    ("cross_stitch(alpha_lr_mult=-1)", "alpha_lr_mult must be >= 0.0"),
    ("nddr(init=ones)", "init='ones' is not one of constant, xavier"),
    ("nddr(nddr_lr_mult=-3)", "nddr_lr_mult must be >= 0.0"),
    ("sluice(orthogonality=-1)", "orthogonality must be >= 0.0"),
    ("sluice(subspaces=3)", "subspaces=3 must divide the channels of every stage"),
    ("sluice(alpha_init=uniform)", "alpha_init='uniform' is not one of balanced, imbalanced"),
    ("mtan(attention_reduction=0)", "attention_reduction must be a positive integer"),
])
def test_invalid_hyper_parameters_give_clear_errors(spec, message):
    name, rest = spec.split("(", 1)
    full = f"{name}(backbone={TINY}, tasks=[cls:3, seg:2], {rest}"
    with pytest.raises((InvalidArgumentError, IncompatibleComponentsError), match=message):
        mtlzoo.create_model(full)


def test_every_own_strategy_cites_its_paper():
    for name in OWN:
        entry = default_zoo().strategies.get(name)
        assert entry.summary and entry.paper, name
        assert any(str(year) in entry.paper for year in range(2015, 2020)), entry.paper
