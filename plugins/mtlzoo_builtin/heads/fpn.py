"""``fpn``: a light FPN decoder for dense prediction over all feature levels.

The pyramid is Lin, Dollár, Girshick, He, Hariharan & Belongie ("Feature Pyramid Networks for
Object Detection", CVPR 2017, Sec. 3): a 1x1 lateral convolution per level, a top-down pathway
that upsamples the coarser map and adds it, and a 3x3 output convolution per level, giving maps
``P_l`` with ``fpn_channels`` channels each (torchvision's ``FeaturePyramidNetwork``).

The decoder on top is the semantic-segmentation branch of Kirillov, Girshick, He & Dollár
("Panoptic Feature Pyramid Networks", CVPR 2019, Sec. 3.2 and Fig. 3): each ``P_l`` goes through
3x3 conv-GroupNorm-ReLU stages, each followed by 2x bilinear upsampling, until it reaches the finest
level's resolution (the finest level gets one stage and no upsampling); the branches are summed
elementwise, a 1x1 convolution predicts the outputs, and a final bilinear upsampling brings them to
the input resolution.

Levels whose reductions are not powers of two apart are handled by resampling to the finest
level's size after the stages.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork

from mtlzoo import hookimpl
from mtlzoo.errors import InvalidArgumentError
from mtlzoo.model import FeatureInfo


def _positive(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgumentError(f"head 'fpn': {name} must be a positive integer, got {value!r}")
    return value


def _stage(cin: int, cout: int, upsample: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.GroupNorm(math.gcd(32, cout), cout),  # 32 groups as in the paper when the width allows
        nn.ReLU(inplace=True),
    ]
    if upsample:
        layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
    return nn.Sequential(*layers)


class SemanticFPNHead(nn.Module):
    """FPN over every level, per-level upsampling branches summed at the finest level, 1x1 classifier."""

    def __init__(self, feature_info: FeatureInfo, out: int, fpn_channels: int | None = None,
                 channels: int | None = None) -> None:
        super().__init__()
        if out is None or isinstance(out, bool) or not isinstance(out, int) or out < 1:
            raise InvalidArgumentError(f"head 'fpn' needs a positive output size, got out={out!r}")
        if not feature_info.spatial:
            raise InvalidArgumentError(
                "head 'fpn' is a dense head and needs spatial features [B, C, H, W]; the backbone gives vectors. "
                "Use a 'linear' or 'mlp' head, or a backbone tagged 'spatial'."
            )
        # Panoptic FPN's 256/128 on a ResNet-50 (2048 channels); narrower backbones get a lighter
        # decoder in proportion, so the head does not dwarf a small network
        if fpn_channels is None:
            fpn_channels = min(256, max(32, max(feature_info.channels) // 8))
        if channels is None:
            channels = fpn_channels // 2
        fpn_channels, channels = _positive("fpn_channels", fpn_channels), _positive("channels", channels)
        self.fpn = FeaturePyramidNetwork(list(feature_info.channels), fpn_channels)
        finest = min(feature_info.reductions)
        self.finest_level = feature_info.reductions.index(finest)
        branches = []
        for reduction in feature_info.reductions:
            # number of 2x upsamplings from this level to the finest (0 for the finest itself)
            ups = max(round(math.log2(reduction / finest)), 0)
            stages = [_stage(fpn_channels if i == 0 else channels, channels, upsample=True) for i in range(ups)]
            branches.append(nn.Sequential(*stages) if stages else _stage(fpn_channels, channels, upsample=False))
        self.branches = nn.ModuleList(branches)
        self.classifier = nn.Conv2d(channels, out, 1)

    def forward(self, features: list[Tensor], input_size: tuple[int, ...] | None = None) -> Tensor:
        if input_size is None:
            raise InvalidArgumentError("head 'fpn' needs the input's spatial size to upsample to")
        if len(features) != len(self.branches):
            raise InvalidArgumentError(f"head 'fpn' was built for {len(self.branches)} feature levels, "
                                       f"got {len(features)}")
        pyramid = self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features)))
        size = features[self.finest_level].shape[-2:]
        total = None
        for branch, p in zip(self.branches, pyramid.values()):
            y = branch(p)
            if y.shape[-2:] != size:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            total = y if total is None else total + y
        logits = self.classifier(total)
        return F.interpolate(logits, size=tuple(input_size), mode="bilinear", align_corners=False)


@hookimpl
def mtlzoo_register_heads(register):
    register("fpn", SemanticFPNHead, tags={"dense"},
             paper="Lin et al., CVPR 2017; Kirillov et al., CVPR 2019",
             summary="Semantic-FPN decoder over all feature levels, upsampled to the input")
