"""Task presets: the contract for every registered task, and losses and metrics checked against
independent computations on hand-made tensors."""

from __future__ import annotations

import inspect
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from mtlzoo.errors import MtlzooError
from mtlzoo.plugins import default_zoo
from mtlzoo.task import HIGHER, LOWER, Task
from mtlzoo.testing import check_task

ZOO = default_zoo()
#: tasks whose predictions and targets are not tensors get their own tests below
SPECIAL = {"detect"}
TENSOR_TASKS = [n for n in ZOO.tasks.names() if n not in SPECIAL]
BUILTIN_TENSOR_TASKS = [n for n in TENSOR_TASKS if ZOO.tasks.get(n).plugin.startswith("builtin.")]


def make_task(name: str, **kwargs) -> Task:
    """The preset with its default output size, or 3 where it has none."""
    entry = ZOO.tasks.get(name)
    params = entry.signature.parameters if entry.signature else {}
    if "out" in params and params["out"].default is inspect.Parameter.empty and "out" not in kwargs:
        kwargs["out"] = 3
    task = entry.create(**kwargs)
    task.name = f"my_{name}"
    return task


def batch_for(task: Task, batch: int = 4, size: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shape = (batch, task.out or 1, size, size) if task.dense else (batch, task.out or 1)
    pred = torch.randn(*shape, generator=g)
    return pred, task.example_target(pred, g)


def assert_metrics_equal(a: dict[str, float], b: dict[str, float]) -> None:
    assert set(a) == set(b)
    for key in a:
        assert a[key] == pytest.approx(b[key], rel=1e-9, abs=1e-12, nan_ok=True), key


# ------------------------------------------------------------------------- registry contract
@pytest.mark.parametrize("name", TENSOR_TASKS)
def test_contract(name: str) -> None:
    task = make_task(name)
    values = check_task(task)
    assert all(isinstance(v, float) for v in values.values())


@pytest.mark.parametrize("name", TENSOR_TASKS)
def test_sample_mask_equals_subset(name: str) -> None:
    """A masked-out sample changes neither the loss nor the metrics."""
    task = make_task(name)
    pred, target = batch_for(task, batch=5)
    mask = torch.tensor([True, False, True, True, False])
    torch.testing.assert_close(task.loss(pred, target, mask), task.loss(pred[mask], target[mask]))
    masked, subset = task.metrics(), task.metrics()
    masked.update(pred, target, mask)
    subset.update(pred[mask], target[mask])
    assert_metrics_equal(masked.compute(), subset.compute())


@pytest.mark.parametrize("name", TENSOR_TASKS)
def test_metrics_accumulate_over_batches(name: str) -> None:
    """An epoch's value over batches of different sizes equals the value over their concatenation."""
    task = make_task(name)
    parts = [batch_for(task, batch=b, seed=s) for s, b in enumerate((1, 3, 6))]
    metric = task.metrics()
    for pred, target in parts:
        metric.update(pred, target)
    whole = task.metrics()
    whole.update(torch.cat([p for p, _ in parts]), torch.cat([t for _, t in parts]))
    assert_metrics_equal(metric.compute(), whole.compute())
    metric.reset()
    metric.update(*parts[0])
    single = task.metrics()
    single.update(*parts[0])
    assert_metrics_equal(metric.compute(), single.compute())


@pytest.mark.parametrize("name", [n for n in TENSOR_TASKS if make_task(n).metrics().state()])
def test_state_sum_is_all_reduce(name: str) -> None:
    """Summing two metrics' states (what sync() all-reduces) gives the metric over both batches."""
    task = make_task(name)
    (pa, ta), (pb, tb) = batch_for(task, batch=3, seed=1), batch_for(task, batch=5, seed=2)
    rank0, rank1, both = task.metrics(), task.metrics(), task.metrics()
    rank0.update(pa, ta)
    rank1.update(pb, tb)
    both.update(torch.cat([pa, pb]), torch.cat([ta, tb]))
    for mine, theirs in zip(rank0.state(), rank1.state(), strict=True):
        mine += theirs
    assert_metrics_equal(rank0.compute(), both.compute())


# --------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("name", BUILTIN_TENSOR_TASKS)
def test_wrong_target_shape_is_named(name: str) -> None:
    task = make_task(name)
    pred, target = batch_for(task)
    with pytest.raises(MtlzooError, match=f"my_{name}.*expected"):
        task.loss(pred, target[:-1])  # one sample short
    # the right batch, the wrong layout: a pixel short (dense) or an extra dimension
    wrong = target[..., :-1] if task.dense else torch.stack([target, target], -1)
    with pytest.raises(MtlzooError, match=f"my_{name}.*expected"):
        task.loss(pred, wrong)


@pytest.mark.parametrize("name", ["cls", "binary", "multilabel", "depth", "normal"])
def test_metrics_check_targets_too(name: str) -> None:
    """Evaluation may run without the loss, so metric updates validate targets as the loss does."""
    task = make_task(name)
    pred, target = batch_for(task)
    with pytest.raises(MtlzooError, match=f"my_{name}.*expected"):
        task.metrics().update(pred, target[:-1])


@pytest.mark.parametrize("name", BUILTIN_TENSOR_TASKS)
def test_nan_target_is_named(name: str) -> None:
    task = make_task(name)
    pred, target = batch_for(task)
    target = target.double().clone()
    target.view(-1)[0] = float("nan")
    with pytest.raises(MtlzooError, match=f"my_{name}.*NaN"):
        task.loss(pred, target)


@pytest.mark.parametrize(("name", "bad"), [("cls", 3), ("cls", -2), ("seg", 7), ("binary", 2), ("multilabel", 2)])
def test_out_of_range_labels(name: str, bad: int) -> None:
    task = make_task(name)
    pred, target = batch_for(task)
    target = target.clone()
    target.view(-1)[1] = bad
    with pytest.raises(MtlzooError, match=f"my_{name}.*{bad}"):
        task.loss(pred, target)


def test_geometry_nan_in_masked_sample_is_allowed() -> None:
    """Only labelled samples must be valid: an unlabelled one may hold a NaN placeholder."""
    task = make_task("depth")
    pred, target = batch_for(task)
    target[1] = float("nan")
    mask = torch.tensor([True, False, True, True])
    assert torch.isfinite(task.loss(pred, target, mask))
    with pytest.raises(MtlzooError, match="NaN"):
        task.loss(pred, target)


@pytest.mark.parametrize(("name", "out"), [("depth", 2), ("normal", 1), ("binary", 3), ("cls", 1), ("detect", 1)])
def test_bad_out_is_refused(name: str, out: int) -> None:
    with pytest.raises(MtlzooError, match=name):
        ZOO.tasks.get(name).create(out=out)


# ------------------------------------------------------------------- independent computations
def test_cls_accuracy_and_topk() -> None:
    task = make_task("cls", out=6, topk=2)
    logits = torch.tensor([[5.0, 4, 0, 0, 0, 0],   # top1 0, top2 {0,1}
                           [0, 5, 4, 0, 0, 0],     # top1 1, top2 {1,2}
                           [0, 0, 0, 5, 0, 4],     # top1 3, top2 {3,5}
                           [1, 0, 0, 0, 0, 0]])
    target = torch.tensor([0, 2, 4, -1])  # right, in top-2, wrong, missing
    metric = task.metrics()
    metric.update(logits, target)
    assert metric.compute() == {"accuracy": pytest.approx(1 / 3), "top2": pytest.approx(2 / 3)}
    assert task.metrics().directions == {"accuracy": HIGHER, "top2": HIGHER}
    expected = -(F.log_softmax(logits[:3], 1)[[0, 1, 2], [0, 2, 4]]).mean()
    torch.testing.assert_close(task.loss(logits, target), expected)


def test_accuracy_is_not_a_mean_of_batch_ratios() -> None:
    task = make_task("cls", out=3)
    metric = task.metrics()
    metric.update(torch.eye(3)[[0]], torch.tensor([0]))                # 1 of 1
    metric.update(torch.eye(3)[[0, 1, 2]], torch.tensor([0, 2, 1]))    # 1 of 3
    assert metric.compute()["accuracy"] == pytest.approx(2 / 4)      # not (1 + 1/3) / 2


def brute_force_auroc(scores: list[float], labels: list[int]) -> float:
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(3))
def test_binary_auroc_matches_pair_count(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(-3, 4, (40,), generator=g).float()  # many ties
    labels = torch.randint(0, 2, (40,), generator=g)
    labels[:3] = -1  # missing labels are ignored
    metric = make_task("binary").metrics()
    metric.update(scores[:15, None], labels[:15])
    metric.update(scores[15:, None], labels[15:])
    keep = labels != -1
    values = metric.compute()
    assert values["auroc"] == pytest.approx(brute_force_auroc(scores[keep].tolist(), labels[keep].tolist()))
    assert values["accuracy"] == pytest.approx(((scores[keep] > 0).long() == labels[keep]).float().mean().item())


def test_multilabel_loss_and_metrics() -> None:
    task = make_task("multilabel", out=3)
    logits = torch.tensor([[2.0, -1.0, 0.5], [-1.0, 1.0, -0.5], [0.5, 3.0, 1.0], [-2.0, -3.0, 2.0]])
    target = torch.tensor([[1, 0, -1], [0, 1, 1], [0, -1, 1], [1, 0, 1]])
    keep = target != -1
    expected = F.binary_cross_entropy_with_logits(logits[keep], target[keep].float())
    torch.testing.assert_close(task.loss(logits, target), expected)
    metric = task.metrics()
    metric.update(logits[:2], target[:2])
    metric.update(logits[2:], target[2:])
    # attribute 0: predictions 1,0,1,0 vs 1,0,0,1 -> 2/4; AUROC: pos {2,-2}, neg {-1,0.5} -> 2/4
    # attribute 1: predictions 0,1,0 vs 0,1,0 (one missing) -> 3/3; AUROC: pos {1}, neg {-1,-3} -> 1
    # attribute 2: predictions 1,0,1 vs 1,1,1 -> 2/3; one class only, so no AUROC
    values = metric.compute()
    assert values["accuracy"] == pytest.approx((2 / 4 + 1 + 2 / 3) / 3)
    assert values["auroc"] == pytest.approx((brute_force_auroc([2, -1, 0.5, -2], [1, 0, 0, 1]) + 1.0) / 2)
    assert values["auroc"] == pytest.approx(0.75)


def test_regression_mae_rmse() -> None:
    task = make_task("regression", out=2)
    pred = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    target = torch.tensor([[2.0, 0.0], [0.0, -3.0]])  # errors -1, 2, 0, 3
    metric = task.metrics()
    metric.update(pred[:1], target[:1])
    metric.update(pred[1:], target[1:])
    values = metric.compute()
    assert values["mae"] == pytest.approx(6 / 4)
    assert values["rmse"] == pytest.approx(math.sqrt(14 / 4))
    torch.testing.assert_close(task.loss(pred, target), torch.tensor(14 / 4))
    assert task.metrics().directions == {"mae": LOWER, "rmse": LOWER}


def test_segmentation_miou_from_known_confusion_matrix() -> None:
    task = make_task("seg", out=3)
    predicted = torch.tensor([[[0, 0, 1], [1, 2, 2]], [[2, 2, 0], [1, 1, 0]]])
    target = torch.tensor([[[0, 1, 1], [1, 2, -1]], [[2, 0, 0], [-1, 1, 2]]])
    logits = F.one_hot(predicted, 3).permute(0, 3, 1, 2).float()
    metric = task.metrics()
    metric.update(logits[:1], target[:1])
    metric.update(logits[1:], target[1:])
    # valid pixels (target, predicted): (0,0) (1,0) (1,1) (1,1) (2,2) | (2,2) (0,2) (0,0) (1,1) (2,0)
    # class 0: tp 2, predicted 4, true 3 -> IoU 2/5; class 1: tp 3, predicted 3, true 4 -> 3/4;
    # class 2: tp 2, predicted 3, true 3 -> 2/4
    values = metric.compute()
    assert values["miou"] == pytest.approx((2 / 5 + 3 / 4 + 2 / 4) / 3)
    assert values["pixel_accuracy"] == pytest.approx(7 / 10)


def test_depth_abs_rel_ignore_zero_depth() -> None:
    task = make_task("depth")
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 100.0]]], [[[2.0, 2.0], [0.0, 0.0]]]])
    target = torch.tensor([[[[2.0, 2.0], [1.0, 0.0]]], [[[4.0, 0.0], [0.0, 0.0]]]])  # 0 = no measurement
    # valid errors: |1-2|=1, 0, |3-1|=2, |2-4|=2 ; relative: 1/2, 0, 2/1, 2/4
    torch.testing.assert_close(task.loss(pred, target), torch.tensor(5 / 4))
    metric = task.metrics()
    metric.update(pred[:1], target[:1, 0])  # [B, H, W] targets are accepted too
    metric.update(pred[1:], target[1:])
    values = metric.compute()
    assert values["abs_err"] == pytest.approx(5 / 4)
    assert values["rel_err"] == pytest.approx((0.5 + 0 + 2 + 0.5) / 4)
    assert task.metrics().directions == {"abs_err": LOWER, "rel_err": LOWER}


