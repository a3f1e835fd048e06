"""``timm``: any architecture of PyTorch Image Models (Wightman, 2019, github.com/huggingface/pytorch-image-models)
as a multi-scale feature extractor, and short names for common ones (``resnet50``, ``convnext_tiny``,
``vit_small``, ...).

``timm(model=NAME, pretrained=False, pretrained_file=None, out_indices=None, in_chans=3, staged=None,
**timm_kwargs)`` builds ``timm.create_model(NAME, features_only=True, ...)`` and returns a
:class:`~mtlzoo.model.Backbone` whose ``feature_info`` lists each level's channels and reduction.

For the families with a stage structure (ResNet/ResNeXt, ConvNeXt, EfficientNet/MobileNet, RegNet,
ViT/DeiT and more: :data:`STAGED_FAMILIES`) the backbone is also cut into ``stem`` and ``stages`` by
the staged adapter (:mod:`._staged`) and tagged ``stages``; other families are built by timm's own
feature extractor and are not. Since the family is known only from ``model``, the factory carries a
``tags_for(**kwargs)`` hook, which :meth:`mtlzoo.registry.Entry.tags_for` consults before a
strategy's requirements are checked: ``cross_stitch(backbone=timm(model=dpn48b), ...)`` is refused
before anything is built.

Weights never come from the network. ``pretrained_file=PATH`` loads a local timm-format checkpoint
(safetensors, or a torch file read with ``weights_only=True``) through timm's own loader (so its
checkpoint filters, input-channel adaptation and position-embedding resampling apply), then checks
that every weight of the backbone came from the file. ``pretrained=True`` loads timm's published
weights only if they are already in the Hugging Face or torch hub cache, with the hub set offline.
"""

from __future__ import annotations

import contextlib
import os
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from mtlzoo import hookimpl
from mtlzoo.errors import (
    DataError,
    IncompatibleComponentsError,
    InvalidArgumentError,
    MtlzooError,
    UnknownComponentError,
    suggestion,
)
from mtlzoo.model import Backbone, FeatureInfo
from mtlzoo_builtin.backbones import _staged

#: timm modules (model families) the staged adapter cuts, and how: "chain" (timm's FeatureListNet
#: or EfficientNet/MobileNet feature models, cut at the feature taps) or "vit" (blocks grouped into
#: stages). Every model of these timm modules (690 in timm 1.0.31) was checked to yield a cut; the
#: tests build one or more of each (tests/test_timm_sweep.py, tests/test_backbones.py).
STAGED_FAMILIES: dict[str, str] = {
    "resnet": "chain", "resnest": "chain", "res2net": "chain", "sknet": "chain", "byobnet": "chain",
    "convnext": "chain", "efficientnet": "chain", "mobilenetv3": "chain", "regnet": "chain",
    "ghostnet": "chain", "rexnet": "chain", "mobilevit": "chain", "efficientvit_mit": "chain",
    "repvit": "chain", "edgenext": "chain", "hgnet": "chain", "starnet": "chain", "densenet": "chain",
    "cspnet": "chain", "vovnet": "chain", "metaformer": "chain", "pvt_v2": "chain",
    "swin_transformer": "chain", "vision_transformer": "vit", "deit": "vit",
}

_RESERVED = ("features_only", "num_classes", "pretrained_cfg_overlay", "feature_cls")


def _timm() -> Any:
    # imported on first use: importing timm takes seconds, and listing plugins should not pay for it
    import timm

    return timm


def resolve_model(model: Any) -> tuple[str, str]:
    """``(architecture, family)`` of a timm model name; unknown names raise with suggestions."""
    timm = _timm()
    if not isinstance(model, str) or not model:
        raise InvalidArgumentError(f"timm: model must be a timm model name such as 'resnet18', got {model!r}")
    arch = timm.models.get_arch_name(model)
    if not timm.is_model(arch):
        names = timm.list_models()
        raise UnknownComponentError(
            f"unknown timm model {model!r}.{suggestion(arch, names)} timm {timm.__version__} has {len(names)} "
            "architectures (timm.list_models(); a pretrained tag is written 'resnet50.a1_in1k')."
        )
    family = timm.models.model_entrypoint(arch).__module__.rsplit(".", 1)[-1]
    return arch, family


