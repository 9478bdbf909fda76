"""Backbones and encoders made from classification networks (timm's or torchvision's), and their weights.

Detection puts a feature pyramid on a backbone (`fpn_backbone`); segmentation puts a decoder on an encoder
that gives a list of feature maps, fine to coarse (`tv_encoder`, `timm_encoder`). Either way the network
starts as a classification network, so classification weights fit it: the official ones fetched by name
(`fetching` turns an offline failure into advice), or a weights file (`load_backbone_state`, which leaves
the classifier out and insists on everything else). `load_model_state` loads a whole detector's or
segmenter's weights, leaving its class-specific layers as built when the number of classes differs.
"""

from __future__ import annotations

import contextlib
import difflib
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from deepfit.errors import ConfigError, WeightsError
from deepfit.log import logger
from deepfit.models.factory import IMAGENET_MEAN, IMAGENET_STD
from deepfit.models.weights import check_official_weights_reachable, read_weights_file

# Keys of a classification network that no backbone has (its classifier).
TIMM_CLASSIFIER = ("classifier.", "fc.", "head.", "conv_head.", "bn2.")
TV_CLASSIFIER = ("fc.", "classifier.")
TV_ENCODERS = ("resnet", "resnext", "wide_resnet", "mobilenet_v2", "mobilenet_v3")
_PROBE = 64  # a multiple of 32: the probe's stride-32 map is still 2x2, so every halving shows


def suggest(name: str, names: list[str]) -> str:
    """The names closest to `name` as ' (did you mean a, b?)', or '' when none is close."""
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""


@contextlib.contextmanager
def fetching(name: str, pretrained: bool = True) -> Iterator[None]:
    """Official weights are downloaded by timm / torchvision; offline that fails: say what to do instead.

    With `pretrained` False nothing is fetched, and errors pass unchanged."""
    if not pretrained:
        yield
        return
    check_official_weights_reachable(name)
    try:
        yield
    except (OSError, RuntimeError, ValueError) as e:
        raise WeightsError(
            f"could not fetch the official weights of {name!r} ({type(e).__name__}: {str(e)[:200]}); without internet, "
            "download them elsewhere and pass the file as backbone weights"
        ) from e


def load_backbone_state(module: nn.Module, state: dict[str, torch.Tensor], origin: str, ignore: tuple[str, ...] = ()) -> None:
    """Load a classification network's weights into a backbone: its classifier is ignored, anything else must fit."""
    own = module.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith(ignore)}
    missing = [k for k in own if k not in state and not k.startswith(ignore)]
    wrong = [k for k in state if k in own and state[k].shape != own[k].shape]
    unexpected = [k for k in state if k not in own]
    if missing or wrong:
        raise WeightsError(
            f"{origin} does not fit this backbone: {len(missing)} missing (e.g. {missing[:3]}), {len(wrong)} of another "
            f"shape (e.g. {wrong[:3]}); is it for another network?"
        )
    module.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    logger.info(f"backbone weights loaded from {origin}" + (f" ({len(unexpected)} classifier tensors left out)" if unexpected else ""))


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], origin: str, *, class_layers: tuple[str, ...],
                     what: str, hint: str = "") -> list[str]:
    """Load a whole model's weights; tensors of `class_layers` (state-dict prefixes) whose shape differs are left
    as built (and returned). Anything else that does not fit means the file is for another architecture: a
    WeightsError saying it does not match this `what`, followed by `hint`."""
    own = model.state_dict()
    differ = [k for k in state if k in own and state[k].shape != own[k].shape]
    replaced = [k for k in differ if k.startswith(class_layers)]
    wrong = [k for k in differ if k not in replaced]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if wrong or missing or unexpected:
        raise WeightsError(
            f"{origin} does not match this {what}: {len(wrong)} tensors of another shape (e.g. {wrong[:2]}), "
            f"{len(missing)} missing (e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]}){hint}"
        )
    model.load_state_dict({k: v for k, v in state.items() if k not in replaced}, strict=False)
    return replaced


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode for a dry forward (batch-norm statistics untouched), then the mode it had."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def torchvision_network(name: str, weights_file: str | Path | None, pretrained: bool) -> nn.Module:
    """torchvision's classification network `name`, with its official weights, a weights file's, or random ones."""
    import torchvision

    weights = torchvision.models.get_model_weights(name).DEFAULT if pretrained else None
    with fetching(name, pretrained):
        net = torchvision.models.get_model(name, weights=weights)
    if weights_file:
        state, _ = read_weights_file(Path(weights_file))
        load_backbone_state(net, state, str(weights_file), ignore=TV_CLASSIFIER)
    return net


