"""Two-digit canvases in the manner of MultiMNIST (shared by ``multidigits`` and ``multimnist``).

MultiMNIST (Sabour, Frosst & Hinton, "Dynamic Routing Between Capsules", NeurIPS 2017) overlays
two digits shifted on a larger canvas; Sener & Koltun ("Multi-Task Learning as Multi-Objective
Optimization", NeurIPS 2018) made it a two-task benchmark by putting one digit at the top left and
the other at the bottom right and asking for both. This module composes such canvases from any
set of single-digit images, and adds a segmentation and a regression target.

Composition, for canvas size C and digit size D (span S = C - D, k = max(S // 2 - 1, 0)):

- the *left* digit's top-left corner (x, y) is drawn uniformly from [0, k]^2 and the *right*
  digit's from [S - k, S]^2: the left digit is always up and to the left of the right one, and
  the two overlap whenever D > S - 2k (always for the defaults);
- the canvas pixel is the maximum of the two digit intensities (the brighter stroke shows);
- ``seg`` labels each pixel 0 (background: canvas intensity below ``threshold``), 1 (left digit)
  or 2 (right digit). Where strokes overlap, the pixel belongs to the digit that is brighter there,
  i.e. the one whose intensity the canvas shows; a tie goes to the left digit;
- ``sum`` is (left label + right label) / ``sum_scale`` (default 18, so it lies in [0, 1]).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from mtlzoo.data import TensorMultiTaskDataset
from mtlzoo.data.datasets import check_tasks_subset
from mtlzoo.data.files import derive_seed
from mtlzoo.errors import DataError, InvalidArgumentError

TASKS = {"left": "cls:10", "right": "cls:10", "seg": "seg:3", "sum": "regression"}


def split_sources(n: int, split_seed: int, val_fraction: float, test_fraction: float) -> dict[str, np.ndarray]:
    """Disjoint source-image pools: a fixed permutation of ``range(n)`` cut into train/val/test."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise InvalidArgumentError(f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must be in "
                                   "[0, 1) and sum to less than 1")
    order = np.random.default_rng(derive_seed(split_seed, "sources")).permutation(n)
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    return {"test": np.sort(order[:n_test]), "val": np.sort(order[n_test: n_test + n_val]),
            "train": np.sort(order[n_test + n_val:])}


def resize_digits(images: np.ndarray, digit: int) -> np.ndarray:
    """``[N, h, w]`` floats in [0, 1] resized to ``digit`` x ``digit`` (bilinear, antialiased)."""
    if images.shape[1:] == (digit, digit):
        return images.astype(np.float32)
    out = F.interpolate(torch.from_numpy(images.astype(np.float32))[:, None], size=(digit, digit),
                        mode="bilinear", align_corners=False, antialias=True)
    return out[:, 0].clamp_(0, 1).numpy()


def compose(digits: np.ndarray, labels: np.ndarray, pool: np.ndarray, size: int, *, canvas: int, seed: int,
            threshold: float = 0.3, sum_scale: float = 18.0, missing: float | Mapping[str, float] = 0.0,
            tasks: list[str] | None = None, name: str = "multidigits") -> TensorMultiTaskDataset:
    """Compose ``size`` canvases from the source images ``pool`` (indices into ``digits``,
    ``[N, D, D]`` floats in [0, 1]) and return them as an in-memory dataset.

    The dataset also carries ``sources`` (``{"left": [size], "right": [size]}`` source indices)
    and ``offsets`` (``{"left": [size, 2], "right": [size, 2]}`` top-left corners as (x, y)).
    """
    digit = digits.shape[1]
    if canvas <= digit:
        raise InvalidArgumentError(f"{name}: canvas ({canvas}) must be larger than the digit size ({digit})")
    if size < 1:
        raise InvalidArgumentError(f"{name}: size must be a positive number of canvases, got {size}")
    if len(pool) < 2:
        raise DataError(f"{name}: this split has {len(pool)} source image(s); two are needed for a pair")
    if sum_scale <= 0:
        raise InvalidArgumentError(f"{name}: sum_scale must be positive, got {sum_scale}")
    keep = check_tasks_subset(name, tasks, TASKS)
    rng = np.random.default_rng(seed)
    # every source image is a left digit about equally often; the right partner is random but never itself
    left = pool[np.resize(rng.permutation(len(pool)), size)]
    right = pool[rng.integers(0, len(pool), size)]
    clash = right == left
    while clash.any():
        right[clash] = pool[rng.integers(0, len(pool), int(clash.sum()))]
        clash = right == left
    span = canvas - digit
    k = max(span // 2 - 1, 0)
    lxy = rng.integers(0, k + 1, (size, 2))
    rxy = rng.integers(span - k, span + 1, (size, 2))
    img_l = np.zeros((size, canvas, canvas), np.float32)
    img_r = np.zeros((size, canvas, canvas), np.float32)
    for i in range(size):
        (lx, ly), (rx, ry) = lxy[i], rxy[i]
        img_l[i, ly: ly + digit, lx: lx + digit] = digits[left[i]]
        img_r[i, ry: ry + digit, rx: rx + digit] = digits[right[i]]
    image = np.maximum(img_l, img_r)
    seg = np.where(image < threshold, 0, np.where(img_l >= img_r, 1, 2)).astype(np.uint8)
    y_left, y_right = labels[left].astype(np.int64), labels[right].astype(np.int64)
    targets = {
        "left": torch.from_numpy(y_left),
        "right": torch.from_numpy(y_right),
        "seg": torch.from_numpy(seg),
        "sum": torch.from_numpy(((y_left + y_right) / sum_scale).astype(np.float32)),
    }
    targets = {t: v for t, v in targets.items() if t in keep}
    labelled = drop_labels(size, keep, missing, derive_seed(seed, "missing"), name)
    inputs = torch.from_numpy(np.round(image * 255).astype(np.uint8))[:, None]
    ds = TensorMultiTaskDataset(inputs, targets, keep, labelled, input_scale=1 / 255,
                                target_dtypes={"seg": torch.long})
    ds.sources = {"left": torch.from_numpy(left), "right": torch.from_numpy(right)}
    ds.offsets = {"left": torch.from_numpy(lxy), "right": torch.from_numpy(rxy)}  # (x, y) of each digit
    return ds


def drop_labels(size: int, tasks: Mapping[str, str], missing: float | Mapping[str, float], seed: int,
                name: str) -> dict[str, torch.Tensor]:
    """Per task, a bool ``[size]`` that is False for a random ``missing`` fraction of the samples."""
    rates = dict(missing) if isinstance(missing, Mapping) else dict.fromkeys(tasks, float(missing))
    unknown = set(rates) - set(tasks)
    if unknown:
        raise InvalidArgumentError(f"{name}: missing= names unknown task(s) {sorted(unknown)}; "
                                   f"tasks: {', '.join(tasks)}")
    rng = np.random.default_rng(seed)
    out = {}
    for task in tasks:
        rate = float(rates.get(task, 0.0))
        if not 0.0 <= rate < 1.0:
            raise InvalidArgumentError(f"{name}: missing fraction for {task!r} must be in [0, 1), got {rate}")
        draw = rng.random(size)  # drawn for every task, so one task's rate does not shift another's
        out[task] = torch.from_numpy(draw >= rate)
    return out
