"""The sample format, collate with masks, in-memory datasets and the resumable single-dataset loader."""

from __future__ import annotations

import pytest
import torch

from mtlzoo.data import (
    Collate,
    MultiInputDataset,
    TensorMultiTaskDataset,
    collate,
    derive_seed,
    make_loader,
    to_device,
)
from mtlzoo.errors import DataError, InvalidArgumentError


def _toy(n: int = 10, missing_every: int = 3) -> TensorMultiTaskDataset:
    inputs = torch.arange(n * 4, dtype=torch.float32).reshape(n, 1, 2, 2)
    targets = {"a": torch.arange(n) % 3, "b": torch.arange(n, dtype=torch.float32) * 0.5}
    labelled = {"b": torch.arange(n) % missing_every != 0}
    return TensorMultiTaskDataset(inputs, targets, {"a": "cls:3", "b": "regression"}, labelled)


# ------------------------------------------------------------------------------------- collate
def test_collate_masks_missing_labels_and_fills_zeros_of_the_right_shape():
    samples = [
        {"input": torch.ones(3), "targets": {"seg": torch.full((2, 2), 4), "cls": torch.tensor(1)}},
        {"input": torch.zeros(3), "targets": {"cls": torch.tensor(2)}},                      # no seg label
        {"input": torch.ones(3) * 2, "targets": {"seg": torch.full((2, 2), 7), "cls": None}},  # None = missing
    ]
    batch = collate(samples)
    assert batch["input"].shape == (3, 3)
    assert batch["masks"]["seg"].tolist() == [True, False, True]
    assert batch["masks"]["cls"].tolist() == [True, True, False]
    assert batch["targets"]["seg"].shape == (3, 2, 2) and batch["targets"]["seg"].dtype == torch.int64
    assert batch["targets"]["seg"][1].eq(0).all() and batch["targets"]["seg"][2].eq(7).all()
    assert batch["targets"]["cls"].tolist() == [1, 2, 0]


def test_masked_placeholders_do_not_change_a_task_loss():
    from mtlzoo_builtin.tasks.classification import ClassificationTask

    task = ClassificationTask(out=4)
    logits = torch.randn(3, 4)
    samples = [{"input": torch.zeros(1), "targets": {"c": torch.tensor(t)} if t is not None else {}}
               for t in (3, None, 1)]
    batch = collate(samples)
    loss = task.loss(logits, batch["targets"]["c"], batch["masks"]["c"])
    expected = torch.nn.functional.cross_entropy(logits[[0, 2]], torch.tensor([3, 1]))
    torch.testing.assert_close(loss, expected)


def test_collate_uses_placeholders_when_no_sample_has_the_label():
    samples = [{"input": torch.zeros(2), "targets": {}} for _ in range(2)]
    batch = Collate(["depth"], {"depth": torch.zeros(1, 4, 4)})(samples)
    assert batch["targets"]["depth"].shape == (2, 1, 4, 4)
    assert not batch["masks"]["depth"].any()
    bare = collate(samples, tasks=["depth"])  # nothing to shape it from: absent, mask all False
    assert "depth" not in bare["targets"] and bare["masks"]["depth"].tolist() == [False, False]


def test_detection_targets_stay_lists_and_missing_ones_are_none():
    det = {"boxes": torch.tensor([[0.0, 0.0, 2.0, 2.0]]), "labels": torch.tensor([5])}
    batch = collate([{"input": torch.zeros(3, 4, 4), "targets": {"det": det}},
                     {"input": torch.zeros(3, 4, 4), "targets": {}}])
    assert isinstance(batch["targets"]["det"], list) and len(batch["targets"]["det"]) == 2
    assert batch["targets"]["det"][0] is det
    assert batch["targets"]["det"][1] is None  # unlabelled, not "labelled with no objects"
    assert batch["masks"]["det"].tolist() == [True, False]


def test_collate_names_the_task_and_shapes_that_do_not_stack():
    with pytest.raises(DataError, match=r"target 'seg'.*\(2, 2\).*\(3, 3\)"):
        collate([{"input": torch.zeros(1), "targets": {"seg": torch.zeros(2, 2)}},
                 {"input": torch.zeros(1), "targets": {"seg": torch.zeros(3, 3)}}])
    with pytest.raises(DataError, match="input"):
        collate([{"input": torch.zeros(3, 8, 8)}, {"input": torch.zeros(3, 9, 8)}])
    with pytest.raises(DataError, match="empty"):
        collate([])
    with pytest.raises(DataError, match="'input'"):
        collate([(torch.zeros(1), 0)])


def test_to_device_moves_nested_batches():
    batch = {"input": torch.zeros(2), "targets": {"d": [{"boxes": torch.zeros(1, 4)}]}, "task": "d"}
    moved = to_device(batch, "meta")
    assert moved["input"].device.type == "meta" and moved["targets"]["d"][0]["boxes"].device.type == "meta"
    assert moved["task"] == "d"


# ------------------------------------------------------------------------ in-memory datasets
def test_get_batch_equals_collate_of_items():
    ds = _toy()
    idx = torch.tensor([4, 0, 3, 9])
    fast = ds.get_batch(idx)
    slow = collate([ds[int(i)] for i in idx], tasks=ds.tasks, placeholders=ds.placeholders)
    assert torch.equal(fast["input"], slow["input"])
    for t in ds.tasks:
        assert torch.equal(fast["targets"][t], slow["targets"][t]) and torch.equal(fast["masks"][t], slow["masks"][t])
    assert "b" not in ds[0]["targets"] and "b" in ds[1]["targets"]


