"""Heads: the contract for every registered head, the defining property of each built-in head, the
detection head's losses and outputs, and the seed scenarios built end to end."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import mtlzoo
from mtlzoo.errors import IncompatibleComponentsError, InvalidArgumentError, MtlzooError
from mtlzoo.model import FeatureInfo, HeadFactory
from mtlzoo.plugins import default_zoo
from mtlzoo.testing import check_head, check_strategy

ZOO = default_zoo()
SPATIAL = FeatureInfo((8, 16, 24), (4, 8, 16), spatial=True)
VECTOR = FeatureInfo((12,), (1,), spatial=False)
#: a small detector, so tests stay fast on CPU
SMALL_DETECTOR = {"fpn_channels": 16, "representation_size": 32, "rpn_pre_nms_top_n_test": 50,
                  "rpn_post_nms_top_n_test": 20, "rpn_pre_nms_top_n_train": 100, "rpn_post_nms_top_n_train": 50,
                  "rpn_batch_size_per_image": 32, "box_batch_size_per_image": 32}


def needs_targets(name: str) -> bool:
    factory = ZOO.heads.get(name).factory
    if isinstance(factory, type):
        return bool(getattr(factory, "needs_targets", False))
    try:
        return bool(getattr(factory(feature_info=SPATIAL, out=3), "needs_targets", False))
    except Exception:  # the contract test below reports a head that cannot be built
        return False


HEADS = ZOO.heads.names()
PLAIN_HEADS = [n for n in HEADS if not needs_targets(n)]
TARGET_HEADS = [n for n in HEADS if needs_targets(n)]


def detection_targets(batch: int, size: int = 32, classes: int = 3, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    task = ZOO.tasks.get("detect").create(out=classes)
    return task.example_target([None] * batch, torch.Generator().manual_seed(seed), size=size)


# ------------------------------------------------------------------------- registry contract
@pytest.mark.parametrize("name", PLAIN_HEADS)
def test_contract_on_spatial_features(name: str) -> None:
    entry = ZOO.heads.get(name)
    pred = check_head(entry.factory, out=3, feature_info=SPATIAL, input_size=(32, 32))
    if "dense" in entry.tags:
        assert pred.shape == (2, 3, 32, 32)
        # a non-square input with sizes that do not divide evenly still comes back at the input size
        odd = check_head(entry.factory, out=2, feature_info=SPATIAL, input_size=(40, 24))
        assert odd.shape == (2, 2, 40, 24)


@pytest.mark.parametrize("name", PLAIN_HEADS)
def test_vector_features_work_or_are_refused(name: str) -> None:
    """Heads without the 'dense' tag run on vector features; dense heads refuse them clearly."""
    entry = ZOO.heads.get(name)
    if "dense" in entry.tags:
        with pytest.raises(MtlzooError, match=f"my_task.*{name}.*spatial"):
            HeadFactory("my_task", entry, 3)(VECTOR)
    else:
        assert check_head(entry.factory, out=3, feature_info=VECTOR).shape == (2, 3)


@pytest.mark.parametrize("name", TARGET_HEADS)
def test_contract_of_heads_that_need_targets(name: str) -> None:
    """Heads with ``needs_targets`` follow the torchvision detection contract: a dict of finite
    losses in training, a list of boxes/labels/scores per image in evaluation."""
    entry = ZOO.heads.get(name)
    assert "dense" in entry.tags, "a detector needs spatial features, so it must be tagged 'dense'"
    kwargs = SMALL_DETECTOR if name in ("detection", "faster_rcnn") else {}
    head = entry.create(feature_info=SPATIAL, out=3, **kwargs)
    features = [torch.randn(2, c, 32 // r, 32 // r, requires_grad=True) for c, r in zip(SPATIAL.channels,
                                                                                         SPATIAL.reductions)]
    head.train()
    losses = head(features, (32, 32), targets=detection_targets(2))
    assert isinstance(losses, dict) and losses
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(f.grad is not None for f in features)
    head.eval()
    with torch.no_grad():
        detections = head(features, (32, 32))
    assert isinstance(detections, list) and len(detections) == 2
    for d in detections:
        assert d["boxes"].shape == (len(d["labels"]), 4) and d["scores"].shape == d["labels"].shape


# ----------------------------------------------------------------------------------- aspp
def _dilations(head: nn.Module) -> list[int]:
    return sorted({m.dilation[0] for m in head.aspp.modules() if isinstance(m, nn.Conv2d) and m.dilation[0] > 1})


def test_aspp_rates_follow_the_output_stride() -> None:
    """DeepLabV3: (6, 12, 18) at output stride 16, doubled at output stride 8; or as given."""
    factory = ZOO.heads.get("aspp").factory
    assert _dilations(factory(FeatureInfo((8,), (16,)), out=2)) == [6, 12, 18]
    assert _dilations(factory(FeatureInfo((8,), (8,)), out=2)) == [12, 24, 36]
    assert _dilations(factory(SPATIAL, out=2, rates=[2, 3], level=0)) == [2, 3]
    with pytest.raises(InvalidArgumentError, match="rates"):
        factory(SPATIAL, out=2, rates=[0, 1])
    with pytest.raises(InvalidArgumentError, match="level"):
        factory(SPATIAL, out=2, level=5)


def test_aspp_has_image_pooling_branch() -> None:
    """The image-level feature makes every pixel depend on the whole map, even beyond the atrous
    reach: changing a far corner changes the prediction at the opposite corner."""
    head = ZOO.heads.get("aspp").factory(FeatureInfo((4,), (8,)), out=2, rates=[1, 2, 3], channels=8).eval()
    x = torch.randn(1, 4, 16, 16)
    y = x.clone()
    y[..., -1, -1] += 10.0
    with torch.no_grad():
        a, b = head([x], (16, 16)), head([y], (16, 16))
    assert not torch.allclose(a[..., 0, 0], b[..., 0, 0])


# ------------------------------------------------------------------------------------ fpn
def test_fpn_reads_every_level_and_fcn_only_the_last() -> None:
    for name, expect_all in (("fpn", True), ("fcn", False)):
        head = ZOO.heads.get(name).create(feature_info=SPATIAL, out=2)
        features = [torch.randn(2, c, 32 // r, 32 // r, requires_grad=True)
                    for c, r in zip(SPATIAL.channels, SPATIAL.reductions)]
        head(features, (32, 32)).sum().backward()
        reached = [f.grad is not None and f.grad.abs().sum() > 0 for f in features]
        assert reached == ([True] * 3 if expect_all else [False, False, True]), name


def test_fpn_on_equal_reductions() -> None:
    """Plain ViT-style features (all at stride 16) need no upsampling stages, yet work."""
    info = FeatureInfo((8, 8, 8), (16, 16, 16))
    pred = check_head(ZOO.heads.get("fpn").factory, out=4, feature_info=info, input_size=(64, 48))
    assert pred.shape == (2, 4, 64, 48)


def test_fpn_upsampling_stages_per_level() -> None:
    """Panoptic FPN: a level at stride s gets log2(s / finest) conv + 2x-upsample stages."""
    head = ZOO.heads.get("fpn").factory(FeatureInfo((4, 4, 4, 4), (4, 8, 16, 32)), out=2)
    ups = [sum(isinstance(m, nn.Upsample) for m in branch.modules()) for branch in head.branches]
    assert ups == [0, 1, 2, 3]


# ------------------------------------------------------------------------------ detection
def _detector(out: int = 3) -> nn.Module:
    return ZOO.heads.get("detection").create(feature_info=SPATIAL, out=out, **SMALL_DETECTOR)


def _features(batch: int = 2, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, c, 32 // r, 32 // r, generator=g) for c, r in zip(SPATIAL.channels, SPATIAL.reductions)]


def test_detection_losses_and_detections() -> None:
    head = _detector().train()
    # a classifier with zero weights scores all 3 classes alike, so its cross-entropy is log(3)
    nn.init.zeros_(head.roi_heads.box_predictor.cls_score.weight)
    nn.init.zeros_(head.roi_heads.box_predictor.cls_score.bias)
    losses = head(_features(), (32, 32), targets=detection_targets(2))
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
    assert losses["loss_classifier"].item() == pytest.approx(math.log(3), rel=1e-6)
    head.eval()
    with torch.no_grad():
        out = head(_features(), (32, 32))
    assert len(out) == 2
    for d in out:
        assert ((d["labels"] >= 1) & (d["labels"] <= 2)).all()
        assert ((d["scores"] >= 0) & (d["scores"] <= 1)).all()
        assert (d["boxes"] >= 0).all() and (d["boxes"][:, [0, 2]] <= 32).all() and (d["boxes"][:, [1, 3]] <= 32).all()


def test_detection_skips_unlabelled_images() -> None:
    """An image whose target is None takes no part: the losses equal those of the labelled subset."""
    head = _detector().train()
    features, targets = _features(3), detection_targets(3)
    torch.manual_seed(0)  # the samplers of the RPN and RoI heads draw at random
    mixed = head(features, (32, 32), targets=[targets[0], None, targets[2]])
    torch.manual_seed(0)
    subset = head([f[[0, 2]] for f in features], (32, 32), targets=[targets[0], targets[2]])
    for key in subset:
        torch.testing.assert_close(mixed[key], subset[key])


def test_detection_without_labels_gives_connected_zeros() -> None:
    """A batch from another task's dataset: zero losses that still reach every parameter (DDP)."""
    head = _detector().train()
    for targets in (None, [None, None]):
        head.zero_grad(set_to_none=True)
        losses = head(_features(), (32, 32), targets=targets)
        assert all(v.item() == 0.0 for v in losses.values())
        sum(losses.values()).backward()
        assert all(p.grad is not None and not p.grad.any() for p in head.parameters())