# --- detection: a feature pyramid on a backbone ---------------------------------------------------------


class TimmFPN(nn.Module):
    """A timm network's stages (features_only) -> a feature pyramid: dict of (B, C, H/s, W/s) maps, C = out_channels."""

    def __init__(self, name: str, *, pretrained: bool = False, extra: str = "pool", out_channels: int = 256) -> None:
        super().__init__()
        import timm
        from torchvision.ops.feature_pyramid_network import (
            FeaturePyramidNetwork,
            LastLevelMaxPool,
            LastLevelP6P7,
        )

        self.body = timm.create_model(name, features_only=True, out_indices=(1, 2, 3, 4), pretrained=pretrained)
        channels = self.body.feature_info.channels()
        extra_block = LastLevelMaxPool() if extra == "pool" else LastLevelP6P7(out_channels, out_channels)
        self.fpn = FeaturePyramidNetwork(channels, out_channels, extra_blocks=extra_block)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(self.body(x))))


def _tv_fpn(name: str, weights_file: str | Path | None, pretrained: bool, trainable_layers: int, extra: str) -> nn.Module:
    from torchvision.models.detection import backbone_utils
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

    if not (name.startswith("resnet") or name.startswith("mobilenet")):
        raise ConfigError(f"torchvision backbone {name!r} is not supported: use a resnet*, mobilenet_v2 or mobilenet_v3_* (or a timm name)")
    model = torchvision_network(name, weights_file, pretrained)
    extra_block = LastLevelMaxPool() if extra == "pool" else LastLevelP6P7(256, 256)
    if name.startswith("resnet"):
        return backbone_utils._resnet_fpn_extractor(model, trainable_layers, extra_blocks=extra_block)
    # torchvision's own mobilenet builders use this (private, but present in every release since 0.13)
    return backbone_utils._mobilenet_extractor(model, True, trainable_layers, extra_blocks=extra_block)


def fpn_backbone(name: str, *, weights_file: str | Path | None, pretrained: bool, freeze: bool, extra: str) -> nn.Module:
    """The backbone `name` (a timm model, or tv/NAME for torchvision's) with a feature pyramid on its stages;
    `extra` is the pyramid's extra level: "pool" (the R-CNNs') or "p6p7" (RetinaNet's and FCOS's)."""
    if name.startswith(("tv/", "torchvision/")):
        return _tv_fpn(name.split("/", 1)[1], weights_file, pretrained, 0 if freeze else 5, extra)
    import timm

    if name not in timm.list_models():
        raise ConfigError(f"timm has no backbone {name!r}{suggest(name, timm.list_models())}")
    with fetching(name, pretrained):
        backbone = TimmFPN(name, pretrained=pretrained, extra=extra)
    if weights_file:
        state, _ = read_weights_file(Path(weights_file))
        load_backbone_state(backbone.body, state, str(weights_file), ignore=TIMM_CLASSIFIER)
    if freeze:
        backbone.body.requires_grad_(False)
    return backbone


# --- segmentation: encoders giving a list of feature maps, fine to coarse -------------------------------


class TimmEncoder(nn.Module):
    """A timm network's stages (features_only): maps at the reductions timm reports (usually 2, 4, 8, 16, 32)."""

    def __init__(self, name: str, *, pretrained: bool = False) -> None:
        super().__init__()
        import timm

        self.body = timm.create_model(name, features_only=True, pretrained=pretrained)
        self.channels: list[int] = list(self.body.feature_info.channels())
        self.reductions: list[int] = list(self.body.feature_info.reduction())
        # transformers such as Swin give channels-last maps; the decoders want (B, C, H, W)
        self.channels_last = getattr(self.body, "output_fmt", "NCHW") == "NHWC"
        cfg = getattr(self.body, "pretrained_cfg", None) or {}
        self.input_mean = tuple(cfg.get("mean", IMAGENET_MEAN))
        self.input_std = tuple(cfg.get("std", IMAGENET_STD))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = list(self.body(x))
        return [m.permute(0, 3, 1, 2) for m in maps] if self.channels_last else maps


