"""FeatureExtractor: a network cut at one layer gives (B, D) features without leaving hooks behind."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deepfit.errors import ConfigError
from deepfit.models import create_model
from deepfit.models.features import PRE_LOGITS, FeatureExtractor, layer_names


def _model(name: str, num_classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, num_classes).model.eval()


def _no_hooks(module: nn.Module) -> bool:
    return not module._forward_hooks and not module._forward_pre_hooks


def test_layer_names_skip_the_root() -> None:
    model = _model("resnet18")
    names = layer_names(model)
    assert "" not in names
    assert names[:2] == ["conv1", "bn1"] and "layer2" in names and "fc" in names


def test_timm_default_is_pre_logits() -> None:
    model = _model("resnet18")
    x = torch.randn(2, 3, 64, 64)
    fx = FeatureExtractor(model)
    assert fx.layer == PRE_LOGITS
    with torch.inference_mode():
        feats = fx(x)
        expected = model.forward_head(model.forward_features(x), pre_logits=True)
    assert feats.shape == (2, 512) and feats.dtype == torch.float32
    torch.testing.assert_close(feats, expected)


def test_torchvision_resnet_default_is_pooled_avgpool() -> None:
    model = _model("tv/resnet18")
    x = torch.randn(2, 3, 64, 64)
    pooled: list[torch.Tensor] = []
    handle = model.avgpool.register_forward_hook(lambda _m, _a, out: pooled.append(out.flatten(1)))
    with torch.inference_mode():
        model(x)
    handle.remove()
    with torch.inference_mode():
        feats = FeatureExtractor(model)(x)
    assert feats.shape == (2, 512)
    torch.testing.assert_close(feats, pooled[0])
    assert _no_hooks(model.fc) and _no_hooks(model.avgpool)


def test_torchvision_vgg_default_is_penultimate_4096() -> None:
    model = _model("tv/vgg11")
    with torch.inference_mode():
        feats = FeatureExtractor(model)(torch.randn(1, 3, 64, 64))
    assert feats.shape == (1, 4096)
    assert all(_no_hooks(m) for m in model.classifier.modules())


def test_fastnet_default_is_pre_logits() -> None:
    model = _model("fastnet", 10)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        feats = FeatureExtractor(model, PRE_LOGITS)(x)
        expected = model.forward_head(model.forward_features(x), pre_logits=True)
    assert feats.dim() == 2 and feats.shape[0] == 2
    torch.testing.assert_close(feats, expected.float())


def test_named_layer_is_spatial_mean_and_stops_early() -> None:
    model = _model("resnet18")
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    outputs: list[torch.Tensor] = []
    h = model.layer2.register_forward_hook(lambda _m, _a, out: outputs.append(out))
    with torch.inference_mode():
        model(x)
    h.remove()

    later_calls = []
    counter = model.layer3.register_forward_hook(lambda *_: later_calls.append(1))
    try:
        with torch.inference_mode():
            feats = FeatureExtractor(model, "layer2")(x)
    finally:
        counter.remove()
    assert feats.shape == (2, 128)
    torch.testing.assert_close(feats, outputs[0].mean(dim=(2, 3)))
    assert later_calls == []
    assert _no_hooks(model.layer2) and _no_hooks(model.layer3)


def test_unknown_layer_suggests_close_names() -> None:
    model = _model("resnet18")
    with pytest.raises(ConfigError) as err:
        FeatureExtractor(model, "layer22")
    msg = str(err.value)
    assert "\n" not in msg
    assert "layer2" in msg and type(model).__name__ in msg
    assert "did you mean" in msg and "available layers:" in msg and "more" in msg


def test_model_stays_usable_and_state_dict_unchanged() -> None:
    model = _model("resnet18", 5)
    keys = set(model.state_dict())
    fx = FeatureExtractor(model, "layer1")
    with torch.inference_mode():
        fx(torch.randn(2, 3, 64, 64))
        FeatureExtractor(model)(torch.randn(2, 3, 64, 64))
        logits = model(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 5)
    assert set(model.state_dict()) == keys
    assert all(_no_hooks(m) for m in model.modules())