def test_detection_empty_image_is_a_negative() -> None:
    head = _detector().train()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    losses = head(_features(), (32, 32), targets=[empty, empty])
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_box_reg"].item() == 0.0 and losses["loss_rpn_box_reg"].item() == 0.0


@pytest.mark.parametrize(("targets", "message"), [
    ([{"boxes": torch.tensor([[0.0, 0, 8, 8]]), "labels": torch.tensor([3])}, None], r"outside 1\.\.2"),
    ([{"boxes": torch.tensor([[0.0, 0, 8]]), "labels": torch.tensor([1])}, None], r"\[N, 4\]"),
    ([{"boxes": torch.tensor([[0.0, 0, 8, 8]]), "labels": torch.tensor([1, 2])}, None],
     r"labels must have shape \[1\]"),
    ([None], "expected a list of 2"),
])
def test_detection_bad_targets(targets, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        _detector().train()(_features(), (32, 32), targets=targets)


def test_detection_needs_classes_and_spatial_features() -> None:
    factory = ZOO.heads.get("detection").factory
    with pytest.raises(InvalidArgumentError, match="background"):
        factory(SPATIAL, out=1)
    with pytest.raises(InvalidArgumentError, match="spatial"):
        factory(VECTOR, out=3)


def test_detection_anchor_sizes_follow_reductions() -> None:
    """torchvision's Faster R-CNN anchors (32..512 on strides 4..64) come out of anchor_size * stride."""
    head = ZOO.heads.get("detection").factory(FeatureInfo((8, 8, 8, 8, 8), (2, 4, 8, 16, 32)), out=2)
    assert head.levels == [1, 2, 3, 4]  # the stride-2 level is below min_reduction=4
    assert head.rpn.anchor_generator.sizes == ((32,), (64,), (128,), (256,), (512,))


# --------------------------------------------------------------------------- building models
def test_dense_heads_refuse_vector_backbones() -> None:
    with pytest.raises(IncompatibleComponentsError, match="spatial"):
        mtlzoo.create_model("hard(backbone=mlp, tasks=[cls(out=3, head=aspp)])")
    with pytest.raises(IncompatibleComponentsError, match="spatial"):
        mtlzoo.create_model("hard(backbone=mlp, tasks=[detect:3])")


def test_dense_tasks_with_every_dense_head() -> None:
    model = mtlzoo.create_model(
        "hard(backbone=tiny(widths=[8, 16, 16, 16]), tasks=[seg(out=3, head=aspp(channels=16)), "
        "depth(head=fpn(fpn_channels=16, channels=8)), normal])")
    outputs = check_strategy(model, torch.randn(2, 3, 32, 32))
    assert outputs["seg"].shape == (2, 3, 32, 32) and outputs["normal"].shape == (2, 3, 32, 32)


def test_seed_shared_resnet50_with_cls_and_binary() -> None:
    model = mtlzoo.create_model("hard(backbone=timm(model=resnet50), tasks=[cls:10, binary])")
    x = torch.randn(2, 3, 32, 32)
    targets = {"cls": torch.tensor([3, 7]), "binary": torch.tensor([1.0, 0.0])}
    outputs = model(x)
    assert outputs["cls"].shape == (2, 10) and outputs["binary"].shape == (2, 1)
    losses = {name: model.tasks[name].loss(outputs[name], targets[name]) for name in outputs}
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert all(p.grad is not None for p in model.shared_parameters())


def test_seed_shared_resnet_with_cls_and_detection() -> None:
    head = "detection(fpn_channels=32, representation_size=64, rpn_batch_size_per_image=64, " \
           "box_batch_size_per_image=64, rpn_post_nms_top_n_train=100, rpn_post_nms_top_n_test=50)"
    model = mtlzoo.create_model(f"hard(backbone=timm(model=resnet18), tasks=[cls:5, detect(out=4, head={head})])")
    x = torch.randn(2, 3, 64, 64)
    targets = {"cls": torch.tensor([1, 4]), "detect": detection_targets(2, size=64, classes=4)}
    model.train()
    outputs = model(x, targets)
    losses = {name: model.tasks[name].loss(outputs[name], targets[name]) for name in outputs}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.task_parameters("detect"))
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.shared_parameters())
    model.eval()
    with torch.no_grad():
        evaluated = model(x)
    metric = model.tasks["detect"].metrics()
    metric.update(evaluated["detect"], targets["detect"])
    values = metric.compute()
    assert set(values) == {"map_50", "map"} and all(0.0 <= v <= 1.0 for v in values.values())


