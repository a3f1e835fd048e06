"""An example third-party mtlzoo plugin, laid out as a separate package would be.

It registers a task preset (``huber``: robust regression) and a head (``cosine``: a cosine-
similarity classifier, Gidaris & Komodakis, CVPR 2018), through the same ``mtlzoo`` entry-point
group that mtlzoo's own built-ins use.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlzoo import hookimpl
from mtlzoo.model import FeatureInfo
from mtlzoo.task import LOWER, Metric, Task, select, zero_loss


class HuberMetric(Metric):
    directions = {"mae": LOWER}

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(2, dtype=torch.float64)

    def update(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        pred, target = select(mask, pred.detach().reshape(target.shape), target)
        err = (pred.double() - target.double()).abs()
        self.sums += torch.tensor([err.sum().item(), err.numel()], dtype=torch.float64)

    def compute(self) -> dict[str, float]:
        return {"mae": self.sums[0].item() / self.sums[1].item() if self.sums[1] else float("nan")}

    def state(self) -> list[Tensor]:
        return [self.sums]


class HuberTask(Task):
    """Regression with the Huber loss (Huber, Ann. Math. Statist. 1964): quadratic below
    ``delta``, linear above it, so outliers pull less than with squared error."""

    preset = "huber"
    default_head = "linear"

    def __init__(self, out: int = 1, delta: float = 1.0) -> None:
        super().__init__(out)
        if delta <= 0:
            raise self.error(f"delta must be positive, got {delta}")
        self.delta = delta

    def loss(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        pred_m, target_m = select(mask, pred, target.reshape(pred.shape).float())
        if pred_m.shape[0] == 0:
            return zero_loss(pred)
        return F.huber_loss(pred_m.float(), target_m, delta=self.delta)

    def metrics(self) -> Metric:
        return HuberMetric()

    def example_target(self, pred: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(pred.shape, generator=generator)


class CosineHead(nn.Module):
    """Logits ``s * cos(w_c, f)`` of the pooled feature ``f`` and class weights ``w_c``."""

    def __init__(self, feature_info: FeatureInfo, out: int, scale: float = 10.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out, feature_info.last_channels) * 0.01)
        self.scale = scale

    def forward(self, features: list[Tensor], input_size: tuple[int, ...] | None = None) -> Tensor:
        x = features[-1]
        x = x.flatten(2).mean(-1) if x.dim() > 2 else x
        return self.scale * F.normalize(x, dim=1) @ F.normalize(self.weight, dim=1).T


@hookimpl
def mtlzoo_register_tasks(register):
    register("huber", HuberTask, summary="Robust regression with the Huber loss", paper="Huber, 1964")


@hookimpl
def mtlzoo_register_heads(register):
    register("cosine", CosineHead, summary="Cosine-similarity classifier",
             paper="Gidaris & Komodakis, CVPR 2018")
