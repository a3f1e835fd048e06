"""Heads on globally pooled features: ``linear`` and ``mlp``.

The last feature level is average-pooled (spatial features) or taken as is (vectors), then mapped
to the task's outputs.
"""

from __future__ import annotations

import itertools

from torch import Tensor, nn

from mtlzoo import hookimpl
from mtlzoo.errors import InvalidArgumentError
from mtlzoo.model import FeatureInfo


def _pool(features: list[Tensor]) -> Tensor:
    x = features[-1]
    return x.flatten(2).mean(-1) if x.dim() > 2 else x


def _check_out(name: str, out: int | None) -> int:
    if out is None or isinstance(out, bool) or not isinstance(out, int) or out < 1:
        raise InvalidArgumentError(f"head {name!r} needs a positive output size, got out={out!r}")
    return out


class LinearHead(nn.Module):
    """Global average pool, dropout, one linear layer."""

    def __init__(self, feature_info: FeatureInfo, out: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(feature_info.last_channels, _check_out("linear", out))

    def forward(self, features: list[Tensor], input_size: tuple[int, ...] | None = None) -> Tensor:
        return self.fc(self.drop(_pool(features)))


class MLPHead(nn.Module):
    """Global average pool, then Linear-ReLU-Dropout layers and a linear output (a "tower")."""

    def __init__(self, feature_info: FeatureInfo, out: int, hidden: list[int] | tuple[int, ...] = (128,),
                 dropout: float = 0.0) -> None:
        super().__init__()
        sizes = [feature_info.last_channels, *hidden]
        layers: list[nn.Module] = []
        for cin, cout in itertools.pairwise(sizes):
            layers += [nn.Linear(cin, cout), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        layers.append(nn.Linear(sizes[-1], _check_out("mlp", out)))
        self.net = nn.Sequential(*layers)

    def forward(self, features: list[Tensor], input_size: tuple[int, ...] | None = None) -> Tensor:
        return self.net(_pool(features))


@hookimpl
def mtlzoo_register_heads(register):
    register("linear", LinearHead, summary="Global average pool and one linear layer")
    register("mlp", MLPHead, summary="Global average pool and an MLP tower")