def timm_tags(model: Any = None, staged: bool | None = None, **_: Any) -> frozenset[str]:
    """Tags of ``timm(model=..., staged=...)``: always ``spatial``; ``stages`` for staged families."""
    if model is None:  # the missing argument is reported when the backbone is built
        return frozenset({"spatial", "stages"})
    _, family = resolve_model(model)
    if staged is True and family not in STAGED_FAMILIES:
        raise IncompatibleComponentsError(_unstaged_message(model, family))
    if family in STAGED_FAMILIES and staged is not False:
        return frozenset({"spatial", "stages"})
    return frozenset({"spatial"})


def _unstaged_message(model: str, family: str) -> str:
    some = ", ".join(sorted(STAGED_FAMILIES)[:10])
    return (f"timm model {model!r} (family {family!r}) cannot be split into stages by mtlzoo's staged adapter; "
            f"staged families include {some}, ... Use staged=None/False for a feature extractor without stages.")


# -------------------------------------------------------------------------------------- weights
@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Hugging Face hub offline for the duration: a cache miss raises instead of downloading."""
    previous_env = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import huggingface_hub.constants as hub_constants
    except ImportError:  # without the hub, timm cannot reach it either
        hub_constants = None
    previous = getattr(hub_constants, "HF_HUB_OFFLINE", None)
    if hub_constants is not None:
        hub_constants.HF_HUB_OFFLINE = True  # read at call time; the env var only at import
    try:
        yield
    finally:
        if hub_constants is not None:
            hub_constants.HF_HUB_OFFLINE = previous
        if previous_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous_env


def cached_weights(model: str) -> tuple[dict[str, Any], list[str]]:
    """Where timm's published weights for ``model`` sit in the local cache.

    Returns the extra ``create_model`` arguments that load them (``{}`` when empty: nothing cached)
    and the places looked at, for the error message.
    """
    timm = _timm()
    cfg = timm.models.get_pretrained_cfg(model)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise DataError(f"pretrained=True: timm has no published weights for {model!r}; use pretrained=False "
                        "or pretrained_file=PATH")
    looked: list[str] = []
    if cfg.hf_hub_id:
        try:
            from huggingface_hub import constants as hub_constants
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            hub_constants = None
        if hub_constants is not None:
            repo, _, revision = cfg.hf_hub_id.partition("@")
            names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
            for name in names:
                looked.append(f"{repo}/{name} in the Hugging Face cache {hub_constants.HF_HUB_CACHE}")
                if isinstance(try_to_load_from_cache(repo, name, revision=revision or None), str):
                    return {"pretrained": True}, looked  # timm finds it itself, with the hub offline
    if cfg.url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(cfg.url).path)
        looked.append(str(path))
        if path.is_file():
            overlay = {"file": str(path), "custom_load": cfg.custom_load}
            return {"pretrained": True, "pretrained_cfg_overlay": overlay}, looked
    if cfg.file:
        looked.append(str(cfg.file))
        if Path(cfg.file).is_file():
            return {"pretrained": True}, looked
    return {}, looked


def weight_kwargs(model: str, pretrained: bool, pretrained_file: str | os.PathLike[str] | None) -> dict[str, Any]:
    """``create_model`` arguments for the requested weights; raises if they are not on this machine."""
    if pretrained_file is not None:
        path = Path(pretrained_file).expanduser()
        if not path.is_file():
            raise DataError(f"pretrained_file {str(path)!r} for timm model {model!r} does not exist")
        return {"pretrained": True, "pretrained_cfg_overlay": {"file": str(path)}}
    if not pretrained:
        return {"pretrained": False}
    found, looked = cached_weights(model)
    if not found:
        raise DataError(
            f"pretrained=True: the weights of timm model {model!r} are not in the local cache, and mtlzoo never "
            "downloads. Looked for: " + "; ".join(looked) + ". Fetch them once where there is network "
            f"(e.g. timm.create_model({model!r}, pretrained=True)) or pass pretrained_file=PATH."
        )
    return found


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Tensors of a checkpoint as timm reads it (safetensors, or torch with ``weights_only``)."""
    from timm.models import load_state_dict

    try:
        state = load_state_dict(str(path), weights_only=True)
    except Exception as error:  # unpickling refusals, corrupt files: all mean "not a weights file"
        raise DataError(f"cannot read weights from {str(path)!r}: {error}") from error
    return {k: v for k, v in state.items() if isinstance(v, Tensor)}


