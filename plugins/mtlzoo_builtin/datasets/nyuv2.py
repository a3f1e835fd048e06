"""``nyuv2``: NYU Depth v2 with 13-class segmentation, depth and surface normals.

Silberman, Hoiem, Kohli & Fergus, "Indoor Segmentation and Support Inference from RGBD Images",
ECCV 2012; the 13-class labels of Couprie et al. (ICLR 2013) and the normals of Eigen & Fergus
(ICCV 2015), in the preprocessed ``.npy`` layout of MTAN (Liu et al., CVPR 2019) that LibMTL,
CAGrad, Nash-MTL and FAMO also read: 795 training and 654 validation images at 288 x 384.

Tasks: ``seg`` (seg:13, ignore -1), ``depth`` (invalid pixels are 0), ``normal`` (unit vectors,
zero where invalid). See :mod:`mtlzoo_builtin.datasets._npy_layout` for shapes and augmentation.
"""

from __future__ import annotations

from collections.abc import Sequence

from mtlzoo import hookimpl
from mtlzoo.data.datasets import check_tasks_subset
from mtlzoo.data.files import canonical_split, require_root
from mtlzoo_builtin.datasets._npy_layout import NpyDenseDataset

TASKS = {"seg": "seg:13", "depth": "depth", "normal": "normal"}
LAYOUT = """\
nyuv2/
  train/
    image/0.npy ... 794.npy     H x W x 3 float
    label/0.npy ...             H x W class ids 0..12, -1 = ignore
    depth/0.npy ...             H x W x 1, 0 = invalid
    normal/0.npy ...            H x W x 3 unit normals, 0 = invalid
  val/                          the same four folders (654 samples)"""
SOURCE = ("the preprocessed NYUv2 of MTAN (github.com/lorenmt/mtan, 'nyuv2.zip' linked from its README), "
          "also used by LibMTL (examples/nyu)")


def nyuv2(split: str = "train", root: str | None = None, tasks: Sequence[str] | None = None, augment: bool = False,
          scales: Sequence[float] = (1.0, 1.2, 1.5), flip: bool = True) -> NpyDenseDataset:
    """NYUv2 from the preprocessed .npy layout; tasks seg (seg:13), depth, normal.

    split: train | val (test is an alias of val, as in the papers). root: the folder holding
    train/ and val/ (default $MTLZOO_DATA/nyuv2). tasks: keep only these. augment: random
    scale-crop (scales) and horizontal flip (flip), keeping the targets consistent.
    """
    split = canonical_split("nyuv2", split, ("train", "val", "test"))
    path = require_root("nyuv2", root, LAYOUT, SOURCE)
    folder = "train" if split == "train" else "val"
    return NpyDenseDataset("nyuv2", path, folder, {"seg": "label", "depth": "depth", "normal": "normal"},
                           check_tasks_subset("nyuv2", tasks, TASKS), 13, layout=LAYOUT, source=SOURCE,
                           augment=augment, scales=scales, flip=flip)


@hookimpl
def mtlzoo_register_datasets(register):
    register("nyuv2", nyuv2, tags=("image", "dense"), paper="Silberman et al., ECCV 2012",
             summary="NYUv2 indoor scenes (MTAN/LibMTL .npy layout); tasks: seg seg:13, depth depth, normal normal")
