"""``office31`` and ``office_home``: multi-input classification, one domain per task.

Office-31 (Saenko, Kulis, Fritz & Darrell, "Adapting Visual Category Models to New Domains",
ECCV 2010): 4,110 images of 31 classes in the domains amazon, dslr and webcam. Office-Home
(Venkateswara et al., "Deep Hashing Network for Unsupervised Domain Adaptation", CVPR 2017):
15,500 images of 65 classes in the domains Art, Clipart, Product and Real_World. Used as
multi-input MTL benchmarks by LibMTL (Lin & Zhang, JMLR 2023), with a 60/20/20 split per domain
given by ``<domain>_<split>.txt`` list files of ``path label`` lines (path relative to the root).

Each domain is a task (``cls:31`` / ``cls:65``, task names in lower case: ``real_world``); the
dataset is a :class:`~mtlzoo.data.MultiInputDataset` to train with
:class:`~mtlzoo.data.MultiTaskLoader`. Images are resized to ``image_size`` (224, as LibMTL) and,
by default, normalised with ImageNet statistics (the protocol uses an ImageNet-pretrained ResNet).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mtlzoo import hookimpl
from mtlzoo.data import MultiInputDataset, MultiTaskDataset
from mtlzoo.data.datasets import check_tasks_subset
from mtlzoo.data.files import canonical_split, load_image, missing_file, normalize_image, require_root
from mtlzoo.errors import DataError

DOMAINS = {"office31": ("amazon", "dslr", "webcam"), "office_home": ("Art", "Clipart", "Product", "Real_World")}
CLASSES = {"office31": 31, "office_home": 65}
LIST_DIRS = {"office31": "office-31", "office_home": "office-home"}
SOURCES = {
    "office31": "Office-31 (www.cc.gatech.edu/~judy/domainadapt); list files: LibMTL "
                "examples/office/data_txt/office-31",
    "office_home": "Office-Home (www.hemanthdv.org/officeHomeDataset.html); list files: LibMTL "
                   "examples/office/data_txt/office-home",
}


def _layout(name: str) -> str:
    first = DOMAINS[name][0]
    return (f"{name}/\n"
            f"  {first}/images/<class>/<image>.jpg ...   one folder per domain ({', '.join(DOMAINS[name])})\n"
            f"  data_txt/{LIST_DIRS[name]}/{first}_train.txt   lines '{first}/images/<class>/<image>.jpg <label>'\n"
            f"  data_txt/{LIST_DIRS[name]}/{first}_val.txt, {first}_test.txt, ... one set per domain\n"
            "  (the list files may also sit in data_txt/ or in the root itself, or anywhere with lists=...)")


class ImageListDataset(MultiTaskDataset):
    """Images named by ``path label`` list files; every sample is labelled for one task."""

    def __init__(self, root: Path, list_files: Sequence[Path], task: str, num_classes: int,
                 image_size: int | None, normalize: bool) -> None:
        self.root = root
        self.task = task
        self.tasks = {task: f"cls:{num_classes}"}
        self.items: list[tuple[str, int]] = []
        for list_file in list_files:
            with open(list_file, encoding="utf-8") as handle:
                for number, line in enumerate(handle, start=1):
                    line = line.strip()
                    if not line:
                        continue
                    path, _, label = line.rpartition(" ")
                    try:
                        value = int(label)
                    except ValueError:
                        raise DataError(f"{str(list_file)!r} line {number}: expected '<path> <label>', "
                                        f"got {line!r}") from None
                    if not path:
                        raise DataError(f"{str(list_file)!r} line {number}: expected '<path> <label>', got {line!r}")
                    if not 0 <= value < num_classes:
                        raise DataError(f"{str(list_file)!r} line {number}: label {value} is outside "
                                        f"0..{num_classes - 1}")
                    self.items.append((path.strip(), value))
        self.image_size = (image_size, image_size) if image_size else None
        self.normalize = normalize
        self.input_shape = (3, *self.image_size) if self.image_size else (3, None, None)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, label = self.items[index]
        image = load_image(self.root / path, index, self.image_size)
        if self.normalize:
            image = normalize_image(image)
        return {"input": image, "targets": {self.task: torch.tensor(label)}}

    @property
    def placeholders(self) -> dict[str, Any]:
        return {self.task: torch.tensor(0)}


def _list_dir(name: str, root: Path, lists: str | None, domain: str, split: str) -> Path:
    if lists is not None:
        candidates = [Path(lists).expanduser()]
    else:
        candidates = [root / "data_txt" / LIST_DIRS[name], root / "data_txt", root]
    for folder in candidates:
        if (folder / f"{domain}_{split}.txt").is_file():
            return folder
    raise missing_file(name, candidates[0] / f"{domain}_{split}.txt", _layout(name), SOURCES[name], "list file")


def office(name: str, split: str, root: str | None, lists: str | None, domains: Sequence[str] | None,
           image_size: int | None, normalize: bool) -> MultiInputDataset:
    split = canonical_split(name, split, ("train", "val", "test", "trainval"))
    path = require_root(name, root, _layout(name), SOURCES[name])
    by_task = {d.lower(): d for d in DOMAINS[name]}
    keep = check_tasks_subset(name, [d.lower() for d in domains] if domains is not None else None,
                              dict.fromkeys(by_task, f"cls:{CLASSES[name]}"))
    parts = {}
    for task in keep:
        domain = by_task[task]
        names = ("train", "val") if split == "trainval" else (split,)
        files = [_list_dir(name, path, lists, domain, s) / f"{domain}_{s}.txt" for s in names]
        parts[task] = ImageListDataset(path, files, task, CLASSES[name], image_size, normalize)
    return MultiInputDataset(parts)


def office31(split: str = "train", root: str | None = None, lists: str | None = None,
             domains: Sequence[str] | None = None, image_size: int | None = 224,
             normalize: bool = True) -> MultiInputDataset:
    """Office-31, multi-input: tasks amazon, dslr, webcam (cls:31 each).

    split: train | val | test | trainval. root: the folder holding the domain folders (default
    $MTLZOO_DATA/office31). lists: folder of the <domain>_<split>.txt files (default: searched
    under root). domains: keep only these. image_size: square resize (224). normalize: ImageNet
    mean/std.
    """
    return office("office31", split, root, lists, domains, image_size, normalize)


def office_home(split: str = "train", root: str | None = None, lists: str | None = None,
                domains: Sequence[str] | None = None, image_size: int | None = 224,
                normalize: bool = True) -> MultiInputDataset:
    """Office-Home, multi-input: tasks art, clipart, product, real_world (cls:65 each).

    Arguments as office31 (default root $MTLZOO_DATA/office_home).
    """
    return office("office_home", split, root, lists, domains, image_size, normalize)


@hookimpl
def mtlzoo_register_datasets(register):
    register("office31", office31, tags=("image", "multi_input"), paper="Saenko et al., ECCV 2010",
             summary="Office-31, multi-input (LibMTL lists); tasks: amazon, dslr, webcam, each cls:31")
    register("office_home", office_home, tags=("image", "multi_input"), paper="Venkateswara et al., CVPR 2017",
             summary="Office-Home, multi-input (LibMTL lists); tasks: art, clipart, product, real_world, each cls:65")
