"""Multi-gate Mixture-of-Experts (Ma, Zhao, Yi, Chen, Hong & Chi, "Modeling Task Relationships in
Multi-task Learning with Multi-gate Mixture-of-Experts", KDD 2018).

The paper's model: ``n`` experts ``f_i`` shared by all tasks, one gate per task,

    g^k(x) = softmax(W_gk x),        f^k(x) = Σ_i g^k(x)_i · f_i(x),        y_k = h^k(f^k(x)),

where ``h^k`` is the task's tower (here: the task's head). The gate has no bias, as in the paper.

**Over any backbone.** The paper's experts read the input embedding; here they read the last
feature level ``z`` of the backbone, so the same strategy serves vector data (``mlp`` backbone,
the recommendation setting) and images (any ``spatial`` backbone):

* vector features ``[B, C]``: each expert is an MLP (Linear-BN-ReLU-Dropout per hidden width), the
  expert of MTReclib's MMoE;
* spatial features ``[B, C, H, W]``: each expert is the same MLP applied at every location
  (1x1 convolutions with BN), so the mixture keeps the feature map and dense heads (``fcn``) work.

The gate reads the globally average-pooled ``z`` (one mixture per sample, as in the paper). Each head
receives the backbone's feature list with its last level replaced by its own mixture ``f^k(z)``,
so heads that read several levels still get the (shared) lower levels.

Defaults follow MTReclib's MMoE (``expert_num`` 8, expert MLP (512, 256), dropout 0.2); the towers
are the heads, e.g. ``binary(head=mlp(hidden=[128, 64]))`` for MTReclib's (128, 64) towers.

**Parameters.** Experts (and the backbone) are shared; the gate and head of task ``k`` belong to
task ``k`` (only its loss reaches them). With one expert every gate is exactly 1 and MMoE reduces to
a shared-bottom model ``h^k(f_1(z))``. With one task it is a plain (single-gate) mixture of experts,
the same-capacity single-task baseline.

The building blocks (:class:`Expert`, :class:`Gate`, :func:`mix`) are reused by CGC/PLE
(:mod:`mtlzoo_builtin.strategies.ple`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mtlzoo import hookimpl
from mtlzoo.errors import InvalidArgumentError
from mtlzoo.model import BackboneFactory, FeatureInfo, HeadFactory, MTLModel, call_head, input_size_of


# ------------------------------------------------------------------------------ argument checks
def positive_int(strategy: str, name: str, value: Any, hint: str) -> int:
    """``value`` as a positive int, or an :class:`InvalidArgumentError` saying what would work."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgumentError(f"{strategy}: {name} must be a positive integer ({hint}), got {value!r}")
    return value


