"""``detection``: a two-stage Faster R-CNN detector head on the shared features.

Faster R-CNN is Ren, He, Girshick & Sun ("Faster R-CNN: Towards Real-Time Object Detection with
Region Proposal Networks", NeurIPS 2015): a Region Proposal Network scores anchors and regresses
them to proposals (its multi-task loss, Eq. 1: binary objectness log loss plus smooth-L1 box
regression), and a Fast R-CNN head pools each proposal, classifies it and refines its box (Girshick,
ICCV 2015, Eq. 1). With a Feature Pyramid Network over the backbone's levels (Lin et al., CVPR
2017, Sec. 4.1-4.2), anchors of one size per level and RoIs assigned to levels by their scale.

Everything is torchvision's own: ``FeaturePyramidNetwork`` (with the extra max-pooled level),
``AnchorGenerator``, ``RPNHead``, ``RegionProposalNetwork``, ``MultiScaleRoIAlign``, ``TwoMLPHead``,
``FastRCNNPredictor`` and ``RoIHeads``, with torchvision's Faster R-CNN defaults. What mtlzoo adds is
the wiring onto a shared backbone: no image transform (inputs arrive normalised at their final
size, so boxes are in input pixel coordinates), anchor sizes derived from each level's reduction
(``anchor_size * reduction``: 32, 64, ..., 512 on strides 4..64, torchvision's sizes), and
per-sample missing labels.

Contract (``needs_targets = True``): ``forward(features, input_size, targets=None)``.

* training: returns ``{"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}``.
  ``targets`` is a list of ``B`` items, each ``{"boxes": [N, 4] xyxy float, "labels": [N] int64}``
  (labels in ``1..out-1``, 0 is the background; ``N`` may be 0 for an image with no object) or
  ``None`` for a sample without a detection label, which is left out. With ``targets=None`` or no
  labelled sample (a batch from another task's dataset) the losses are zeros that still reach
  every parameter, so DDP sees the head used.
* evaluation: returns a list of ``B`` dicts ``{"boxes", "labels", "scores"}``.

``out`` counts the classes including the background.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from mtlzoo import hookimpl
from mtlzoo.errors import InvalidArgumentError
from mtlzoo.model import FeatureInfo

LOSS_NAMES = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg")
Target = dict[str, Tensor]


def validate_targets(targets: Any, batch: int, num_classes: int, who: str) -> list[Target | None]:
    """Check detection targets (torchvision's format) and return them as a list; raise
    :class:`InvalidArgumentError` naming ``who`` and the offending sample otherwise."""
    if isinstance(targets, dict):
        raise InvalidArgumentError(
            f"{who}: expected a list of {batch} per-image dicts {{'boxes': [N, 4], 'labels': [N]}}, got one dict; "
            "collate detection targets as a list"
        )
    if not isinstance(targets, (list, tuple)) or len(targets) != batch:
        got = f"a list of {len(targets)}" if isinstance(targets, (list, tuple)) else type(targets).__name__
        raise InvalidArgumentError(f"{who}: expected a list of {batch} targets (one per image, None if unlabelled), "
                                   f"got {got}")
    out: list[Target | None] = []
    for i, t in enumerate(targets):
        if t is None:
            out.append(None)
            continue
        if not isinstance(t, dict) or "boxes" not in t or "labels" not in t:
            raise InvalidArgumentError(f"{who}: target {i} must be a dict with 'boxes' [N, 4] and 'labels' [N], "
                                       f"got {t if not isinstance(t, dict) else sorted(t)!r}")
        boxes, labels = torch.as_tensor(t["boxes"]), torch.as_tensor(t["labels"])
        if boxes.numel() == 0:
            boxes = boxes.reshape(0, 4)
        if boxes.dim() != 2 or boxes.shape[1] != 4:
            raise InvalidArgumentError(f"{who}: target {i}: boxes must have shape [N, 4] (x1, y1, x2, y2), "
                                       f"got {tuple(boxes.shape)}")
        if labels.dim() != 1 or labels.shape[0] != boxes.shape[0]:
            raise InvalidArgumentError(f"{who}: target {i}: labels must have shape [{boxes.shape[0]}] "
                                       f"(one per box), got {tuple(labels.shape)}")
        boxes = boxes.float() if not boxes.is_floating_point() else boxes
        if not torch.isfinite(boxes).all():
            raise InvalidArgumentError(f"{who}: target {i}: boxes contain NaN or infinity")
        if labels.is_floating_point():
            if not torch.isfinite(labels).all() or (labels != labels.round()).any():
                raise InvalidArgumentError(f"{who}: target {i}: labels must be whole numbers")
        labels = labels.long()
        bad = (labels < 1) | (labels >= num_classes)
        if bad.any():
            raise InvalidArgumentError(f"{who}: target {i}: label {int(labels[bad][0])} is outside "
                                       f"1..{num_classes - 1} (0 is the background; out={num_classes} counts it)")
        degenerate = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
        if degenerate.any():
            raise InvalidArgumentError(f"{who}: target {i}: box {boxes[degenerate][0].tolist()} has no area; "
                                       "boxes are (x1, y1, x2, y2) with x2 > x1 and y2 > y1")
        out.append({"boxes": boxes, "labels": labels})
    return out


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgumentError(f"head 'detection': {name} must be a positive integer, got {value!r}")
    return value


class DetectionHead(nn.Module):
    """FPN, RPN and Fast R-CNN RoI heads from torchvision over the backbone's feature levels."""

    needs_targets = True

    def __init__(self, feature_info: FeatureInfo, out: int, *, fpn_channels: int = 256,
                 representation_size: int = 1024, min_reduction: int = 4, anchor_size: int = 8,
                 aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
                 rpn_pre_nms_top_n_train: int = 2000, rpn_pre_nms_top_n_test: int = 1000,
                 rpn_post_nms_top_n_train: int = 2000, rpn_post_nms_top_n_test: int = 1000,
                 rpn_nms_thresh: float = 0.7, rpn_batch_size_per_image: int = 256,
                 box_batch_size_per_image: int = 512, box_score_thresh: float = 0.05,
                 box_nms_thresh: float = 0.5, box_detections_per_img: int = 100) -> None:
        super().__init__()
        if out is None or isinstance(out, bool) or not isinstance(out, int) or out < 2:
            raise InvalidArgumentError(
                f"head 'detection' needs out >= 2 (the object classes plus the background), got out={out!r}"
            )
        if not feature_info.spatial:
            raise InvalidArgumentError("head 'detection' needs spatial features [B, C, H, W]; the backbone gives "
                                       "vectors. Use a backbone tagged 'spatial'.")
        self.num_classes = out
        # Faster R-CNN + FPN starts at stride 4 (P2); finer levels cost memory and are not used.
        levels = [i for i, r in enumerate(feature_info.reductions) if r >= min_reduction]
        self.levels = levels or [len(feature_info) - 1]
        reductions = [feature_info.reductions[i] for i in self.levels]
        fpn_channels = _positive("fpn_channels", fpn_channels)
        self.fpn = FeaturePyramidNetwork([feature_info.channels[i] for i in self.levels], fpn_channels,
                                         extra_blocks=LastLevelMaxPool())
        names = [str(i) for i in range(len(self.levels))]
        # one anchor size per level (the max-pooled extra level has twice the last reduction)
        sizes = tuple((_positive("anchor_size", anchor_size) * r,) for r in [*reductions, 2 * reductions[-1]])
        ratios = tuple(float(a) for a in aspect_ratios)
        if not ratios or any(a <= 0 for a in ratios):
            raise InvalidArgumentError(f"head 'detection': aspect_ratios must be positive, got {aspect_ratios!r}")
        anchors = AnchorGenerator(sizes, (ratios,) * len(sizes))
        self.rpn = RegionProposalNetwork(
            anchors, RPNHead(fpn_channels, len(ratios)),
            fg_iou_thresh=0.7, bg_iou_thresh=0.3,
            batch_size_per_image=_positive("rpn_batch_size_per_image", rpn_batch_size_per_image),
            positive_fraction=0.5,
            pre_nms_top_n={"training": rpn_pre_nms_top_n_train, "testing": rpn_pre_nms_top_n_test},
            post_nms_top_n={"training": rpn_post_nms_top_n_train, "testing": rpn_post_nms_top_n_test},
            nms_thresh=rpn_nms_thresh,
        )
        pool = MultiScaleRoIAlign(featmap_names=names, output_size=7, sampling_ratio=2)
        resolution = pool.output_size[0]
        representation_size = _positive("representation_size", representation_size)
        self.roi_heads = RoIHeads(
            pool, TwoMLPHead(fpn_channels * resolution**2, representation_size),
            FastRCNNPredictor(representation_size, out),
            fg_iou_thresh=0.5, bg_iou_thresh=0.5,
            batch_size_per_image=_positive("box_batch_size_per_image", box_batch_size_per_image),
            positive_fraction=0.25, bbox_reg_weights=None,
            score_thresh=box_score_thresh, nms_thresh=box_nms_thresh,
            detections_per_img=_positive("box_detections_per_img", box_detections_per_img),
        )

    def _zero_losses(self, features: list[Tensor]) -> dict[str, Tensor]:
        # zero, yet connected to every parameter and to the features: DDP and autograd see the head used
        zero = sum(p.sum() for p in self.parameters()) * 0.0 + sum(f.sum() for f in features) * 0.0
        return {name: zero for name in LOSS_NAMES}

    def forward(self, features: list[Tensor], input_size: tuple[int, ...] | None = None,
                targets: list[Target | None] | None = None) -> dict[str, Tensor] | list[Target]:
        if input_size is None or len(input_size) != 2:
            raise InvalidArgumentError(f"head 'detection' needs the input's (height, width), got {input_size!r}")
        batch = features[0].shape[0]
        selected = [features[i] for i in self.levels]
        if self.training:
            if targets is None:
                return self._zero_losses(selected)
            checked = validate_targets(targets, batch, self.num_classes, "head 'detection' targets")
            keep = [i for i, t in enumerate(checked) if t is not None]
            if not keep:
                return self._zero_losses(selected)
            if len(keep) < batch:  # only labelled images take part in the detector's losses
                index = torch.tensor(keep, device=selected[0].device)
                selected = [f.index_select(0, index) for f in selected]
            device = selected[0].device
            labelled = [{"boxes": checked[i]["boxes"].to(device, selected[0].dtype),
                         "labels": checked[i]["labels"].to(device)} for i in keep]
        else:
            labelled = None
        h, w = int(input_size[0]), int(input_size[1])
        n = selected[0].shape[0]
        # the RPN reads only the image tensor's shape (for anchor strides), never its pixels
        images = ImageList(selected[0].new_empty(n, 0, h, w), [(h, w)] * n)
        pyramid = self.fpn(OrderedDict((str(i), f) for i, f in enumerate(selected)))
        proposals, rpn_losses = self.rpn(images, pyramid, labelled)
        detections, roi_losses = self.roi_heads(pyramid, proposals, images.image_sizes, labelled)
        if self.training:
            return {**rpn_losses, **roi_losses}
        return detections


@hookimpl
def mtlzoo_register_heads(register):
    register("detection", DetectionHead, aliases=("faster_rcnn",), tags={"dense", "detection"},
             paper="Ren, He, Girshick & Sun, NeurIPS 2015; Lin et al. (FPN), CVPR 2017",
             summary="Faster R-CNN (torchvision RPN + RoI heads) with an FPN over the backbone's levels")