def test_normal_angles_of_known_normals() -> None:
    task = make_task("normal")
    up = [0.0, 0.0, 1.0]
    target = torch.tensor([up, up, up, [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]).T.reshape(1, 3, 1, 5)
    # 0 degrees (unnormalised prediction), 90 degrees, 45 degrees, an invalid pixel, 180 degrees
    pred = torch.tensor([[0.0, 0.0, 2.0], [1.0, 0.0, 0.0], [1.0, 0.0, 1.0], [1.0, 1.0, 1.0],
                         [-3.0, 0.0, 0.0]]).T.reshape(1, 3, 1, 5)
    cosines = torch.tensor([1.0, 0.0, math.sqrt(0.5), -1.0])
    torch.testing.assert_close(task.loss(pred, target), 1 - cosines.mean())
    metric = task.metrics()
    metric.update(pred, target)
    values = metric.compute()
    assert values["mean_angle"] == pytest.approx((0 + 90 + 45 + 180) / 4)
    assert values["median_angle"] == pytest.approx((45 + 90) / 2, abs=0.005)
    assert values["within_11_25"] == pytest.approx(1 / 4)
    assert values["within_22_5"] == pytest.approx(1 / 4)
    assert values["within_30"] == pytest.approx(1 / 4)
    assert task.metrics().directions["median_angle"] == LOWER
    assert task.metrics().directions["within_30"] == HIGHER


def test_normal_validity_is_any_nonzero_component() -> None:
    """A unit normal whose components sum to zero is still valid (only all-zero marks a hole)."""
    task = make_task("normal")
    target = torch.tensor([math.sqrt(0.5), -math.sqrt(0.5), 0.0]).reshape(1, 3, 1, 1)
    pred = torch.tensor([0.0, 0.0, 1.0]).reshape(1, 3, 1, 1)
    torch.testing.assert_close(task.loss(pred, target), torch.tensor(1.0))


@pytest.mark.parametrize("n", [1, 2, 999, 1000])
def test_median_angle_within_half_a_bin(n: int) -> None:
    task = make_task("normal")
    g = torch.Generator().manual_seed(n)
    pred, target = torch.randn(1, 3, 1, n, generator=g), torch.randn(1, 3, 1, n, generator=g)
    metric = task.metrics()
    metric.update(pred, target)
    cos = (F.normalize(pred.double(), dim=1) * F.normalize(target.double(), dim=1)).sum(1).flatten()
    angles = torch.rad2deg(torch.acos(cos.clamp(-1, 1))).sort().values
    exact = ((angles[(n - 1) // 2] + angles[n // 2]) / 2).item()  # numpy's median
    assert abs(metric.compute()["median_angle"] - exact) <= 0.005 + 1e-9
    assert metric.compute()["mean_angle"] == pytest.approx(angles.mean().item())


# ------------------------------------------------------------------------------------ detect
def _box(*xyxy: float) -> torch.Tensor:
    return torch.tensor([list(xyxy)])


def test_detect_loss_is_sum_of_detector_losses() -> None:
    task = make_task("detect")
    losses = {"loss_objectness": torch.tensor(0.5, requires_grad=True), "loss_rpn_box_reg": torch.tensor(0.25),
              "loss_classifier": torch.tensor(1.0), "loss_box_reg": torch.tensor(0.125)}
    total = task.loss(losses, None)
    assert total.item() == pytest.approx(1.875)
    total.backward()
    assert task.loss(losses, None, mask=torch.zeros(2, dtype=torch.bool)).item() == 0.0
    with pytest.raises(MtlzooError, match=r"my_detect.*'detection' head"):
        task.loss(torch.randn(2, 3), None)
    with pytest.raises(MtlzooError, match="training mode"):
        task.loss([{"boxes": torch.zeros(0, 4)}], None)


def test_detect_map_of_known_boxes() -> None:
    task = make_task("detect")
    metric = task.metrics()
    assert metric.directions == {"map_50": HIGHER, "map": HIGHER}
    target = [{"boxes": _box(0, 0, 10, 10), "labels": torch.tensor([1])},
              {"boxes": _box(20, 20, 40, 40), "labels": torch.tensor([2])},
              None]
    # image 0: IoU 72/100 = 0.72, a hit at thresholds 0.50..0.70 (5 of 10); image 1: exact
    pred = [{"boxes": _box(0, 0, 10, 7.2), "labels": torch.tensor([1]), "scores": torch.tensor([0.9])},
            {"boxes": _box(20, 20, 40, 40), "labels": torch.tensor([2]), "scores": torch.tensor([0.8])},
            {"boxes": _box(0, 0, 5, 5), "labels": torch.tensor([1]), "scores": torch.tensor([0.99])}]
    metric.update(pred, target)
    values = metric.compute()
    # class 1 AP: 1 at 5 thresholds, 0 at 5; class 2 AP: 1 everywhere; the unlabelled image is left out
    assert values["map_50"] == pytest.approx(1.0)
    assert values["map"] == pytest.approx((0.5 + 1.0) / 2)
    metric.reset()
    assert math.isnan(metric.compute()["map"])
    # a sample masked out is left out even if it has a target
    metric.update(pred[:2], [target[0], target[0]], mask=torch.tensor([True, False]))
    assert metric.compute()["map_50"] == pytest.approx(1.0)


@pytest.mark.parametrize(("target", "message"), [
    ([{"boxes": _box(0, 0, 5, 5), "labels": torch.tensor([3])}], r"label 3 is outside 1\.\.2"),
    ([{"boxes": _box(0, 0, 5, 5), "labels": torch.tensor([0])}], "0 is the background"),
    ([{"boxes": torch.zeros(1, 5), "labels": torch.tensor([1])}], r"boxes must have shape \[N, 4\]"),
    ([{"boxes": _box(0, 0, float("nan"), 5), "labels": torch.tensor([1])}], "NaN"),
    ([{"boxes": _box(5, 0, 1, 5), "labels": torch.tensor([1])}], "no area"),
    ([{"boxes": _box(0, 0, 5, 5)}], "'labels'"),
    ([], "expected a list of 1"),
    ({"boxes": _box(0, 0, 5, 5), "labels": torch.tensor([1])}, "one dict"),
])
def test_detect_bad_targets_are_named(target, message: str) -> None:
    task = make_task("detect")
    pred = [{"boxes": _box(0, 0, 5, 5), "labels": torch.tensor([1]), "scores": torch.tensor([0.5])}]
    with pytest.raises(MtlzooError, match=message) as info:
        task.metrics().update(pred, target)
    assert "my_detect" in str(info.value)


def test_detect_metrics_refuse_training_output() -> None:
    task = make_task("detect")
    with pytest.raises(MtlzooError, match="eval"):
        task.metrics().update({"loss_classifier": torch.tensor(1.0)}, [None])


def test_detect_example_target_is_valid() -> None:
    from mtlzoo_builtin.heads.detection import validate_targets

    task = make_task("detect", out=5)
    targets = task.example_target(torch.zeros(3, 1), torch.Generator().manual_seed(0))
    assert len(validate_targets(targets, 3, 5, "example")) == 3


# ------------------------------------------------------------------------------- distributed
SYNC_TASKS = ["cls", "binary", "multilabel", "seg", "depth", "normal", "regression", "detect"]


def _sync_data(name: str, rank: int):
    task = make_task(name)
    if name == "detect":
        g = torch.Generator().manual_seed(10 + rank)
        target = task.example_target([None] * 3, g)
        pred = [{"boxes": t["boxes"] + torch.rand(t["boxes"].shape, generator=g) * 4, "labels": t["labels"],
                 "scores": torch.rand(len(t["labels"]), generator=g)} for t in target]
        return task, pred, target
    return (task, *batch_for(task, batch=2 + rank, seed=10 + rank))


def _sync_worker(rank: int, init_file: str, out_file: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        results = {}
        for name in SYNC_TASKS:
            task, pred, target = _sync_data(name, rank)
            metric = task.metrics()
            metric.update(pred, target)
            metric.sync()
            results[name] = metric.compute()
        if rank == 0:
            torch.save(results, out_file)
    finally:
        torch.distributed.destroy_process_group()


def test_sync_across_two_ranks_equals_one_process(tmp_path) -> None:
    """sync() (an all-reduce of sums, or a gather of kept scores) on two gloo ranks gives exactly
    the metric one process computes over both ranks' data."""
    # fork: the workers inherit the imported modules (torchmetrics too, once a detect metric was made),
    # so the test takes a second or two, not half a minute
    make_task("detect").metrics()
    torch.multiprocessing.start_processes(_sync_worker, args=(str(tmp_path / "init"), str(tmp_path / "out.pt")),
                                          nprocs=2, start_method="fork")
    synced = torch.load(tmp_path / "out.pt", weights_only=True)
    for name in SYNC_TASKS:
        (task, pa, ta), (_, pb, tb) = _sync_data(name, 0), _sync_data(name, 1)
        metric = task.metrics()
        metric.update(pa, ta)
        metric.update(pb, tb)
        assert_metrics_equal(synced[name], metric.compute())


def test_seg_and_regression_metrics_refuse_mismatched_targets():
    from mtlzoo.errors import InvalidArgumentError
    from mtlzoo.plugins import default_zoo

    seg = default_zoo().tasks.get("seg").factory(out=3).metrics()
    with pytest.raises(InvalidArgumentError, match="seg metrics"):
        seg.update(torch.randn(2, 3, 4, 4), torch.zeros(2, 5, 5, dtype=torch.long))
    reg = default_zoo().tasks.get("regression").factory(out=2).metrics()
    with pytest.raises(InvalidArgumentError, match="regression metrics"):
        reg.update(torch.randn(2, 2), torch.zeros(2, 3))
