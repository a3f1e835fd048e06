"""``cityscapes``: street scenes with 7- or 19-class segmentation and depth.

Cordts et al., "The Cityscapes Dataset for Semantic Urban Scene Understanding", CVPR 2016, in the
preprocessed ``.npy`` layout of MTAN (Liu et al., CVPR 2019) used by LibMTL, CAGrad, Nash-MTL
and FAMO: 2,975 training and 500 validation images at 128 x 256, labels ``label_7`` /
``label_19`` (MTAN) or ``label`` (LibMTL), depth (disparity-derived, 0 = invalid), no normals.

Tasks: ``seg`` (seg:7 or seg:19 with ``classes=19``, ignore -1) and ``depth``. See
:mod:`mtlzoo_builtin.datasets._npy_layout` for shapes and augmentation.
"""

from __future__ import annotations

from collections.abc import Sequence

from mtlzoo import hookimpl
from mtlzoo.data.datasets import check_tasks_subset
from mtlzoo.data.files import canonical_split, require_root
from mtlzoo.errors import InvalidArgumentError
from mtlzoo_builtin.datasets._npy_layout import NpyDenseDataset

LAYOUT = """\
cityscapes/
  train/
    image/0.npy ... 2974.npy    H x W x 3 float (128 x 256)
    label_7/0.npy ...           H x W class ids 0..6, -1 = ignore  (or label/, as LibMTL names it)
    label_19/0.npy ...          H x W class ids 0..18 (for classes=19)
    depth/0.npy ...             H x W x 1, 0 = invalid
  val/                          the same folders (500 samples)"""
SOURCE = ("the preprocessed Cityscapes of MTAN (github.com/lorenmt/mtan, 'cityscapes' link in its README), "
          "also used by LibMTL (examples/cityscapes)")


def cityscapes(split: str = "train", root: str | None = None, classes: int = 7, tasks: Sequence[str] | None = None,
               augment: bool = False, scales: Sequence[float] = (1.0, 1.2, 1.5), flip: bool = True) -> NpyDenseDataset:
    """Cityscapes from the preprocessed .npy layout; tasks seg (seg:7 or seg:19), depth.

    split: train | val (test is an alias of val). root: the folder holding train/ and val/
    (default $MTLZOO_DATA/cityscapes). classes: 7 or 19 (reads label_7/ or label_19/, else
    label/). tasks: keep only these. augment: random scale-crop and horizontal flip.
    """
    if classes not in (7, 19):
        raise InvalidArgumentError(f"cityscapes: classes must be 7 or 19, got {classes!r}")
    split = canonical_split("cityscapes", split, ("train", "val", "test"))
    path = require_root("cityscapes", root, LAYOUT, SOURCE)
    folder = "train" if split == "train" else "val"
    label = f"label_{classes}" if (path / folder / f"label_{classes}").is_dir() else "label"
    available = {"seg": f"seg:{classes}", "depth": "depth"}
    return NpyDenseDataset("cityscapes", path, folder, {"seg": label, "depth": "depth"},
                           check_tasks_subset("cityscapes", tasks, available), classes, layout=LAYOUT, source=SOURCE,
                           augment=augment, scales=scales, flip=flip)


@hookimpl
def mtlzoo_register_datasets(register):
    register("cityscapes", cityscapes, tags=("image", "dense"), paper="Cordts et al., CVPR 2016",
             summary="Cityscapes street scenes (MTAN/LibMTL .npy layout); tasks: seg seg:7 (or seg:19), depth depth")
