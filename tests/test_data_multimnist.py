"""MultiMNIST from a fixture written in torchvision's raw MNIST layout (IDX files)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import mtlzoo
from mtlzoo.errors import DataError
from mtlzoo_builtin.datasets.multimnist import multimnist, read_idx


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


def write_mnist(root: Path, n_train: int = 60, n_test: int = 20, compress: bool = False) -> tuple[Path, dict]:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = np.zeros((n, 28, 28), np.uint8)
        images[:, 6:22, 10:18] = rng.integers(100, 256, (n, 16, 8))  # a bright stroke per digit
        labels = rng.integers(0, 10, n).astype(np.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images, compress)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels, compress)
        arrays[prefix] = (images, labels)
    return root, arrays


def test_reads_idx_files_and_composes_two_digit_canvases(tmp_path):
    root, arrays = write_mnist(tmp_path)
    ds = mtlzoo.create_dataset({"name": "multimnist", "root": str(root)}, split="test")
    assert len(ds) == 20 and ds.input_shape == (1, 36, 36)
    assert ds.tasks == {"left": "cls:10", "right": "cls:10", "seg": "seg:3", "sum": "regression"}
    labels = arrays["t10k"][1]
    for i in range(len(ds)):
        sample = ds[i]
        left, right = int(ds.sources["left"][i]), int(ds.sources["right"][i])
        assert sample["targets"]["left"] == labels[left] and sample["targets"]["right"] == labels[right]
        assert set(sample["targets"]["seg"].unique().tolist()) <= {0, 1, 2}
        assert sample["targets"]["seg"].eq(1).any() and sample["targets"]["seg"].eq(2).any()


def test_train_and_val_come_from_disjoint_training_digits(tmp_path):
    root, _ = write_mnist(tmp_path)
    train = multimnist("train", root=str(root), val_fraction=0.25)
    val = multimnist("val", root=str(root), val_fraction=0.25)
    assert len(train) == 45 and len(val) == 15
    assert not set(train.source_pool.tolist()) & set(val.source_pool.tolist())
    used_train = set(train.sources["left"].tolist()) | set(train.sources["right"].tolist())
    assert used_train <= set(train.source_pool.tolist())
    again = multimnist("train", root=str(root), val_fraction=0.25)
    assert torch.equal(train.inputs, again.inputs)


def test_gzipped_files_and_a_bare_raw_folder_work(tmp_path):
    root, _ = write_mnist(tmp_path, compress=True)
    assert len(multimnist("test", root=str(root / "MNIST" / "raw"), size=7)) == 7


def test_bad_files_are_reported(tmp_path):
    root, _ = write_mnist(tmp_path)
    raw = root / "MNIST" / "raw"
    data = (raw / "t10k-images-idx3-ubyte").read_bytes()
    (raw / "t10k-images-idx3-ubyte").write_bytes(data[:-100])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.*truncated"):
        multimnist("test", root=str(root))
    write_idx(raw / "train-labels-idx1-ubyte", np.array([3] * 59 + [12], np.uint8))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.*sample 59.*label 12 is outside 0\.\.9"):
        multimnist("train", root=str(root))
    (raw / "train-images-idx3-ubyte").write_bytes(b"\x12\x34\x56\x78")
    with pytest.raises(DataError, match="magic"):
        read_idx(raw / "train-images-idx3-ubyte")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"missing file(.|\n)*t10k-labels-idx1-ubyte(.|\n)*never downloads"):
        multimnist("test", root=str(empty))
