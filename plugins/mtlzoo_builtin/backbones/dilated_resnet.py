"""``dilated_resnet``: a ResNet whose last stages trade stride for dilation, the backbone of dense
prediction (DeepLab: Chen, Papandreou, Kokkinos, Murphy & Yuille, "DeepLab: Semantic Image
Segmentation with Deep Convolutional Nets, Atrous Convolution, and Fully Connected CRFs", TPAMI
2018; Yu, Koltun & Funkhouser, "Dilated Residual Networks", CVPR 2017).

A stage that would halve the resolution keeps it instead, and every 3x3 convolution after it is
atrous with rate r, ``y[i] = sum_k x[i + r * k] w[k]`` (DeepLab, eq. 1), so the receptive field
grows as with the stride while the maps stay large. ``output_stride=16`` dilates ``layer4`` (rate 2);
``output_stride=8`` dilates ``layer3`` (rate 2) and ``layer4`` (rate 4), the setting of DeepLab and of
the multi-task dense benchmarks (NYUv2, Cityscapes) built on ResNet-50. Pretrained ImageNet weights
fit unchanged, since dilation changes no weight shape.

Built by timm's ResNet (``output_stride``) through the ``timm`` backbone, so it is staged like any
timm ResNet: ``stem`` (conv1, bn1, act1) and four stages with reductions 4, 8, 8, 8 (OS 8) or
4, 8, 16, 16 (OS 16).
"""

from __future__ import annotations

from typing import Any

from mtlzoo import hookimpl
from mtlzoo.errors import InvalidArgumentError
from mtlzoo_builtin.backbones.timm import TimmBackbone, build_timm_backbone

DEPTHS = (18, 34, 50, 101, 152)


def dilated_resnet(depth: int = 50, output_stride: int = 8, pretrained: bool = False,
                   pretrained_file: str | None = None, out_indices: Any = None, in_chans: int = 3,
                   **timm_kwargs: Any) -> TimmBackbone:
    """A ResNet-``depth`` with output stride 8 or 16 (tags: spatial, stages).

    ``pretrained``/``pretrained_file``/``out_indices``/``in_chans`` and further keyword arguments
    are those of ``timm(model=resnet<depth>, ...)``.
    """
    if depth not in DEPTHS:
        raise InvalidArgumentError(f"dilated_resnet: depth must be one of {DEPTHS}, got {depth!r}")
    if output_stride not in (8, 16):
        raise InvalidArgumentError(
            f"dilated_resnet: output_stride must be 8 or 16 (32 is the plain ResNet: use resnet{depth}), "
            f"got {output_stride!r}"
        )
    for key in ("model", "staged", "output_stride"):
        if key in timm_kwargs:
            raise InvalidArgumentError(f"dilated_resnet: {key!r} is fixed; use timm(model=...) for other settings")
    return build_timm_backbone(f"resnet{depth}", pretrained=pretrained, pretrained_file=pretrained_file,
                               out_indices=out_indices, in_chans=in_chans, output_stride=output_stride,
                               **timm_kwargs)


@hookimpl
def mtlzoo_register_backbones(register):
    register("dilated_resnet", dilated_resnet, tags={"spatial", "stages"},
             paper="Chen et al., DeepLab, TPAMI 2018; Yu, Koltun & Funkhouser, CVPR 2017",
             summary="ResNet with dilated last stages (output stride 8 or 16) for dense prediction")
