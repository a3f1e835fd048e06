"""``multidigits``: the embedded default, a MultiMNIST-style dataset that needs no download.

Composed from the real handwritten digits that ship inside scikit-learn
(``sklearn.datasets.load_digits``: 1,797 8x8 images of 10 classes, from the UCI "Optical
Recognition of Handwritten Digits" set, Alpaydin & Kaynak 1998). Two digits, upscaled to ``digit``
pixels, overlap on a ``canvas`` x ``canvas`` image at random offsets, as in MultiMNIST (Sabour et
al., NeurIPS 2017) used as a two-task benchmark by Sener & Koltun (NeurIPS 2018). See
:mod:`mtlzoo_builtin.datasets._compose` for the placement and the overlap rule.

Tasks: ``left`` (cls:10), ``right`` (cls:10), ``seg`` (seg:3: background / left / right digit per
pixel) and ``sum`` (regression: (left + right) / 18). Input ``[1, canvas, canvas]`` in [0, 1].

Splits are drawn from **disjoint source images**: a fixed permutation (``split_seed``) of the
1,797 digits is cut into train (60%), val (20%) and test (20%) pools, so no test digit is seen in
training, whatever ``seed`` each split is built with. ``seed`` controls the pairing and offsets
(each split derives its own stream from it). Built in memory in well under a second.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from mtlzoo import hookimpl
from mtlzoo.data import TensorMultiTaskDataset
from mtlzoo.data.files import canonical_split, derive_seed
from mtlzoo.errors import DataError
from mtlzoo_builtin.datasets._compose import compose, resize_digits, split_sources

DEFAULT_SIZES = {"train": 10000, "val": 2000, "test": 2000}
SPLITS = ("train", "val", "test")
_CACHE: dict[str, np.ndarray] = {}


def _source_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 8x8 digits in [0, 1] and their labels (loaded once per process)."""
    if not _CACHE:
        try:
            from sklearn.datasets import load_digits
        except ImportError as exc:  # pragma: no cover - scikit-learn is a dependency
            raise DataError("multidigits needs scikit-learn (pip install scikit-learn), "
                            "which ships the digits") from exc
        bunch = load_digits()
        _CACHE["images"] = (bunch.images / 16.0).astype(np.float32)
        _CACHE["labels"] = bunch.target.astype(np.int64)
    return _CACHE["images"], _CACHE["labels"]


def multidigits(split: str = "train", size: int | None = None, canvas: int = 32, digit: int = 16, seed: int = 0,
                split_seed: int = 0, val_fraction: float = 0.2, test_fraction: float = 0.2,
                tasks: Sequence[str] | None = None, missing: float | Mapping[str, float] = 0.0,
                threshold: float = 0.3, sum_scale: float = 18.0) -> TensorMultiTaskDataset:
    """Two overlapping handwritten digits per image; tasks left, right (cls:10), seg (seg:3), sum (regression).

    split: train | val | test (from disjoint source digits). size: canvases to compose (default
    10000 / 2000 / 2000). canvas, digit: image and digit size in pixels. seed: pairing and offsets.
    split_seed, val_fraction, test_fraction: how the 1,797 source digits are divided. tasks: keep
    only these (e.g. [left, right]). missing: fraction of labels to drop at random, one number or
    {task: fraction} (exercises partial labels). threshold: intensity below which a pixel is
    background for seg. sum_scale: divisor of the digit sum.
    """
    split = canonical_split("multidigits", split, SPLITS)
    images, labels = _source_digits()
    pool = split_sources(len(images), split_seed, val_fraction, test_fraction)[split]
    digits = resize_digits(images, digit)
    ds = compose(digits, labels, pool, DEFAULT_SIZES[split] if size is None else size, canvas=canvas,
                 seed=derive_seed(seed, split), threshold=threshold, sum_scale=sum_scale, missing=missing,
                 tasks=list(tasks) if tasks is not None else None, name="multidigits")
    ds.source_pool = pool
    return ds


@hookimpl
def mtlzoo_register_datasets(register):
    register("multidigits", multidigits, tags=("bundled", "image", "dense"),
             paper="Sabour et al., NeurIPS 2017 (MultiMNIST); Sener & Koltun, NeurIPS 2018",
             summary="Bundled MultiMNIST-style digits from scikit-learn, no download; "
                     "tasks: left cls:10, right cls:10, seg seg:3, sum regression")
