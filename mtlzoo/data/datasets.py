"""Dataset base classes: the contract, an in-memory fast path, and multi-input datasets.

**The contract** a dataset factory (registered with ``mtlzoo_register_datasets``) must meet:

- map-style: ``len(ds)`` and ``ds[i]`` returning a sample ``{"input": ..., "targets": {...}}``
  (see :mod:`mtlzoo.data.sample`; a missing label is an absent key);
- ``ds.tasks: dict[str, str]``: task name -> task spec string (``{"left": "cls:10", "seg":
  "seg:3", "sum": "regression"}``), so ``hard(backbone=..., tasks=ds.tasks)`` builds the heads;
- ``ds.input_shape: tuple``: one input without the batch dimension (``(1, 32, 32)``, ``(F,)``).

Optional: ``ds.placeholders`` (a zero target per task, see :func:`mtlzoo.data.collate`), and
``ds.get_batch(indices)`` returning a collated batch directly (the in-memory fast path that
:func:`mtlzoo.data.make_loader` uses instead of a ``DataLoader``).

**Multi-input** datasets (a dataset per task, as in Office-31 or CIFAR-10 + VOC) are
:class:`MultiInputDataset`: ``.datasets`` maps each task to a dataset whose samples carry only that
task's target. Train them with :class:`mtlzoo.data.MultiTaskLoader`.
"""

from __future__ import annotations

import bisect
import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from mtlzoo.data.sample import Batch, Sample
from mtlzoo.errors import DataError, InvalidArgumentError


class MultiTaskDataset(Dataset):
    """Base class for map-style multi-task datasets; subclasses set ``tasks`` and ``input_shape``
    and implement ``__len__`` and ``__getitem__``."""

    tasks: dict[str, str] = {}
    input_shape: tuple[int | None, ...] = ()

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> Sample:
        raise NotImplementedError

    @property
    def placeholders(self) -> dict[str, Any]:
        """A zero target per task (used when no sample of a batch has that label); by default
        taken from the first sample that carries each task, looked up once."""
        cached = getattr(self, "_placeholders", None)
        if cached is not None:
            return cached
        found: dict[str, Any] = {}
        for i in range(min(len(self), 64)):
            for task, value in self[i]["targets"].items():
                if value is not None and task not in found:
                    found[task] = _zero_like(value)
            if len(found) == len(self.tasks):
                break
        self._placeholders = found
        return found

    def __repr__(self) -> str:
        tasks = ", ".join(f"{k}: {v}" for k, v in self.tasks.items())
        return f"{type(self).__name__}(n={len(self)}, input_shape={self.input_shape}, tasks={{{tasks}}})"


def _zero_like(value: Any) -> Any:
    if isinstance(value, Tensor):
        return torch.zeros_like(value)
    if isinstance(value, Mapping):
        return {k: (v[:0] if isinstance(v, Tensor) and v.dim() else v) for k, v in value.items()}
    return torch.zeros_like(torch.as_tensor(value))


class TensorMultiTaskDataset(MultiTaskDataset):
    """A multi-task dataset held in tensors: inputs ``[N, ...]`` and one target tensor ``[N, ...]``
    per task, with an optional ``labelled[t]`` bool ``[N]`` marking which samples carry task t.

    It is the fast path for small datasets: :meth:`to` moves it to the accelerator whole, and
    :meth:`get_batch` indexes a whole batch at once (no per-sample Python, no worker processes),
    which :func:`mtlzoo.data.make_loader` uses automatically.

    ``input_scale``: inputs stored as integers (``uint8`` images) are returned as
    ``float32 * input_scale``; ``target_dtypes``: targets stored compactly are cast on access
    (``{"seg": torch.long}``). Unlabelled entries are zeroed, so :meth:`get_batch` and
    :func:`~mtlzoo.data.collate` over ``ds[i]`` give identical batches.
    """

    def __init__(self, inputs: Tensor, targets: Mapping[str, Tensor], tasks: Mapping[str, str],
                 labelled: Mapping[str, Tensor] | None = None, *, input_scale: float | None = None,
                 target_dtypes: Mapping[str, torch.dtype] | None = None) -> None:
        n = inputs.shape[0]
        if set(targets) != set(tasks):
            raise InvalidArgumentError(f"targets {sorted(targets)} and tasks {sorted(tasks)} name different tasks")
        for task, value in targets.items():
            if value.shape[0] != n:
                raise InvalidArgumentError(f"target {task!r} has {value.shape[0]} rows, inputs have {n}")
        self.inputs = inputs
        self.tasks = dict(tasks)
        self.labelled = {t: torch.ones(n, dtype=torch.bool) for t in tasks}
        for task, mask in (labelled or {}).items():
            if task not in self.tasks:
                raise InvalidArgumentError(f"labelled names unknown task {task!r}")
            self.labelled[task] = mask.to(torch.bool)
        self.targets = {}
        for task, value in targets.items():
            mask = self.labelled[task]
            if not bool(mask.all()):
                value = value.clone()
                value[~mask] = 0
            self.targets[task] = value
        self.input_scale = input_scale
        self.target_dtypes = dict(target_dtypes or {})
        self.input_shape = tuple(inputs.shape[1:])

    def __len__(self) -> int:
        return self.inputs.shape[0]

    @property
    def device(self) -> torch.device:
        return self.inputs.device

    def to(self, device: torch.device | str) -> TensorMultiTaskDataset:
        """Move every tensor to ``device`` (in place) and return ``self``."""
        self.inputs = self.inputs.to(device)
        self.targets = {t: v.to(device) for t, v in self.targets.items()}
        self.labelled = {t: v.to(device) for t, v in self.labelled.items()}
        return self

    def copy_to(self, device: torch.device | str) -> TensorMultiTaskDataset:
        """A copy of the dataset on ``device`` (this one stays where it is)."""
        clone = copy.copy(self)
        clone.targets, clone.labelled = dict(self.targets), dict(self.labelled)
        return clone.to(device)

    @property
    def nbytes(self) -> int:
        """Bytes held by the tensors (what keeping it on an accelerator costs)."""
        tensors = [self.inputs, *self.targets.values(), *self.labelled.values()]
        return sum(t.numel() * t.element_size() for t in tensors)

    def _input(self, x: Tensor) -> Tensor:
        return x.float() * self.input_scale if self.input_scale is not None else x

    def _target(self, task: str, y: Tensor) -> Tensor:
        dtype = self.target_dtypes.get(task)
        return y.to(dtype) if dtype is not None else y

    def __getitem__(self, index: int) -> Sample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} samples")
        targets = {t: self._target(t, v[index]) for t, v in self.targets.items() if bool(self.labelled[t][index])}
        return {"input": self._input(self.inputs[index]), "targets": targets}

    def get_batch(self, indices: Tensor) -> Batch:
        """The collated batch of ``indices`` (a 1-D integer tensor), on the dataset's device."""
        indices = indices.to(self.device)
        return {
            "input": self._input(self.inputs[indices]),
            "targets": {t: self._target(t, v[indices]) for t, v in self.targets.items()},
            "masks": {t: v[indices] for t, v in self.labelled.items()},
        }

    @property
    def placeholders(self) -> dict[str, Any]:
        return {t: torch.zeros_like(self._target(t, v[0])) for t, v in self.targets.items() if len(v)}

    def subset(self, indices: Sequence[int] | Tensor) -> TensorMultiTaskDataset:
        """A new dataset holding the rows ``indices``."""
        idx = torch.as_tensor(indices, dtype=torch.long, device=self.device)
        return TensorMultiTaskDataset(self.inputs[idx], {t: v[idx] for t, v in self.targets.items()}, self.tasks,
                                      {t: v[idx] for t, v in self.labelled.items()}, input_scale=self.input_scale,
                                      target_dtypes=self.target_dtypes)


