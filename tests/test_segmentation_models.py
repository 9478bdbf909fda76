"""Segmenter factory: U-Net, DeepLabV3, FCN and LR-ASPP on torchvision and timm encoders, torchvision's own
segmentation models, encoder weights from classification files, and whole-segmenter weights for other classes."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import load_file, save_file

from deepfit.errors import ConfigError, WeightsError
from deepfit.models.factory import IMAGENET_MEAN, IMAGENET_STD
from deepfit.tasks.segment.model import (
    KINDS,
    Segmenter,
    SegmenterSpec,
    build_segmenter,
    is_segmenter_state,
    list_segmenters,
    load_segmenter_weights,
)

K = 3
H, W = 65, 47  # odd, and no multiple of 32 either way


def _logits(model: Segmenter, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("encoder", ["tv/resnet18", "tv/mobilenet_v3_small", "mobilenetv3_small_050"])
@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_gives_logits_at_the_input_size(kind: str, encoder: str) -> None:
    torch.manual_seed(0)
    model = build_segmenter(SegmenterSpec(f"{kind}:{encoder}", K))
    model.train()
    out = model(torch.rand(2, 3, H, W))  # batch 2: DeepLabV3's image pooling has a BatchNorm
    assert out.shape == (2, K, H, W)
    out.sum().backward()
    assert all(p.grad is not None for p in model.decoder.parameters())
    for size in ((H, W), (W, H), (32, 96), (40, 33)):
        logits = _logits(model, torch.rand(1, 3, *size))
        assert logits.shape == (1, K, *size) and torch.isfinite(logits).all()


def test_encoders_report_their_maps_fine_to_coarse() -> None:
    tv = build_segmenter(SegmenterSpec("unet:tv/mobilenet_v2", K)).encoder
    assert tv.channels == [16, 24, 32, 96, 1280] and tv.reductions == [2, 4, 8, 16, 32]
    resnet = build_segmenter(SegmenterSpec("unet:tv/resnet18", K)).encoder
    assert resnet.channels == [64, 64, 128, 256, 512] and resnet.reductions == [2, 4, 8, 16, 32]
    maps = resnet(torch.rand(1, 3, H, W))
    assert [m.shape[1] for m in maps] == resnet.channels
    assert [m.shape[-2] for m in maps] == [33, 17, 9, 5, 3]  # each halving rounds up: why skips are met at their size
    timm_encoder = build_segmenter(SegmenterSpec("fcn:tf_efficientnet_lite0", K)).encoder
    assert timm_encoder.channels == [16, 24, 40, 112, 320] and timm_encoder.reductions == [2, 4, 8, 16, 32]


def test_the_encoder_normalisation_is_applied_inside_forward() -> None:
    model = build_segmenter(SegmenterSpec("unet:tf_efficientnet_lite0", K))
    assert model.mean.tolist() == [0.5, 0.5, 0.5] and model.std.tolist() == [0.5, 0.5, 0.5]
    assert {"mean", "std"} <= set(model.state_dict())  # saved with the weights
    tv = build_segmenter(SegmenterSpec("unet:tv/mobilenet_v3_small", K))
    assert torch.allclose(tv.mean, torch.tensor(IMAGENET_MEAN)) and torch.allclose(tv.std, torch.tensor(IMAGENET_STD))
    timm_resnet = build_segmenter(SegmenterSpec("lraspp:mobilenetv3_small_050", K))
    assert torch.allclose(timm_resnet.mean, torch.tensor(IMAGENET_MEAN))
    x = torch.rand(1, 3, H, W)
    tv.eval()
    with torch.no_grad():
        by_hand = tv.decoder(tv.encoder((x - tv.mean[:, None, None]) / tv.std[:, None, None]), (H, W))
        assert torch.allclose(tv(x), by_hand, atol=1e-6)
        assert not torch.allclose(tv.decoder(tv.encoder(x), (H, W)), by_hand, atol=1e-3)


def test_shared_mobilenet_v2_weights_load_into_a_unet(weights_dir: Path) -> None:
    file = weights_dir / "mobilenet_v2.safetensors"
    if not file.is_file():
        pytest.skip(f"{file} is absent")
    state = load_file(str(file))
    model = build_segmenter(SegmenterSpec("unet:tv/mobilenet_v2", K), encoder_weights=file)
    assert torch.equal(model.encoder.features[0][0].weight, state["features.0.0.weight"])
    assert torch.equal(model.encoder.features[18][1].running_var, state["features.18.1.running_var"])
    assert _logits(model, torch.rand(1, 3, H, W)).shape == (1, K, H, W)


def test_shared_efficientnet_lite0_weights_load_into_a_unet(weights_dir: Path) -> None:
    file = weights_dir / "tf_efficientnet_lite0.safetensors"
    if not file.is_file():
        pytest.skip(f"{file} is absent")
    state = load_file(str(file))
    model = build_segmenter(SegmenterSpec("unet:tf_efficientnet_lite0", K), encoder_weights=file)
    assert torch.equal(model.encoder.body.conv_stem.weight, state["conv_stem.weight"])
    assert torch.equal(model.encoder.body.blocks[6][0].conv_pwl.weight, state["blocks.6.0.conv_pwl.weight"])
    assert model.mean.tolist() == [0.5, 0.5, 0.5]


def test_a_wrong_weights_file_is_an_error(weights_dir: Path, tmp_path: Path) -> None:
    file = weights_dir / "mobilenet_v2.safetensors"
    if not file.is_file():
        pytest.skip(f"{file} is absent")
    with pytest.raises(WeightsError, match="does not fit"):
        build_segmenter(SegmenterSpec("unet:tv/resnet18", K), encoder_weights=file)
    with pytest.raises(WeightsError, match="does not fit"):
        build_segmenter(SegmenterSpec("unet:tf_efficientnet_lite0", K), encoder_weights=file)
    with pytest.raises(WeightsError, match="does not fit"):
        build_segmenter(SegmenterSpec("lraspp_mobilenet_v3_large", K), encoder_weights=file)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not tensors at all")
    with pytest.raises(WeightsError):
        build_segmenter(SegmenterSpec("unet:tv/mobilenet_v2", K), encoder_weights=junk)


def test_frozen_encoder_trains_only_the_decoder() -> None:
    for name in ("unet:tv/mobilenet_v3_small", "deeplabv3:mobilenetv3_small_050", "lraspp_mobilenet_v3_large"):
        model = build_segmenter(SegmenterSpec(name, K), freeze_encoder=True)
        assert not any(p.requires_grad for p in model.encoder.parameters()), name
        assert all(p.requires_grad for p in model.decoder.parameters()), name
        model.train()
        model(torch.rand(2, 3, H, W)).sum().backward()
        assert all(p.grad is None for p in model.encoder.parameters())
    free = build_segmenter(SegmenterSpec("unet:tv/mobilenet_v3_small", K))
    assert all(p.requires_grad for p in free.parameters())


def test_a_torchvision_segmenter_by_name() -> None:
    model = build_segmenter(SegmenterSpec("lraspp_mobilenet_v3_large", K))
    assert isinstance(model.encoder, torchvision.models._utils.IntermediateLayerGetter)
    assert torch.allclose(model.mean, torch.tensor(IMAGENET_MEAN))
    assert _logits(model, torch.rand(1, 3, H, W)).shape == (1, K, H, W)
    assert SegmenterSpec("lraspp_mobilenet_v3_large", K).kind == "lraspp"
    assert SegmenterSpec("unet:tv/resnet18", K).kind == "unet"


def test_a_torchvision_segmenter_backbone_from_a_classification_state_dict(tmp_path: Path) -> None:
    torch.manual_seed(1)
    state = torchvision.models.mobilenet_v3_large().state_dict()  # what an ImageNet file of it holds
    file = tmp_path / "mobilenet_v3_large.safetensors"
    save_file(state, str(file))
    model = build_segmenter(SegmenterSpec("lraspp_mobilenet_v3_large", K), encoder_weights=file)
    backbone = model.encoder.state_dict()
    assert torch.equal(backbone["0.0.weight"], state["features.0.0.weight"])
    assert torch.equal(backbone["16.1.running_mean"], state["features.16.1.running_mean"])
    assert all(torch.equal(v, state[f"features.{k}"]) for k, v in backbone.items())


@pytest.mark.slow
def test_fcn_resnet50_backbone_from_a_classification_state_dict(tmp_path: Path) -> None:
    state = torchvision.models.resnet50().state_dict()
    file = tmp_path / "resnet50.safetensors"
    save_file(state, str(file))
    model = build_segmenter(SegmenterSpec("fcn_resnet50", K), encoder_weights=file)
    assert all(torch.equal(v, state[k]) for k, v in model.encoder.state_dict().items())
    assert _logits(model, torch.rand(1, 3, H, W)).shape == (1, K, H, W)


# a U-Net's classifier, LR-ASPP's two class convs, DeepLabV3's Sequential head ending in its class conv
@pytest.mark.parametrize("name", ["unet:tv/mobilenet_v3_small", "lraspp:mobilenetv3_small_050", "deeplabv3:tv/mobilenet_v3_small"])
def test_whole_segmenter_weights_for_other_classes(name: str, caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    other = build_segmenter(SegmenterSpec(name, 7)).state_dict()  # another run, 7 classes
    model = build_segmenter(SegmenterSpec(name, K))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with caplog.at_level(logging.INFO, logger="deepfit"):
        replaced = load_segmenter_weights(model, other, "other-run/best.pt")
    assert replaced and all(k.startswith(model.class_layers) for k in replaced)
    assert len(replaced) == 2 * len(model.class_layers)  # weight and bias of each class layer
    assert all(k in caplog.text for k in replaced)
    now = model.state_dict()
    for key, value in now.items():
        if key in replaced:
            assert value.shape[0] == K and torch.equal(value, before[key])  # left as built
        else:
            assert torch.equal(value, other[key]), key
    assert _logits(model, torch.rand(1, 3, H, W)).shape == (1, K, H, W)
    same = build_segmenter(SegmenterSpec(name, K))
    assert load_segmenter_weights(same, model.state_dict(), "same.pt") == []
    assert all(torch.equal(v, now[k]) for k, v in same.state_dict().items())


def test_whole_weights_of_another_network_are_an_error() -> None:
    model = build_segmenter(SegmenterSpec("unet:tv/mobilenet_v3_small", K))
    for name in ("fcn:tv/mobilenet_v3_small", "unet:tv/resnet18"):
        with pytest.raises(WeightsError, match="does not match this segmenter"):
            load_segmenter_weights(model, build_segmenter(SegmenterSpec(name, K)).state_dict(), f"{name}.pt")


def test_is_segmenter_state(weights_dir: Path) -> None:
    state = build_segmenter(SegmenterSpec("unet:tv/mobilenet_v3_small", K)).state_dict()
    assert is_segmenter_state(state)
    assert is_segmenter_state({f"module.{k}": v for k, v in state.items()})  # saved from DDP
    assert not is_segmenter_state(torchvision.models.mobilenet_v3_small().state_dict())
    vit_like = {"encoder.layers.0.weight": torch.zeros(3), "heads.head.weight": torch.zeros(2, 3)}  # torchvision's ViT
    assert not is_segmenter_state(vit_like)
    assert not is_segmenter_state({})
    file = weights_dir / "tf_efficientnet_lite0.safetensors"
    if file.is_file():
        assert not is_segmenter_state(load_file(str(file)))


def test_unknown_names_are_config_errors_with_suggestions() -> None:
    with pytest.raises(ConfigError, match="did you mean unet"):
        build_segmenter(SegmenterSpec("uent:resnet18", K))
    with pytest.raises(ConfigError, match="did you mean tf_efficientnet_lite"):
        build_segmenter(SegmenterSpec("unet:tf_efficientnet_lite", K))
    with pytest.raises(ConfigError, match="did you mean resnet18"):
        build_segmenter(SegmenterSpec("unet:tv/resnet19", K))
    with pytest.raises(ConfigError, match="not supported"):
        build_segmenter(SegmenterSpec("unet:tv/vgg11", K))
    with pytest.raises(ConfigError, match=r"did you mean deeplabv3_resnet50.*kinds: unet"):
        build_segmenter(SegmenterSpec("deeplabv3_resnet5", K))
    with pytest.raises(ConfigError, match="not both"):
        build_segmenter(SegmenterSpec("unet:tv/resnet18", K), encoder_weights="x.pth", pretrained_encoder=True)
    with pytest.raises(ConfigError, match="at least one class"):
        build_segmenter(SegmenterSpec("unet:tv/resnet18", 0))


def test_list_segmenters() -> None:
    names = list_segmenters()
    assert {"deeplabv3_resnet50", "fcn_resnet101", "lraspp_mobilenet_v3_large"} <= set(names)
    assert {f"{k}:tv/mobilenet_v2" for k in KINDS} <= set(names)
    assert "unet:tv/resnet18" in names and "unet:<timm model>" in names
    assert len(names) == len(set(names))


def test_deeplabv3_trains_on_a_batch_of_one_image() -> None:
    """torchvision's ASPP image pooling raises on one image in training; ours uses the running statistics then."""
    model = build_segmenter(SegmenterSpec("deeplabv3:tv/mobilenet_v2", 3)).train()
    pooled = next(m for m in model.modules() if type(m).__name__ == "_PooledBatchNorm")
    before = pooled.running_mean.clone()
    model(torch.rand(1, 3, 64, 64)).sum().backward()
    assert torch.equal(pooled.running_mean, before)  # one image: running statistics used, not updated
    model(torch.rand(2, 3, 64, 64))
    assert not torch.equal(pooled.running_mean, before)  # two images: a normal batch-norm step
    assert "decoder.head.0.convs.4.2.running_mean" in model.state_dict()  # the keys of torchvision's BatchNorm2d
