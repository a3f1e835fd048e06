"""Backbones from timm and torchvision, the staged adapter, dilated ResNets, offline weights, and
the per-argument tags hook of the core (``Entry.tags_for``).

Independent references: timm's own ``forward_intermediates`` on the plain classifier (a different
code path from the features_only model the adapter cuts), timm's input-conv adaptation rule, and
torchvision's ResNet run layer by layer.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import timm as timm_lib
import torch
import torchvision.models as tvm
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from test_timm_sweep import SWEEP

import mtlzoo
import mtlzoo_builtin.heads.pooled as pooled_heads
import mtlzoo_builtin.tasks.classification as classification_tasks
from mtlzoo import hookimpl
from mtlzoo.errors import (
    DataError,
    IncompatibleComponentsError,
    InvalidArgumentError,
    MtlzooError,
    UnknownComponentError,
)
from mtlzoo.model import Backbone, BackboneFactory, FeatureInfo, MTLModel
from mtlzoo.plugins import default_zoo, module_plugin
from mtlzoo.registry import Zoo
from mtlzoo.testing import check_backbone, check_strategy
from mtlzoo_builtin.backbones import _staged
from mtlzoo_builtin.backbones.dilated_resnet import dilated_resnet
from mtlzoo_builtin.backbones.timm import ALIASES, STAGED_FAMILIES, build_timm_backbone, resolve_model, timm_tags
from mtlzoo_builtin.backbones.torchvision import torchvision as tv_backbone

STAGED = {"stages", "spatial"}


def _save(state: dict[str, torch.Tensor], path: Path) -> Path:
    state = {k: v.detach().clone().contiguous() for k, v in state.items()}
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


# ------------------------------------------------------------------ staged adapter vs timm's own path
FAMILIES = [
    pytest.param("resnet18", {}, "w.safetensors", id="resnet"),
    pytest.param("convnext_atto", {}, "w.pth", id="convnext"),
    pytest.param("efficientnet_b0", {}, "w.safetensors", id="efficientnet"),
    pytest.param("regnetx_002", {}, "w.pth", id="regnet"),
    pytest.param("vit_tiny_patch16_224", {"img_size": 32, "class_token": False, "global_pool": "avg"},
                 "w.safetensors", id="vit"),
    pytest.param("swin_tiny_patch4_window7_224",
                 {"img_size": 32, "window_size": 2, "embed_dim": 16, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)},
                 "w.pth", id="swin-nhwc"),
]


@pytest.mark.parametrize("name, kwargs, filename", FAMILIES)
def test_stem_then_stages_reproduce_timm_forward_intermediates(name, kwargs, filename, tmp_path):
    """Weights of a plain timm classifier go through pretrained_file (a round trip through timm's
    loader); stem -> stages must equal timm's forward_intermediates of that classifier."""
    plain = timm_lib.create_model(name, **kwargs).eval()
    path = _save(plain.state_dict(), tmp_path / filename)
    backbone = build_timm_backbone(name, pretrained_file=str(path), **kwargs)
    assert backbone.staged and "stages" in timm_tags(name)
    x = torch.randn(2, 3, 32, 32)
    features = check_backbone(backbone, x, tags=STAGED)  # eval features, then stem->stages, then backward
    with torch.no_grad():
        reference = plain.forward_intermediates(x, indices=backbone.levels, intermediates_only=True)
    assert len(features) == len(reference) == len(backbone.stages)
    for level, (ours, theirs) in enumerate(zip(features, reference)):
        torch.testing.assert_close(ours, theirs, msg=f"level {level} of {name} differs from timm")


def test_default_levels_are_the_stride_4_to_32_stages():
    backbone = build_timm_backbone("resnet18")
    assert backbone.feature_info == FeatureInfo((64, 128, 256, 512), (4, 8, 16, 32))
    assert backbone.levels == [1, 2, 3, 4]
    assert backbone.stem.names() == ["conv1", "bn1", "act1"]
    assert [s.names() for s in backbone.stages] == [["maxpool", "layer1"], ["layer2"], ["layer3"], ["layer4"]]
    # every parameter is in exactly one of stem and stages, so strategies can own them per stage
    parts = [backbone.stem, *backbone.stages]
    assert sum(p.numel() for m in parts for p in m.parameters()) == sum(p.numel() for p in backbone.parameters())


def test_out_indices_select_timm_levels_and_merge_skipped_ones():
    backbone = build_timm_backbone("resnet18", out_indices=[2, 4])
    assert backbone.feature_info.reductions == (8, 32) and backbone.feature_info.channels == (128, 512)
    assert [s.names() for s in backbone.stages] == [["layer2"], ["layer3", "layer4"]]
    check_backbone(backbone, tags=STAGED)
    with pytest.raises(InvalidArgumentError, match="could not build 'resnet18'"):
        build_timm_backbone("resnet18", out_indices=[7])


