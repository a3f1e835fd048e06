"""``mlp``: a multilayer perceptron trunk for vector and tabular inputs.

Each hidden layer is a stage, so stage-wise strategies (cross-stitch, NDDR, sluice) apply to
vector data too, as in the recommendation-system setting of MMoE/PLE.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from mtlzoo import hookimpl
from mtlzoo.errors import InvalidArgumentError
from mtlzoo.model import Backbone, FeatureInfo


class MLPBackbone(Backbone):
    """Linear-ReLU(-Dropout) layers; features are the output of each layer, ``[B, hidden_i]``."""

    input_rank = 2

    def __init__(self, in_features: int, hidden: Sequence[int] = (256, 128), dropout: float = 0.0) -> None:
        super().__init__()
        hidden = list(hidden)
        if not isinstance(in_features, int) or in_features < 1:
            raise InvalidArgumentError(f"mlp: in_features must be a positive integer, got {in_features!r}")
        if not hidden or any(not isinstance(h, int) or h < 1 for h in hidden):
            raise InvalidArgumentError(f"mlp: hidden must be a list of positive integers, got {hidden!r}")
        if not 0.0 <= dropout < 1.0:
            raise InvalidArgumentError(f"mlp: dropout must be in [0, 1), got {dropout}")
        self.in_channels = in_features
        self.stem = nn.Identity()
        sizes = [in_features, *hidden]
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Linear(sizes[i], sizes[i + 1]), nn.ReLU(inplace=True), nn.Dropout(dropout))
            for i in range(len(hidden))
        )
        self.feature_info = FeatureInfo(tuple(hidden), (1,) * len(hidden), spatial=False)


def mlp(in_features: int, hidden: Sequence[int] = (256, 128), dropout: float = 0.0) -> MLPBackbone:
    """An MLP trunk for ``[batch, in_features]`` inputs (tags: stages)."""
    return MLPBackbone(in_features, hidden, dropout)


@hookimpl
def mtlzoo_register_backbones(register):
    register("mlp", mlp, tags={"stages"}, summary="MLP trunk for vector and tabular inputs")
