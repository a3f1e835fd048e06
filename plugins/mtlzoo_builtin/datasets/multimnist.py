"""``multimnist``: MultiMNIST composed from the user's local MNIST files.

MultiMNIST (Sabour, Frosst & Hinton, NeurIPS 2017) as a multi-task benchmark (Sener & Koltun,
NeurIPS 2018): two MNIST digits (LeCun et al., Proc. IEEE 1998) overlap on one canvas (36 x 36 by
default, the digits shifted by up to a few pixels), composed exactly like ``multidigits`` (see
:mod:`mtlzoo_builtin.datasets._compose`): tasks ``left``, ``right`` (cls:10), ``seg`` (seg:3) and
``sum`` (regression).

Files: torchvision's MNIST layout (``root/MNIST/raw/train-images-idx3-ubyte`` ...; ``.gz``
copies work too), read with ``download=False`` semantics: nothing is fetched. Splits come from
disjoint source images: ``test`` from the 10,000 test digits, ``train`` and ``val`` from a fixed
partition (``split_seed``) of the 60,000 training digits.
"""

from __future__ import annotations

import gzip
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from mtlzoo import hookimpl
from mtlzoo.data import TensorMultiTaskDataset
from mtlzoo.data.files import canonical_split, derive_seed, missing_file, require_root
from mtlzoo.errors import DataError, InvalidArgumentError
from mtlzoo_builtin.datasets._compose import compose, resize_digits

LAYOUT = """\
<root>/MNIST/raw/                  (torchvision's layout; root/raw/ or root itself also work)
  train-images-idx3-ubyte          60,000 x 28 x 28 (or the same name + .gz)
  train-labels-idx1-ubyte
  t10k-images-idx3-ubyte           10,000 x 28 x 28
  t10k-labels-idx1-ubyte"""
SOURCE = ("MNIST (yann.lecun.com/exdb/mnist, or a copy fetched once by torchvision.datasets.MNIST(root, "
          "download=True))")
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (LeCun's format: magic 0x0000 08 <ndim>, big-endian sizes, then uint8 data)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise DataError(f"cannot read {str(path)!r}: {exc}") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{str(path)!r} is not an IDX file of unsigned bytes (bad magic number {data[:4].hex()})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim < 1 or len(data) < header:
        raise DataError(f"{str(path)!r}: truncated IDX header")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape))
    if len(data) - header != expected:
        raise DataError(f"{str(path)!r}: the header promises shape {shape} ({expected} bytes) but the file holds "
                        f"{len(data) - header} bytes (truncated or corrupt)")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _find(root: Path, name: str) -> Path:
    for folder in (root / "MNIST" / "raw", root / "raw", root):
        for candidate in (folder / name, folder / (name + ".gz")):
            if candidate.is_file():
                return candidate
    raise missing_file("multimnist", root / "MNIST" / "raw" / name, LAYOUT, SOURCE)


def load_mnist(root: Path, part: str) -> tuple[np.ndarray, np.ndarray]:
    """Images ``[N, 28, 28]`` uint8 and labels ``[N]`` of the ``train`` or ``test`` files."""
    image_path, label_path = (_find(root, name) for name in FILES[part])
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3:
        raise DataError(f"{str(image_path)!r}: expected N x H x W images, got shape {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(f"{str(label_path)!r}: {labels.shape[0]} labels for {len(images)} images in "
                        f"{str(image_path)!r}")
    bad = labels > 9
    if bad.any():
        index = int(np.argmax(bad))
        raise DataError(f"{str(label_path)!r} (sample {index}): label {int(labels[index])} is outside 0..9")
    return images, labels


def multimnist(split: str = "train", root: str | None = None, size: int | None = None, canvas: int = 36,
               digit: int = 28, seed: int = 0, split_seed: int = 0, val_fraction: float = 1 / 6,
               tasks: Sequence[str] | None = None, missing: float | Mapping[str, float] = 0.0,
               threshold: float = 0.3, sum_scale: float = 18.0) -> TensorMultiTaskDataset:
    """MultiMNIST from local MNIST files; tasks left, right (cls:10), seg (seg:3), sum (regression).

    split: train | val | test. root: torchvision's MNIST root (default $MTLZOO_DATA/multimnist).
    size: canvases to compose (default: one per source digit of the split). canvas, digit: sizes in
    pixels. seed: pairing and offsets. val_fraction: share of the 60,000 training digits held out
    for val (a fixed partition by split_seed). tasks, missing, threshold, sum_scale: as multidigits.
    """
    split = canonical_split("multimnist", split, ("train", "val", "test"))
    if not 0 <= val_fraction < 1:
        raise InvalidArgumentError(f"multimnist: val_fraction must be in [0, 1), got {val_fraction}")
    path = require_root("multimnist", root, LAYOUT, SOURCE)
    images, labels = load_mnist(path, "test" if split == "test" else "train")
    if split == "test":
        pool = np.arange(len(images))
    else:
        order = np.random.default_rng(derive_seed(split_seed, "mnist-val")).permutation(len(images))
        n_val = round(len(images) * val_fraction)
        pool = np.sort(order[:n_val] if split == "val" else order[n_val:])
    digits = resize_digits(images[pool] / np.float32(255.0), digit)
    local = compose(digits, labels[pool], np.arange(len(pool)), len(pool) if size is None else size, canvas=canvas,
                    seed=derive_seed(seed, split), threshold=threshold, sum_scale=sum_scale, missing=missing,
                    tasks=list(tasks) if tasks is not None else None, name="multimnist")
    local.sources = {k: torch.from_numpy(pool)[v] for k, v in local.sources.items()}  # indices into the MNIST file
    local.source_pool = pool
    return local


@hookimpl
def mtlzoo_register_datasets(register):
    register("multimnist", multimnist, tags=("image", "dense"),
             paper="Sabour et al., NeurIPS 2017; Sener & Koltun, NeurIPS 2018",
             summary="MultiMNIST from local MNIST files (torchvision layout); "
                     "tasks: left cls:10, right cls:10, seg seg:3, sum regression")
