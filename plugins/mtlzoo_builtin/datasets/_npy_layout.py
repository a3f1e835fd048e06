"""The preprocessed ``.npy`` layout of NYUv2 and Cityscapes used across the MTL literature.

Introduced with MTAN (Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention", CVPR
2019) and reused by LibMTL, CAGrad, Nash-MTL and FAMO: one file per sample and modality,
``root/{train,val}/{image,label,depth,normal}/{i}.npy`` with ``i = 0 .. N-1``:

- ``image``: ``H x W x 3`` floats -> input ``[3, H, W]`` float32;
- ``label`` (Cityscapes also ``label_7`` / ``label_19``): ``H x W`` class ids, ``-1`` = ignore
  -> ``[H, W]`` int64;
- ``depth``: ``H x W x 1`` (or ``H x W``), 0 where invalid -> ``[1, H, W]`` float32;
- ``normal``: ``H x W x 3`` unit vectors, zero where invalid -> ``[3, H, W]`` float32.

Augmentation (``augment=True``; off by default, as in the papers' protocol): a random scale-crop
(scale s from ``scales``, a crop of H/s x W/s resized back to H x W; bilinear for the image,
nearest for the labels; depth divided by s because zooming in by s brings the scene s times
closer) then a horizontal flip with probability 1/2 that negates the normals' x component.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mtlzoo.data import MultiTaskDataset
from mtlzoo.data.files import check_labels, load_npy, missing_file
from mtlzoo.errors import DataError, InvalidArgumentError


def scale_crop(sample: dict[str, Any], scale: float, top: int, left: int) -> dict[str, Any]:
    """Crop ``H/scale x W/scale`` at (top, left) from every modality and resize back to ``H x W``."""
    x = sample["input"]
    height, width = x.shape[-2:]
    h, w = int(height / scale), int(width / scale)
    if not (0 <= top <= height - h and 0 <= left <= width - w):
        raise InvalidArgumentError(f"crop {h}x{w} at ({top}, {left}) does not fit in {height}x{width}")

    def crop(t: Tensor, mode: str) -> Tensor:
        part = t[..., top: top + h, left: left + w]
        kwargs = {"align_corners": False} if mode == "bilinear" else {}
        return F.interpolate(part[None].float(), size=(height, width), mode=mode, **kwargs)[0]

    out = {"input": crop(x, "bilinear"), "targets": {}}
    for task, value in sample["targets"].items():
        if task == "seg":
            out["targets"][task] = crop(value[None], "nearest")[0].to(value.dtype)
        elif task == "depth":
            out["targets"][task] = crop(value, "nearest") / scale
        else:
            out["targets"][task] = crop(value, "nearest")
    return out


def hflip(sample: dict[str, Any]) -> dict[str, Any]:
    """Mirror left-right; a mirrored surface normal points the other way in x."""
    out = {"input": sample["input"].flip(-1), "targets": {}}
    for task, value in sample["targets"].items():
        value = value.flip(-1)
        if task == "normal":
            value = value.clone()
            value[0] = -value[0]
        out["targets"][task] = value
    return out


class NpyDenseDataset(MultiTaskDataset):
    """Dense scene understanding from per-sample ``.npy`` files (see the module docs)."""

    def __init__(self, name: str, root: Path, folder: str, modalities: Mapping[str, str], tasks: Mapping[str, str],
                 num_classes: int, *, layout: str, source: str, augment: bool = False,
                 scales: Sequence[float] = (1.0, 1.2, 1.5), flip: bool = True) -> None:
        self.name = name
        self.root = root / folder
        self.tasks = dict(tasks)
        self.num_classes = num_classes
        self.augment = augment
        self.scales = tuple(float(s) for s in scales)
        if not self.scales or any(s < 1.0 for s in self.scales):
            raise InvalidArgumentError(f"{name}: scales must be >= 1 (a crop is zoomed in), got {scales}")
        self.flip = flip
        if not self.root.is_dir():
            raise missing_file(name, self.root, layout, source, "split folder")
        self.folders = {"image": self.root / "image", **{t: self.root / modalities[t] for t in self.tasks}}
        counts = {}
        for key, path in self.folders.items():
            if not path.is_dir():
                raise missing_file(name, path, layout, source, "folder")
            counts[key] = {p.name for p in path.glob("*.npy")}
        images = counts["image"]
        self.n = len(images)
        if self.n == 0:
            raise DataError(f"{name}: {str(self.folders['image'])!r} holds no .npy files.\nExpected files 0.npy, "
                            f"1.npy, ... in every modality folder.")
        for key, names in counts.items():
            for i in range(self.n):
                if f"{i}.npy" not in names:
                    raise DataError(f"{name}: missing file {str(self.folders[key] / f'{i}.npy')!r} (sample {i}); "
                                    f"files must be numbered 0..N-1 in every folder ({self.n} images found)")
        first = self._load("image", 0)
        self.input_shape = (3, *first.shape[1:])

    def __len__(self) -> int:
        return self.n

    def _load(self, key: str, index: int) -> Tensor:
        path = self.folders[key] / f"{index}.npy"
        array = load_npy(path, index)
        if key == "image":
            if array.ndim == 3 and array.shape[-1] == 3:
                array = np.moveaxis(array, -1, 0)
            elif not (array.ndim == 3 and array.shape[0] == 3):
                raise DataError(f"{str(path)!r} (sample {index}): an image must be H x W x 3, got shape {array.shape}")
            return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        if key == "seg":
            if array.ndim == 3 and array.shape[-1] == 1:
                array = array[..., 0]
            if array.ndim != 2:
                raise DataError(f"{str(path)!r} (sample {index}): a label map must be H x W, got shape {array.shape}")
            check_labels(array, self.num_classes, f"{self.name} {str(path)!r} (sample {index})", ignore=-1)
            return torch.from_numpy(array.astype(np.int64))
        if key == "depth":
            if array.ndim == 3 and array.shape[-1] == 1:
                array = array[..., 0]
            if array.ndim != 2:
                raise DataError(f"{str(path)!r} (sample {index}): depth must be H x W x 1 or H x W, got {array.shape}")
            return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None]
        if array.ndim != 3 or array.shape[-1] != 3:
            raise DataError(f"{str(path)!r} (sample {index}): normals must be H x W x 3, got shape {array.shape}")
        return torch.from_numpy(np.ascontiguousarray(np.moveaxis(array, -1, 0), dtype=np.float32))

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < 0:
            index += self.n
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} samples")
        image = self._load("image", index)
        targets = {}
        for task in self.tasks:
            value = self._load(task, index)
            if value.shape[-2:] != image.shape[-2:]:
                path = self.folders[task] / f"{index}.npy"
                raise DataError(f"{str(path)!r} (sample {index}): {task} is {tuple(value.shape[-2:])} but the image "
                                f"is {tuple(image.shape[-2:])}")
            targets[task] = value
        sample = {"input": image, "targets": targets}
        if self.augment:
            scale = self.scales[int(torch.randint(len(self.scales), ()).item())]
            height, width = image.shape[-2:]
            h, w = int(height / scale), int(width / scale)
            top = int(torch.randint(0, height - h + 1, ()).item())
            left = int(torch.randint(0, width - w + 1, ()).item())
            if scale != 1.0:
                sample = scale_crop(sample, scale, top, left)
            if self.flip and bool(torch.rand(()) < 0.5):
                sample = hflip(sample)
        return sample
