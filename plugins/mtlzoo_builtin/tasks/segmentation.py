"""``seg``: semantic segmentation, logits ``[B, C, H, W]`` against class maps ``[B, H, W]``.

Loss: pixel-wise cross-entropy ignoring ``ignore_index`` (-1, as in the NYUv2/Cityscapes
preprocessed data). Metrics: mean IoU and pixel accuracy from a confusion matrix accumulated over
the epoch (the corrected protocol of the MTAN repository, not a mean of per-image ratios); classes
absent from both prediction and ground truth are left out of the mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mtlzoo import hookimpl
from mtlzoo.errors import InvalidArgumentError
from mtlzoo.task import HIGHER, Metric, Task, select, zero_loss


class ConfusionMetric(Metric):
    directions = {"miou": HIGHER, "pixel_accuracy": HIGHER}

    def __init__(self, num_classes: int, ignore_index: int = -1) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        self.matrix = torch.zeros(self.num_classes, self.num_classes, dtype=torch.float64)

    def update(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        if target.dim() == 4 and target.shape[1] == 1:
            target = target[:, 0]
        if pred.dim() != 4 or target.shape != (pred.shape[0], *pred.shape[2:]):
            raise InvalidArgumentError(
                f"seg metrics: expected predictions [B, C, H, W] and targets [B, H, W], got "
                f"{tuple(pred.shape)} and {tuple(target.shape)}"
            )
        pred, target = select(mask, pred.detach(), target)
        labels = pred.argmax(1).reshape(-1)
        target = target.reshape(-1).long()
        keep = (target != self.ignore_index) & (target >= 0) & (target < self.num_classes)
        idx = target[keep] * self.num_classes + labels[keep]
        counts = torch.bincount(idx, minlength=self.num_classes**2)
        self.matrix += counts.reshape(self.num_classes, self.num_classes).double().cpu()

    def compute(self) -> dict[str, float]:
        m = self.matrix
        total = m.sum().item()
        if not total:
            return {"miou": float("nan"), "pixel_accuracy": float("nan")}
        tp = m.diag()
        union = m.sum(0) + m.sum(1) - tp
        present = union > 0
        miou = (tp[present] / union[present]).mean().item()
        return {"miou": miou, "pixel_accuracy": tp.sum().item() / total}

    def state(self) -> list[Tensor]:
        return [self.matrix]


class SegmentationTask(Task):
    preset = "seg"
    default_head = "fpn"  # multi-scale: works on stride-32 backbones, where FCN on the last level cannot
    dense = True

    def __init__(self, out: int, ignore_index: int = -1) -> None:
        super().__init__(out)
        if out < 2:
            raise self.error("seg needs at least 2 classes, e.g. seg:13")
        self.ignore_index = ignore_index

    def loss(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        if pred.dim() != 4 or pred.shape[1] != self.out:
            raise self.error(f"expected predictions of shape [B, {self.out}, H, W], got {tuple(pred.shape)}")
        if target.dim() == 4 and target.shape[1] == 1:
            target = target[:, 0]
        if target.shape != (pred.shape[0], *pred.shape[2:]):
            raise self.error(f"expected targets of shape [{pred.shape[0]}, {pred.shape[2]}, {pred.shape[3]}] "
                             f"(class index per pixel), got {tuple(target.shape)}")
        if target.is_floating_point() and torch.isnan(target).any():
            raise self.error(f"targets contain NaN; mark ignored pixels with {self.ignore_index}")
        target = target.long()
        bad = ((target < 0) | (target >= self.out)) & (target != self.ignore_index)
        if bad.any():
            raise self.error(f"pixel label {int(target[bad][0])} is outside 0..{self.out - 1} "
                             f"(use {self.ignore_index} for pixels to ignore)")
        pred_m, target_m = select(mask, pred, target)
        if (target_m != self.ignore_index).sum() == 0:
            return zero_loss(pred)
        return F.cross_entropy(pred_m.float(), target_m, ignore_index=self.ignore_index)

    def metrics(self) -> Metric:
        return ConfusionMetric(self.out, self.ignore_index)

    def example_target(self, pred: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return torch.randint(0, self.out, (pred.shape[0], *pred.shape[2:]), generator=generator)


@hookimpl
def mtlzoo_register_tasks(register):
    register("seg", SegmentationTask, summary="Semantic segmentation (CE with ignore; mIoU, pixel accuracy)")
