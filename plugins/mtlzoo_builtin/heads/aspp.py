"""``aspp``: the DeepLabV3 head of Chen, Papandreou, Schroff & Adam ("Rethinking Atrous
Convolution for Semantic Image Segmentation", arXiv:1706.05587, 2017), Sec. 3.3.

Atrous Spatial Pyramid Pooling on the last feature level: one 1x1 convolution, three 3x3
convolutions with atrous rates ``rates`` and an image-level branch (global average pooling, 1x1
convolution, bilinear upsampling), each with batch normalisation; the five branches are
concatenated and projected by a 1x1 convolution. A 3x3 convolution and a 1x1 classifier follow, and
the logits are upsampled bilinearly to the input resolution.

The paper uses rates (6, 12, 18) at output stride 16 and doubles them, (12, 24, 36), at output
stride 8. With ``rates=None`` the head picks by the reduction of the level it reads: (12, 24, 36)
at a reduction of 8 or less, (6, 12, 18) otherwise. The ASPP block itself is torchvision's
(``torchvision.models.segmentation.deeplabv3.ASPP``), which implements exactly that section.

Note: as in torchvision, the image-pooling branch normalises a 1x1 map with batch norm, so training
needs more than one sample per batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.segmentation.deeplabv3 import ASPP

from mtlzoo import hookimpl
from mtlzoo.errors import InvalidArgumentError
from mtlzoo.model import FeatureInfo

RATES_OS16 = (6, 12, 18)
RATES_OS8 = (12, 24, 36)


def default_rates(reduction: int) -> tuple[int, ...]:
    """The paper's atrous rates for a feature map at ``reduction`` (output stride)."""
    return RATES_OS8 if reduction <= 8 else RATES_OS16


def check_dense_head(name: str, feature_info: FeatureInfo, out: int | None, level: int = -1) -> int:
    """Validate what every dense head needs; returns the index of ``level``."""
    if out is None or isinstance(out, bool) or not isinstance(out, int) or out < 1:
        raise InvalidArgumentError(f"head {name!r} needs a positive output size, got out={out!r}")
    if not feature_info.spatial:
        raise InvalidArgumentError(
            f"head {name!r} is a dense head and needs spatial features [B, C, H, W]; the backbone gives "
            "vectors. Use a 'linear' or 'mlp' head, or a backbone tagged 'spatial'."
        )
    n = len(feature_info)
    if not isinstance(level, int) or not -n <= level < n:
        raise InvalidArgumentError(f"head {name!r}: level={level!r} is not one of the {n} feature levels "
                                   f"(use 0..{n - 1} or -1 for the last)")
    return level % n


class DeepLabV3Head(nn.Module):
    """ASPP, 3x3 conv-BN-ReLU, 1x1 classifier, bilinear upsampling to the input size."""

    def __init__(self, feature_info: FeatureInfo, out: int, rates: Sequence[int] | None = None,
                 channels: int = 256, level: int = -1) -> None:
        super().__init__()
        self.level = check_dense_head("aspp", feature_info, out, level)
        if rates is None:
            rates = default_rates(feature_info.reductions[self.level])
        rates = tuple(rates)
        if not rates or any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in rates):
            raise InvalidArgumentError(f"head 'aspp': rates must be positive integers, e.g. {RATES_OS8}, got {rates}")
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise InvalidArgumentError(f"head 'aspp': channels must be a positive integer, got {channels!r}")
        self.rates = rates
        self.aspp = ASPP(feature_info.channels[self.level], rates, out_channels=channels)
        self.block = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Conv2d(channels, out, 1)

    def forward(self, features: list[Tensor], input_size: tuple[int, ...] | None = None) -> Tensor:
        if input_size is None:
            raise InvalidArgumentError("head 'aspp' needs the input's spatial size to upsample to")
        y = self.classifier(self.block(self.aspp(features[self.level])))
        return F.interpolate(y, size=tuple(input_size), mode="bilinear", align_corners=False)


@hookimpl
def mtlzoo_register_heads(register):
    register("aspp", DeepLabV3Head, aliases=("deeplabv3",), tags={"dense"},
             paper="Chen, Papandreou, Schroff & Adam, arXiv:1706.05587, 2017",
             summary="DeepLabV3 head: ASPP (atrous rates + image pooling), 3x3 conv, classifier, upsample")
