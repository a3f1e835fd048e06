"""The one sample format, and how samples become a batch.

A **sample** is ``{"input": Tensor, "targets": {task: target}}``. A task whose label is missing
for this sample is simply absent from ``targets`` (a value of ``None`` means the same). A target
is a tensor (a class index, a vector, a map) or, for detection, a dict of tensors
(``{"boxes": [N, 4], "labels": [N]}``).

A **batch** (what :func:`collate` returns) is::

    {"input":   Tensor[B, ...],
     "targets": {task: Tensor[B, ...]},        # detection: a list of B dicts (None: unlabelled)
     "masks":   {task: BoolTensor[B]}}         # masks[t][i]: sample i has a label for t

Missing targets are filled with zeros of the right shape and dtype so the batch stacks (in a
detection list they stay ``None``, torchvision's "no label" for an image); the task
losses ignore them through the mask (``task.loss(pred, target, mask)``), and so do the metrics.
If no sample of a batch has a label for a task and no placeholder is known for it, the task is
absent from ``targets`` while ``masks[t]`` is all False: treat it as a zero loss.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mtlzoo.errors import DataError

Sample = dict[str, Any]
Batch = dict[str, Any]


def _as_tensor(value: Any, what: str) -> Tensor:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (np.ndarray, np.generic, int, float, bool, list, tuple)):
        return torch.as_tensor(value)
    raise DataError(f"{what} is a {type(value).__name__}; expected a tensor, an array or a number")


def _is_structured(value: Any) -> bool:
    """Detection-style targets (a dict of tensors per sample) stay a list in the batch."""
    return isinstance(value, Mapping)


def _stack(values: list[Tensor], what: str) -> Tensor:
    first = values[0].shape
    for i, value in enumerate(values):
        if value.shape != first:
            raise DataError(
                f"{what}: sample 0 has shape {tuple(first)} but sample {i} has {tuple(value.shape)}; "
                "a batch needs one shape (resize or crop the data to one size)"
            )
    return torch.stack(values)


def task_names(samples: Iterable[Sample]) -> list[str]:
    """The tasks that appear in any sample, in first-seen order."""
    seen: dict[str, None] = {}
    for sample in samples:
        for task in sample.get("targets", {}):
            seen.setdefault(task, None)
    return list(seen)


def collate(samples: Sequence[Sample], tasks: Iterable[str] | None = None,
            placeholders: Mapping[str, Any] | None = None) -> Batch:
    """Stack samples into a batch with one boolean mask per task.

    ``tasks``: the task names to include (default: every task seen in the samples).
    ``placeholders``: a zero target per task, used when no sample of the batch has that label.
    """
    if not samples:
        raise DataError("collate() got an empty list of samples")
    for i, sample in enumerate(samples):
        if not isinstance(sample, Mapping) or "input" not in sample:
            raise DataError(f"sample {i} is not a dict with an 'input' (got {type(sample).__name__}); "
                            "samples look like {'input': tensor, 'targets': {task: tensor}}")
    inputs = [_as_tensor(s["input"], f"input of sample {i}") for i, s in enumerate(samples)]
    batch: Batch = {"input": _stack(inputs, "input"), "targets": {}, "masks": {}}
    names = list(tasks) if tasks is not None else task_names(samples)
    for task in names:
        values = [(s.get("targets") or {}).get(task) for s in samples]
        mask = torch.tensor([v is not None for v in values], dtype=torch.bool)
        batch["masks"][task] = mask
        template = next((v for v in values if v is not None), None)
        if template is None and placeholders is not None:
            template = placeholders.get(task)
        if template is None:
            continue  # nothing to shape a placeholder from; the all-False mask says "no labels"
        if _is_structured(template):
            # an unlabelled image stays None: an empty target would claim "labelled, no objects"
            batch["targets"][task] = list(values)
            continue
        template = _as_tensor(template, f"target {task!r}")
        zero = torch.zeros_like(template)
        tensors = [_as_tensor(v, f"target {task!r} of sample {i}") if v is not None else zero
                   for i, v in enumerate(values)]
        batch["targets"][task] = _stack(tensors, f"target {task!r}")
    return batch


class Collate:
    """A picklable ``collate_fn`` for :class:`torch.utils.data.DataLoader` that knows a dataset's
    tasks and placeholders, so every batch carries every task (with its mask)."""

    def __init__(self, tasks: Iterable[str] | None = None, placeholders: Mapping[str, Any] | None = None) -> None:
        self.tasks = list(tasks) if tasks is not None else None
        self.placeholders = dict(placeholders) if placeholders else None

    def __call__(self, samples: Sequence[Sample]) -> Batch:
        return collate(samples, self.tasks, self.placeholders)


def to_device(value: Any, device: torch.device | str, non_blocking: bool = True) -> Any:
    """Move every tensor in a batch (nested dicts, lists, tuples) to ``device``."""
    if isinstance(value, Tensor):
        return value.to(device, non_blocking=non_blocking)
    if isinstance(value, Mapping):
        return {k: to_device(v, device, non_blocking) for k, v in value.items()}
    if isinstance(value, list):
        return [to_device(v, device, non_blocking) for v in value]
    if isinstance(value, tuple):
        return tuple(to_device(v, device, non_blocking) for v in value)
    return value


def pin(value: Any) -> Any:
    """Page-locked copies of every CPU tensor in a batch (for fast asynchronous host-to-device copies)."""
    if isinstance(value, Tensor):
        return value.pin_memory() if value.device.type == "cpu" else value
    if isinstance(value, Mapping):
        return {k: pin(v) for k, v in value.items()}
    if isinstance(value, list):
        return [pin(v) for v in value]
    return value
