"""``regression``: real-valued targets ``[B]`` or ``[B, out]``.

Loss: mean squared error (``loss=mse``) or mean absolute error (``loss=l1``) over labelled
samples. Metrics: MAE and RMSE (lower is better), accumulated as sums so an epoch's value is exact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mtlzoo import hookimpl
from mtlzoo.errors import InvalidArgumentError
from mtlzoo.task import LOWER, Metric, Task, select, zero_loss


class RegressionMetric(Metric):
    directions = {"mae": LOWER, "rmse": LOWER}

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(3, dtype=torch.float64)  # [sum |e|, sum e^2, n]

    def update(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        if pred.numel() != target.numel() or pred.shape[0] != target.shape[0]:
            raise InvalidArgumentError(
                f"regression metrics: predictions {tuple(pred.shape)} and targets {tuple(target.shape)} "
                "do not match (one target per output)"
            )
        pred, target = select(mask, pred.detach(), target)
        err = (pred.double().reshape(target.shape) - target.double()).reshape(-1)
        n = torch.tensor(err.numel(), dtype=torch.float64, device=err.device)
        self.sums += torch.stack([err.abs().sum(), (err**2).sum(), n]).cpu()

    def compute(self) -> dict[str, float]:
        n = self.sums[2].item()
        if not n:
            return {"mae": float("nan"), "rmse": float("nan")}
        return {"mae": self.sums[0].item() / n, "rmse": (self.sums[1].item() / n) ** 0.5}

    def state(self) -> list[Tensor]:
        return [self.sums]


class RegressionTask(Task):
    preset = "regression"
    default_head = "linear"

    def __init__(self, out: int = 1, loss: str = "mse") -> None:
        super().__init__(out)
        if loss not in ("mse", "l1"):
            raise self.error(f"loss must be 'mse' or 'l1', got {loss!r}")
        self.loss_name = loss

    def _shape(self, pred: Tensor, target: Tensor) -> Tensor:
        batch = pred.shape[0]
        if pred.dim() != 2 or pred.shape[1] != self.out:
            raise self.error(f"expected predictions of shape [B, {self.out}], got {tuple(pred.shape)}")
        if target.numel() != batch * self.out:
            raise self.error(f"expected targets of shape [{batch}, {self.out}] (or [{batch}] for out=1), "
                             f"got {tuple(target.shape)}")
        target = target.reshape(batch, self.out)
        if not target.is_floating_point():
            target = target.float()
        if not torch.isfinite(target).all():
            raise self.error("targets contain NaN or infinity; mark missing labels with the sample mask")
        return target

    def loss(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        target = self._shape(pred, target)
        pred_m, target_m = select(mask, pred, target)
        if pred_m.shape[0] == 0:
            return zero_loss(pred)
        fn = F.mse_loss if self.loss_name == "mse" else F.l1_loss
        return fn(pred_m.float(), target_m.float())

    def metrics(self) -> Metric:
        return RegressionMetric()

    def example_target(self, pred: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(pred.shape[0], self.out, generator=generator)


@hookimpl
def mtlzoo_register_tasks(register):
    register("regression", RegressionTask, summary="Real-valued targets (MSE or L1; MAE, RMSE)")