def widths_of(strategy: str, value: Any) -> tuple[int, ...]:
    """``expert_hidden`` as a non-empty tuple of positive ints (a bare int means one layer)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if (not isinstance(value, (list, tuple)) or not value
            or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in value)):
        raise InvalidArgumentError(
            f"{strategy}: expert_hidden must be a non-empty list of positive integers (the widths of "
            f"each expert's layers), e.g. expert_hidden=[512, 256]; got {value!r}"
        )
    return tuple(value)


def dropout_of(strategy: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise InvalidArgumentError(f"{strategy}: dropout must be a number in [0, 1), e.g. 0.2; got {value!r}")
    return float(value)


# ------------------------------------------------------------------------------ building blocks
def pool(x: Tensor) -> Tensor:
    """Global average pool of ``[B, C, ...]`` to ``[B, C]``; vectors pass unchanged."""
    return x.flatten(2).mean(-1) if x.dim() > 2 else x


class Expert(nn.Sequential):
    """An MLP expert: per hidden width a Linear (or, on feature maps, a 1x1 conv), BN, ReLU and
    dropout. On ``[B, C, H, W]`` it is the same MLP applied at every location."""

    def __init__(self, in_channels: int, widths: Sequence[int], dropout: float, spatial: bool) -> None:
        layers: list[nn.Module] = []
        cin = in_channels
        for width in widths:
            if spatial:
                layers += [nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)]
            else:
                layers += [nn.Linear(cin, width, bias=False), nn.BatchNorm1d(width)]
            layers += [nn.ReLU(inplace=True), nn.Dropout(dropout)]
            cin = width
        super().__init__(*layers)
        self.out_channels = cin


class Gate(nn.Module):
    """``softmax(W x)`` over ``num_experts`` from the pooled input (Ma et al. 2018)."""

    def __init__(self, in_channels: int, num_experts: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_channels, num_experts, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return torch.softmax(self.proj(pool(x)), dim=-1)


def mix(weights: Tensor, expert_outputs: Tensor) -> Tensor:
    """``Σ_i weights[:, i] · expert_outputs[:, i]`` for outputs stacked as ``[B, E, C, ...]``."""
    shape = (*weights.shape, *([1] * (expert_outputs.dim() - 2)))
    return (weights.reshape(shape).to(expert_outputs.dtype) * expert_outputs).sum(1)


# ------------------------------------------------------------------------------------- the model
class MMoE(MTLModel):
    """Shared ``backbone`` and ``experts``; per task a gate (``task_modules[task]``) and a head."""

    def __init__(self, backbone: BackboneFactory, heads: dict[str, HeadFactory], *, num_experts: int,
                 expert_hidden: tuple[int, ...], dropout: float) -> None:
        super().__init__(list(heads))
        self.backbone = backbone()
        info: FeatureInfo = self.backbone.feature_info
        cin = info.last_channels
        self.experts = nn.ModuleList(Expert(cin, expert_hidden, dropout, info.spatial) for _ in range(num_experts))
        self.task_modules = nn.ModuleDict({task: Gate(cin, num_experts) for task in heads})
        head_info = info.with_channels((*info.channels[:-1], expert_hidden[-1]))
        self.heads = nn.ModuleDict({task: make(head_info) for task, make in heads.items()})
        #: the gate weights ``[B, num_experts]`` of each task from the last forward (detached)
        self.last_gates: dict[str, Tensor] = {}

    @property
    def gates(self) -> nn.ModuleDict:
        return self.task_modules

    def forward(self, x: Tensor, targets: dict[str, Any] | None = None) -> dict[str, Tensor]:
        features = self.backbone(x)
        bottom = features[-1]
        experts = torch.stack([expert(bottom) for expert in self.experts], dim=1)  # [B, E, C, ...]
        size = input_size_of(x)
        outputs: dict[str, Tensor] = {}
        gates: dict[str, Tensor] = {}
        for task, head in self.heads.items():
            weights = self.task_modules[task](bottom)
            gates[task] = weights.detach()
            mixed = [*features[:-1], mix(weights, experts)]
            outputs[task] = call_head(head, mixed, size, None if targets is None else targets.get(task))
        self.last_gates = gates
        return outputs


def mmoe(backbone: BackboneFactory, heads: dict[str, HeadFactory], num_experts: int = 8,
         expert_hidden: Sequence[int] = (512, 256), dropout: float = 0.2) -> MMoE:
    """Multi-gate mixture of experts over the backbone's last feature level.

    ``num_experts`` shared experts, each an MLP with layer widths ``expert_hidden`` (1x1 convs on
    feature maps), mixed per task by a softmax gate; ``dropout`` inside the experts.
    """
    return MMoE(backbone, heads,
                num_experts=positive_int("mmoe", "num_experts", num_experts, "e.g. num_experts=8"),
                expert_hidden=widths_of("mmoe", expert_hidden), dropout=dropout_of("mmoe", dropout))


@hookimpl
def mtlzoo_register_strategies(register):
    register("mmoe", mmoe, paper="Ma et al., KDD 2018",
             summary="Shared experts over backbone features, mixed per task by a softmax gate")