class MultiInputDataset(MultiTaskDataset):
    """One dataset per task (the multi-input setting): ``.datasets[t]`` yields samples labelled for
    task ``t`` only. ``.tasks`` merges the tasks of the parts.

    ``input_shape`` is the common input shape; where the parts differ in a dimension it is ``None``
    there (CIFAR 32x32 next to VOC 320x320 gives ``(3, None, None)``); ``input_shapes`` has each
    part's own. Indexed directly it is the concatenation of its parts in task order (each sample
    labelled for one task), so it also trains as a single partially labelled dataset.
    """

    def __init__(self, datasets: Mapping[str, Any]) -> None:
        if not datasets:
            raise InvalidArgumentError("a multi-input dataset needs at least one task")
        self.datasets = dict(datasets)
        self.tasks = {}
        for task, part in self.datasets.items():
            part_tasks = getattr(part, "tasks", None)
            if not isinstance(part_tasks, Mapping) or task not in part_tasks:
                raise InvalidArgumentError(f"the dataset for task {task!r} must declare it in its .tasks")
            self.tasks[task] = part_tasks[task]
        self.input_shapes = {t: tuple(getattr(p, "input_shape", ())) for t, p in self.datasets.items()}
        shapes = list(self.input_shapes.values())
        if all(len(s) == len(shapes[0]) for s in shapes):
            self.input_shape = tuple(d if all(s[i] == d for s in shapes) else None for i, d in enumerate(shapes[0]))
        else:
            self.input_shape = shapes[0]
        self._offsets = [0]
        for part in self.datasets.values():
            self._offsets.append(self._offsets[-1] + len(part))

    def __len__(self) -> int:
        return self._offsets[-1]

    def sizes(self) -> dict[str, int]:
        """Samples per task."""
        return {t: len(p) for t, p in self.datasets.items()}

    def __getitem__(self, index: int) -> Sample:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} samples")
        part = bisect.bisect_right(self._offsets, index) - 1
        task = list(self.datasets)[part]
        return self.datasets[task][index - self._offsets[part]]

    @property
    def placeholders(self) -> dict[str, Any]:
        cached = getattr(self, "_placeholders", None)
        if cached is None:
            cached = {}
            for task, part in self.datasets.items():
                own = getattr(part, "placeholders", None)
                if own and task in own:
                    cached[task] = own[task]
                elif len(part):
                    cached[task] = _zero_like(part[0]["targets"][task])
            self._placeholders = cached
        return cached

    def __repr__(self) -> str:
        parts = ", ".join(f"{t}: {self.tasks[t]} x{len(p)}" for t, p in self.datasets.items())
        return f"{type(self).__name__}({parts})"


def check_tasks_subset(dataset: str, wanted: Sequence[str] | str | None,
                       available: Mapping[str, str]) -> dict[str, str]:
    """The tasks a user kept with ``tasks=[...]``, in the dataset's order; unknown names raise."""
    from mtlzoo.errors import suggestion

    if wanted is None:
        return dict(available)
    if isinstance(wanted, str):
        wanted = [wanted]
    for name in wanted:
        if name not in available:
            raise DataError(f"{dataset}: no task {name!r}.{suggestion(str(name), available)} "
                            f"Tasks: {', '.join(available)}.")
    if not wanted:
        raise DataError(f"{dataset}: tasks=[] keeps no task; choose from {', '.join(available)}")
    return {t: s for t, s in available.items() if t in set(wanted)}
