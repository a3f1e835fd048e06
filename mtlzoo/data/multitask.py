"""Multi-input training: one loader per task and a policy that decides which tasks each step sees.

``MultiTaskLoader(datasets_by_task, batch_size, policy=...)`` iterates steps; each step yields a
**list** of collated batches (each with a ``"task"`` key naming its task):

============== ====================================================== ==========================
policy         one step                                               steps per epoch
============== ====================================================== ==========================
``all``        one batch from every task (LibMTL's multi-input mode)  ``max_t b_t``
``round_robin`` one task, in the fixed order t_1, t_2, ..., t_T, t_1  ``T * max_t b_t``
``proportional`` one task drawn with p_t = n_t / sum_s n_s             ``sum_t b_t``
``uniform``    one task drawn with p_t = 1 / T                        ``sum_t b_t``
``temperature`` one task drawn with p_t ∝ min(n_t, cap)^(1/T)          ``sum_t b_t``
============== ====================================================== ==========================

``n_t`` is the number of samples of task t and ``b_t`` its batches per epoch. The epoch lengths
are chosen so that: with ``all`` and ``round_robin`` every task sees at least its whole data once
(smaller tasks cycle, as LibMTL does); with the sampled policies the expected number of batches
equals one pass over all the data. ``steps_per_epoch=`` overrides any of them. A task whose loader
runs out starts its next epoch (its own reshuffle) and carries on.

The temperature rule is the one of multilingual training (Arivazhagan et al., "Massively
Multilingual Neural Machine Translation in the Wild", 2019: p_t ∝ n_t^(1/T)), with the size cap of
Raffel et al. (T5, JMLR 2020, "examples-proportional mixing" with an artificial limit K):
``T = 1`` and no cap is ``proportional``; ``T -> inf`` is ``uniform``.

Determinism and resume: the tasks drawn in epoch ``e`` are a function of ``(seed, e)`` alone and
each task's loader is a :class:`~mtlzoo.data.loader.ResumableLoader` with its own seed, so
``state_dict()`` (the step within the epoch and every task loader's position) restores exactly
the batches that would have come next.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from mtlzoo.data.files import derive_seed
from mtlzoo.data.loader import ResumableLoader
from mtlzoo.data.sample import Batch
from mtlzoo.errors import DataError, InvalidArgumentError, suggestion

POLICIES = ("all", "round_robin", "proportional", "uniform", "temperature")
SAMPLED = ("proportional", "uniform", "temperature")


def check_policy(policy: str) -> str:
    if policy not in POLICIES:
        raise InvalidArgumentError(f"unknown task-sampling policy {policy!r}.{suggestion(str(policy), POLICIES)} "
                                   f"Policies: {', '.join(POLICIES)}.")
    return policy


def task_probabilities(sizes: Mapping[str, int], policy: str, temperature: float = 1.0,
                       cap: int | None = None) -> dict[str, float]:
    """The probability of drawing each task per step (``all`` and ``round_robin``: 1/T each,
    which is their long-run share of steps)."""
    check_policy(policy)
    if not sizes:
        raise InvalidArgumentError("no tasks to sample from")
    if temperature <= 0 or math.isnan(temperature):
        raise InvalidArgumentError(f"temperature must be positive, got {temperature}")
    if cap is not None and cap < 1:
        raise InvalidArgumentError(f"cap must be a positive number of samples, got {cap}")
    if policy in ("uniform", "all", "round_robin"):
        return {t: 1.0 / len(sizes) for t in sizes}
    if policy == "proportional":
        weights = {t: float(n) for t, n in sizes.items()}
    else:
        limit = math.inf if cap is None else cap
        weights = {t: float(min(n, limit)) ** (1.0 / temperature) for t, n in sizes.items()}
    total = sum(weights.values())
    if total <= 0:
        raise DataError(f"every task is empty ({dict(sizes)}); nothing to sample")
    return {t: w / total for t, w in weights.items()}


def task_schedule(tasks: list[str], policy: str, steps: int, *, probabilities: Mapping[str, float] | None = None,
                  seed: int = 0, epoch: int = 0) -> list[str] | None:
    """The task of each step of an epoch (``None`` for ``all``: every task every step)."""
    check_policy(policy)
    if policy == "all":
        return None
    if policy == "round_robin":
        return [tasks[i % len(tasks)] for i in range(steps)]
    if probabilities is None:
        raise InvalidArgumentError(f"policy {policy!r} needs the task probabilities")
    p = torch.tensor([probabilities[t] for t in tasks], dtype=torch.float64)
    gen = torch.Generator().manual_seed(derive_seed(seed, epoch, "tasks"))
    draws = torch.multinomial(p, steps, replacement=True, generator=gen) if steps else torch.empty(0, dtype=torch.long)
    return [tasks[i] for i in draws.tolist()]


class MultiTaskLoader:
    """Per-step batches from one dataset per task, chosen by ``policy`` (see the module docs).

    ``datasets_by_task``: a mapping ``{task: dataset}`` or an object with ``.datasets`` (a
    :class:`~mtlzoo.data.MultiInputDataset`). ``batch_size``: an int, or a dict per task. Other
    keyword arguments (``num_workers``, ``pin_memory``, ``persistent_workers``, ``device``,
    ``drop_last``, ``rank``/``world_size``, ``DataLoader`` options) go to each task's
    :class:`~mtlzoo.data.loader.ResumableLoader`; note that workers are per task.
    """

    def __init__(self, datasets_by_task: Any, batch_size: int | Mapping[str, int], policy: str = "all", *,
                 temperature: float = 1.0, cap: int | None = None, seed: int = 0,
                 steps_per_epoch: int | None = None, shuffle: bool = True, num_workers: int = 0,
                 pin_memory: bool = False, **loader_kwargs: Any) -> None:
        datasets = getattr(datasets_by_task, "datasets", datasets_by_task)
        if not isinstance(datasets, Mapping) or not datasets:
            raise InvalidArgumentError("MultiTaskLoader needs {task: dataset} (or a dataset with .datasets)")
        self.policy = check_policy(policy)
        self.tasks = list(datasets)
        self.seed = int(seed)
        self.temperature = temperature
        self.cap = cap
        sizes = {t: len(d) for t, d in datasets.items()}
        empty = [t for t, n in sizes.items() if n == 0]
        if empty:
            raise DataError(f"the dataset of task(s) {', '.join(map(repr, empty))} is empty")
        self.sizes = sizes
        self.probabilities = task_probabilities(sizes, policy, temperature, cap)
        self.loaders: dict[str, ResumableLoader] = {}
        for i, (task, dataset) in enumerate(datasets.items()):
            size = batch_size[task] if isinstance(batch_size, Mapping) else batch_size
            self.loaders[task] = ResumableLoader(
                dataset, size, shuffle=shuffle, seed=derive_seed(self.seed, i, task), num_workers=num_workers,
                pin_memory=pin_memory, **loader_kwargs)
        batches = {t: len(loader) for t, loader in self.loaders.items()}
        if any(b == 0 for b in batches.values()):
            raise DataError(f"a task has no full batch (batches per task: {batches}); lower batch_size or drop_last")
        if steps_per_epoch is not None:
            if steps_per_epoch < 1:
                raise InvalidArgumentError(f"steps_per_epoch must be positive, got {steps_per_epoch}")
            self.steps_per_epoch = int(steps_per_epoch)
        elif policy == "all":
            self.steps_per_epoch = max(batches.values())
        elif policy == "round_robin":
            self.steps_per_epoch = len(self.tasks) * max(batches.values())
        else:
            self.steps_per_epoch = sum(batches.values())
        self.epoch = 0
        self.step = 0  # steps handed out in the current epoch
        self._iters: dict[str, Iterator[Batch]] = {}

    def __len__(self) -> int:
        return self.steps_per_epoch

    def schedule(self, epoch: int) -> list[str] | None:
        """The task of each step of ``epoch`` (``None`` for policy ``all``)."""
        return task_schedule(self.tasks, self.policy, self.steps_per_epoch, probabilities=self.probabilities,
                             seed=self.seed, epoch=epoch)

    def _next(self, task: str) -> Batch:
        for _ in range(2):
            it = self._iters.get(task)
            if it is None:
                it = self._iters[task] = iter(self.loaders[task])
            try:
                batch = next(it)
            except StopIteration:
                self._iters.pop(task)  # this task's epoch ended: start its next one
                continue
            batch["task"] = task
            return batch
        raise DataError(f"the loader of task {task!r} yields no batch")

    def __iter__(self) -> Iterator[list[Batch]]:
        if self.step >= self.steps_per_epoch:
            self.epoch, self.step = self.epoch + 1, 0
        self._iters = {}  # fresh iterators continue from each task loader's recorded position
        schedule = self.schedule(self.epoch)
        while self.step < self.steps_per_epoch:
            names = self.tasks if schedule is None else [schedule[self.step]]
            batches = [self._next(t) for t in names]
            self.step += 1
            yield batches
        self.epoch, self.step = self.epoch + 1, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.step = int(epoch), 0

    def state_dict(self) -> dict[str, Any]:
        epoch, step = self.epoch, self.step
        if step >= self.steps_per_epoch:
            epoch, step = epoch + 1, 0
        return {"policy": self.policy, "seed": self.seed, "epoch": epoch, "step": step,
                "steps_per_epoch": self.steps_per_epoch,
                "loaders": {t: loader.state_dict() for t, loader in self.loaders.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("policy", self.policy) != self.policy:
            raise DataError(f"cannot resume: the saved loader used policy {state['policy']!r}, "
                            f"this one {self.policy!r}")
        saved = set(state.get("loaders", {}))
        if saved != set(self.tasks):
            raise DataError(f"cannot resume: the saved loader has tasks {sorted(saved)}, this one {sorted(self.tasks)}")
        if state.get("steps_per_epoch", self.steps_per_epoch) != self.steps_per_epoch:
            raise DataError(f"cannot resume: the saved loader had {state['steps_per_epoch']} steps per epoch, "
                            f"this one {self.steps_per_epoch}")
        self.seed = int(state.get("seed", self.seed))
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        for task, loader_state in state["loaders"].items():
            self.loaders[task].load_state_dict(loader_state)
        self._iters = {}

    def __repr__(self) -> str:
        return (f"MultiTaskLoader(policy={self.policy!r}, tasks={self.tasks}, steps_per_epoch={self.steps_per_epoch}, "
                f"epoch={self.epoch}, step={self.step})")
