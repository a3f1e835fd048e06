"""Multi-Task Attention Network (Liu, Johns & Davison, "End-to-End Multi-Task Learning with
Attention", CVPR 2019).

A shared trunk (the backbone) and, per task, one soft-attention module per stage. At stage ``j``
the shared trunk produces ``b_j``; task ``k`` computes a mask from the shared feature and its own
attended feature of the previous stage (the attention module)::

    a_j^k = g_j^k([u_j ; p_{j-1}^k])          (stage 1: a_1^k = g_1^k(u_1))
    â_j^k = a_j^k ⊙ b_j                      (element-wise, per channel and pixel)
    p_j^k = f_j(â_j^k)                       (shared refinement, to stage j+1's channels/size)

``g`` is 1x1 conv -> BN -> ReLU -> 1x1 conv -> BN -> sigmoid, so every mask lies in (0, 1);
``f_j`` is a *shared* 3x3 conv -> BN -> ReLU block followed by a max-pool to the next stage's
resolution (the paper's SegNet encoder pools by 2; here the pool goes to whatever size stage
``j+1`` has, so reductions of 1, 2 or more all work). Task ``k``'s head reads its attended
features ``[â_1^k, ..., â_L^k]``.

Generic stages. In SegNet-MTAN ``u_j`` is the block's first-conv feature and ``b_j`` its last; in
the ResNet variant ``u_j`` is the output of all but the stage's last bottleneck and ``b_j`` the
stage output. A generic backbone stage is a black box with one output, so here ``u_j = b_j``: the
mask is computed from, and applied to, the stage output. As in the ResNet variant the mask's
hidden width is ``C_j / attention_reduction`` (4 by default; 1 gives the SegNet layout) and there
is no refinement after the last stage. With every mask equal to one, ``â_j^k = b_j`` and each head
sees exactly the shared features (hard sharing).

Only spatial backbones: the attention masks are per-pixel feature selectors over convolutional
feature maps, and the refinement is a 3x3 convolution. On vector features the masks would reduce
to per-task feature gates, which is what ``mmoe``/``ple`` (gating) provide; use those, or
``cross_stitch``/``nddr``/``sluice``, for ``mlp`` backbones.

Parameter partition: the trunk and the refinement blocks are shared; task ``k``'s attention
modules (``task_modules[k]``) are trained by task ``k``'s loss only and belong to it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlzoo import hookimpl
from mtlzoo.errors import IncompatibleComponentsError, InvalidArgumentError
from mtlzoo.model import BackboneFactory, HeadFactory, MTLModel, call_head, input_size_of


class AttentionMask(nn.Module):
    """``g``: 1x1 conv -> BN -> ReLU -> 1x1 conv -> BN -> sigmoid; a mask in (0, 1) of ``out`` channels."""

    def __init__(self, cin: int, mid: int, out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, out, 1, bias=False), nn.BatchNorm2d(out), nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Refinement(nn.Module):
    """``f``: shared 3x3 conv -> BN -> ReLU to the next stage's channels, then resized to its size."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                                   nn.ReLU(inplace=True))

    def forward(self, x: Tensor, size: torch.Size) -> Tensor:
        y = self.block(x)
        if y.shape[-2:] == size:
            return y
        if y.shape[-2] >= size[0] and y.shape[-1] >= size[1]:  # the usual case: the next stage is smaller
            return F.adaptive_max_pool2d(y, size)
        return F.interpolate(y, size=size, mode="bilinear", align_corners=False)


class MTAN(MTLModel):
    """Shared ``backbone`` and ``refine`` blocks; per-task attention in ``task_modules``; ``heads``."""

    def __init__(self, backbone: BackboneFactory, heads: dict[str, HeadFactory], *,
                 attention_reduction: int = 4) -> None:
        super().__init__(list(heads))
        missing = {"stages", "spatial"} - backbone.tags
        if missing:
            raise IncompatibleComponentsError(
                f"strategy 'mtan' needs a backbone tagged 'stages' and 'spatial' (its attention masks select "
                f"pixels and channels of convolutional stage outputs); {backbone.name!r} lacks {sorted(missing)}. "
                "Use e.g. tiny or a timm CNN/ViT; for vector inputs use mmoe, ple, cross_stitch, nddr or sluice"
            )
        if isinstance(attention_reduction, bool) or not isinstance(attention_reduction, int) or attention_reduction < 1:
            raise InvalidArgumentError(
                f"mtan: attention_reduction must be a positive integer (4: ResNet-MTAN, 1: SegNet-MTAN), "
                f"got {attention_reduction!r}"
            )
        self.backbone = backbone()
        info = self.backbone.feature_info
        if getattr(self.backbone, "stages", None) is None or len(self.backbone.stages) != len(info):
            raise IncompatibleComponentsError(
                f"backbone {backbone.name!r} is tagged 'stages' but has no `stages` with one module per feature level"
            )
        chans = info.channels
        mids = [max(c // attention_reduction, 1) for c in chans]
        self.task_modules = nn.ModuleDict({
            task: nn.ModuleList(
                AttentionMask(c if j == 0 else 2 * c, m, c) for j, (c, m) in enumerate(zip(chans, mids))
            )
            for task in self.task_names
        })
        self.refine = nn.ModuleList(Refinement(chans[j], chans[j + 1]) for j in range(len(chans) - 1))
        self.heads = nn.ModuleDict({task: make(info) for task, make in heads.items()})

    def forward(self, x: Tensor, targets: dict[str, Any] | None = None) -> dict[str, Tensor]:
        self.backbone.check_input(x)
        stem = getattr(self.backbone, "stem", None)
        h = stem(x) if stem is not None else x
        attended: dict[str, list[Tensor]] = {task: [] for task in self.task_names}
        for j, stage in enumerate(self.backbone.stages):
            h = stage(h)  # b_j, which also plays u_j for a black-box stage
            for task in self.task_names:
                if j == 0:
                    mask_input = h
                else:  # p_{j-1} = f_{j-1}(â_{j-1}), refined to this stage's channels and size
                    previous = self.refine[j - 1](attended[task][-1], h.shape[-2:])
                    mask_input = torch.cat([h, previous], dim=1)
                attended[task].append(self.task_modules[task][j](mask_input) * h)
        size = input_size_of(x)
        return {
            task: call_head(self.heads[task], attended[task], size, None if targets is None else targets.get(task))
            for task in self.task_names
        }


def mtan(backbone: BackboneFactory, heads: dict[str, HeadFactory], attention_reduction: int = 4) -> MTAN:
    """MTAN: shared trunk, per-task attention masks on every stage, shared refinement blocks;
    ``attention_reduction``: hidden width of the mask modules is channels / reduction."""
    return MTAN(backbone, heads, attention_reduction=attention_reduction)


@hookimpl
def mtlzoo_register_strategies(register):
    register("mtan", mtan, requires={"stages", "spatial"}, paper="Liu, Johns & Davison, CVPR 2019",
             summary="Shared trunk with per-task attention masks on every stage (Multi-Task Attention Network)")
