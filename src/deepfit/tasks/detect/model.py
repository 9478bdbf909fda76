"""Detectors and instance segmenters: torchvision's models, on torchvision's or any timm backbone.

Names:
    a torchvision detection model    fasterrcnn_resnet50_fpn, fasterrcnn_mobilenet_v3_large_fpn, retinanet_resnet50_fpn,
                                     fcos_resnet50_fpn, ssdlite320_mobilenet_v3_large, maskrcnn_resnet50_fpn, ...
    KIND:BACKBONE                    KIND in fasterrcnn, retinanet, fcos, maskrcnn; BACKBONE any timm model that
                                     supports features_only (e.g. fasterrcnn:tf_efficientnet_lite0), or tv/NAME for
                                     torchvision's resnet* and mobilenet_v2 / mobilenet_v3_* (fasterrcnn:tv/mobilenet_v2)

The backbone's stages feed a feature pyramid (FPN); anchors and RoI pooling are sized to the number of
pyramid levels the backbone gives. Labels follow torchvision's convention: the model's class 0 is the
background, so the data's class index i is the model's label i + 1 (the task layer converts).

Weights: `backbone_weights` (a classification weights file of the backbone, e.g. ImageNet weights),
or `pretrained_backbone` to fetch the official ones by name (needs internet once); a whole detector's
state dict goes through `load_detector_weights`, which replaces the class-specific layers when the
number of classes differs.
"""

from __future__ import annotations

import contextlib
import difflib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepfit.errors import ConfigError, WeightsError
from deepfit.log import logger
from deepfit.models.weights import read_weights_file

KINDS = ("fasterrcnn", "retinanet", "fcos", "maskrcnn")
# Layers whose shape depends on the number of classes: replaced, not loaded, when it differs.
_CLASS_LAYERS = ("roi_heads.box_predictor.", "roi_heads.mask_predictor.mask_fcn_logits.",
                 "head.classification_head.cls_logits.", "head.classification_head.module_list.")
_ANCHOR_BASE = (16, 32, 64, 128, 256, 512)
# Objects from 32 to 512 pixels: with 5 or more pyramid levels (strides 4 to 64) one size per level, as in
# FPN; a coarser backbone (mobilenets give 3 levels, strides 16 to 64) gets every size at every level, as
# torchvision's own mobilenet detectors do: one size a level would leave nothing under ~100 px an anchor.
_ALL_SIZES = (32, 64, 128, 256, 512)


def _tv_detection_names() -> list[str]:
    import torchvision

    return torchvision.models.list_models(module=torchvision.models.detection)


