"""``torchvision``: a torchvision classification network as a multi-scale feature extractor.

``torchvision(model=NAME, weights=None)`` builds ``torchvision.models.get_model(NAME)`` and cuts it
with ``torchvision.models.feature_extraction.create_feature_extractor`` (an FX graph rewrite) at
the end of each resolution: one feature level per reduction 4, 8, 16, 32. The cut points are found
by running the network once on a small probe image with forward hooks on its top-level modules
(and one level into ``nn.Sequential`` containers such as ``features``): the last module whose
output has a given reduction ends that level. This works for ResNet/ResNeXt/Wide-ResNet, ConvNeXt,
EfficientNet(V2), MobileNetV2/V3, MNASNet, RegNet, ShuffleNetV2, DenseNet, VGG and GoogLeNet.
Transformer models (ViT, Swin, MaxViT) emit tokens rather than maps, and AlexNet, SqueezeNet and
Inception-v3 use unpadded convolutions whose maps are not input/reduction in size: they are refused
with a message pointing to ``timm(model=...)``.

Weights never come from the network. ``weights`` is ``None`` (random init), the path of a local
state dict (safetensors or a torch file read with ``weights_only=True``) of the whole classifier,
or the name of a torchvision weights entry (``DEFAULT``, ``IMAGENET1K_V2``) that is already in the
torch hub cache; anything else fails with the path that was looked for.
"""

from __future__ import annotations

import os
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
    UnknownComponentError,
    suggestion,
)
from mtlzoo.model import Backbone, FeatureInfo

_TOKEN_MODELS = ("vit_", "swin_", "swin3d", "maxvit")
_CLASSIFIER_NAMES = {"fc", "classifier", "head", "heads", "avgpool", "aux1", "aux2", "AuxLogits", "dropout"}
_PROBE = 128  # large enough for every supported net's stride-32 level to be 4x4


def classification_models() -> list[str]:
    import torchvision.models

    return torchvision.models.list_models(module=torchvision.models)


def _check_model(model: Any) -> str:
    if not isinstance(model, str) or not model:
        raise InvalidArgumentError(f"torchvision: model must be a model name such as 'resnet18', got {model!r}")
    names = classification_models()
    if model not in names:
        raise UnknownComponentError(
            f"unknown torchvision classification model {model!r}.{suggestion(model, names)} "
            f"{len(names)} are available (torchvision.models.list_models(module=torchvision.models))."
        )
    if model.startswith(_TOKEN_MODELS):
        raise IncompatibleComponentsError(
            f"torchvision model {model!r} is a transformer whose features are tokens, not maps; use "
            f"timm(model=...) for transformers (e.g. timm(model=vit_small_patch16_224))"
        )
    return model


def _read_weights(path: Path) -> dict[str, Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling refusals, corrupt files: all mean "not a weights file"
        raise DataError(f"cannot read weights from {str(path)!r}: {error}") from error
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise DataError(f"{str(path)!r} holds a {type(state).__name__}, not a state dict")
    return state


def build_network(model: str, weights: str | os.PathLike[str] | None) -> nn.Module:
    """The torchvision classifier with the requested weights, never downloading."""
    import torchvision.models

    if weights is None:
        return torchvision.models.get_model(model, weights=None)
    path = Path(weights).expanduser()
    if path.is_file():
        net = torchvision.models.get_model(model, weights=None)
        try:
            net.load_state_dict(_read_weights(path), strict=True)
        except RuntimeError as error:
            raise DataError(f"weights {str(path)!r} do not fit torchvision model {model!r}: {error}") from error
        return net
    enum = torchvision.models.get_model_weights(model)
    name = str(weights).rsplit(".", 1)[-1]
    entry = enum.DEFAULT if name == "DEFAULT" else getattr(enum, name, None)
    if entry is None:
        choices = ["DEFAULT", *enum.__members__]
        raise DataError(
            f"torchvision model {model!r}: weights={str(weights)!r} is neither an existing file nor one of "
            f"{', '.join(choices)}.{suggestion(name, choices)}"
        )
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(entry.url).path)
    if not cached.is_file():
        raise DataError(
            f"torchvision weights {enum.__name__}.{entry.name} for {model!r} are not in the torch hub cache "
            f"(looked for {str(cached)!r}), and mtlzoo never downloads. Fetch them once where there is network, "
            f"or pass weights=PATH to a local state dict."
        )
    # torchvision's own loader: finds the cached file (no download) and applies the model's settings
    return torchvision.models.get_model(model, weights=entry)