class TvResNetEncoder(nn.Module):
    """torchvision's ResNet, cut into the stem (after its ReLU, /2) and layer1..layer4 (/4 to /32).

    The modules keep their classification names (conv1, layer1, ...) so ImageNet state dicts load unchanged."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.channels, self.reductions = _probe(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.relu(self.bn1(self.conv1(x)))  # (B, 64, H/2, W/2)
        out = [x]
        x = self.maxpool(x)  # (B, 64, H/4, W/4)
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)  # (B, C, H/4, W/4) ... (B, C, H/32, W/32)
            out.append(x)
        return out


class TvMobileNetEncoder(nn.Module):
    """torchvision's MobileNetV2 / V3 `features`: the last block of each stride (where the next one halves the size).

    Kept as `features` so ImageNet state dicts load unchanged; the blocks to tap are found by a dry forward
    pass, which is exact for any variant and width rather than a table of indices per network."""

    def __init__(self, features: nn.Sequential) -> None:
        super().__init__()
        self.features = features
        sizes = []
        with eval_mode(features), torch.no_grad():
            x = torch.zeros(1, 3, _PROBE, _PROBE)
            for block in features:
                x = block(x)
                sizes.append(x.shape[-1])
        last = len(sizes) - 1
        self.taps = [i for i, s in enumerate(sizes) if i == last or sizes[i + 1] < s]
        self.channels, self.reductions = _probe(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, block in enumerate(self.features):
            x = block(x)
            if i in self.taps:
                out.append(x)  # (B, C, H/2, W/2), (B, C, H/4, W/4), ... (B, C, H/32, W/32)
        return out


def _probe(encoder: nn.Module) -> tuple[list[int], list[int]]:
    """(channels, reductions) of an encoder's maps, from a tiny forward pass."""
    with eval_mode(encoder), torch.no_grad():
        maps = encoder(torch.zeros(1, 3, _PROBE, _PROBE))
    return [int(m.shape[1]) for m in maps], [_PROBE // int(m.shape[-1]) for m in maps]


def tv_encoder(name: str, weights_file: str | Path | None, pretrained: bool) -> nn.Module:
    """torchvision's ResNet-like or MobileNet `name` as an encoder."""
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    supported = [n for n in names if n.startswith(TV_ENCODERS)]
    if name not in supported:
        raise ConfigError(
            f"torchvision encoder {name!r} is not supported{suggest(name, supported)}: use a resnet*, resnext*, "
            "wide_resnet*, mobilenet_v2 or mobilenet_v3_* (or a timm name without tv/)"
        )
    net = torchvision_network(name, weights_file, pretrained)
    if isinstance(net, torchvision.models.ResNet):
        return TvResNetEncoder(net)
    return TvMobileNetEncoder(net.features)


def timm_encoder(name: str, weights_file: str | Path | None, pretrained: bool) -> TimmEncoder:
    """timm's model `name` (any that supports features_only) as an encoder."""
    import timm

    name = name.removeprefix("timm/")
    if not timm.is_model(name):
        raise ConfigError(f"timm has no encoder {name!r}{suggest(name, timm.list_models())}")
    try:
        with fetching(name, pretrained):
            encoder = TimmEncoder(name, pretrained=pretrained)
    except (RuntimeError, AssertionError, NotImplementedError, TypeError) as e:  # not WeightsError (a ValueError)
        raise ConfigError(f"timm's {name!r} cannot serve as an encoder (it gives no feature maps: {e})") from e
    if weights_file:
        state, _ = read_weights_file(Path(weights_file))
        load_backbone_state(encoder.body, _timm_feature_keys(state, encoder.body), str(weights_file), ignore=TIMM_CLASSIFIER)
    return encoder


def _timm_feature_keys(state: dict[str, torch.Tensor], body: nn.Module) -> dict[str, torch.Tensor]:
    """timm's generic feature wrapper flattens the first level of names (stages.0.x -> stages_0.x): follow it."""
    own = body.state_dict()
    out = {}
    for key, value in state.items():
        flat = key.replace(".", "_", 1)
        out[flat if key not in own and flat in own else key] = value
    return out
