"""``celeba``: CelebA faces with 40 binary attributes, as 40 tasks or one multilabel task.

Liu, Luo, Wang & Tang, "Deep Learning Face Attributes in the Wild", ICCV 2015 (202,599 aligned
faces). The 40-task setting is the one of Sener & Koltun (NeurIPS 2018) and FAMO (NeurIPS 2023).
Read from torchvision's CelebA folder layout (``torchvision.datasets.CelebA(root)`` expects the
same files, under ``root/celeba``), parsed here directly because torchvision checks MD5 sums of the
text files and would refuse a subset or a re-encoded copy; nothing is downloaded.

Attributes are stored as -1/1 and returned as 0/1 floats. Task names are the attribute names in
lower case; a leading digit is spelled out so that each name is an identifier
(``5_o_Clock_Shadow`` -> ``five_o_clock_shadow``). Splits follow ``list_eval_partition.txt``
(0 train, 1 val, 2 test).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtlzoo import hookimpl
from mtlzoo.data import MultiTaskDataset
from mtlzoo.data.files import canonical_split, load_image, missing_file, normalize_image, require_root
from mtlzoo.errors import DataError, suggestion

LAYOUT = """\
<root>/celeba/                       (or root itself holding these files)
  img_align_celeba/000001.jpg ...    aligned 178 x 218 faces
  list_attr_celeba.txt               line 1: count; line 2: 40 attribute names; then "000001.jpg -1 1 ..."
  list_eval_partition.txt            "000001.jpg 0" (0 train, 1 val, 2 test)"""
SOURCE = ("CelebA (mmlab.ie.cuhk.edu.hk/projects/CelebA.html; the 'Align&Cropped Images' and 'Anno'/'Eval' files), "
          "the same folder torchvision.datasets.CelebA reads")
_DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
_PARTITION = {"train": 0, "val": 1, "test": 2}


def task_name(attribute: str) -> str:
    """``5_o_Clock_Shadow`` -> ``five_o_clock_shadow``: lower case, a valid identifier."""
    name = re.sub(r"[^0-9a-zA-Z_]", "_", attribute).lower()
    if name[:1].isdigit():
        name = _DIGITS[int(name[0])] + name[1:]
    return name


def _folder(root: Path) -> Path:
    return root / "celeba" if (root / "celeba").is_dir() else root


def read_attributes(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """Attribute names, file names and the ``[N, 40]`` 0/1 matrix of ``list_attr_celeba.txt``."""
    if not path.is_file():
        raise missing_file("celeba", path, LAYOUT, SOURCE)
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    if len(lines) < 2:
        raise DataError(f"{str(path)!r}: expected a count line and a line of attribute names")
    names = lines[1].split()
    files, rows = [], []
    for number, line in enumerate(lines[2:], start=3):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != len(names) + 1:
            raise DataError(f"{str(path)!r} line {number}: expected a file name and {len(names)} values, "
                            f"got {len(fields)} fields")
        try:
            values = [int(v) for v in fields[1:]]
        except ValueError as exc:
            raise DataError(f"{str(path)!r} line {number}: attribute values must be -1 or 1 ({exc})") from exc
        bad = [v for v in values if v not in (-1, 1)]
        if bad:
            raise DataError(f"{str(path)!r} line {number} ({fields[0]}): attribute value {bad[0]} is not -1 or 1")
        files.append(fields[0])
        rows.append(values)
    if lines[0].strip().isdigit() and int(lines[0]) != len(files):
        raise DataError(f"{str(path)!r}: the first line says {int(lines[0])} images but {len(files)} rows follow "
                        "(a truncated file?)")
    matrix = (np.asarray(rows, dtype=np.int8).reshape(-1, len(names)) > 0).astype(np.float32)
    return names, files, matrix


def read_partition(path: Path) -> dict[str, int]:
    if not path.is_file():
        raise missing_file("celeba", path, LAYOUT, SOURCE)
    out = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
                raise DataError(f"{str(path)!r} line {number}: expected '<file> 0|1|2', got {line.strip()!r}")
            out[fields[0]] = int(fields[1])
    return out


class CelebA(MultiTaskDataset):
    """Aligned CelebA faces; see the module docs."""

    def __init__(self, root: Path, split: str, attributes: Sequence[str] | None, as_multilabel: bool,
                 image_size: int | None, normalize: bool) -> None:
        folder = _folder(root)
        names, files, matrix = read_attributes(folder / "list_attr_celeba.txt")
        partition = read_partition(folder / "list_eval_partition.txt")
        self.images = folder / "img_align_celeba"
        if not self.images.is_dir():
            raise missing_file("celeba", self.images, LAYOUT, SOURCE, "folder")
        keep_cols = list(range(len(names)))
        if attributes is not None:
            by_name = {**{n: i for i, n in enumerate(names)}, **{task_name(n): i for i, n in enumerate(names)}}
            keep_cols = []
            for attr in [attributes] if isinstance(attributes, str) else attributes:
                if attr not in by_name:
                    raise DataError(f"celeba: no attribute {attr!r}.{suggestion(str(attr), by_name)} "
                                    f"Attributes: {', '.join(names)}.")
                keep_cols.append(by_name[attr])
        if split == "all":
            rows = list(range(len(files)))
        else:
            missing = [f for f in files if f not in partition]
            if missing:
                raise DataError(f"celeba: {missing[0]!r} (and {len(missing) - 1} more) is in list_attr_celeba.txt "
                                "but not in list_eval_partition.txt")
            rows = [i for i, f in enumerate(files) if partition[f] == _PARTITION[split]]
        self.files = [files[i] for i in rows]
        self.attributes = [names[c] for c in keep_cols]
        self.labels = torch.from_numpy(matrix[np.ix_(rows, keep_cols)] if rows else np.zeros((0, len(keep_cols)),
                                                                                              np.float32))
        self.as_multilabel = as_multilabel
        self.task_names = [task_name(a) for a in self.attributes]
        self.tasks = ({"attributes": f"multilabel:{len(keep_cols)}"} if as_multilabel
                      else dict.fromkeys(self.task_names, "binary"))
        self.image_size = (image_size, image_size) if image_size else None
        self.normalize = normalize
        self.input_shape = (3, *(self.image_size or (218, 178)))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < 0:
            index += len(self)
        image = load_image(self.images / self.files[index], index, self.image_size)
        if self.normalize:
            image = normalize_image(image)
        row = self.labels[index]
        if self.as_multilabel:
            targets = {"attributes": row.clone()}
        else:
            targets = {t: row[j].clone() for j, t in enumerate(self.task_names)}
        return {"input": image, "targets": targets}


def celeba(split: str = "train", root: str | None = None, attributes: Sequence[str] | None = None,
           as_multilabel: bool = False, image_size: int | None = 64, normalize: bool = False) -> CelebA:
    """CelebA's 40 binary face attributes, as 40 binary tasks or one multilabel:40 task.

    split: train | val | test | all. root: the folder holding celeba/ (torchvision's root) or
    the celeba folder itself (default $MTLZOO_DATA/celeba). attributes: keep only these (names as
    in the file or as task names). as_multilabel: one task 'attributes' (multilabel:N) instead of
    one binary task per attribute. image_size: resize faces to a square (64, as Sener & Koltun;
    none keeps 218 x 178). normalize: ImageNet mean/std.
    """
    split = canonical_split("celeba", split, ("train", "val", "test", "all"))
    path = require_root("celeba", root, LAYOUT, SOURCE)
    return CelebA(path, split, attributes, as_multilabel, image_size, normalize)


@hookimpl
def mtlzoo_register_datasets(register):
    register("celeba", celeba, tags=("image",), paper="Liu et al., ICCV 2015",
             summary="CelebA faces (torchvision folder layout); tasks: 40 binary attributes, or multilabel:40")