def all_tasks_step(device: str) -> None:
    """One training step and one evaluation of every built-in task on ``device`` (targets on the
    device, detection targets for the metric left on the CPU)."""
    small = ", ".join(f"{k}={v}" for k, v in SMALL_DETECTOR.items())
    model = mtlzoo.create_model(
        "hard(backbone=tiny(widths=[8, 16, 16, 16]), tasks=[seg(out=3, head=aspp(channels=16)), "
        f"depth(head=fpn(fpn_channels=16, channels=8)), normal, multilabel:4, detect(out=3, head=detection({small}))])"
    ).to(device)
    x = torch.randn(2, 3, 32, 32, device=device)
    g = torch.Generator().manual_seed(0)
    targets = {}
    for name, task in model.tasks.items():
        if name != "detect":
            shape = (2, task.out, 32, 32) if task.dense else (2, task.out)
            targets[name] = task.example_target(torch.zeros(shape), g).to(device)
    targets["detect"] = [{k: v.to(device) for k, v in t.items()} for t in detection_targets(2)]
    model.train()
    outputs = model(x, targets)
    losses = {name: task.loss(outputs[name], targets[name]) for name, task in model.tasks.items()}
    assert all(v.device.type == torch.device(device).type and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        outputs = model(x)
    targets["detect"] = detection_targets(2)
    for name, task in model.tasks.items():
        metric = task.metrics()
        metric.update(outputs[name], targets[name])
        assert set(metric.compute()) == set(metric.directions), name


@pytest.mark.gpu
def test_every_builtin_task_on_cuda() -> None:
    all_tasks_step("cuda")
