"""Semantic segmenters: an image (B, 3, H, W) in [0, 1] -> class logits (B, K, H, W) at the image's own size.

Names:
    a torchvision segmentation model   deeplabv3_resnet50, deeplabv3_resnet101, deeplabv3_mobilenet_v3_large,
                                       fcn_resnet50, fcn_resnet101, lraspp_mobilenet_v3_large
    KIND:ENCODER                       KIND in unet, deeplabv3, fcn, lraspp; ENCODER any timm model that supports
                                       features_only (unet:resnet18, deeplabv3:tf_efficientnet_lite0), or tv/NAME for
                                       torchvision's resnet* / resnext* / wide_resnet* and mobilenet_v2 / mobilenet_v3_*
                                       (unet:tv/mobilenet_v2); timm transformers with a fixed input size
                                       (ViT, Swin) take only that size

A network is an `encoder` (the part that classification weights, e.g. ImageNet, fit; what fine-tuning gives a
lower learning rate or freezes; built by `deepfit.models.backbones`) and a decoder. The encoder's own input
normalisation (mean, std) is applied inside `forward`, so the preprocessing is saved and loaded with the weights
and callers feed plain [0, 1] images.
Any H, W works: every upsampling goes to the exact size of the map it meets, never by a fixed factor.

Weights: `encoder_weights` (a classification weights file of the encoder), or `pretrained_encoder` to fetch the
official ones by name (needs internet once); a whole segmenter's state dict goes through
`load_segmenter_weights`, which leaves the class-specific final layer(s) random when the number of classes differs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from deepfit.errors import ConfigError
from deepfit.log import logger
from deepfit.models.backbones import (
    TV_CLASSIFIER,
    TV_ENCODERS,
    fetching,
    load_backbone_state,
    load_model_state,
    suggest,
    timm_encoder,
    tv_encoder,
)
from deepfit.models.factory import IMAGENET_MEAN, IMAGENET_STD
from deepfit.models.weights import read_weights_file, strip_prefixes

KINDS = ("unet", "deeplabv3", "fcn", "lraspp")
# Decoder widths from the coarsest level to the finest (the last one works at the input's full size).
_UNET_WIDTHS = (256, 128, 64, 32, 16)
# torchvision's ASPP rates are meant for an output stride of 8 (its dilated backbones); they are scaled to the
# encoder's real stride, else at stride 32 (a 16x16 map for a 512 image) the dilated taps would all read padding.
_ASPP_RATES_AT_8 = (12, 24, 36)
_LRASPP_INTER = 128  # torchvision's own width for LR-ASPP's high branch


@dataclass
class SegmenterSpec:
    """Everything needed to rebuild a segmenter (weights come separately)."""

    name: str
    num_classes: int

    @property
    def kind(self) -> str:
        """unet, deeplabv3, fcn or lraspp (torchvision's names start with their kind: fcn_resnet50)."""
        return self.name.split(":", 1)[0] if ":" in self.name else self.name.split("_", 1)[0]


class Segmenter(nn.Module):
    """Normalise, encode, decode: (B, 3, H, W) in [0, 1] -> (B, K, H, W) logits."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        # persistent buffers: the normalisation travels in the state dict with the weights it belongs to
        self.register_buffer("mean", torch.tensor([float(v) for v in mean]))
        self.register_buffer("std", torch.tensor([float(v) for v in std]))

    @property
    def class_layers(self) -> tuple[str, ...]:
        """State-dict prefixes of the layers whose shape depends on the number of classes."""
        return tuple(f"decoder.{name}." for name in self.decoder.class_layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]  # not int()s: an ONNX export then keeps the height and width dynamic
        x = (x - self.mean[:, None, None]) / self.std[:, None, None]
        features = self.encoder(x)
        if isinstance(features, dict):  # a torchvision segmentation backbone: {"out"} or {"low", "high"}, fine to coarse
            features = list(features.values())
        return self.decoder(features, size)


# --- decoders: (feature maps fine to coarse, the input's size) -> (B, K, H, W) ---------------------------


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def _upsample(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class UNetDecoder(nn.Module):
    """From the coarsest map up: upsample to the next skip's exact size, concatenate, two 3x3 conv-BN-ReLU; a last
    step of the same kind at the input's size (no skip there), then a 1x1 conv to the classes."""

    class_layers = ("classifier",)

    def __init__(self, channels: Sequence[int], num_classes: int, widths: Sequence[int] = _UNET_WIDTHS) -> None:
        super().__init__()
        n = len(channels)
        widths = (list(widths) + [widths[-1]] * n)[:n]  # one step per level: trimmed, or the last repeated
        skips = [*reversed(channels[:-1]), 0]  # coarse to fine, then none at the input's size
        blocks, cin = [], channels[-1]
        for width, skip in zip(widths, skips, strict=True):
            blocks.append(nn.Sequential(*_conv_bn_relu(cin + skip, width), *_conv_bn_relu(width, width)))
            cin = width
        self.blocks = nn.ModuleList(blocks)
        self.classifier = nn.Conv2d(cin, num_classes, 1)

    def forward(self, features: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        x = features[-1]  # (B, C, H/32, W/32)
        skips = features[-2::-1]  # (B, C, H/16, W/16) ... (B, C, H/2, W/2)
        for i, block in enumerate(self.blocks):
            if i < len(skips):
                x = torch.cat([_upsample(x, skips[i].shape[-2:]), skips[i]], dim=1)
            else:
                x = _upsample(x, size)  # (B, C, H, W)
            x = block(x)
        return self.classifier(x)  # (B, K, H, W)


class CoarsestHead(nn.Module):
    """A torchvision head (DeepLabHead, FCNHead: Sequentials ending in the class conv) on the coarsest map,
    upsampled to the input's size."""

    def __init__(self, head: nn.Sequential) -> None:
        super().__init__()
        self.head = head
        self.class_layers = (f"head.{len(head) - 1}",)

    def forward(self, features: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        return _upsample(self.head(features[-1]), size)  # (B, K, H/s, W/s) -> (B, K, H, W)


class LRASPPDecoder(nn.Module):
    """torchvision's LR-ASPP head: the coarsest map as `high`, a finer one (stride 8) as `low`."""

    class_layers = ("head.low_classifier", "head.high_classifier")

    def __init__(self, head: nn.Module, low: int) -> None:
        super().__init__()
        self.head = head
        self.low = low

    def forward(self, features: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        logits = self.head({"low": features[self.low], "high": features[-1]})  # (B, K, H/8, W/8)
        return _upsample(logits, size)


def _decoder(kind: str, channels: list[int], reductions: list[int], num_classes: int) -> nn.Module:
    from torchvision.models.segmentation.deeplabv3 import DeepLabHead
    from torchvision.models.segmentation.fcn import FCNHead
    from torchvision.models.segmentation.lraspp import LRASPPHead

    if kind == "unet":
        return UNetDecoder(channels, num_classes)
    if kind == "deeplabv3":
        rates = [max(1, r * 8 // reductions[-1]) for r in _ASPP_RATES_AT_8]
        # ASPP's image-pooling branch has a BatchNorm after global pooling: see _PooledBatchNorm
        return CoarsestHead(DeepLabHead(channels[-1], num_classes, atrous_rates=rates))
    if kind == "fcn":
        return CoarsestHead(FCNHead(channels[-1], num_classes))
    # the finer map whose stride is nearest 8 (LR-ASPP's design), never the coarsest itself unless it is the only one
    low = min(range(max(1, len(reductions) - 1)), key=lambda i: abs(math.log2(reductions[i] / 8)))
    return LRASPPDecoder(LRASPPHead(channels[low], channels[-1], num_classes, _LRASPP_INTER), low)


# --- building -------------------------------------------------------------------------------------------


def _tv_segmentation_names() -> list[str]:
    import torchvision

    return torchvision.models.list_models(module=torchvision.models.segmentation)


def build_segmenter(spec: SegmenterSpec, *, encoder_weights: str | Path | None = None, pretrained_encoder: bool = False,
                    freeze_encoder: bool = False) -> Segmenter:
    """The segmenter for `spec`, with random weights unless encoder weights are given. Builds only: whether
    a pretrained encoder's batch norms keep their statistics is for the workflow to decide."""
    if spec.num_classes < 1:
        raise ConfigError(f"a segmenter needs at least one class, got num_classes={spec.num_classes}")
    if encoder_weights and pretrained_encoder:
        raise ConfigError("give either encoder weights as a file or the official pretrained ones by name, not both")
    if ":" in spec.name:
        kind, encoder_name = spec.name.split(":", 1)
        if kind not in KINDS:
            raise ConfigError(f"unknown segmenter kind {kind!r}{suggest(kind, list(KINDS))}; kinds: {', '.join(KINDS)}")
        if encoder_name.startswith(("tv/", "torchvision/")):
            encoder = tv_encoder(encoder_name.split("/", 1)[1], encoder_weights, pretrained_encoder)
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        else:
            encoder = timm_encoder(encoder_name, encoder_weights, pretrained_encoder)
            mean, std = encoder.input_mean, encoder.input_std
        model = Segmenter(encoder, _decoder(kind, encoder.channels, encoder.reductions, spec.num_classes), mean, std)
    else:
        model = _torchvision_segmenter(spec, encoder_weights, pretrained_encoder)
    if freeze_encoder:
        model.encoder.requires_grad_(False)
    _allow_single_image_batches(model)
    return model


class _PooledBatchNorm(nn.BatchNorm2d):
    """DeepLabV3's image-pooling branch normalises after global pooling: one value per channel and image, so a
    training batch of one image (an epoch's last, smaller batch; a micro-batch of --accumulate) has no batch
    statistics and torchvision's BatchNorm2d raises. Such a batch is normalised with the running statistics
    instead; any larger batch is a plain BatchNorm2d step. The state-dict keys are BatchNorm2d's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, 1, 1)
        if self.training and x.shape[0] * x.shape[2] * x.shape[3] == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


def _allow_single_image_batches(model: nn.Module) -> None:
    from torchvision.models.segmentation.deeplabv3 import ASPPPooling

    for pooling in (m for m in model.modules() if isinstance(m, ASPPPooling)):
        for m in pooling.modules():
            if type(m) is nn.BatchNorm2d:
                m.__class__ = _PooledBatchNorm


def _torchvision_segmenter(spec: SegmenterSpec, weights_file: str | Path | None, pretrained: bool) -> Segmenter:
    """torchvision's model, taken apart: its backbone is the encoder, its classifier the decoder's head (the
    forward pass is the same as torchvision's: head on the backbone's maps, bilinear to the input's size)."""
    import torchvision
    from torchvision.models.segmentation.lraspp import LRASPPHead

    names = _tv_segmentation_names()
    if spec.name not in names:
        raise ConfigError(
            f"unknown segmenter {spec.name!r}{suggest(spec.name, names)}; use one of {', '.join(names)}, "
            f"or KIND:ENCODER (kinds: {', '.join(KINDS)})"
        )
    with fetching(spec.name, pretrained):
        # aux_loss=False: no auxiliary head, whose output the training loop would not use
        net = torchvision.models.get_model(spec.name, weights=None, weights_backbone="DEFAULT" if pretrained else None,
                                           num_classes=spec.num_classes, aux_loss=False)
    if weights_file:
        state, _ = read_weights_file(Path(weights_file))
        load_backbone_state(net.backbone, _tv_backbone_keys(state, net.backbone), str(weights_file), ignore=TV_CLASSIFIER)
    head = net.classifier
    decoder = LRASPPDecoder(head, low=0) if isinstance(head, LRASPPHead) else CoarsestHead(head)
    return Segmenter(net.backbone, decoder, IMAGENET_MEAN, IMAGENET_STD)


def _tv_backbone_keys(state: dict[str, torch.Tensor], backbone: nn.Module) -> dict[str, torch.Tensor]:
    """A classification state dict in the names of torchvision's segmentation backbone: an IntermediateLayerGetter
    over a ResNet keeps its names (conv1, layer1...), one over a MobileNetV3's `features` drops the `features.`."""
    if any(k.startswith("features.") for k in backbone.state_dict()):
        return state
    return {k.removeprefix("features."): v for k, v in state.items()}


def load_segmenter_weights(model: Segmenter, state: dict[str, torch.Tensor], origin: str) -> list[str]:
    """Load a whole segmenter's weights (e.g. another run's, with other classes); class-specific layers of another
    shape are left random (and returned). Anything else that does not fit means another architecture: an error."""
    replaced = load_model_state(model, strip_prefixes(state), origin, class_layers=model.class_layers,
                                what="segmenter", hint="; is it for another network?")
    if replaced:
        logger.info(f"loaded {origin}; class layers left random for the new classes: {', '.join(replaced)}")
    else:
        logger.info(f"loaded {origin}")
    return replaced


def is_segmenter_state(state: dict[str, torch.Tensor]) -> bool:
    """True for a whole Segmenter's state dict (encoder, decoder and its normalisation), False for a
    classification network's (which at most has an `encoder.`, as torchvision's ViT does)."""
    state = strip_prefixes(state)
    norm = all(k in state and tuple(state[k].shape) == (3,) for k in ("mean", "std"))
    return norm and any(k.startswith("encoder.") for k in state) and any(k.startswith("decoder.") for k in state)


def list_segmenters() -> list[str]:
    """torchvision's segmentation models, then KIND:tv/ENCODER for each torchvision encoder, then the form
    KIND:<timm model> (any timm model with features_only, e.g. unet:resnet18)."""
    import torchvision

    encoders = [n for n in torchvision.models.list_models(module=torchvision.models) if n.startswith(TV_ENCODERS)]
    return [*_tv_segmentation_names(), *(f"{k}:tv/{e}" for k in KINDS for e in encoders), *(f"{k}:<timm model>" for k in KINDS)]
