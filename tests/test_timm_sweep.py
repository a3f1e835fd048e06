"""A sweep over timm architectures from many families, each as the backbone of a ``hard`` model
with a dense task (``seg:3``) and a classification task (``cls:5``) on 32x32 CPU inputs.

Each model: builds, its tags (from ``Entry.tags_for``, decided before building) agree with what
was built, ``check_backbone`` passes (stem -> stages reproduces forward where staged), stem and
stages partition the parameters, forward and backward reach the backbone's first layer, and the
stage structure is printed (``pytest -s`` shows it).
"""

from __future__ import annotations

import math

import pytest
import torch

import mtlzoo
from mtlzoo.model import BackboneFactory
from mtlzoo.plugins import default_zoo
from mtlzoo.testing import check_backbone
from mtlzoo_builtin.backbones.timm import resolve_model

# (timm model, extra timm arguments, staged?) -- the smallest variant of each family
SWEEP: list[tuple[str, dict[str, object], bool]] = [
    ("resnet10t", {}, True),
    ("resnet18", {}, True),
    ("resnext26ts", {}, True),
    ("convnext_atto", {}, True),
    ("convnextv2_atto", {}, True),
    ("efficientnet_b0", {}, True),
    ("tinynet_e", {}, True),
    ("mobilenetv3_small_050", {}, True),
    ("mobilenetv4_conv_small", {}, True),
    ("lcnet_050", {}, True),
    ("regnetx_002", {}, True),
    ("regnety_002", {}, True),
    ("ghostnet_050", {}, True),
    ("rexnet_100", {}, True),
    ("mobilevit_xxs", {}, True),
    ("efficientvit_b0", {}, True),
    ("repvit_m0_9", {}, True),
    ("edgenext_xx_small", {}, True),
    ("starnet_s050", {}, True),
    ("pvt_v2_b0", {}, True),
    ("vit_tiny_patch16_224", {"img_size": 32}, True),
    ("deit_tiny_patch16_224", {"img_size": 32}, True),
    ("deit_tiny_distilled_patch16_224", {"img_size": 32}, True),
    ("dpn48b", {}, False),  # passes tuples between blocks: timm's extractor, no stages
    ("levit_128s", {"img_size": 32}, False),  # attention blocks with resolution-bound biases
]


def _spec(name: str, extra: dict[str, object]) -> str:
    args = ", ".join([f"model={name}", *(f"{k}={v}" for k, v in extra.items())])
    return f"hard(backbone=timm({args}), tasks=[seg:3, cls:5])"


def test_sweep_covers_enough_families():
    families = {resolve_model(name)[1] for name, _, _ in SWEEP}
    assert len(SWEEP) >= 20 and len(families) >= 8, families


@pytest.mark.parametrize("name, extra, staged", [pytest.param(*row, id=row[0]) for row in SWEEP])
def test_timm_model_as_hard_backbone(name, extra, staged):
    entry = default_zoo().backbones.get("timm")
    tags = BackboneFactory(entry, {"model": name, **extra}).tags
    model = mtlzoo.create_model(_spec(name, extra))
    backbone = model.backbone
    print("\n" + backbone.describe())

    assert backbone.staged is staged
    assert ("stages" in tags) is staged and "spatial" in tags
    info = backbone.feature_info
    assert all(r >= 4 and r & (r - 1) == 0 for r in info.reductions), info  # stride-2 levels dropped
    assert list(info.reductions) == sorted(info.reductions)
    if staged:
        assert len(backbone.stages) == len(info)
        parts = [backbone.stem, *backbone.stages]
        owned = sum(p.numel() for part in parts for p in part.parameters())
        assert owned == sum(p.numel() for p in backbone.parameters()), "stem and stages must hold every weight"

    x = torch.randn(2, 3, 32, 32)
    features = check_backbone(backbone, x, tags=tags)
    for f, r in zip(features, info.reductions):
        assert f.shape[-1] == math.ceil(32 / r)

    model.train()
    model.zero_grad(set_to_none=True)
    out = model(x)
    assert out["seg"].shape == (2, 3, 32, 32) and out["cls"].shape == (2, 5)
    (out["seg"].square().mean() + out["cls"].square().mean()).backward()
    first = next(p for p in backbone.parameters() if p.requires_grad)
    assert first.grad is not None and torch.isfinite(first.grad).all(), "no gradient reached the first layer"
