"""Detector factory: torchvision's detectors on timm and torchvision backbones, with local backbone weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from deepfit.errors import ConfigError, WeightsError
from deepfit.tasks.detect.model import DetectorSpec, build_detector, load_detector_weights

SIZE = 128


def _targets(masks: bool) -> list[dict[str, torch.Tensor]]:
    target = {"boxes": torch.tensor([[10.0, 20.0, 60.0, 90.0]]), "labels": torch.tensor([1])}
    if masks:
        m = torch.zeros(1, SIZE, SIZE, dtype=torch.uint8)
        m[0, 20:90, 10:60] = 1
        target["masks"] = m
    return [target]


@pytest.mark.parametrize("kind", ["fasterrcnn", "retinanet", "fcos", "maskrcnn"])
def test_each_kind_on_a_timm_backbone_trains_and_predicts(kind: str) -> None:
    torch.manual_seed(0)
    spec = DetectorSpec(f"{kind}:tf_efficientnet_lite0", num_classes=2, min_size=SIZE, max_size=SIZE)
    model = build_detector(spec)
    images = [torch.rand(3, SIZE, SIZE)]
    model.train()
    losses = model(images, _targets(spec.masks))
    assert losses and all(torch.isfinite(v) for v in losses.values())
    assert ("loss_mask" in losses) == spec.masks
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        (out,) = model(images)
    assert {"boxes", "scores", "labels"} <= set(out) and ("masks" in out) == spec.masks
    assert out["boxes"].shape[-1] == 4


def test_backbone_weights_from_a_classification_file(weights_dir: Path) -> None:
    file = weights_dir / "tf_efficientnet_lite0.safetensors"
    model = build_detector(DetectorSpec("fasterrcnn:tf_efficientnet_lite0", 3, SIZE, SIZE), backbone_weights=file)
    stem = load_file(str(file))["conv_stem.weight"]
    assert torch.equal(model.backbone.body.conv_stem.weight, stem)


def test_torchvision_mobilenet_v2_backbone_from_the_shared_weights(weights_dir: Path) -> None:
    file = weights_dir / "mobilenet_v2.safetensors"
    model = build_detector(DetectorSpec("fasterrcnn:tv/mobilenet_v2", 2, SIZE, SIZE), backbone_weights=file)
    first = next(iter(model.backbone.body.parameters()))
    assert torch.equal(first, load_file(str(file))["features.0.0.weight"])
    model.eval()
    with torch.no_grad():
        assert "boxes" in model([torch.rand(3, SIZE, SIZE)])[0]


def test_frozen_backbone_trains_only_the_pyramid_and_heads() -> None:
    model = build_detector(DetectorSpec("retinanet:tf_efficientnet_lite0", 2, SIZE, SIZE), freeze_backbone=True)
    assert not any(p.requires_grad for p in model.backbone.body.parameters())
    assert all(p.requires_grad for p in model.backbone.fpn.parameters())
    assert all(p.requires_grad for p in model.head.parameters())


def test_a_torchvision_detector_by_name_and_its_weights_for_other_classes() -> None:
    spec = DetectorSpec("fasterrcnn_mobilenet_v3_large_320_fpn", 5, SIZE, SIZE)
    model = build_detector(spec)
    coco_like = build_detector(DetectorSpec(spec.name, 90, SIZE, SIZE)).state_dict()  # a detector trained on 90 classes
    replaced = load_detector_weights(model, coco_like, "coco.pth")
    assert replaced and all(k.startswith("roi_heads.box_predictor.") for k in replaced)
    assert torch.equal(model.state_dict()["backbone.body.0.0.weight"], coco_like["backbone.body.0.0.weight"])
    ssd = build_detector(DetectorSpec("ssdlite320_mobilenet_v3_large", 2))
    assert ssd is not None


def test_bad_names_and_weights() -> None:
    with pytest.raises(ConfigError, match="did you mean fasterrcnn"):
        build_detector(DetectorSpec("fastercnn:resnet18", 2))
    with pytest.raises(ConfigError, match="did you mean"):
        build_detector(DetectorSpec("fasterrcnn:tf_efficientnet_lite", 2))
    with pytest.raises(ConfigError, match="unknown detector"):
        build_detector(DetectorSpec("fasterrcnn_resnet50", 2))
    model = build_detector(DetectorSpec("fasterrcnn:tf_efficientnet_lite0", 2, SIZE, SIZE))
    other = build_detector(DetectorSpec("retinanet:tf_efficientnet_lite0", 2, SIZE, SIZE)).state_dict()
    with pytest.raises(WeightsError, match="does not match this detector"):
        load_detector_weights(model, other, "retina.pth")
