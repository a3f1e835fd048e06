"""Per-pixel geometry: ``depth`` and surface ``normal``, with the NYUv2 conventions of MTAN
(Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019, Sec. 4.1) and
LibMTL (Lin & Zhang, JMLR 2023).

``depth``: predictions ``[B, 1, H, W]``, targets ``[B, 1, H, W]`` or ``[B, H, W]``; a depth of 0
marks a pixel without measurement. Loss: L1 averaged over valid pixels,
``sum_p |d̂_p − d_p| / #valid``. Metrics (lower is better): absolute error ``sum |e| / n`` and
relative error ``sum |e| / d / n`` over every valid pixel of the epoch.

``normal``: predictions ``[B, 3, H, W]`` (L2-normalised along channels here), targets unit
normals ``[B, 3, H, W]``; an all-zero normal marks an invalid pixel. Loss: ``1 − mean cos`` over
valid pixels. Metrics: mean and median angle error in degrees (lower is better) and the fraction of
pixels with an error under 11.25°, 22.5° and 30° (higher is better; strict ``<``, as MTAN).

Every metric is accumulated over all valid pixels of the epoch (sums and counts, not means of
per-batch values) and reduces across ranks by a plain sum. The median comes from a histogram of
angles with :data:`ANGLE_BIN` (0.01°) bins on [0°, 180°]: it is the mean of the midpoints of the bins
holding the middle order statistic(s), so it lies within half a bin (0.005°) of the exact median.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mtlzoo import hookimpl
from mtlzoo.task import HIGHER, LOWER, Metric, Task, select

ANGLE_BIN = 0.01  #: width, in degrees, of the histogram bins behind the median angle error
ANGLE_BINS = round(180 / ANGLE_BIN)
THRESHOLDS = (11.25, 22.5, 30.0)


def _dense_pair(task: Task, pred: Tensor, target: Tensor, channels: int, what: str) -> Tensor:
    """Check ``pred [B, channels, H, W]`` and ``target``; return the target as ``[B, channels, H, W]`` float."""
    if pred.dim() != 4 or pred.shape[1] != channels:
        raise task.error(f"expected predictions of shape [B, {channels}, H, W], got {tuple(pred.shape)}")
    b, _, h, w = pred.shape
    if channels == 1 and target.dim() == 3:
        target = target[:, None]
    if tuple(target.shape) != (b, channels, h, w):
        extra = f" or [{b}, {h}, {w}]" if channels == 1 else ""
        raise task.error(f"expected targets of shape [{b}, {channels}, {h}, {w}]{extra} ({what}), "
                         f"got {tuple(target.shape)}")
    return target if target.is_floating_point() else target.float()


def _check_finite(task: Task, target: Tensor, invalid: str) -> None:
    """NaN is refused in labelled samples (unlabelled ones, masked out, may hold anything)."""
    if not torch.isfinite(target).all():
        raise task.error(f"targets contain NaN or infinity; mark invalid pixels with {invalid} "
                         "and unlabelled samples with the sample mask")


# ----------------------------------------------------------------------------------------- depth
class DepthMetric(Metric):
    directions = {"abs_err": LOWER, "rel_err": LOWER}

    def __init__(self, task: Task) -> None:
        self.task = task
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(3, dtype=torch.float64)  # [sum |e|, sum |e| / d, valid pixels]

    def update(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        target = _dense_pair(self.task, pred, target, 1, "depth, 0 where unknown")
        pred, target = select(mask, pred.detach().double(), target.double())
        _check_finite(self.task, target, "0")
        valid = target != 0
        err = (pred - target).abs()[valid]
        rel = err / target[valid].abs()
        self.sums += torch.stack([err.sum(), rel.sum(), valid.sum().double()]).cpu()

    def compute(self) -> dict[str, float]:
        n = self.sums[2].item()
        if not n:
            return {"abs_err": float("nan"), "rel_err": float("nan")}
        return {"abs_err": self.sums[0].item() / n, "rel_err": self.sums[1].item() / n}

    def state(self) -> list[Tensor]:
        return [self.sums]


class DepthTask(Task):
    """Per-pixel depth regression with L1 on measured pixels (depth 0 = no measurement)."""

    preset = "depth"
    default_head = "fpn"  # multi-scale: works on stride-32 backbones, where FCN on the last level cannot
    dense = True

    def __init__(self, out: int = 1) -> None:
        super().__init__(out)
        if out != 1:
            raise self.error(f"depth predicts one channel (out=1), got out={out}")

    def loss(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        target = _dense_pair(self, pred, target, 1, "depth, 0 where unknown")
        pred_m, target_m = select(mask, pred, target)
        _check_finite(self, target_m, "0")
        valid = target_m != 0
        # masked mean without a host sync; 0 (still on the graph) when no pixel is valid
        err = torch.where(valid, (pred_m.float() - target_m.float()).abs(), 0.0)
        return err.sum() / valid.sum().clamp(min=1)

    def metrics(self) -> Metric:
        return DepthMetric(self)

    def example_target(self, pred: Tensor, generator: torch.Generator | None = None) -> Tensor:
        depth = torch.rand(pred.shape[0], 1, *pred.shape[2:], generator=generator) * 9 + 0.5
        holes = torch.rand(depth.shape, generator=generator) < 0.2
        return depth.masked_fill(holes, 0.0)


# ---------------------------------------------------------------------------------------- normal
def angle_errors(pred: Tensor, target: Tensor) -> Tensor:
    """Angles in degrees between predicted and target normals ``[B, 3, ...]`` at valid pixels
    (target not all-zero), in float64; predictions and targets are L2-normalised first."""
    pred, target = pred.double(), target.double()
    valid = (target != 0).any(1)
    cos = (F.normalize(pred, dim=1) * F.normalize(target, dim=1)).sum(1)[valid]
    return torch.rad2deg(torch.acos(cos.clamp(-1.0, 1.0)))


def histogram_median(hist: Tensor, bin_width: float) -> float:
    """Median from bin counts: the mean of the midpoints of the bins holding the middle order
    statistic(s) (the ``ceil(n/2)``-th and, for even ``n``, the ``n/2 + 1``-th)."""
    n = int(hist.sum().item())
    if n == 0:
        return float("nan")
    cum = hist.cumsum(0)
    ranks = [(n + 1) // 2, n // 2 + 1] if n % 2 == 0 else [(n + 1) // 2]
    mids = [(int(torch.searchsorted(cum, torch.tensor(float(k), dtype=cum.dtype)).item()) + 0.5) * bin_width
            for k in ranks]
    return sum(mids) / len(mids)


class NormalMetric(Metric):
    directions = {"mean_angle": LOWER, "median_angle": LOWER,
                  "within_11_25": HIGHER, "within_22_5": HIGHER, "within_30": HIGHER}

    def __init__(self, task: Task) -> None:
        self.task = task
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(2 + len(THRESHOLDS), dtype=torch.float64)  # [sum angle, n, #<11.25, #<22.5, #<30]
        self.hist = torch.zeros(ANGLE_BINS, dtype=torch.float64)

    def update(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        target = _dense_pair(self.task, pred, target, 3, "unit normals, all zero where unknown")
        pred, target = select(mask, pred.detach(), target)
        _check_finite(self.task, target, "a zero normal")
        angles = angle_errors(pred, target)
        below = [(angles < t).sum() for t in THRESHOLDS]
        self.sums += torch.stack([angles.sum(), torch.tensor(float(angles.numel()), dtype=torch.float64,
                                                             device=angles.device), *below]).double().cpu()
        bins = (angles / ANGLE_BIN).floor().long().clamp_(0, ANGLE_BINS - 1)
        self.hist += torch.bincount(bins, minlength=ANGLE_BINS).double().cpu()

    def compute(self) -> dict[str, float]:
        n = self.sums[1].item()
        if not n:
            return dict.fromkeys(self.directions, float("nan"))
        out = {"mean_angle": self.sums[0].item() / n, "median_angle": histogram_median(self.hist, ANGLE_BIN)}
        for name, count in zip(("within_11_25", "within_22_5", "within_30"), self.sums[2:].tolist()):
            out[name] = count / n
        return out

    def state(self) -> list[Tensor]:
        return [self.sums, self.hist]


class NormalTask(Task):
    """Surface normals, trained with ``1 − cos`` between normalised prediction and target."""

    preset = "normal"
    default_head = "fpn"  # multi-scale: works on stride-32 backbones, where FCN on the last level cannot
    dense = True

    def __init__(self, out: int = 3) -> None:
        super().__init__(out)
        if out != 3:
            raise self.error(f"normal predicts three channels (out=3), got out={out}")

    def loss(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        target = _dense_pair(self, pred, target, 3, "unit normals, all zero where unknown")
        pred_m, target_m = select(mask, pred, target)
        _check_finite(self, target_m, "a zero normal")
        valid = (target_m != 0).any(1)
        cos = (F.normalize(pred_m.float(), dim=1) * F.normalize(target_m.float(), dim=1)).sum(1)
        # 1 - mean cos over valid pixels, written so that it is 0 with none and needs no host sync
        return torch.where(valid, 1.0 - cos, 0.0).sum() / valid.sum().clamp(min=1)

    def metrics(self) -> Metric:
        return NormalMetric(self)

    def example_target(self, pred: Tensor, generator: torch.Generator | None = None) -> Tensor:
        normals = F.normalize(torch.randn(pred.shape[0], 3, *pred.shape[2:], generator=generator), dim=1)
        holes = torch.rand(pred.shape[0], 1, *pred.shape[2:], generator=generator) < 0.2
        return normals.masked_fill(holes, 0.0)


@hookimpl
def mtlzoo_register_tasks(register):
    register("depth", DepthTask, paper="Liu, Johns & Davison, CVPR 2019 (NYUv2 protocol)",
             summary="Per-pixel depth (masked L1; abs and rel error)")
    register("normal", NormalTask, paper="Liu, Johns & Davison, CVPR 2019 (NYUv2 protocol)",
             summary="Surface normals (1 - masked cosine; mean/median angle, % within 11.25/22.5/30 deg)")
