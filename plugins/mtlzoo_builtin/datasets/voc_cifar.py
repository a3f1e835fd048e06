"""``cifar10``, ``voc_detection`` and their multi-input pairing ``voc_cifar``.

The classification-plus-detection setting: one shared backbone trained on two datasets, each
labelled for one task (multi-input). CIFAR-10 (Krizhevsky, "Learning Multiple Layers of Features
from Tiny Images", tech. report 2009) gives the ``cls`` task (cls:10); PASCAL VOC (Everingham et
al., "The PASCAL Visual Object Classes (VOC) Challenge", IJCV 2010) gives the ``det`` task
(detect:21: 20 classes, labels 1..20, 0 kept for the background as torchvision's detectors
count it).

Files are torchvision's own layouts, read with ``download=False``: VOC through
``torchvision.datasets.VOCDetection`` itself; CIFAR-10's ``cifar-10-batches-py`` pickles are read
here because torchvision's ``CIFAR10`` insists on the MD5 sums of the original archive.

A VOC target is ``{"boxes": float [N, 4] (x1, y1, x2, y2 in pixels of the resized image),
"labels": int64 [N]}``; batches keep a list of them. Images are resized to ``image_size`` (a
square, 320 by default) so they stack; objects marked ``difficult`` are left out unless
``keep_difficult=True``.
"""

from __future__ import annotations

import pickle
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtlzoo import hookimpl
from mtlzoo.data import MultiInputDataset, MultiTaskDataset, TensorMultiTaskDataset
from mtlzoo.data.files import canonical_split, missing_file, require_root
from mtlzoo.errors import DataError, InvalidArgumentError

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")
CIFAR_LAYOUT = """\
<root>/cifar-10-batches-py/     (torchvision's CIFAR10 root)
  data_batch_1 ... data_batch_5   pickled {'data': N x 3072 uint8, 'labels': [N]}
  test_batch"""
CIFAR_SOURCE = "CIFAR-10 python version (www.cs.toronto.edu/~kriz/cifar.html, cifar-10-python.tar.gz)"
VOC_LAYOUT = """\
<root>/VOCdevkit/VOC2012/        (torchvision's VOCDetection root; VOC2007 for year=2007)
  ImageSets/Main/train.txt        image ids, one a line (also val.txt, trainval.txt; test.txt for 2007)
  JPEGImages/<id>.jpg
  Annotations/<id>.xml            <object><name>dog</name><difficult>0</difficult><bndbox>...</bndbox></object>"""
VOC_SOURCE = "PASCAL VOC (host.robots.ox.ac.uk/pascal/VOC; VOCtrainval_11-May-2012.tar), as torchvision extracts it"