def test_vit_class_token_is_dropped_when_staged_and_kept_by_timm_features(tmp_path):
    """ViTDet-style staging drops the class token, so it differs from timm's forward; staged=False
    is timm's own extractor (class token attending) at the same four block indices."""
    kwargs = {"img_size": 32}
    plain = timm_lib.create_model("vit_tiny_patch16_224", **kwargs).eval()
    path = _save(plain.state_dict(), tmp_path / "vit.safetensors")
    x = torch.randn(2, 3, 32, 32)
    staged = build_timm_backbone("vit_tiny_patch16_224", pretrained_file=str(path), **kwargs).eval()
    unstaged = build_timm_backbone("vit_tiny_patch16_224", pretrained_file=str(path), staged=False, **kwargs).eval()
    assert staged.levels == unstaged.levels == [2, 5, 8, 11]
    assert not hasattr(unstaged, "stages")
    with torch.no_grad():
        reference = plain.forward_intermediates(x, indices=[2, 5, 8, 11], intermediates_only=True)
        ours, theirs = staged(x), unstaged(x)
    for a, r in zip(theirs, reference):
        torch.testing.assert_close(a, r)
    assert not torch.allclose(ours[-1], reference[-1], atol=1e-3)
    assert timm_tags("vit_tiny_patch16_224", staged=False) == {"spatial"}


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 40), st.integers(1, 6))
def test_default_vit_groups_are_even_and_end_at_the_last_block(depth, groups):
    indices = _staged.default_vit_indices(depth, groups)
    assert indices == sorted(set(indices)) and indices[-1] == depth - 1
    assert len(indices) == min(groups, depth)
    sizes = [b - a for a, b in zip([-1, *indices], indices)]
    assert max(sizes) - min(sizes) <= 1


# ----------------------------------------------------------------------------------------- weights
def test_pretrained_file_adapts_the_first_conv_to_one_channel(tmp_path):
    plain = timm_lib.create_model("resnet10t")
    path = _save(plain.state_dict(), tmp_path / "r.pth")
    backbone = build_timm_backbone("resnet10t", pretrained_file=str(path), in_chans=1)
    # timm's rule for 3 -> 1 input channels: sum the RGB filters
    expected = plain.conv1[0].weight.sum(dim=1, keepdim=True)
    torch.testing.assert_close(backbone.stem.conv1[0].weight, expected)
    check_backbone(backbone, torch.randn(2, 1, 32, 32), tags=STAGED)


def test_pretrained_file_of_another_model_is_refused(tmp_path):
    unrelated = _save({"encoder.weight": torch.randn(4, 4)}, tmp_path / "other.safetensors")
    with pytest.raises(DataError, match=r"weights of timm model 'resnet10t' were not found in the file"):
        build_timm_backbone("resnet10t", pretrained_file=str(unrelated))
    wrong_shapes = _save(timm_lib.create_model("resnet18").state_dict(), tmp_path / "r18.pth")
    with pytest.raises(MtlzooError, match=r"r18\.pth"):
        build_timm_backbone("resnet34", pretrained_file=str(wrong_shapes))
    with pytest.raises(DataError, match="does not exist"):
        build_timm_backbone("resnet10t", pretrained_file=str(tmp_path / "missing.pth"))


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path


def test_pretrained_true_without_cache_names_what_it_looked_for(empty_caches):
    with pytest.raises(DataError) as info:
        build_timm_backbone("resnet10t", pretrained=True)
    message = str(info.value)
    assert "timm/resnet10t.c3_in1k/model.safetensors" in message and "never downloads" in message
    assert str(empty_caches / "torch" / "hub" / "checkpoints" / "resnet10t_176_c3-f3215ab1.pth") in message


def test_pretrained_true_loads_from_the_hub_cache_offline(empty_caches):
    import huggingface_hub.constants as hub_constants

    plain = timm_lib.create_model("resnet10t")
    repo = empty_caches / "hf" / "models--timm--resnet10t.c3_in1k"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    _save(plain.state_dict(), snapshot / "model.safetensors")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    backbone = build_timm_backbone("resnet10t", pretrained=True)
    torch.testing.assert_close(backbone.stages[3].layer4[0].conv1.weight, plain.layer4[0].conv1.weight)
    assert "HF_HUB_OFFLINE" not in os.environ and hub_constants.HF_HUB_OFFLINE is False  # restored


# ---------------------------------------------------------------------------------- names and input
def test_unknown_timm_model_suggests_close_names():
    with pytest.raises(UnknownComponentError, match="Did you mean 'resnet18'") as info:
        mtlzoo.create_model("hard(backbone=timm(model=resnet181), tasks=[cls:3])")
    assert "timm.list_models()" in str(info.value)
    with pytest.raises(UnknownComponentError, match="convnext_atto"):
        build_timm_backbone("convnext_ato")


