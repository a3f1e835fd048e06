"""``fcn``: the fully convolutional head of Long, Shelhamer & Darrell ("Fully Convolutional
Networks for Semantic Segmentation", CVPR 2015), in the form torchvision's FCN uses: 3x3 conv to a
quarter of the channels, BN, ReLU, dropout, 1x1 conv to the outputs, bilinear upsampling to the
input size.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from mtlzoo import hookimpl
from mtlzoo.errors import InvalidArgumentError
from mtlzoo.model import FeatureInfo


class FCNHead(nn.Module):
    """Per-pixel prediction from the last feature level, upsampled to the input resolution."""

    def __init__(self, feature_info: FeatureInfo, out: int, dropout: float = 0.1) -> None:
        super().__init__()
        if out is None or out < 1:
            raise InvalidArgumentError(f"head 'fcn' needs a positive output size, got out={out!r}")
        cin = feature_info.last_channels
        mid = max(cin // 4, 8)
        self.block = nn.Sequential(
            nn.Conv2d(cin, mid, 3, padding=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Conv2d(mid, out, 1),
        )

    def forward(self, features: list[Tensor], input_size: tuple[int, ...] | None = None) -> Tensor:
        y = self.block(features[-1])
        if input_size is None:
            raise InvalidArgumentError("head 'fcn' needs the input's spatial size to upsample to")
        return F.interpolate(y, size=input_size, mode="bilinear", align_corners=False)


@hookimpl
def mtlzoo_register_heads(register):
    register("fcn", FCNHead, tags={"dense"}, paper="Long, Shelhamer & Darrell, CVPR 2015",
             summary="FCN head: 3x3 conv, BN, ReLU, 1x1 conv, upsample to the input")
