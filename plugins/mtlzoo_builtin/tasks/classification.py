"""Classification tasks: ``cls`` (one of C classes), ``binary`` (one yes/no label) and
``multilabel`` (K yes/no attributes in one task).

``cls``: cross-entropy over logits ``[B, C]`` with integer targets ``[B]``; ``-1`` marks a missing
label. Metrics: accuracy and top-k accuracy (higher is better).

``binary``: binary cross-entropy with logits over ``[B]`` or ``[B, 1]``; targets 0/1, ``-1`` marks
a missing label. Metrics: accuracy at logit 0 and AUROC (the Mann-Whitney U statistic with ties
counted as one half; Hanley & McNeil, Radiology 1982).

``multilabel``: K binary attributes as one task (CelebA's 40 attributes; Liu et al., "Deep Learning
Face Attributes in the Wild", ICCV 2015), logits ``[B, K]`` against targets ``[B, K]`` of 0/1 with
``-1`` for a missing attribute. Loss: binary cross-entropy with logits averaged over the labelled
entries. Metrics (higher is better): ``accuracy``, the mean over attributes of each attribute's
accuracy over the epoch (1 minus the "average error" reported on CelebA), and ``auroc``, the mean
over attributes of each attribute's AUROC (attributes with one class only are left out).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mtlzoo import hookimpl
from mtlzoo.task import HIGHER, Metric, Task, select, zero_loss

IGNORE = -1


def _check_labels(task: Task, target: Tensor, batch: int, num_classes: int) -> Tensor:
    if target.dim() == 2 and target.shape[1] == 1:
        target = target[:, 0]
    if target.dim() != 1 or target.shape[0] != batch:
        raise task.error(f"expected targets of shape [{batch}] (one class index per sample), got {tuple(target.shape)}")
    if target.is_floating_point():
        if torch.isnan(target).any():
            raise task.error("targets contain NaN; mark a missing label with -1 or the sample mask")
        if (target != target.round()).any():
            raise task.error("class targets must be whole numbers")
    target = target.long()
    bad = (target < IGNORE) | (target >= num_classes)
    if bad.any():
        value = int(target[bad][0])
        raise task.error(f"label {value} is outside 0..{num_classes - 1} (use -1 for a missing label)")
    return target


class AccuracyMetric(Metric):
    """Top-1 and top-k accuracy over all labelled samples of an epoch."""

    def __init__(self, topk: int, task: Task | None = None) -> None:
        self.topk = topk
        self.task = task  # when given, targets are validated as the task's loss does
        self.directions = {"accuracy": HIGHER, **({f"top{topk}": HIGHER} if topk > 1 else {})}
        self.reset()

    def reset(self) -> None:
        self.counts = torch.zeros(3, dtype=torch.float64)  # [correct@1, correct@k, n]

    def update(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        if self.task is not None:
            target = _check_labels(self.task, target, pred.shape[0], pred.shape[1])
        pred, target = select(mask, pred.detach(), target)
        target = target.reshape(-1).long()
        keep = target != IGNORE
        pred, target = pred[keep], target[keep]
        if target.numel() == 0:
            return
        top = pred.topk(min(self.topk, pred.shape[1]), dim=1).indices
        hits = top == target[:, None]
        self.counts += torch.tensor([hits[:, 0].sum().item(), hits.any(1).sum().item(), target.numel()],
                                    dtype=torch.float64)

    def compute(self) -> dict[str, float]:
        n = self.counts[2].item()
        acc = self.counts[0].item() / n if n else float("nan")
        out = {"accuracy": acc}
        if self.topk > 1:
            out[f"top{self.topk}"] = self.counts[1].item() / n if n else float("nan")
        return out

    def state(self) -> list[Tensor]:
        return [self.counts]


class ClassificationTask(Task):
    """Single-label classification into ``out`` classes."""

    preset = "cls"
    default_head = "linear"

    def __init__(self, out: int, label_smoothing: float = 0.0, topk: int = 5) -> None:
        super().__init__(out)
        if out < 2:
            raise self.error("cls needs at least 2 classes (use 'binary' for one yes/no label)")
        if not 0.0 <= label_smoothing < 1.0:
            raise self.error(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing
        self.topk = topk if out > topk else 1

    def loss(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        if pred.dim() != 2 or pred.shape[1] != self.out:
            raise self.error(f"expected predictions of shape [B, {self.out}], got {tuple(pred.shape)}")
        target = _check_labels(self, target, pred.shape[0], self.out)
        pred_m, target_m = select(mask, pred, target)
        if (target_m != IGNORE).sum() == 0:
            return zero_loss(pred)
        return F.cross_entropy(pred_m.float(), target_m, ignore_index=IGNORE, label_smoothing=self.label_smoothing)

    def metrics(self) -> Metric:
        return AccuracyMetric(self.topk, self)

    def example_target(self, pred: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return torch.randint(0, self.out, (pred.shape[0],), generator=generator)


def auroc(scores: Tensor, labels: Tensor) -> float:
    """Area under the ROC curve as the Mann-Whitney U statistic, ties counted one half."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    if pos.numel() == 0 or neg.numel() == 0:
        return float("nan")
    order = torch.cat([pos, neg]).double()
    ranks = torch.empty_like(order)
    sorted_vals, idx = order.sort()
    ranks[idx] = torch.arange(1, order.numel() + 1, dtype=torch.float64)
    # average the ranks of tied scores
    uniq, inverse, counts = torch.unique_consecutive(sorted_vals, return_inverse=True, return_counts=True)
    if len(uniq) < len(sorted_vals):
        sums = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, ranks[idx])
        ranks[idx] = (sums / counts)[inverse]
    r_pos = ranks[: pos.numel()].sum().item()
    n_pos, n_neg = pos.numel(), neg.numel()
    return (r_pos - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


class BinaryMetric(Metric):
    """Accuracy (logit > 0) and AUROC over an epoch; scores are kept to compute AUROC exactly."""

    directions = {"accuracy": HIGHER, "auroc": HIGHER}

    def __init__(self, task: BinaryTask | None = None) -> None:
        self.task = task  # when given, targets are validated as the task's loss does
        self.reset()

    def reset(self) -> None:
        self.scores: list[Tensor] = []
        self.labels: list[Tensor] = []

    def update(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        if self.task is not None:
            target = self.task._target(pred, target)
        pred, target = select(mask, pred.detach().reshape(pred.shape[0], -1)[:, 0], target.reshape(-1))
        keep = target != IGNORE
        self.scores.append(pred[keep].float().cpu())
        self.labels.append(target[keep].long().cpu())

    def sync(self) -> None:
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        gathered: list[tuple[list[Tensor], list[Tensor]] | None] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, (self.scores, self.labels))
        self.scores = [s for g in gathered if g for s in g[0]]
        self.labels = [lab for g in gathered if g for lab in g[1]]

    def compute(self) -> dict[str, float]:
        if not self.scores:
            return {"accuracy": float("nan"), "auroc": float("nan")}
        scores, labels = torch.cat(self.scores), torch.cat(self.labels)
        if labels.numel() == 0:
            return {"accuracy": float("nan"), "auroc": float("nan")}
        accuracy = ((scores > 0).long() == labels).double().mean().item()
        return {"accuracy": accuracy, "auroc": auroc(scores, labels)}


class BinaryTask(Task):
    """One yes/no label per sample, predicted as a logit."""

    preset = "binary"
    default_head = "linear"

    def __init__(self, out: int = 1, pos_weight: float | None = None) -> None:
        super().__init__(out)
        if out != 1:
            raise self.error(f"binary predicts one logit (out=1), got out={out}; use 'multilabel' for several")
        if pos_weight is not None and pos_weight <= 0:
            raise self.error(f"pos_weight must be positive, got {pos_weight}")
        self.pos_weight = pos_weight

    def _target(self, pred: Tensor, target: Tensor) -> Tensor:
        """Validated targets as ``[B]``."""
        batch = pred.shape[0]
        if pred.numel() != batch:
            raise self.error(f"expected predictions of shape [B] or [B, 1], got {tuple(pred.shape)}")
        target = target.reshape(-1)
        if target.shape[0] != batch:
            raise self.error(f"expected {batch} targets, got shape {tuple(target.shape)}")
        if target.is_floating_point() and torch.isnan(target).any():
            raise self.error("targets contain NaN; mark a missing label with -1 or the sample mask")
        if ((target != 0) & (target != 1) & (target != IGNORE)).any():
            bad = target[(target != 0) & (target != 1) & (target != IGNORE)][0].item()
            raise self.error(f"binary targets must be 0 or 1 (-1 for missing), got {bad}")
        return target

    def loss(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        target = self._target(pred, target)
        pred_m, target_m = select(mask, pred.reshape(-1), target)
        keep = target_m != IGNORE
        if keep.sum() == 0:
            return zero_loss(pred)
        weight = None if self.pos_weight is None else torch.tensor(self.pos_weight, device=pred.device)
        return F.binary_cross_entropy_with_logits(pred_m[keep].float(), target_m[keep].float(), pos_weight=weight)

    def metrics(self) -> Metric:
        return BinaryMetric(self)

    def example_target(self, pred: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return torch.randint(0, 2, (pred.shape[0],), generator=generator).float()


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _gather_lists(*lists: list[Tensor]) -> tuple[list[Tensor], ...]:
    """Every rank's tensors, concatenated in rank order (for metrics that keep raw scores)."""
    gathered: list[tuple[list[Tensor], ...] | None] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, tuple(lists))
    return tuple([t for g in gathered if g for t in g[k]] for k in range(len(lists)))


class MultilabelMetric(Metric):
    """Per-attribute accuracy and AUROC over an epoch, averaged over attributes; scores are kept
    (AUROC is a rank statistic, so the exact value needs them)."""

    directions = {"accuracy": HIGHER, "auroc": HIGHER}

    def __init__(self, num_labels: int, task: MultilabelTask | None = None) -> None:
        self.num_labels = num_labels
        self.task = task  # when given, targets are validated as the task's loss does
        self.reset()

    def reset(self) -> None:
        self.scores: list[Tensor] = []
        self.labels: list[Tensor] = []

    def update(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        if self.task is not None:
            target = self.task._target(pred, target)
            self.task._check_values(target)
        pred, target = select(mask, pred.detach(), target.reshape(pred.shape))
        self.scores.append(pred.float().cpu())
        self.labels.append(target.long().cpu())  # -1 stays, and is skipped per attribute

    def sync(self) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            self.scores, self.labels = _gather_lists(self.scores, self.labels)

    def compute(self) -> dict[str, float]:
        if not self.scores:
            return {"accuracy": float("nan"), "auroc": float("nan")}
        scores, labels = torch.cat(self.scores), torch.cat(self.labels)
        accuracies, aurocs = [], []
        for k in range(self.num_labels):
            keep = labels[:, k] != IGNORE
            if not keep.any():
                continue
            s, y = scores[keep, k], labels[keep, k]
            accuracies.append(((s > 0).long() == y).double().mean().item())
            a = auroc(s, y)
            if a == a:  # NaN when the attribute has one class only
                aurocs.append(a)
        return {"accuracy": _mean(accuracies), "auroc": _mean(aurocs)}


class MultilabelTask(Task):
    """``out`` independent yes/no attributes predicted as logits; ``-1`` marks a missing one."""

    preset = "multilabel"
    default_head = "linear"

    def __init__(self, out: int, pos_weight: float | None = None) -> None:
        super().__init__(out)
        if pos_weight is not None and pos_weight <= 0:
            raise self.error(f"pos_weight must be positive, got {pos_weight}")
        self.pos_weight = pos_weight

    def _target(self, pred: Tensor, target: Tensor) -> Tensor:
        if pred.dim() != 2 or pred.shape[1] != self.out:
            raise self.error(f"expected predictions of shape [B, {self.out}], got {tuple(pred.shape)}")
        batch = pred.shape[0]
        if self.out == 1 and target.dim() == 1:
            target = target[:, None]
        if tuple(target.shape) != (batch, self.out):
            raise self.error(f"expected targets of shape [{batch}, {self.out}] (0/1 per attribute, -1 if "
                             f"missing), got {tuple(target.shape)}")
        return target

    def _check_values(self, target: Tensor) -> None:
        if target.is_floating_point() and torch.isnan(target).any():
            raise self.error("targets contain NaN; mark a missing attribute with -1 or the sample mask")
        bad = (target != 0) & (target != 1) & (target != IGNORE)
        if bad.any():
            raise self.error(f"multilabel targets must be 0 or 1 (-1 for missing), got {target[bad][0].item()}")

    def loss(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        target = self._target(pred, target)
        self._check_values(target)
        pred_m, target_m = select(mask, pred, target)
        keep = target_m != IGNORE
        if not keep.any():
            return zero_loss(pred)
        weight = None if self.pos_weight is None else torch.tensor(self.pos_weight, device=pred.device)
        return F.binary_cross_entropy_with_logits(pred_m[keep].float(), target_m[keep].float(), pos_weight=weight)

    def metrics(self) -> Metric:
        return MultilabelMetric(self.out, self)

    def example_target(self, pred: Tensor, generator: torch.Generator | None = None) -> Tensor:
        target = torch.randint(0, 2, (pred.shape[0], self.out), generator=generator)
        missing = torch.rand(target.shape, generator=generator) < 0.1
        return target.masked_fill(missing, IGNORE).float()


@hookimpl
def mtlzoo_register_tasks(register):
    register("cls", ClassificationTask, summary="Single-label classification (cross-entropy; accuracy, top-k)")
    register("binary", BinaryTask, summary="One binary label (BCE with logits; accuracy, AUROC)")
    register("multilabel", MultilabelTask, paper="Liu et al., ICCV 2015 (CelebA attributes)",
             summary="K binary attributes in one task (BCE with logits; mean accuracy, mean AUROC)")