def test_wrong_input_rank_and_channels_are_clear_errors():
    backbone = build_timm_backbone("resnet10t")
    with pytest.raises(InvalidArgumentError, match="expects 3 input channels, got 1"):
        backbone(torch.randn(2, 1, 32, 32))
    with pytest.raises(InvalidArgumentError, match="rank 4"):
        backbone(torch.randn(2, 3, 32))
    unstaged = build_timm_backbone("resnet10t", staged=False)
    with pytest.raises(InvalidArgumentError, match="expects 3 input channels"):
        unstaged(torch.randn(2, 4, 32, 32))
    with pytest.raises(InvalidArgumentError, match="features_only"):
        build_timm_backbone("resnet10t", features_only=True)
    with pytest.raises(InvalidArgumentError, match="does not accept"):
        build_timm_backbone("resnet10t", not_an_argument=1)


def test_aliases_fix_the_model_and_report_their_family_tags():
    zoo = default_zoo()
    for name, (model, _) in ALIASES.items():
        entry = zoo.backbones.get(name)
        assert resolve_model(model)[1] in STAGED_FAMILIES, name
        assert entry.tags_for({}) == STAGED and entry.tags_for({"staged": False}) == {"spatial"}
    backbone = zoo.backbones.create("resnet18", out_indices=[3, 4])
    assert backbone.model_name == "resnet18" and backbone.feature_info.channels == (256, 512)
    with pytest.raises(InvalidArgumentError, match=r"use timm\(model=...\)"):
        zoo.backbones.create("resnet18", model="resnet50")


def test_unstageable_family_is_built_without_stages_and_refused_by_staged_strategies():
    assert timm_tags("dpn48b") == {"spatial"}
    backbone = build_timm_backbone("dpn48b")
    assert not backbone.staged and not hasattr(backbone, "stages")
    check_backbone(backbone, tags={"spatial"})
    with pytest.raises(IncompatibleComponentsError, match="cannot be split into stages"):
        build_timm_backbone("dpn48b", staged=True)


# ------------------------------------------------------------------------------ the tags_for hook
def _fake_backbone(staged: bool = True) -> Backbone:
    return build_timm_backbone("resnet10t", staged=staged)


def test_tags_for_hook_decides_compatibility_before_building():
    built = []

    def factory(staged: bool = True) -> Backbone:
        built.append(staged)
        return _fake_backbone(staged)

    factory.tags_for = lambda staged=True: {"spatial", "stages", "bogus"} if staged else {"spatial"}

    class Needy(MTLModel):
        def forward(self, x, targets=None):
            return {}

    def needy(backbone: BackboneFactory, heads: dict) -> MTLModel:
        """A strategy that needs stages."""
        return Needy(list(heads))

    @hookimpl
    def mtlzoo_register_backbones(register):
        register("switchable", factory, tags={"spatial", "stages"})
        register("plain_fixed", lambda: _fake_backbone(False), tags={"spatial"})

    @hookimpl
    def mtlzoo_register_strategies(register):
        register("needy", needy, requires={"stages"})

    zoo = Zoo()
    zoo.add_plugin(module_plugin(mtlzoo_register_backbones=mtlzoo_register_backbones,
                                 mtlzoo_register_strategies=mtlzoo_register_strategies), "fake")
    zoo.add_plugin(classification_tasks, "tasks")
    zoo.add_plugin(pooled_heads, "heads")
    entry = zoo.backbones.get("switchable")
    assert entry.tags_for({"staged": True}) == {"spatial", "stages"}  # capped by the registered tags
    assert BackboneFactory(entry, {"staged": False}).tags == {"spatial"}
    assert zoo.backbones.get("plain_fixed").tags_for({"anything": 1}) == {"spatial"}  # no hook: registered
    with pytest.raises(IncompatibleComponentsError, match=r"switchable\(staged=false\).*has tags \['spatial'\]"):
        mtlzoo.create_model("needy(backbone=switchable(staged=false), tasks=[cls:3])", zoo=zoo)
    assert built == []  # refused before building
    mtlzoo.create_model("needy(backbone=switchable, tasks=[cls:3])", zoo=zoo)


def test_staged_timm_backbones_serve_stagewise_strategies():
    for spec in ("cross_stitch(backbone=timm(model=vit_tiny_patch16_224, img_size=32), tasks={a: cls:3, b: seg:2})",
                 "mtan(backbone=convnext_atto, tasks=[cls:3, seg:2])"):
        check_strategy(mtlzoo.create_model(spec), torch.randn(2, 3, 32, 32))
    with pytest.raises(IncompatibleComponentsError, match=r"timm\(model=dpn48b\)"):
        mtlzoo.create_model("cross_stitch(backbone=timm(model=dpn48b), tasks={a: cls:3, b: cls:3})")