def test_multi_input_dataset_merges_tasks_and_concatenates():
    a = TensorMultiTaskDataset(torch.zeros(3, 2), {"x": torch.zeros(3)}, {"x": "regression"})
    b = TensorMultiTaskDataset(torch.ones(2, 2), {"y": torch.ones(2, dtype=torch.long)}, {"y": "cls:2"})
    multi = MultiInputDataset({"x": a, "y": b})
    assert multi.tasks == {"x": "regression", "y": "cls:2"} and len(multi) == 5 and multi.input_shape == (2,)
    assert set(multi[4]["targets"]) == {"y"} and set(multi[0]["targets"]) == {"x"}
    batch = next(iter(make_loader(multi, 5, shuffle=False)))
    assert batch["masks"]["x"].tolist() == [True, True, True, False, False]
    with pytest.raises(InvalidArgumentError, match="'z'"):
        MultiInputDataset({"z": a})


# --------------------------------------------------------------------------------- loader
@pytest.mark.parametrize("fast", [True, False])
def test_loader_visits_every_sample_once_per_epoch_in_a_seeded_order(fast):
    ds = _toy(10)
    loader = make_loader(ds, 3, seed=5, fast=fast)
    assert len(loader) == 4
    first = [b["input"][:, 0, 0, 0].long().tolist() for b in loader]
    seen = sorted(v // 4 for batch in first for v in batch)
    assert seen == list(range(10))
    again = [b["input"][:, 0, 0, 0].long().tolist() for b in make_loader(ds, 3, seed=5, fast=fast)]
    assert again == first
    second_epoch = [b["input"][:, 0, 0, 0].long().tolist() for b in loader]
    assert second_epoch != first  # a new permutation per epoch
    expected = torch.randperm(10, generator=torch.Generator().manual_seed(derive_seed(5, 0))).tolist()
    assert [v // 4 for batch in first for v in batch] == expected


@pytest.mark.parametrize("fast", [True, False])
def test_loader_resumes_exactly_from_its_state(fast):
    ds = _toy(11)
    reference = make_loader(ds, 2, seed=3, fast=fast)
    stream = [b["input"].sum().item() for _ in range(3) for b in reference]  # three epochs
    run = make_loader(ds, 2, seed=3, fast=fast)
    taken = []
    for i, batch in enumerate(run):  # stop in the middle of epoch 0
        taken.append(batch["input"].sum().item())
        if i == 3:
            break
    state = run.state_dict()
    resumed = make_loader(ds, 2, seed=3, fast=fast)
    resumed.load_state_dict(state)
    rest = [b["input"].sum().item() for b in resumed] + [b["input"].sum().item() for _ in range(2) for b in resumed]
    assert taken + rest == stream
    assert state["epoch"] == 0 and state["position"] == 4


def test_loader_with_worker_process_matches_in_process_order():
    ds = _toy(9)
    inline = [b["input"].sum().item() for b in make_loader(ds, 4, seed=1, fast=False)]
    workers = make_loader(ds, 4, seed=1, num_workers=1, persistent_workers=False)
    assert [b["input"].sum().item() for b in workers] == inline


def test_loader_refuses_a_state_from_other_data():
    state = make_loader(_toy(10), 2).state_dict()
    with pytest.raises(DataError, match="num_samples=10"):
        make_loader(_toy(12), 2).load_state_dict(state)


def test_sharding_gives_each_rank_a_disjoint_equal_share():
    ds = _toy(10)
    shards = [make_loader(ds, 2, seed=0, rank=r, world_size=3) for r in range(3)]
    counts = {len(s) for s in shards}
    assert counts == {2}  # ceil(10 / 3) = 4 samples per rank -> 2 batches
    seen = [int(v) // 4 for s in shards for b in s for v in b["input"][:, 0, 0, 0].tolist()]
    assert len(seen) == 12 and set(seen) == set(range(10))  # two wrap-around pads


def test_loader_moves_batches_to_the_device_and_keeps_the_data_there():
    ds = _toy(6).to("meta")
    batch = next(iter(make_loader(ds, 3, shuffle=False)))
    assert batch["input"].device.type == "meta" and batch["masks"]["b"].device.type == "meta"


def test_small_in_memory_datasets_are_kept_on_the_target_device_whole():
    ds = _toy(6)
    resident = make_loader(ds, 3, shuffle=False, device="meta")
    assert resident._source is not ds and resident._source.device.type == "meta"
    assert ds.device.type == "cpu"  # the caller's dataset is not moved
    assert next(iter(resident))["input"].device.type == "meta"
    per_batch = make_loader(ds, 3, shuffle=False, device="meta", resident=False)
    assert per_batch._source is ds and next(iter(per_batch))["input"].device.type == "meta"
    assert ds.nbytes == 6 * 4 * 4 + 6 * 8 + 6 * 4 + 2 * 6


def test_loader_rejects_bad_arguments():
    with pytest.raises(InvalidArgumentError, match="batch_size"):
        make_loader(_toy(), 0)
    with pytest.raises(InvalidArgumentError, match="rank"):
        make_loader(_toy(), 2, rank=3, world_size=2)


@pytest.mark.gpu
def test_gpu_resident_dataset_and_pinned_transfer_give_the_same_batches():
    ds = _toy(10)
    on_cpu = [b["input"] for b in make_loader(ds, 4, seed=2)]
    resident = [b["input"].cpu() for b in make_loader(_toy(10).to("cuda"), 4, seed=2)]
    pinned = make_loader(ds, 4, seed=2, fast=False, pin_memory=True, device="cuda")
    moved = [b for b in pinned]
    assert all(b["input"].is_cuda and b["masks"]["b"].is_cuda for b in moved)
    assert all(torch.equal(a, b) for a, b in zip(on_cpu, resident))
    assert all(torch.equal(a, b["input"].cpu()) for a, b in zip(on_cpu, moved))
