"""Hard parameter sharing (Caruana, "Multitask Learning: A Knowledge-Based Source of Inductive
Bias", ICML 1993; Machine Learning 28, 1997).

One backbone shared by all tasks and one head per task: ``y_t = h_t(f(x))``. The shared
representation ``f(x)`` is a single tensor list that every head reads, so representation-level
gradient methods (MGDA-UB) apply.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from mtlzoo import hookimpl
from mtlzoo.model import BackboneFactory, HeadFactory, MTLModel, call_head, input_size_of


class HardSharing(MTLModel):
    """Shared ``backbone``, task-specific ``heads``."""

    has_shared_representation = True

    def __init__(self, backbone: BackboneFactory, heads: dict[str, HeadFactory]) -> None:
        super().__init__(list(heads))
        self.backbone = backbone()
        self.heads = nn.ModuleDict({task: make(self.backbone.feature_info) for task, make in heads.items()})

    def forward(self, x: Tensor, targets: dict[str, Any] | None = None) -> dict[str, Tensor]:
        features = self.apply_representation_hook(self.backbone(x))
        size = input_size_of(x)
        return {
            task: call_head(head, features, size, None if targets is None else targets.get(task))
            for task, head in self.heads.items()
        }


def hard(backbone: BackboneFactory, heads: dict[str, HeadFactory]) -> HardSharing:
    """Hard parameter sharing: one shared backbone, one head per task."""
    return HardSharing(backbone, heads)


@hookimpl
def mtlzoo_register_strategies(register):
    register("hard", hard, paper="Caruana, ICML 1993",
             summary="One shared backbone, one head per task")