# ---------------------------------------------------------------------------------- dilated ResNet
@pytest.mark.parametrize("output_stride, reductions, rate", [(8, (4, 8, 8, 8), 4), (16, (4, 8, 16, 16), 2)])
def test_dilated_resnet_trades_stride_for_dilation(output_stride, reductions, rate):
    backbone = dilated_resnet(depth=18, output_stride=output_stride)
    assert backbone.feature_info.reductions == reductions
    # the last stage's 3x3 convolutions are atrous with the rate that replaces its stride
    assert backbone.stages[3].layer4[1].conv1.dilation == (rate, rate)
    assert backbone.stages[3].layer4[1].conv1.weight.shape == (512, 512, 3, 3)  # same weights as resnet18
    features = check_backbone(backbone, torch.randn(2, 3, 64, 64), tags=STAGED)
    assert features[-1].shape[-2:] == (64 // output_stride, 64 // output_stride)
    with pytest.raises(InvalidArgumentError, match="output_stride must be 8 or 16"):
        dilated_resnet(output_stride=32)
    with pytest.raises(InvalidArgumentError, match="depth must be one of"):
        dilated_resnet(depth=20)


# ------------------------------------------------------------------------------------- torchvision
def test_torchvision_levels_equal_the_resnet_run_by_hand(tmp_path):
    net = tvm.resnet18().eval()
    path = _save(net.state_dict(), tmp_path / "tv.pth")
    backbone = tv_backbone("resnet18", weights=str(path))
    assert backbone.nodes == ["layer1", "layer2", "layer3", "layer4"]
    assert backbone.feature_info == FeatureInfo((64, 128, 256, 512), (4, 8, 16, 32))
    x = torch.randn(2, 3, 32, 32)
    features = check_backbone(backbone, x, tags={"spatial"})
    with torch.no_grad():
        h = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        for level, layer in enumerate((net.layer1, net.layer2, net.layer3, net.layer4)):
            h = layer(h)
            torch.testing.assert_close(features[level], h)


def test_torchvision_mobilenet_and_refusals(empty_caches):
    backbone = tv_backbone("mobilenet_v3_small")
    assert backbone.feature_info.reductions == (4, 8, 16, 32)
    check_backbone(backbone, tags={"spatial"})
    with pytest.raises(InvalidArgumentError, match="expects 3 input channels"):
        backbone(torch.randn(1, 1, 32, 32))
    with pytest.raises(DataError, match=r"not in the torch hub cache \(looked for .*resnet18-f37072fd.pth"):
        tv_backbone("resnet18", weights="DEFAULT")
    with pytest.raises(DataError, match="IMAGENET1K_V1"):
        tv_backbone("resnet18", weights="IMAGENET_V9")
    with pytest.raises(UnknownComponentError, match="Did you mean 'resnet18'"):
        tv_backbone("resnet181")
    with pytest.raises(IncompatibleComponentsError, match="tokens, not maps"):
        tv_backbone("vit_b_16")


# one small model of every staged family not in the sweep: the cut is found (meta device, no compute)
FAMILY_SAMPLES = {"resnest": "resnest14d", "res2net": "res2net50_14w_8s", "sknet": "skresnet18",
                  "densenet": "densenet121", "cspnet": "cs3darknet_s", "vovnet": "ese_vovnet19b_slim",
                  "metaformer": "poolformerv2_s12", "hgnet": "hgnetv2_b0",
                  "swin_transformer": "swin_tiny_patch4_window7_224"}


def test_every_staged_family_has_a_cut():
    covered = {resolve_model(name)[1] for name, _, _ in SWEEP}
    assert set(STAGED_FAMILIES) <= covered | set(FAMILY_SAMPLES) | {"vision_transformer", "deit"}
    for family, name in FAMILY_SAMPLES.items():
        assert resolve_model(name)[1] == family
        with torch.device("meta"):
            backbone = build_timm_backbone(name)
        assert backbone.staged and len(backbone.stages) == len(backbone.feature_info) == 4, name
        assert backbone.feature_info.reductions == (4, 8, 16, 32), name


def test_save_and_load_round_trip_a_staged_timm_model(tmp_path):
    model = mtlzoo.create_model("hard(backbone=timm(model=vit_tiny_patch16_224, img_size=32), tasks=[seg:3, cls:5])")
    x = torch.randn(2, 3, 32, 32)
    path = mtlzoo.save(model, tmp_path / "model.safetensors")
    loaded = mtlzoo.load(path)
    model.eval()
    loaded.eval()
    with torch.no_grad():
        for task, out in model(x).items():
            torch.testing.assert_close(loaded(x)[task], out)