def _suggest(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""


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


def _tv_backbone(name: str, weights_file: str | Path | None, pretrained: bool, trainable_layers: int, extra: str) -> nn.Module:
    import torchvision
    from torchvision.models.detection import backbone_utils
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

    if not (name.startswith("resnet") or name.startswith("mobilenet")):
        raise ConfigError(f"torchvision backbone {name!r} is not supported: use a resnet*, mobilenet_v2 or mobilenet_v3_* (or a timm name)")
    weights = torchvision.models.get_model_weights(name).DEFAULT if pretrained else None
    with _fetching(name) if pretrained else contextlib.nullcontext():
        model = torchvision.models.get_model(name, weights=weights)
    if weights_file:
        state, _ = read_weights_file(Path(weights_file))
        _load_backbone_state(model, state, str(weights_file), ignore=("fc.", "classifier."))
    extra_block = LastLevelMaxPool() if extra == "pool" else LastLevelP6P7(256, 256)
    if name.startswith("resnet"):
        return backbone_utils._resnet_fpn_extractor(model, trainable_layers, extra_blocks=extra_block)
    # torchvision's own mobilenet builders use this (private, but present in every release since 0.13)
    return backbone_utils._mobilenet_extractor(model, True, trainable_layers, extra_blocks=extra_block)


@contextlib.contextmanager
def _fetching(name: str) -> Iterator[None]:
    """Official weights are downloaded by timm / torchvision; offline that fails: say what to do instead."""
    try:
        yield
    except (OSError, RuntimeError, ValueError) as e:
        raise WeightsError(
            f"could not fetch the official weights of {name!r} ({type(e).__name__}: {str(e)[:200]}); without internet, "
            "download them elsewhere and pass the file as backbone weights"
        ) from e


def _load_backbone_state(module: nn.Module, state: dict[str, torch.Tensor], origin: str, ignore: tuple[str, ...] = ()) -> None:
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


def _levels(backbone: nn.Module) -> list[str]:
    """Names of the pyramid levels the backbone returns (a tiny forward pass: cheap, and exact for any backbone)."""
    was_training = backbone.training
    backbone.eval()
    with torch.no_grad():
        names = list(backbone(torch.zeros(1, 3, 64, 64)).keys())
    backbone.train(was_training)
    return names


def _detector(kind: str, backbone: nn.Module, num_classes: int, min_size: int, max_size: int) -> nn.Module:
    from torchvision.models.detection import FCOS, FasterRCNN, MaskRCNN, RetinaNet
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign

    levels = _levels(backbone)
    n = len(levels)
    base = _ANCHOR_BASE[-n:] if n <= len(_ANCHOR_BASE) else _ANCHOR_BASE
    per_level = tuple((s,) for s in base) if n >= len(_ALL_SIZES) else (_ALL_SIZES,) * n
    sizes = dict(min_size=min_size, max_size=max_size)
    if kind in ("fasterrcnn", "maskrcnn"):
        anchors = AnchorGenerator(per_level, ((0.5, 1.0, 2.0),) * n)
        pooled = [name for name in levels if name != "pool"]  # RoIs are pooled from the pyramid, not the extra level
        boxes = MultiScaleRoIAlign(pooled, output_size=7, sampling_ratio=2)
        if kind == "fasterrcnn":
            return FasterRCNN(backbone, num_classes + 1, rpn_anchor_generator=anchors, box_roi_pool=boxes, **sizes)
        masks = MultiScaleRoIAlign(pooled, output_size=14, sampling_ratio=2)
        return MaskRCNN(backbone, num_classes + 1, rpn_anchor_generator=anchors, box_roi_pool=boxes, mask_roi_pool=masks, **sizes)
    if kind == "retinanet":
        # RetinaNet's three octave scales per size (2^0, 2^1/3, 2^2/3)
        octaves = tuple(tuple(int(s * 2 ** (k / 3)) for s in level for k in range(3)) for level in per_level)
        anchors = AnchorGenerator(octaves, ((0.5, 1.0, 2.0),) * n)
        return RetinaNet(backbone, num_classes + 1, anchor_generator=anchors, **sizes)
    anchors = AnchorGenerator(tuple((s // 2,) for s in base), ((1.0,),) * n)
    return FCOS(backbone, num_classes + 1, anchor_generator=anchors, **sizes)


@dataclass
class DetectorSpec:
    """Everything needed to rebuild a detector (weights come separately)."""

    name: str
    num_classes: int  # the data's classes, without the background
    min_size: int = 512
    max_size: int = 512

    @property
    def kind(self) -> str:
        return self.name.split(":", 1)[0] if ":" in self.name else next((k for k in KINDS if self.name.startswith(k)), "ssd")

    @property
    def masks(self) -> bool:
        return self.kind == "maskrcnn"


def build_detector(spec: DetectorSpec, *, backbone_weights: str | Path | None = None, pretrained_backbone: bool = False,
                   freeze_backbone: bool = False) -> nn.Module:
    """The detector for `spec`, with random weights unless backbone weights are given."""
    if ":" in spec.name:
        kind, backbone_name = spec.name.split(":", 1)
        if kind not in KINDS:
            raise ConfigError(f"unknown detector kind {kind!r}{_suggest(kind, list(KINDS))}; kinds: {', '.join(KINDS)}")
        extra = "pool" if kind in ("fasterrcnn", "maskrcnn") else "p6p7"
        trainable = 0 if freeze_backbone else 5
        if backbone_name.startswith(("tv/", "torchvision/")):
            backbone = _tv_backbone(backbone_name.split("/", 1)[1], backbone_weights, pretrained_backbone, trainable, extra)
        else:
            import timm

            if backbone_name not in timm.list_models():
                raise ConfigError(f"timm has no backbone {backbone_name!r}{_suggest(backbone_name, timm.list_models())}")
            with _fetching(backbone_name) if pretrained_backbone else contextlib.nullcontext():
                backbone = TimmFPN(backbone_name, pretrained=pretrained_backbone, extra=extra)
            if backbone_weights:
                state, _ = read_weights_file(Path(backbone_weights))
                _load_backbone_state(backbone.body, state, str(backbone_weights), ignore=("classifier.", "fc.", "head.", "conv_head.", "bn2."))
            if freeze_backbone:
                backbone.body.requires_grad_(False)
        return _detector(kind, backbone, spec.num_classes, spec.min_size, spec.max_size)
    import torchvision

    names = _tv_detection_names()
    if spec.name not in names:
        raise ConfigError(f"unknown detector {spec.name!r}{_suggest(spec.name, names)}; or use KIND:BACKBONE (kinds: {', '.join(KINDS)})")
    # pretrained_backbone: the backbone's ImageNet weights by name, as for KIND:BACKBONE (a whole detector's
    # weights come as a file through load_detector_weights)
    kwargs: dict[str, Any] = {"weights": None, "weights_backbone": "DEFAULT" if pretrained_backbone else None,
                              "num_classes": spec.num_classes + 1}
    if not spec.name.startswith("ssd"):
        kwargs |= {"min_size": spec.min_size, "max_size": spec.max_size}
    if freeze_backbone:
        kwargs["trainable_backbone_layers"] = 0
    with _fetching(spec.name) if pretrained_backbone else contextlib.nullcontext():
        return torchvision.models.get_model(spec.name, **kwargs)


def load_detector_weights(model: nn.Module, state: dict[str, torch.Tensor], origin: str) -> list[str]:
    """Load a whole detector's weights; class-specific layers of another shape are left freshly initialised
    (and returned). Anything else that does not fit means the file is for another architecture: an error."""
    own = model.state_dict()
    replaced = [k for k in state if k in own and state[k].shape != own[k].shape and k.startswith(_CLASS_LAYERS)]
    wrong = [k for k in state if k in own and state[k].shape != own[k].shape and k not in replaced]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if wrong or missing or unexpected:
        raise WeightsError(
            f"{origin} does not match this detector: {len(wrong)} tensors of another shape (e.g. {wrong[:2]}), "
            f"{len(missing)} missing (e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})"
        )
    model.load_state_dict({k: v for k, v in state.items() if k not in replaced}, strict=False)
    if replaced:
        logger.info(f"loaded {origin}; class layers replaced for the new classes: {', '.join(replaced)}")
    return replaced


def set_thresholds(model: nn.Module, conf: float, iou: float) -> None:
    """Score threshold and NMS IoU of a torchvision detector's post-processing (where each model keeps them)."""
    if not (0 <= conf <= 1 and 0 < iou <= 1):
        raise ConfigError(f"--conf must be in [0, 1] and --iou in (0, 1], got {conf} and {iou}")
    holder = getattr(model, "roi_heads", model)  # R-CNNs keep them in their RoI heads; RetinaNet, FCOS, SSD on the model
    holder.score_thresh, holder.nms_thresh = conf, iou
