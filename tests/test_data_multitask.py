"""Multi-input loading: the task-sampling policies follow their formulas, epochs have the documented
length, and a resumed loader continues exactly."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mtlzoo.data import MultiInputDataset, MultiTaskLoader, TensorMultiTaskDataset, task_probabilities, task_schedule
from mtlzoo.errors import DataError, InvalidArgumentError

SIZES = {"a": 40, "b": 10, "c": 200}


def _part(task: str, n: int) -> TensorMultiTaskDataset:
    # the input holds a global id so tests can follow every sample
    offset = {"a": 0, "b": 1000, "c": 2000}[task]
    ids = torch.arange(offset, offset + n, dtype=torch.float32)[:, None]
    return TensorMultiTaskDataset(ids, {task: torch.zeros(n, dtype=torch.long)}, {task: "cls:2"})


def _datasets(sizes=SIZES) -> dict[str, TensorMultiTaskDataset]:
    return {t: _part(t, n) for t, n in sizes.items()}


def _ids(step: list[dict]) -> list[tuple[str, tuple[int, ...]]]:
    return [(b["task"], tuple(int(v) for v in b["input"][:, 0].tolist())) for b in step]


# ------------------------------------------------------------------------------- formulas
def test_probabilities_follow_each_policy_formula():
    total = sum(SIZES.values())
    prop = task_probabilities(SIZES, "proportional")
    assert prop == pytest.approx({t: n / total for t, n in SIZES.items()})
    assert task_probabilities(SIZES, "uniform") == pytest.approx({t: 1 / 3 for t in SIZES})
    temp = task_probabilities(SIZES, "temperature", temperature=2.0, cap=100)
    raw = {t: min(n, 100) ** 0.5 for t, n in SIZES.items()}
    assert temp == pytest.approx({t: w / sum(raw.values()) for t, w in raw.items()})


@given(sizes=st.dictionaries(st.sampled_from("abcdef"), st.integers(1, 10_000), min_size=1, max_size=6),
       temperature=st.floats(0.1, 20.0))
@settings(max_examples=60, deadline=None)
def test_temperature_one_without_cap_is_proportional_and_probabilities_sum_to_one(sizes, temperature):
    assert task_probabilities(sizes, "temperature", 1.0) == pytest.approx(task_probabilities(sizes, "proportional"))
    probs = task_probabilities(sizes, "temperature", temperature)
    assert math.isclose(sum(probs.values()), 1.0, rel_tol=1e-9)
    # a larger task never gets a smaller share
    ordered = sorted(sizes, key=sizes.get)
    assert all(probs[x] <= probs[y] + 1e-12 for x, y in itertools.pairwise(ordered))


@pytest.mark.parametrize("policy,kw", [("proportional", {}), ("uniform", {}),
                                       ("temperature", {"temperature": 3.0, "cap": 50})])
def test_empirical_task_frequencies_match_the_probabilities(policy, kw):
    probs = task_probabilities(SIZES, policy, **kw)
    draws = 20_000
    counts = Counter(task_schedule(list(SIZES), policy, draws, probabilities=probs, seed=7))
    for task, p in probs.items():
        sd = math.sqrt(p * (1 - p) / draws)
        assert abs(counts[task] / draws - p) < 5 * sd + 1e-9, (task, counts[task] / draws, p)


def test_schedules_are_seeded():
    probs = task_probabilities(SIZES, "uniform")
    a = task_schedule(list(SIZES), "uniform", 50, probabilities=probs, seed=1, epoch=0)
    assert a == task_schedule(list(SIZES), "uniform", 50, probabilities=probs, seed=1, epoch=0)
    assert a != task_schedule(list(SIZES), "uniform", 50, probabilities=probs, seed=1, epoch=1)
    assert a != task_schedule(list(SIZES), "uniform", 50, probabilities=probs, seed=2, epoch=0)


def test_unknown_policy_and_bad_temperature_are_refused():
    with pytest.raises(InvalidArgumentError, match="round_robin"):
        MultiTaskLoader(_datasets(), 4, policy="round_robn")
    with pytest.raises(InvalidArgumentError, match="temperature"):
        task_probabilities(SIZES, "temperature", temperature=0)


# ------------------------------------------------------------------------------ the loader
def test_policy_all_yields_one_batch_per_task_and_cycles_small_tasks():
    loader = MultiTaskLoader(_datasets(), 10, policy="all", seed=0)
    assert len(loader) == 20  # max over tasks of batches per epoch: 200 / 10
    steps = list(loader)
    assert len(steps) == 20 and all([b["task"] for b in s] == ["a", "b", "c"] for s in steps)
    seen_c = sorted(i for s in steps for i in _ids(s)[2][1])
    assert seen_c == list(range(2000, 2200))  # the largest task is seen exactly once
    seen_b = Counter(i for s in steps for i in _ids(s)[1][1])
    assert set(seen_b.values()) == {20}  # the 10-sample task cycles every step


def test_round_robin_order_is_exact_and_epoch_is_T_times_the_largest():
    loader = MultiTaskLoader(_datasets(), 10, policy="round_robin")
    assert len(loader) == 3 * 20
    tasks = [step[0]["task"] for step in loader]
    assert tasks == ["a", "b", "c"] * 20


@pytest.mark.parametrize("policy", ["proportional", "uniform", "temperature"])
def test_sampled_policies_draw_one_task_per_step_over_all_batches(policy):
    loader = MultiTaskLoader(_datasets(), 10, policy=policy, temperature=2.0, seed=3)
    assert len(loader) == 4 + 1 + 20  # one pass over all data in expectation
    steps = list(loader)
    assert all(len(s) == 1 for s in steps)
    assert [s[0]["task"] for s in steps] == loader.schedule(0)


def test_multi_loader_resumes_exactly():
    kwargs = {"policy": "temperature", "temperature": 2.0, "seed": 11}
    reference = MultiTaskLoader(_datasets(), 7, **kwargs)
    stream = [_ids(s) for _ in range(2) for s in reference]
    run = MultiTaskLoader(_datasets(), 7, **kwargs)
    taken = []
    for i, step in enumerate(run):
        taken.append(_ids(step))
        if i == 12:
            break
    resumed = MultiTaskLoader(_datasets(), 7, **kwargs)
    resumed.load_state_dict(run.state_dict())
    rest = [_ids(s) for s in resumed] + [_ids(s) for s in resumed]
    assert taken + rest[: len(stream) - len(taken)] == stream


def test_multi_loader_accepts_a_multi_input_dataset_and_per_task_batch_sizes():
    multi = MultiInputDataset(_datasets({"a": 8, "b": 4}))
    loader = MultiTaskLoader(multi, {"a": 4, "b": 2}, policy="all", steps_per_epoch=3)
    steps = list(loader)
    assert len(steps) == 3 and [len(b["input"]) for b in steps[0]] == [4, 2]
    assert set(steps[0][1]["masks"]) == {"b"} and steps[0][1]["masks"]["b"].all()


def test_multi_loader_refuses_empty_tasks_and_mismatched_state():
    with pytest.raises(DataError, match="'b'"):
        MultiTaskLoader({"a": _part("a", 4), "b": _part("b", 0)}, 2)
    state = MultiTaskLoader(_datasets(), 10, policy="uniform").state_dict()
    with pytest.raises(DataError, match="policy"):
        MultiTaskLoader(_datasets(), 10, policy="all").load_state_dict(state)
