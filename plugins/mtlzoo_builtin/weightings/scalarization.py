"""Fixed and random scalarisations of the task losses: ``ew``, ``si``, ``rlw``.

* ``ew`` — equal weighting (linear scalarisation, "LS" in the Nash-MTL/FAMO tables):
  ``L = Σ_k L_k`` (``reduction="sum"``, the default, as in MTAN, Nash-MTL and LibMTL's EW) or
  ``(1/T) Σ_k L_k`` (``reduction="mean"``). The two differ by the constant ``1/T``: with SGD that is
  a learning-rate change, with Adam almost none.
* ``si`` — scale-invariant loss, ``L = Σ_k log(L_k + ε)``: its gradient ``Σ_k ∇L_k / L_k`` does
  not change when a task's loss is multiplied by a constant (listed as "SI" by Navon et al.,
  ICML 2022, Table 2). ``ε`` (default 1e-8) keeps a task whose batch has no label (loss exactly 0)
  finite.
* ``rlw`` — random loss weighting (Lin, Ye, Xu, Zhang & Tsang, "Reasonable Effectiveness of Random
  Weighting: A Litmus Test for Multi-Task Learning", TMLR 2022): every step draws
  ``ε ~ N(0, I_T)`` and uses ``λ = softmax(ε)``, ``L = Σ_k λ_k L_k`` (the weights sum to 1). The draws
  come from the weighting's own generator (``seed``), so every rank of a distributed run draws the
  same weights, and the generator state is saved in ``state_dict`` so a resumed run continues the
  same sequence.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtlzoo import hookimpl
from mtlzoo.errors import InvalidArgumentError
from mtlzoo.weighting import Weighting


def _check_reduction(name: str, reduction: str) -> str:
    if reduction not in ("sum", "mean"):
        raise InvalidArgumentError(f"weighting {name!r}: reduction must be 'sum' or 'mean', got {reduction!r}")
    return reduction


class EqualWeighting(Weighting):
    """``Σ_k L_k`` (or the mean): one backward, the baseline every other method is timed against."""

    name = "ew"

    def __init__(self, num_tasks: int, reduction: str = "sum") -> None:
        super().__init__(num_tasks)
        self.reduction = _check_reduction(self.name, reduction)
        self.last_weights.fill_(1.0 if reduction == "sum" else 1.0 / num_tasks)

    def combine_losses(self, losses: Tensor) -> Tensor:
        return losses.sum() if self.reduction == "sum" else losses.mean()


class ScaleInvariant(Weighting):
    """``Σ_k log(L_k + ε)``; the effective weight of task k is ``1 / (L_k + ε)``."""

    name = "si"

    def __init__(self, num_tasks: int, eps: float = 1e-8) -> None:
        super().__init__(num_tasks)
        if not eps >= 0:
            raise InvalidArgumentError(f"weighting 'si': eps must be >= 0, got {eps}")
        self.eps = float(eps)

    def combine_losses(self, losses: Tensor) -> Tensor:
        shifted = losses + self.eps
        self.last_weights = 1.0 / shifted.detach()
        return torch.log(shifted).sum()


class RandomLossWeighting(Weighting):
    """``Σ_k softmax(ε)_k L_k`` with ``ε ~ N(0, I)`` drawn every step (Lin et al., TMLR 2022)."""

    name = "rlw"

    def __init__(self, num_tasks: int, seed: int = 0) -> None:
        super().__init__(num_tasks)
        self.seed = int(seed)
        # a CPU generator: the same draws on every device and rank; T numbers per step to copy
        self.generator = torch.Generator().manual_seed(self.seed)

    def draw(self) -> Tensor:
        """One weight vector ``softmax(ε)``, on the CPU."""
        return torch.softmax(torch.randn(self.num_tasks, generator=self.generator), dim=0)

    def combine_losses(self, losses: Tensor) -> Tensor:
        weights = self.draw()
        if losses.device.type == "cuda":  # pinned: the copy does not wait for the device
            weights = weights.pin_memory()
        weights = weights.to(losses.device, non_blocking=True)
        self.last_weights = weights
        return (weights.to(losses.dtype) * losses).sum()

    def get_extra_state(self) -> Any:
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: Any) -> None:
        self.generator.set_state(state["generator"])


def ew(num_tasks: int, reduction: str = "sum") -> EqualWeighting:
    """Equal weighting: ``Σ_k L_k`` (``reduction="mean"``: the average)."""
    return EqualWeighting(num_tasks, reduction=reduction)


def si(num_tasks: int, eps: float = 1e-8) -> ScaleInvariant:
    """Scale-invariant loss ``Σ_k log(L_k + eps)``."""
    return ScaleInvariant(num_tasks, eps=eps)


def rlw(num_tasks: int, seed: int = 0) -> RandomLossWeighting:
    """Random loss weighting: ``softmax(N(0, I))`` weights drawn every step."""
    return RandomLossWeighting(num_tasks, seed=seed)


@hookimpl
def mtlzoo_register_weightings(register):
    register("ew", ew, aliases=("ls",), tags={"loss"}, summary="Equal weighting: the sum (or mean) of the task losses")
    register("si", si, tags={"loss"}, summary="Scale-invariant loss: the sum of log task losses",
             paper="Navon et al., ICML 2022 (baseline 'SI')")
    register("rlw", rlw, tags={"loss"}, summary="Random loss weighting: softmax of Gaussian weights every step",
             paper="Lin et al., TMLR 2022")