def check_loaded(backbone: nn.Module, path: str | os.PathLike[str], model: str, in_chans: int) -> None:
    """Every weight of ``backbone`` must equal a tensor of the file (by value, so names timm's
    checkpoint filters renamed still count). Position embeddings (resampled to the image size) and,
    when ``in_chans != 3``, the first convolution (adapted) are exempt."""
    by_shape: dict[tuple[int, ...], list[Tensor]] = defaultdict(list)
    for tensor in read_state_dict(path).values():
        by_shape[tuple(tensor.shape)].append(tensor)
    first_conv = _timm().models.get_pretrained_cfg_value(model, "first_conv") or ""
    first_convs = [first_conv] if isinstance(first_conv, str) else list(first_conv)
    exempt = ["pos_embed"]
    if in_chans != 3:
        exempt += [f"{c}.weight" for c in first_convs] + [f"{c.replace('.', '_', 1)}.weight" for c in first_convs]
    # the state dict: parameters and persistent buffers (what a checkpoint holds)
    named = [(n, t) for n, t in backbone.state_dict().items() if not n.endswith("num_batches_tracked")]
    missing = []
    for name, value in named:
        if any(name.endswith(e) for e in exempt if e):
            continue
        value = value.detach()
        if not any(torch.equal(value, t.to(value.dtype)) for t in by_shape.get(tuple(value.shape), ())):
            missing.append(name)
    if missing:
        raise DataError(
            f"pretrained_file {str(path)!r}: {len(missing)} of {len(named)} weights of timm model {model!r} were not "
            f"found in the file (first: {', '.join(missing[:4])}). Is it a timm-format checkpoint of {model!r}?"
        )


