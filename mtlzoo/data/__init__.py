"""Multi-task data: the sample format, batching with label masks, resumable loaders, and the
task-sampling policies of multi-input training.

- A dataset is map-style with ``.tasks`` (task name -> task spec, e.g. ``{"left": "cls:10"}``)
  and ``.input_shape``; its samples are ``{"input": Tensor, "targets": {task: Tensor}}``, a
  missing label being an absent key (:mod:`mtlzoo.data.datasets`, :mod:`mtlzoo.data.sample`).
- :func:`collate` stacks samples into ``{"input", "targets", "masks"}``; ``masks[t][i]`` is True
  when sample i has a label for t, and the losses take it: ``task.loss(pred, target, mask)``.
- :func:`make_loader`: a seeded, resumable loader over one dataset (in-memory fast path for
  :class:`TensorMultiTaskDataset`, ``DataLoader`` workers otherwise).
- :class:`MultiTaskLoader`: one loader per task, with the policies ``all``, ``round_robin``,
  ``proportional``, ``uniform`` and ``temperature`` (:mod:`mtlzoo.data.multitask`).

Datasets are built by name with :func:`mtlzoo.create_dataset` (``"multidigits(size=500)"``).
"""

from __future__ import annotations

from mtlzoo.data.datasets import MultiInputDataset, MultiTaskDataset, TensorMultiTaskDataset
from mtlzoo.data.files import check_labels, derive_seed, load_image, load_npy, require_root
from mtlzoo.data.loader import ResumableLoader, make_loader
from mtlzoo.data.multitask import POLICIES, MultiTaskLoader, task_probabilities, task_schedule
from mtlzoo.data.sample import Batch, Collate, Sample, collate, to_device

__all__ = [
    "POLICIES",
    "Batch",
    "Collate",
    "MultiInputDataset",
    "MultiTaskDataset",
    "MultiTaskLoader",
    "ResumableLoader",
    "Sample",
    "TensorMultiTaskDataset",
    "check_labels",
    "collate",
    "derive_seed",
    "load_image",
    "load_npy",
    "make_loader",
    "require_root",
    "task_probabilities",
    "task_schedule",
    "to_device",
]
