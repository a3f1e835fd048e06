"""``detect``: object detection with the ``detection`` head (Faster R-CNN with an FPN).

Targets are torchvision's: a list with one item per image, ``{"boxes": [N, 4] (x1, y1, x2, y2) in
input pixels, "labels": [N] int64 in 1..out-1}``, or ``None`` for an image without a detection
label (``N = 0`` is a labelled image with no object). ``out`` counts the classes including the
background (``detect:21`` for the 20 Pascal VOC classes).

Loss: the head computes the detector's own losses in training (Ren et al., NeurIPS 2015, Eq. 1 for
the RPN and the Fast R-CNN loss of Girshick, ICCV 2015, Eq. 1: ``loss_objectness``,
``loss_rpn_box_reg``, ``loss_classifier``, ``loss_box_reg``); the task's loss is their plain sum, as
in torchvision's reference training. Unlabelled images are dropped by the head (their target is
``None``); with the sample ``mask`` all false the loss is zero.

Metrics (higher is better): COCO mean average precision at IoU 0.5 (``map_50``, the Pascal VOC
measure) and averaged over IoU 0.5:0.05:0.95 (``map``, the COCO primary measure; Lin et al.,
"Microsoft COCO", ECCV 2014), computed by torchmetrics' ``MeanAveragePrecision`` (pycocotools
backend) from the head's evaluation-mode output. An epoch with no ground truth gives NaN.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtlzoo import hookimpl
from mtlzoo.task import HIGHER, Metric, Task
from mtlzoo_builtin.heads.detection import LOSS_NAMES, validate_targets


def _keep(mask: Tensor | None, batch: int) -> list[bool]:
    return [True] * batch if mask is None else torch.as_tensor(mask).reshape(-1).bool().tolist()


class DetectionMetric(Metric):
    """mAP@0.5 and mAP@[.5:.95] over an epoch via torchmetrics; ``sync`` gathers every rank's
    detections and ground truth (a sum of states cannot express COCO evaluation)."""

    directions = {"map_50": HIGHER, "map": HIGHER}

    def __init__(self, task: DetectionTask) -> None:
        self.task = task
        from torchmetrics.detection import MeanAveragePrecision  # heavy import, only when evaluating

        # sync_on_compute=False: ranks gather in sync(), as every mtlzoo metric does, never implicitly
        self._map = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools",
                                         sync_on_compute=False)
        self.reset()

    def reset(self) -> None:
        self._map.reset()

    def update(self, pred: Any, target: Any, mask: Tensor | None = None) -> None:
        if isinstance(pred, dict):
            raise self.task.error("metrics need the detection head's evaluation output (a list of "
                                  "{'boxes', 'labels', 'scores'} per image); got its training losses. "
                                  "Call model.eval() before evaluating")
        if not isinstance(pred, (list, tuple)) or not all(isinstance(p, dict) for p in pred):
            raise self.task.error(f"expected detections as a list of dicts, got {type(pred).__name__}; "
                                  "use the 'detection' head")
        targets = validate_targets(target, len(pred), self.task.out, f"task {self.task.name!r} (detect)")
        preds_kept, targets_kept = [], []
        for keep, p, t in zip(_keep(mask, len(pred)), pred, targets):
            if not keep or t is None:
                continue
            device = p["boxes"].device
            preds_kept.append({"boxes": p["boxes"].detach().float(), "scores": p["scores"].detach().float(),
                               "labels": p["labels"].long()})
            targets_kept.append({"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)})
        if preds_kept:
            self._map.update(preds_kept, targets_kept)

    def sync(self) -> None:
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        if not self._map._is_synced:
            self._map.sync()

    def compute(self) -> dict[str, float]:
        if not self._map.groundtruth_labels:  # no labelled image on any rank (after sync)
            return dict.fromkeys(self.directions, float("nan"))
        values = self._map.compute()
        # pycocotools reports -1 when there is no ground truth to score against
        return {name: (v if (v := float(values[name])) >= 0 else float("nan")) for name in self.directions}


class DetectionTask(Task):
    """Object detection into ``out - 1`` classes plus the background."""

    preset = "detect"
    default_head = "detection"
    # Not a per-pixel task: targets are box lists, not maps. The 'detection' head is tagged
    # 'dense', which is what makes the builder require a spatial backbone.
    dense = False
    head_tags = frozenset({"detection"})

    def __init__(self, out: int) -> None:
        super().__init__(out)
        if out < 2:
            raise self.error(f"detect needs out >= 2 (the object classes plus the background), got out={out}")

    def loss(self, pred: Any, target: Any = None, mask: Tensor | None = None) -> Tensor:
        if isinstance(pred, Tensor):
            raise self.error(f"got a tensor of shape {tuple(pred.shape)} as prediction; detect needs the "
                             "'detection' head, which returns its losses in training (tasks=[detect(out=..., "
                             "head=detection)])")
        if isinstance(pred, (list, tuple)):
            raise self.error("got detections instead of losses: the detection head computes its losses only "
                             "in training mode (model.train() and targets passed to the model)")
        if not isinstance(pred, dict) or not pred or not all(isinstance(v, Tensor) for v in pred.values()):
            raise self.error(f"expected the detection head's dict of losses {list(LOSS_NAMES)}, got {pred!r}")
        total = sum(v.float() for v in pred.values())
        if mask is not None and not torch.as_tensor(mask).any():
            return total * 0.0
        return total

    def metrics(self) -> Metric:
        return DetectionMetric(self)

    def example_target(self, pred: Any, generator: torch.Generator | None = None,
                       size: int = 64) -> list[dict[str, Tensor]]:
        """One to three random boxes per image of a ``size`` x ``size`` input, with random labels."""
        batch = len(pred) if isinstance(pred, (list, tuple)) else int(pred.shape[0])
        targets = []
        for _ in range(batch):
            n = int(torch.randint(1, 4, (1,), generator=generator))
            xy = torch.rand(n, 2, generator=generator) * size * 0.6
            wh = torch.rand(n, 2, generator=generator) * size * 0.3 + 4
            boxes = torch.cat([xy, (xy + wh).clamp(max=size)], dim=1)
            labels = torch.randint(1, self.out, (n,), generator=generator)
            targets.append({"boxes": boxes, "labels": labels})
        return targets


@hookimpl
def mtlzoo_register_tasks(register):
    register("detect", DetectionTask, paper="Ren, He, Girshick & Sun, NeurIPS 2015",
             summary="Object detection (Faster R-CNN losses; mAP@0.5, mAP@[.5:.95])")