# --------------------------------------------------------------------------------------- building
def _create(model: str, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` with its failures turned into mtlzoo errors."""
    timm = _timm()
    source = kwargs.get("pretrained_cfg_overlay", {}).get("file")
    offline = hub_offline() if kwargs.get("pretrained") else contextlib.nullcontext()
    try:
        with offline:
            return timm.create_model(model, **kwargs)
    except MtlzooError:
        raise
    except TypeError as error:
        if "unexpected keyword argument" in str(error):
            raise InvalidArgumentError(f"timm model {model!r} does not accept that argument: {error}") from error
        raise InvalidArgumentError(f"timm could not build {model!r}: {error}") from error
    except FileNotFoundError as error:
        raise DataError(f"timm could not find the weights of {model!r} ({source or 'cache'}): {error}") from error
    except (RuntimeError, ValueError, AssertionError, IndexError, KeyError, OSError) as error:
        if source:  # most likely the weights (missing keys, shape mismatches)
            raise DataError(f"timm could not build {model!r} with weights from {source!r}: {error}") from error
        raise InvalidArgumentError(f"timm could not build {model!r}: {error}") from error


def _vit_indices(out_indices: Any, depth: int, model: str) -> list[int]:
    if out_indices is None:
        return _staged.default_vit_indices(depth)
    if isinstance(out_indices, int) and not isinstance(out_indices, bool):
        if not 1 <= out_indices <= depth:
            raise InvalidArgumentError(f"timm model {model!r}: out_indices={out_indices} must be in 1..{depth}")
        return list(range(depth - out_indices, depth))  # timm's meaning: the last n blocks
    try:
        indices = [int(i) + depth if int(i) < 0 else int(i) for i in out_indices]
    except (TypeError, ValueError):
        raise InvalidArgumentError(
            f"timm model {model!r}: out_indices must be an int or a list of block indices, got {out_indices!r}"
        ) from None
    if not indices or any(not 0 <= i < depth for i in indices) or indices != sorted(set(indices)):
        raise InvalidArgumentError(
            f"timm model {model!r}: out_indices {list(out_indices)} must be increasing block indices in "
            f"0..{depth - 1} (or negative from the end)"
        )
    return indices


def _out_indices_arg(out_indices: Any) -> Any:
    if out_indices is None or isinstance(out_indices, int):
        return out_indices
    if isinstance(out_indices, Sequence) and not isinstance(out_indices, str):
        return tuple(out_indices)
    raise InvalidArgumentError(f"out_indices must be an int or a list of level indices, got {out_indices!r}")


class TimmBackbone(Backbone):
    """A timm model as a backbone: staged (``stem`` + ``stages``) or timm's own feature extractor (``body``)."""

    def __init__(self, model: str, family: str, feature_info: FeatureInfo, in_chans: int, levels: Sequence[int], *,
                 stem: nn.Module | None = None, stages: Sequence[nn.Module] | None = None,
                 body: nn.Module | None = None, keep: Sequence[int] | None = None, nhwc: bool = False,
                 structure: str = "features") -> None:
        super().__init__()
        self.model_name = model
        self.family = family
        self.structure = structure
        self.feature_info = feature_info
        self.in_channels = in_chans
        #: timm's index of each level (``out_indices`` terms; block indices for ViTs)
        self.levels = list(levels)
        if stages is not None:
            self.stem = stem if stem is not None else nn.Identity()
            self.stages = nn.ModuleList(stages)
        else:
            self.body = body
            self.keep = list(keep) if keep is not None else None
            self.nhwc = nhwc

    @property
    def staged(self) -> bool:
        return "stages" in self._modules

    def forward(self, x: Tensor) -> list[Tensor]:
        if self.staged:
            return super().forward(x)
        self.check_input(x)
        features = list(self.body(x))
        if self.keep is not None:
            features = [features[i] for i in self.keep]
        if self.nhwc:
            features = [f.permute(0, 3, 1, 2) for f in features]
        return features

    def describe(self) -> str:
        """One line per level: which modules make the stem and each stage (for logs and reports)."""
        info = self.feature_info
        head = f"{self.model_name} (timm {self.family}, {self.structure}"
        if not self.staged:
            levels = ", ".join(f"{c}ch/{r}" for c, r in zip(info.channels, info.reductions))
            return f"{head}, not staged): levels {levels}"

        def names(module: nn.Module) -> str:
            listed = module.names() if hasattr(module, "names") else []
            if len(listed) > 4:
                listed = [*listed[:2], "...", listed[-1]]
            return ",".join(listed) or "-"

        lines = [f"{head}, staged) stem[{names(self.stem)}]"]
        for k, (stage, c, r) in enumerate(zip(self.stages, info.channels, info.reductions)):
            lines.append(f"  stage {k}: [{names(stage)}] -> {c}ch /{r}")
        return "\n".join(lines)


def build_timm_backbone(model: str, *, pretrained: bool = False, pretrained_file: str | None = None,
                        out_indices: Any = None, in_chans: int = 3, staged: bool | None = None,
                        **timm_kwargs: Any) -> TimmBackbone:
    """Build ``model`` as a backbone (see the module docstring); the worker behind ``timm(...)``."""
    arch, family = resolve_model(model)
    for key in _RESERVED:
        if key in timm_kwargs:
            raise InvalidArgumentError(f"timm backbone: {key!r} is set by mtlzoo; remove it from the spec")
    if not isinstance(in_chans, int) or isinstance(in_chans, bool) or in_chans < 1:
        raise InvalidArgumentError(f"timm backbone: in_chans must be a positive integer, got {in_chans!r}")
    if staged not in (None, True, False):
        raise InvalidArgumentError(f"timm backbone: staged must be true, false or none, got {staged!r}")
    if staged is True and family not in STAGED_FAMILIES:
        raise IncompatibleComponentsError(_unstaged_message(model, family))
    kind = STAGED_FAMILIES.get(family) if staged is not False else None
    kwargs = {**weight_kwargs(model, pretrained, pretrained_file), "in_chans": in_chans, **timm_kwargs}

    if kind == "vit":
        vit = _create(model, num_classes=0, **kwargs)
        if not _staged.is_plain_vit(vit):
            raise IncompatibleComponentsError(_unstaged_message(model, family) + " (not a plain VisionTransformer)")
        indices = _vit_indices(out_indices, len(vit.blocks), model)
        stem, stages = _staged.split_vit(vit, indices)
        reduction = vit.feature_info[0]["reduction"]
        info = FeatureInfo((vit.embed_dim,) * len(indices), (reduction,) * len(indices))
        backbone = TimmBackbone(model, family, info, in_chans, indices, stem=stem, stages=stages,
                                structure="vit blocks")
    else:
        features = _create(model, features_only=True, out_indices=_out_indices_arg(out_indices), **kwargs)
        all_info = features.feature_info.info
        built = list(features.feature_info.out_indices)
        levels = built
        if out_indices is None:  # drop stride-2 levels: too large to be worth sharing or decoding
            levels = [level for level in built if all_info[level]["reduction"] >= 4] or built
        chain = _staged.feature_net_chain(features) if kind else None
        if kind and chain is not None and all(level in chain.taps for level in levels):
            stem, stages = _staged.split_chain(chain, levels, model)
            info = FeatureInfo(tuple(all_info[level]["num_chs"] for level in levels),
                               tuple(all_info[level]["reduction"] for level in levels))
            backbone = TimmBackbone(model, family, info, in_chans, levels, stem=stem, stages=stages,
                                    structure="chain")
        elif kind:
            raise IncompatibleComponentsError(
                f"timm model {model!r} builds a {type(features).__name__}, which the staged adapter cannot cut; "
                "build it with staged=False"
            )
        else:
            backbone = _feature_backbone(model, family, features, levels, built, out_indices, in_chans)
    if pretrained_file is not None:
        check_loaded(backbone, pretrained_file, arch, in_chans)
    return backbone


def _feature_backbone(model: str, family: str, features: nn.Module, levels: list[int], built: list[int],
                      out_indices: Any, in_chans: int) -> TimmBackbone:
    """timm's own ``features_only`` model, unstaged."""
    from timm.models._features import FeatureDictNet, FeatureGetterNet, FeatureHookNet

    all_info = features.feature_info.info
    isotropic = len({e["reduction"] for e in all_info}) == 1
    if isinstance(features, FeatureGetterNet) and out_indices is None and isotropic:
        # ViT-like models: four evenly spaced blocks, as the staged adapter takes
        wanted = _staged.default_vit_indices(len(all_info))
        if max(wanted) <= max(built):
            features.out_indices = wanted
            levels = built = wanted
    keep = [built.index(level) for level in levels]
    nhwc = (isinstance(features, (FeatureDictNet, FeatureHookNet))
            and str(getattr(features, "output_fmt", "NCHW")).upper().endswith("NHWC"))
    info = FeatureInfo(tuple(all_info[level]["num_chs"] for level in levels),
                       tuple(all_info[level]["reduction"] for level in levels))
    return TimmBackbone(model, family, info, in_chans, levels, body=features,
                        keep=None if keep == list(range(len(built))) else keep, nhwc=nhwc,
                        structure=type(features).__name__)


def timm(model: str, pretrained: bool = False, pretrained_file: str | None = None, out_indices: Any = None,
         in_chans: int = 3, staged: bool | None = None, **timm_kwargs: Any) -> TimmBackbone:
    """Any timm architecture as a backbone (tags: spatial; stages for staged families).

    ``out_indices`` picks timm feature levels (block indices for ViTs), ``staged=False`` keeps timm's
    own feature extractor, other keyword arguments go to ``timm.create_model`` (``img_size=64``,
    ``drop_path_rate=0.1``, ``output_stride=8``).
    """
    return build_timm_backbone(model, pretrained=pretrained, pretrained_file=pretrained_file,
                               out_indices=out_indices, in_chans=in_chans, staged=staged, **timm_kwargs)


timm.tags_for = timm_tags  # type: ignore[attr-defined]  # consulted by Entry.tags_for


# --------------------------------------------------------------------------------------- aliases
#: mtlzoo name -> (timm model, paper)
ALIASES: dict[str, tuple[str, str]] = {
    "resnet18": ("resnet18", "He, Zhang, Ren & Sun, CVPR 2016"),
    "resnet34": ("resnet34", "He, Zhang, Ren & Sun, CVPR 2016"),
    "resnet50": ("resnet50", "He, Zhang, Ren & Sun, CVPR 2016"),
    "resnet101": ("resnet101", "He, Zhang, Ren & Sun, CVPR 2016"),
    "resnext50": ("resnext50_32x4d", "Xie, Girshick, Dollár, Tu & He, CVPR 2017"),
    "convnext_atto": ("convnext_atto", "Liu, Mao, Wu, Feichtenhofer, Darrell & Xie, CVPR 2022"),
    "convnext_tiny": ("convnext_tiny", "Liu, Mao, Wu, Feichtenhofer, Darrell & Xie, CVPR 2022"),
    "convnext_small": ("convnext_small", "Liu, Mao, Wu, Feichtenhofer, Darrell & Xie, CVPR 2022"),
    "efficientnet_b0": ("efficientnet_b0", "Tan & Le, ICML 2019"),
    "efficientnet_b3": ("efficientnet_b3", "Tan & Le, ICML 2019"),
    "mobilenetv3_small": ("mobilenetv3_small_100", "Howard et al., ICCV 2019"),
    "mobilenetv3_large": ("mobilenetv3_large_100", "Howard et al., ICCV 2019"),
    "regnetx_002": ("regnetx_002", "Radosavovic, Kosaraju, Girshick, He & Dollár, CVPR 2020"),
    "regnety_002": ("regnety_002", "Radosavovic, Kosaraju, Girshick, He & Dollár, CVPR 2020"),
    "regnety_016": ("regnety_016", "Radosavovic, Kosaraju, Girshick, He & Dollár, CVPR 2020"),
    "vit_tiny": ("vit_tiny_patch16_224", "Dosovitskiy et al., ICLR 2021"),
    "vit_small": ("vit_small_patch16_224", "Dosovitskiy et al., ICLR 2021"),
    "vit_base": ("vit_base_patch16_224", "Dosovitskiy et al., ICLR 2021"),
    "deit_tiny": ("deit_tiny_patch16_224", "Touvron, Cord, Douze, Massa, Sablayrolles & Jégou, ICML 2021"),
    "deit_small": ("deit_small_patch16_224", "Touvron, Cord, Douze, Massa, Sablayrolles & Jégou, ICML 2021"),
}


def alias_factory(name: str, model: str) -> Callable[..., TimmBackbone]:
    """A factory that builds ``timm(model=model, ...)``: same arguments but ``model``."""

    def factory(pretrained: bool = False, pretrained_file: str | None = None, out_indices: Any = None,
                in_chans: int = 3, staged: bool | None = None, **timm_kwargs: Any) -> TimmBackbone:
        if "model" in timm_kwargs:
            raise InvalidArgumentError(f"backbone {name!r} is timm model {model!r}; for another model use "
                                       f"timm(model=...) instead of {name}(model=...)")
        return build_timm_backbone(model, pretrained=pretrained, pretrained_file=pretrained_file,
                                   out_indices=out_indices, in_chans=in_chans, staged=staged, **timm_kwargs)

    def tags_for(staged: bool | None = None, **_: Any) -> frozenset[str]:
        return timm_tags(model, staged)

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"timm {model!r} as a backbone; arguments as for timm(model=...) without model."
    factory.tags_for = tags_for  # type: ignore[attr-defined]
    return factory


@hookimpl
def mtlzoo_register_backbones(register):
    register("timm", timm, tags={"spatial", "stages"}, paper="Wightman, PyTorch Image Models, 2019",
             summary="Any timm model as a multi-scale backbone (staged for ResNet, ConvNeXt, EfficientNet, ViT, ...)")
    for name, (model, paper) in ALIASES.items():
        register(name, alias_factory(name, model), tags={"spatial", "stages"}, paper=paper,
                 summary=f"timm {model} (timm(model={model}))")