# ----------------------------------------------------------------------------------------- CIFAR
def _read_cifar_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise missing_file("cifar10", path, CIFAR_LAYOUT, CIFAR_SOURCE)
    try:
        with open(path, "rb") as handle:
            entry = pickle.load(handle, encoding="latin1")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise DataError(f"cannot read {str(path)!r}: {exc}") from exc
    if not isinstance(entry, dict):
        raise DataError(f"{str(path)!r} holds a {type(entry).__name__}, not a CIFAR batch dict")
    entry = {(k.decode() if isinstance(k, bytes) else k): v for k, v in entry.items()}
    if "data" not in entry or "labels" not in entry:
        raise DataError(f"{str(path)!r}: a CIFAR-10 batch has 'data' and 'labels', found {sorted(entry)}")
    data = np.asarray(entry["data"], dtype=np.uint8)
    labels = np.asarray(entry["labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DataError(f"{str(path)!r}: expected data N x 3072 and N labels, got {data.shape} and {labels.shape}")
    bad = (labels < 0) | (labels > 9)
    if bad.any():
        index = int(np.argmax(bad))
        raise DataError(f"{str(path)!r} (sample {index}): label {int(labels[index])} is outside 0..9")
    return data.reshape(-1, 3, 32, 32), labels


def cifar10(split: str = "train", root: str | None = None, val_size: int = 0) -> TensorMultiTaskDataset:
    """CIFAR-10, held in memory; one task cls (cls:10), input [3, 32, 32] in [0, 1].

    split: train | val | test | trainval. root: torchvision's CIFAR10 root (default
    $MTLZOO_DATA/cifar10). val_size: hold out the last val_size training images as val (0: val is
    the test batch, the common convention).
    """
    split = canonical_split("cifar10", split, ("train", "val", "test", "trainval"))
    path = require_root("cifar10", root, CIFAR_LAYOUT, CIFAR_SOURCE)
    folder = path / "cifar-10-batches-py"
    if not folder.is_dir():
        folder = path if (path / "test_batch").is_file() else folder
    if split == "test" or (split == "val" and val_size == 0):
        data, labels = _read_cifar_file(folder / "test_batch")
    else:
        parts = [_read_cifar_file(folder / f"data_batch_{i}") for i in range(1, 6)]
        data = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        if not 0 <= val_size < len(data):
            raise InvalidArgumentError(f"cifar10: val_size must be in [0, {len(data)}), got {val_size}")
        cut = len(data) - val_size
        if split == "train":
            data, labels = data[:cut], labels[:cut]
        elif split == "val":
            data, labels = data[cut:], labels[cut:]
    return TensorMultiTaskDataset(torch.from_numpy(np.ascontiguousarray(data)), {"cls": torch.from_numpy(labels)},
                                  {"cls": "cls:10"}, input_scale=1 / 255)


# ------------------------------------------------------------------------------------------- VOC
class VOCDetectionDataset(MultiTaskDataset):
    """PASCAL VOC detection through ``torchvision.datasets.VOCDetection`` (download=False)."""

    def __init__(self, root: Path, year: str, image_set: str, image_size: int | None, keep_difficult: bool) -> None:
        from torchvision.datasets import VOCDetection

        base = root / "VOCdevkit" / f"VOC{year}"
        if not base.is_dir():
            raise missing_file("voc_detection", base, VOC_LAYOUT.replace("2012", year), VOC_SOURCE, "folder")
        split_file = base / "ImageSets" / "Main" / f"{image_set}.txt"
        if not split_file.is_file():
            raise missing_file("voc_detection", split_file, VOC_LAYOUT.replace("2012", year), VOC_SOURCE)
        try:
            self.voc = VOCDetection(str(root), year=year, image_set=image_set, download=False)
        except (RuntimeError, ValueError, OSError) as exc:
            raise DataError(f"voc_detection: torchvision could not open {str(base)!r}: {exc}") from exc
        self.tasks = {"det": f"detect:{len(VOC_CLASSES) + 1}"}
        self.image_size = image_size
        self.keep_difficult = keep_difficult
        self.input_shape = (3, image_size, image_size) if image_size else (3, None, None)

    def __len__(self) -> int:
        return len(self.voc)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from PIL import Image, UnidentifiedImageError

        if index < 0:
            index += len(self)
        try:
            image, target = self.voc[index]
        except (OSError, UnidentifiedImageError) as exc:
            raise DataError(f"cannot decode image {self.voc.images[index]!r} (sample {index}): {exc}") from exc
        except ET.ParseError as exc:
            raise DataError(f"cannot parse annotation {self.voc.targets[index]!r} (sample {index}): {exc}") from exc
        width, height = image.size
        if self.image_size:
            image = image.resize((self.image_size, self.image_size), Image.BILINEAR)
        sx, sy = (self.image_size / width, self.image_size / height) if self.image_size else (1.0, 1.0)
        boxes, labels = [], []
        where = f"{self.voc.targets[index]!r} (sample {index})"
        for obj in target.get("annotation", {}).get("object", []) or []:
            name = str(obj.get("name", "")).strip()
            if name not in VOC_CLASSES:
                raise DataError(f"{where}: unknown class {name!r}; VOC classes: {', '.join(VOC_CLASSES)}")
            if str(obj.get("difficult", "0")).strip() == "1" and not self.keep_difficult:
                continue
            try:
                box = [float(obj["bndbox"][k]) for k in ("xmin", "ymin", "xmax", "ymax")]
            except (KeyError, TypeError, ValueError) as exc:
                raise DataError(f"{where}: object {name!r} has no valid bndbox ({exc})") from exc
            if not (box[2] > box[0] and box[3] > box[1]):
                raise DataError(f"{where}: object {name!r} has an empty box {box} (needs xmax > xmin, ymax > ymin)")
            box = [min(max(box[0], 0.0), width), min(max(box[1], 0.0), height),
                   min(box[2], width), min(box[3], height)]
            boxes.append([box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy])
            labels.append(VOC_CLASSES.index(name) + 1)
        pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy())
        return {"input": pixels.permute(2, 0, 1).float().div_(255.0),
                "targets": {"det": {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                                    "labels": torch.tensor(labels, dtype=torch.int64)}}}

    @property
    def placeholders(self) -> dict[str, Any]:
        return {"det": {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}}


def _voc_image_set(split: str, year: str) -> str:
    if split == "test" and year != "2007":
        raise DataError(f"voc_detection: VOC{year} has no public test annotations; use split=val or year=2007")
    return split


def voc_detection(split: str = "train", root: str | None = None, year: str | int = "2012",
                  image_size: int | None = 320, keep_difficult: bool = False) -> VOCDetectionDataset:
    """PASCAL VOC detection; one task det (detect:21), boxes resized with the image.

    split: train | val | trainval | test (2007 only). root: torchvision's VOC root, holding
    VOCdevkit/ (default $MTLZOO_DATA/voc_detection). year: 2007 .. 2012. image_size: square
    resize (none keeps each image's size; batches then need batch_size=1). keep_difficult: keep
    objects marked difficult.
    """
    split = canonical_split("voc_detection", split, ("train", "val", "trainval", "test"))
    year = str(year)
    path = require_root("voc_detection", root, VOC_LAYOUT, VOC_SOURCE)
    return VOCDetectionDataset(path, year, _voc_image_set(split, year), image_size, keep_difficult)


def voc_cifar(split: str = "train", root: str | None = None, cifar_root: str | None = None,
              voc_root: str | None = None, year: str | int = "2012", image_size: int | None = 320,
              keep_difficult: bool = False, val_size: int = 0) -> MultiInputDataset:
    """Multi-input classification + detection: tasks cls (cls:10, CIFAR-10) and det (detect:21, VOC).

    root: one folder holding both torchvision roots (cifar-10-batches-py/ and VOCdevkit/), or give
    cifar_root and voc_root separately. The other arguments as cifar10 and voc_detection; VOC's
    split test exists for year 2007 only.
    """
    split = canonical_split("voc_cifar", split, ("train", "val", "trainval", "test"))
    cifar_root, voc_root = cifar_root or root, voc_root or root
    if cifar_root is None and voc_root is None:
        raise DataError("voc_cifar: give root= (holding cifar-10-batches-py/ and VOCdevkit/) or cifar_root= and "
                        f"voc_root=.\nCIFAR-10:\n{CIFAR_LAYOUT}\nVOC:\n{VOC_LAYOUT}\nmtlzoo never downloads data.")
    return MultiInputDataset({
        "cls": cifar10(split, cifar_root, val_size),
        "det": voc_detection(split, voc_root, year, image_size, keep_difficult),
    })


@hookimpl
def mtlzoo_register_datasets(register):
    register("cifar10", cifar10, tags=("image",), paper="Krizhevsky, tech. report 2009",
             summary="CIFAR-10 (torchvision layout), in memory; tasks: cls cls:10")
    register("voc_detection", voc_detection, tags=("image", "detection"), paper="Everingham et al., IJCV 2010",
             summary="PASCAL VOC detection via torchvision's VOCDetection; tasks: det detect:21")
    register("voc_cifar", voc_cifar, tags=("image", "detection", "multi_input"),
             summary="Multi-input CIFAR-10 classification + VOC detection; tasks: cls cls:10, det detect:21")
