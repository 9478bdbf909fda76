"""Detectors and instance segmenters: torchvision's models, on torchvision's or any timm backbone.

Names:
    a torchvision detection model    fasterrcnn_resnet50_fpn, fasterrcnn_mobilenet_v3_large_fpn, retinanet_resnet50_fpn,
                                     fcos_resnet50_fpn, ssdlite320_mobilenet_v3_large, maskrcnn_resnet50_fpn, ...
    KIND:BACKBONE                    KIND in fasterrcnn, retinanet, fcos, maskrcnn; BACKBONE any timm model that
                                     supports features_only (e.g. fasterrcnn:tf_efficientnet_lite0), or tv/NAME for
                                     torchvision's resnet* and mobilenet_v2 / mobilenet_v3_* (fasterrcnn:tv/mobilenet_v2)

The backbone's stages feed a feature pyramid (FPN; both built by `deepfit.models.backbones`); anchors and
RoI pooling are sized to the number of pyramid levels the backbone gives. Labels follow torchvision's convention: the model's class 0 is the
background, so the data's class index i is the model's label i + 1 (the task layer converts).

Weights: `backbone_weights` (a classification weights file of the backbone, e.g. ImageNet weights),
or `pretrained_backbone` to fetch the official ones by name (needs internet once); a whole detector's
state dict goes through `load_detector_weights`, which replaces the class-specific layers when the
number of classes differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepfit.errors import ConfigError
from deepfit.log import logger
from deepfit.models.backbones import eval_mode, fetching, fpn_backbone, load_model_state, suggest

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


def _levels(backbone: nn.Module) -> list[str]:
    """Names of the pyramid levels the backbone returns (a tiny forward pass: cheap, and exact for any backbone)."""
    with eval_mode(backbone), torch.no_grad():
        return list(backbone(torch.zeros(1, 3, 64, 64)).keys())


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
    """The detector for `spec`, with random weights unless backbone weights are given; its RoI pooling runs on every
    CPU core (tasks/detect/roi.py)."""
    # imported here: it imports torchvision's ops, which this module does only when it is used
    from deepfit.tasks.detect.roi import use_all_cores

    if ":" in spec.name:
        kind, backbone_name = spec.name.split(":", 1)
        if kind not in KINDS:
            raise ConfigError(f"unknown detector kind {kind!r}{suggest(kind, list(KINDS))}; kinds: {', '.join(KINDS)}")
        extra = "pool" if kind in ("fasterrcnn", "maskrcnn") else "p6p7"
        backbone = fpn_backbone(backbone_name, weights_file=backbone_weights, pretrained=pretrained_backbone,
                                freeze=freeze_backbone, extra=extra)
        return use_all_cores(_detector(kind, backbone, spec.num_classes, spec.min_size, spec.max_size))
    import torchvision

    names = _tv_detection_names()
    if spec.name not in names:
        raise ConfigError(f"unknown detector {spec.name!r}{suggest(spec.name, names)}; or use KIND:BACKBONE (kinds: {', '.join(KINDS)})")
    # pretrained_backbone: the backbone's ImageNet weights by name, as for KIND:BACKBONE (a whole detector's
    # weights come as a file through load_detector_weights)
    kwargs: dict[str, Any] = {"weights": None, "weights_backbone": "DEFAULT" if pretrained_backbone else None,
                              "num_classes": spec.num_classes + 1}
    if not spec.name.startswith("ssd"):
        kwargs |= {"min_size": spec.min_size, "max_size": spec.max_size}
    if freeze_backbone:
        kwargs["trainable_backbone_layers"] = 0
    with fetching(spec.name, pretrained_backbone):
        return use_all_cores(torchvision.models.get_model(spec.name, **kwargs))


def load_detector_weights(model: nn.Module, state: dict[str, torch.Tensor], origin: str) -> list[str]:
    """Load a whole detector's weights; class-specific layers of another shape are left freshly initialised
    (and returned). Anything else that does not fit means the file is for another architecture: an error."""
    replaced = load_model_state(model, state, origin, class_layers=_CLASS_LAYERS, what="detector")
    if replaced:
        logger.info(f"loaded {origin}; class layers replaced for the new classes: {', '.join(replaced)}")
    return replaced


def set_thresholds(model: nn.Module, conf: float, iou: float) -> None:
    """Score threshold and NMS IoU of a torchvision detector's post-processing (where each model keeps them)."""
    if not (0 <= conf <= 1 and 0 < iou <= 1):
        raise ConfigError(f"--conf must be in [0, 1] and --iou in (0, 1], got {conf} and {iou}")
    holder = getattr(model, "roi_heads", model)  # R-CNNs keep them in their RoI heads; RetinaNet, FCOS, SSD on the model
    holder.score_thresh, holder.nms_thresh = conf, iou