def _candidates(net: nn.Module) -> list[tuple[str, nn.Module]]:
    """Top-level modules, one level into Sequential containers, without the classifier."""
    out = []
    for name, child in net.named_children():
        if name in _CLASSIFIER_NAMES:
            continue
        if isinstance(child, nn.Sequential):
            kids = list(child.named_children())
            for i, (kid_name, kid) in enumerate(kids):
                # the container's last child ends where the container does: name the container
                out.append((name if i == len(kids) - 1 else f"{name}.{kid_name}", kid))
        else:
            out.append((name, child))
    return out


@torch.no_grad()
def probe_levels(net: nn.Module, in_chans: int = 3) -> list[tuple[str, int, int]]:
    """``(node, channels, reduction)`` for the last module at each reduction >= 4, in forward order."""
    calls: list[tuple[str, Tensor]] = []
    counts: dict[str, int] = {}
    handles = []
    for name, module in _candidates(net):
        def hook(_m: nn.Module, _i: Any, output: Any, name: str = name) -> None:
            counts[name] = counts.get(name, 0) + 1
            if isinstance(output, Tensor):
                calls.append((name, output))
        handles.append(module.register_forward_hook(hook))
    was_training = net.training
    net.eval()  # leave BatchNorm statistics alone
    try:
        net(torch.zeros(1, in_chans, _PROBE, _PROBE))
    finally:
        net.train(was_training)
        for handle in handles:
            handle.remove()
    last: dict[int, tuple[str, int]] = {}
    order: list[int] = []
    for name, output in calls:
        if output.dim() != 4 or counts[name] != 1:
            continue
        reduction = round(_PROBE / output.shape[-1])
        # stride-2 levels are too large to share; maps that are not exactly input/reduction (unpadded
        # convolutions, as in AlexNet or SqueezeNet) cannot be described by a reduction
        if reduction < 4 or reduction & (reduction - 1) or output.shape[-1] * reduction != _PROBE:
            continue
        if reduction not in last:
            order.append(reduction)
        last[reduction] = (name, output.shape[1])
    return [(last[r][0], last[r][1], r) for r in order]


class TorchvisionBackbone(Backbone):
    """A torchvision classifier cut by ``create_feature_extractor`` at the end of each resolution."""

    def __init__(self, model: str, net: nn.Module) -> None:
        super().__init__()
        from torchvision.models.feature_extraction import create_feature_extractor

        try:
            levels = probe_levels(net)
        except RuntimeError as error:  # a net that cannot take the probe image (Inception-v3 needs 299)
            raise IncompatibleComponentsError(
                f"torchvision model {model!r} cannot run on a {_PROBE}x{_PROBE} probe image to find its feature "
                f"levels ({error}); use timm(model=...)"
            ) from error
        if len(levels) < 2:
            raise IncompatibleComponentsError(
                f"torchvision model {model!r} keeps no clean multi-scale feature maps (its unpadded convolutions "
                f"give sizes that are not input/reduction); use timm(model=...) or another torchvision model"
            )
        self.model_name = model
        self.nodes = [node for node, _, _ in levels]
        self.in_channels = 3
        self.feature_info = FeatureInfo(tuple(c for _, c, _ in levels), tuple(r for _, _, r in levels))
        self.body = create_feature_extractor(net, return_nodes={node: str(i) for i, node in enumerate(self.nodes)})

    def forward(self, x: Tensor) -> list[Tensor]:
        self.check_input(x)
        return list(self.body(x).values())

    def describe(self) -> str:
        levels = ", ".join(f"{n} {c}ch/{r}" for n, c, r in
                           zip(self.nodes, self.feature_info.channels, self.feature_info.reductions))
        return f"{self.model_name} (torchvision): {levels}"


def torchvision(model: str, weights: str | None = None) -> TorchvisionBackbone:
    """A torchvision classification net as a backbone (tags: spatial). ``weights``: None, a local
    state-dict file, or a weights name (``DEFAULT``) already in the torch hub cache."""
    model = _check_model(model)
    return TorchvisionBackbone(model, build_network(model, weights))


@hookimpl
def mtlzoo_register_backbones(register):
    register("torchvision", torchvision, tags={"spatial"}, paper="Marcel & Rodriguez, ACM MM 2010 (torchvision)",
             summary="A torchvision classification net as a feature extractor (FX feature extraction)")
