"""The staged adapter: cut a timm model into a ``stem`` and one module per feature level.

mtlzoo's staged-backbone contract (:mod:`mtlzoo.model`) asks for ``stem`` and ``stages`` such that
``stem`` then ``stages`` reproduces the backbone's features, each stage taking and returning a plain
``[B, C, H, W]`` tensor. Three shapes of timm model are cut here:

**Chains.** Most timm CNNs (ResNet/ResNeXt, ConvNeXt, RegNet, GhostNet, ReXNet, MobileViT, ...) are
wrapped by timm's own ``FeatureListNet`` when built with ``features_only=True``: timm has already
flattened them into an ordered chain of modules, each taking one tensor, and it taps the output of
some of them as feature levels. EfficientNet/MobileNet feature models (``EfficientNetFeatures``,
``MobileNetV3Features``) are the same chain written out: stem convolution, norm, then blocks. The
chain is cut right after each selected level's tap, so by construction stage ``k`` ends where timm
reads level ``k``. Models that run channels-last (Swin) are permuted at the cut points.

**Plain ViTs** (``VisionTransformer`` and DeiT). Blocks are grouped into stages ending at the
selected block indices (by default four equal groups: blocks 2, 5, 8, 11 of a 12-block ViT, the taps
DPT and ViTDet use). Tokens are reshaped to ``[B, C, H/p, W/p]`` maps between stages. Prefix tokens
(class, distillation, register tokens) cannot travel through a map, so the stem drops them after
the position embedding and the blocks attend over patch tokens only, as ViTDet does (Li, Mao,
Girshick & He, "Exploring Plain Vision Transformer Backbones for Object Detection", ECCV 2022).
A model built with ``class_token=False`` and no register tokens therefore reproduces timm's
``forward_intermediates`` exactly; one with a class token differs from it in that respect, and
``staged=False`` gives timm's own forward with the class token instead.

Everything else (hook-based or graph-traced feature extractors, models passing tuples between
blocks) is not cut: the caller builds it without the ``stages`` tag.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from mtlzoo.errors import IncompatibleComponentsError, InvalidArgumentError


@dataclass
class Chain:
    """An ordered list of single-input modules and where timm taps its feature levels."""

    modules: list[tuple[str, nn.Module]]
    #: feature level -> position in ``modules`` whose output is that level (all levels timm knows
    #: whose module is in the chain, selected or not)
    taps: dict[int, int]
    #: the modules pass ``[B, H, W, C]`` tensors (Swin-style)
    nhwc: bool = False


class ChainSegment(nn.Sequential):
    """A run of chain modules; takes and returns ``[B, C, H, W]`` maps.

    ``permute_in``/``permute_out`` convert to and from the channels-last layout of NHWC chains; a
    segment that starts the chain takes the image as it is.
    """

    def __init__(self, modules: Sequence[tuple[str, nn.Module]], *, permute_in: bool = False,
                 permute_out: bool = False, label: str = "stage") -> None:
        super().__init__(OrderedDict(modules))
        self.permute_in = permute_in
        self.permute_out = permute_out
        self.label = label

    def forward(self, x: Tensor) -> Tensor:
        if self.permute_in:
            x = x.permute(0, 2, 3, 1)
        for module in self:
            x = module(x)
        if not isinstance(x, Tensor):
            # Some families (DPN) pass tuples between blocks; they cannot be cut into map stages.
            raise IncompatibleComponentsError(
                f"{self.label} returned {type(x).__name__}, not a tensor: this timm model cannot be split "
                "into stages; build it with staged=False"
            )
        if self.permute_out:
            x = x.permute(0, 3, 1, 2)
        return x

    def names(self) -> list[str]:
        return list(self._modules)


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def feature_net_chain(features: nn.Module) -> Chain | None:
    """The chain inside a timm ``features_only`` model, or ``None`` if it is not a chain."""
    from timm.models._features import FeatureDictNet
    from timm.models.efficientnet import EfficientNetFeatures
    from timm.models.mobilenetv3 import MobileNetV3Features

    info = features.feature_info.info
    if isinstance(features, FeatureDictNet):  # FeatureListNet is a subclass
        modules = list(features.items())
        position = {name: i for i, (name, _) in enumerate(modules)}
        taps: dict[int, int] = {}
        for level, entry in enumerate(info):
            # timm flattens one level of Sequential: module 'stages.0' becomes 'stages_0'
            for name in (entry["module"], entry["module"].replace(".", "_", 1)):
                if name in position:
                    taps[level] = position[name]
                    break
        for name, level in features.return_layers.items():
            taps[int(level)] = position[name]
        nhwc = str(getattr(features, "output_fmt", "NCHW")).upper().endswith("NHWC")
        return Chain(modules, taps, nhwc)
    if isinstance(features, (EfficientNetFeatures, MobileNetV3Features)):
        if features.feature_hooks is not None:  # features read from inside blocks
            return None
        head = [(n, getattr(features, n)) for n in ("conv_stem", "bn1", "act1") if hasattr(features, n)]
        modules = head + [(f"blocks_{i}", block) for i, block in enumerate(features.blocks)]
        # 'stage' 0 is the stem's output, stage s > 0 the output of blocks[s - 1]
        taps = {level: (len(head) - 1 if e["stage"] == 0 else len(head) + e["stage"] - 1)
                for level, e in enumerate(info)}
        return Chain(modules, taps, nhwc=False)
    return None


def split_chain(chain: Chain, levels: Sequence[int], model_name: str) -> tuple[nn.Module, list[ChainSegment]]:
    """Cut ``chain`` after the tap of each selected level.

    The stem ends at the tap of the level just before the first selected one (ResNet: conv1, bn1,
    act1). When the first selected level is timm's first, the stem is the modules before that
    level's module if that module has weights of its own (ConvNeXt: ``stem``), else empty.
    """
    positions = [chain.taps[level] for level in levels]
    if positions != sorted(set(positions)):
        raise InvalidArgumentError(f"timm model {model_name!r}: feature levels {list(levels)} are not in forward order")
    earlier = [chain.taps[level] for level in chain.taps if level < levels[0]]
    if earlier:
        stem_end = max(earlier) + 1
    else:
        first = positions[0]
        stem_end = first if first > 0 and _has_parameters(chain.modules[first][1]) else 0
    if stem_end:
        stem: nn.Module = ChainSegment(chain.modules[:stem_end], permute_out=chain.nhwc, label=f"{model_name} stem")
    else:
        stem = nn.Identity()
    stages = []
    start = stem_end
    for k, end in enumerate(positions):
        stages.append(ChainSegment(chain.modules[start:end + 1], permute_in=chain.nhwc and start > 0,
                                   permute_out=chain.nhwc, label=f"{model_name} stage {k}"))
        start = end + 1
    return stem, stages


# ------------------------------------------------------------------------------------------- ViT
class ViTStem(nn.Module):
    """Patch embedding and position embedding of a timm ViT; returns the patch-token map.

    Prefix tokens are dropped (see the module docstring), so only the patch rows of the position
    embedding are added (resampled to the input's grid when the model has ``dynamic_img_size``).
    """

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        if not isinstance(vit.patch_drop, nn.Identity):
            raise InvalidArgumentError(
                "a staged ViT needs the full token grid, but patch_drop_rate > 0 drops tokens; "
                "set patch_drop_rate=0 or build with staged=False"
            )
        self.patch_embed = vit.patch_embed
        self.pos_embed = vit.pos_embed  # a Parameter or None
        # with no_embed_class the position table has rows for the patches only
        self.pos_prefix = 0 if vit.no_embed_class else vit.num_prefix_tokens
        self.dynamic_img_size = vit.dynamic_img_size
        self.pos_drop = vit.pos_drop
        self.norm_pre = vit.norm_pre

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.patch_embed(x)
        if tokens.dim() == 4:  # dynamic_img_size: [B, h, w, C]
            b, gh, gw, c = tokens.shape
            tokens = tokens.reshape(b, gh * gw, c)
        else:
            b, _, c = tokens.shape
            gh, gw = self.patch_embed.grid_size
        if self.pos_embed is not None:
            pos = self.pos_embed
            if self.dynamic_img_size:
                from timm.layers import resample_abs_pos_embed

                pos = resample_abs_pos_embed(pos, new_size=(gh, gw), old_size=self.patch_embed.grid_size,
                                             num_prefix_tokens=self.pos_prefix)
            tokens = tokens + pos[:, self.pos_prefix:]
        tokens = self.norm_pre(self.pos_drop(tokens))
        return tokens.transpose(1, 2).reshape(b, c, gh, gw)

    def names(self) -> list[str]:
        return ["patch_embed", "pos_embed"] if self.pos_embed is not None else ["patch_embed"]


class ViTStage(nn.Module):
    """A group of transformer blocks between two maps: ``[B, C, h, w]`` -> tokens -> blocks -> map."""

    def __init__(self, blocks: Sequence[tuple[int, nn.Module]]) -> None:
        super().__init__()
        # keep timm's block numbers, so stages.1.blocks.3 is the ViT's block 3
        self.blocks = nn.Sequential(OrderedDict((str(i), block) for i, block in blocks))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        tokens = self.blocks(x.flatten(2).transpose(1, 2))
        return tokens.transpose(1, 2).reshape(b, c, h, w)

    def names(self) -> list[str]:
        return [f"blocks.{i}" for i in self.blocks._modules]


def default_vit_indices(depth: int, groups: int = 4) -> list[int]:
    """Block indices ending ``groups`` equal groups: 2, 5, 8, 11 for 12 blocks."""
    groups = min(groups, depth)
    return sorted({round((g + 1) * depth / groups) - 1 for g in range(groups)})


def split_vit(vit: nn.Module, indices: Sequence[int]) -> tuple[ViTStem, list[ViTStage]]:
    """Stem and stages of a timm ``VisionTransformer``; stage ``k`` ends after block ``indices[k]``."""
    blocks = list(vit.blocks)
    stages = []
    start = 0
    for end in indices:
        stages.append(ViTStage([(i, blocks[i]) for i in range(start, end + 1)]))
        start = end + 1
    return ViTStem(vit), stages


def is_plain_vit(model: nn.Module) -> bool:
    from timm.models.vision_transformer import VisionTransformer

    return isinstance(model, VisionTransformer)
