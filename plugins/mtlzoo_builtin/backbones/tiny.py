"""``tiny``: a four-stage CNN small enough for tests and CPU demos.

Not from a paper; a plain conv-BN-ReLU stack with stride-2 stages (reductions 2, 4, 8, 16), so it
exercises everything a staged, spatial backbone offers in milliseconds.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from mtlzoo import hookimpl
from mtlzoo.errors import InvalidArgumentError
from mtlzoo.model import Backbone, FeatureInfo

NORMS = ("batch", "group", "none")


def conv_bn_relu(cin: int, cout: int, stride: int = 1, norm: str = "batch") -> nn.Sequential:
    # GroupNorm (or none) makes the network independent of how a batch is split across processes
    layer = {"batch": lambda: nn.BatchNorm2d(cout), "group": lambda: nn.GroupNorm(min(4, cout), cout),
             "none": nn.Identity}[norm]()
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=norm == "none"), layer,
                         nn.ReLU(inplace=True))


class TinyCNN(Backbone):
    """Stem (3x3 conv) then one stride-2 conv-BN-ReLU block per stage."""

    def __init__(self, in_chans: int = 3, widths: Sequence[int] = (16, 32, 64, 128), norm: str = "batch") -> None:
        super().__init__()
        widths = list(widths)
        if not widths or any(not isinstance(w, int) or w < 1 for w in widths) or in_chans < 1:
            raise InvalidArgumentError(f"tiny: widths must be positive integers, got {widths}")
        if norm not in NORMS:
            raise InvalidArgumentError(f"tiny: norm must be one of {', '.join(NORMS)}, got {norm!r}")
        self.in_channels = in_chans
        self.stem = conv_bn_relu(in_chans, widths[0], norm=norm)
        chans = [widths[0], *widths]
        self.stages = nn.ModuleList(conv_bn_relu(chans[i], chans[i + 1], stride=2, norm=norm)
                                    for i in range(len(widths)))
        self.feature_info = FeatureInfo(tuple(widths), tuple(2 ** (i + 1) for i in range(len(widths))))


def tiny(in_chans: int = 3, widths: Sequence[int] = (16, 32, 64, 128), norm: str = "batch") -> TinyCNN:
    """A four-stage CPU-fast CNN (tags: stages, spatial); ``norm``: batch, group or none."""
    return TinyCNN(in_chans=in_chans, widths=widths, norm=norm)


@hookimpl
def mtlzoo_register_backbones(register):
    register("tiny", tiny, tags={"stages", "spatial"}, summary="Four-stage CPU-fast CNN for tests and demos")
