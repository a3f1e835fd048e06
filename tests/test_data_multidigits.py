"""The embedded default dataset: real digits, disjoint splits, deterministic, correct targets."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mtlzoo
from mtlzoo.data import make_loader
from mtlzoo.errors import DataError, InvalidArgumentError, UnknownComponentError
from mtlzoo_builtin.datasets.multidigits import multidigits


@pytest.fixture(scope="module")
def splits():
    return {s: multidigits(s, size=600, seed=0) for s in ("train", "val", "test")}


def test_builds_in_seconds_with_the_declared_tasks_and_shapes():
    from mtlzoo.plugins import default_zoo

    default_zoo()  # plugin discovery is not the dataset's cost
    start = time.perf_counter()
    ds = mtlzoo.create_dataset("multidigits")  # the full default size, 10,000 canvases
    elapsed = time.perf_counter() - start
    assert elapsed < 10, f"multidigits took {elapsed:.1f}s"
    assert len(ds) == 10_000 and ds.input_shape == (1, 32, 32)
    assert ds.tasks == {"left": "cls:10", "right": "cls:10", "seg": "seg:3", "sum": "regression"}
    sample = ds[0]
    assert sample["input"].dtype == torch.float32 and 0 <= sample["input"].min() and sample["input"].max() <= 1
    assert sample["targets"]["seg"].shape == (32, 32) and sample["targets"]["seg"].dtype == torch.int64


def test_splits_are_disjoint_by_source_image(splits):
    pools = {s: set(ds.source_pool.tolist()) for s, ds in splits.items()}
    used = {s: set(ds.sources["left"].tolist()) | set(ds.sources["right"].tolist()) for s, ds in splits.items()}
    for a, b in [("train", "val"), ("train", "test"), ("val", "test")]:
        assert not pools[a] & pools[b]
        assert not used[a] & used[b]
    for split in splits:
        assert used[split] <= pools[split]
    assert sum(len(p) for p in pools.values()) == 1797
    # the seed that composes a split does not move digits across splits
    other = multidigits("test", size=600, seed=99)
    assert set(other.sources["left"].tolist()) <= pools["test"]


def test_targets_agree_with_an_independent_recomposition(splits):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    ds = splits["train"]
    digits = F.interpolate(torch.from_numpy(bunch.images / 16.0).float()[:, None], size=(16, 16), mode="bilinear",
                           align_corners=False, antialias=True)[:, 0].clamp(0, 1)
    overlapping = 0
    for i in range(0, 600, 37):
        left, right = int(ds.sources["left"][i]), int(ds.sources["right"][i])
        sample = ds[i]
        assert sample["targets"]["left"] == bunch.target[left] and sample["targets"]["right"] == bunch.target[right]
        assert sample["targets"]["sum"].item() == pytest.approx((bunch.target[left] + bunch.target[right]) / 18)
        canvas_l, canvas_r = torch.zeros(32, 32), torch.zeros(32, 32)
        (lx, ly), (rx, ry) = ds.offsets["left"][i].tolist(), ds.offsets["right"][i].tolist()
        assert lx < rx and ly < ry  # left digit up-left of the right one
        canvas_l[ly: ly + 16, lx: lx + 16] = digits[left]
        canvas_r[ry: ry + 16, rx: rx + 16] = digits[right]
        image = torch.maximum(canvas_l, canvas_r)
        assert torch.allclose(sample["input"][0], image, atol=1 / 255)
        seg = sample["targets"]["seg"]
        fg = seg > 0
        # overlap rule: a foreground pixel belongs to the digit that is brighter there (ties: left)
        assert torch.equal(seg[fg] == 1, (canvas_l >= canvas_r)[fg])
        assert (image[~fg] < 0.3 + 1 / 255).all() and (image[fg] >= 0.3 - 1 / 255).all()
        overlapping += int(((canvas_l >= 0.3) & (canvas_r >= 0.3)).sum())
    assert overlapping > 0  # the digits do overlap, so the overlap rule is exercised


def test_deterministic_for_a_seed_and_different_across_seeds():
    a, b = multidigits("val", size=200, seed=3), multidigits("val", size=200, seed=3)
    assert torch.equal(a.inputs, b.inputs) and all(torch.equal(a.targets[t], b.targets[t]) for t in a.tasks)
    c = multidigits("val", size=200, seed=4)
    assert not torch.equal(a.inputs, c.inputs)


def test_canvas_digit_size_and_task_subset_are_configurable():
    ds = mtlzoo.create_dataset("multidigits(size=50, canvas=40, digit=20, tasks=[left, right])")
    assert ds.input_shape == (1, 40, 40) and ds.tasks == {"left": "cls:10", "right": "cls:10"}
    assert set(ds[0]["targets"]) == {"left", "right"}


def test_missing_drops_the_requested_fraction_of_labels_and_masks_them():
    ds = multidigits("train", size=4000, missing={"seg": 0.5, "sum": 0.1})
    assert ds.labelled["left"].all()
    assert abs(ds.labelled["seg"].float().mean().item() - 0.5) < 0.04
    assert abs(ds.labelled["sum"].float().mean().item() - 0.9) < 0.03
    unlabelled = int((~ds.labelled["seg"]).nonzero()[0])
    assert "seg" not in ds[unlabelled]["targets"]
    batch = ds.get_batch(torch.arange(16))
    assert torch.equal(batch["masks"]["seg"], ds.labelled["seg"][:16])


def test_a_model_built_from_the_dataset_tasks_trains_on_its_batches():
    ds = multidigits("train", size=64, missing=0.25)
    model = mtlzoo.create_model({"name": "hard", "backbone": {"name": "tiny", "in_chans": 1}, "tasks": ds.tasks})
    batch = next(iter(make_loader(ds, 16, seed=0)))
    out = model(batch["input"])
    losses = {t: model.tasks[t].loss(out[t], batch["targets"][t], batch["masks"][t]) for t in ds.tasks}
    total = sum(losses.values())
    total.backward()
    assert all(torch.isfinite(v) for v in losses.values())


def test_bad_arguments_are_reported():
    with pytest.raises(DataError, match=r"unknown split 'tset'.*'test'"):
        multidigits("tset")
    with pytest.raises(InvalidArgumentError, match="canvas"):
        multidigits(size=10, canvas=16, digit=16)
    with pytest.raises(DataError, match=r"no task 'lft'.*'left'"):
        multidigits(size=10, tasks=["lft"])
    with pytest.raises(InvalidArgumentError, match="missing"):
        multidigits(size=10, missing=1.5)
    with pytest.raises(UnknownComponentError, match="canvass"):
        mtlzoo.create_dataset("multidigits(canvass=20)")
    assert np.isfinite(multidigits("test", size=5).inputs.float().numpy()).all()
