"""The model factory: deepfit's own small networks honour their options, and any timm or torchvision
architecture builds and trains by name."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from deepfit import ImageClassifier
from deepfit.errors import ConfigError
from deepfit.models import ModelSpec, build_model, create_model
from deepfit.models.factory import IMAGENET_MEAN, default_preprocessing, resolve_name
from deepfit.models.weights import classifier_module


def count(model: nn.Module, kind: type[nn.Module]) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


@pytest.mark.parametrize(("depth", "width", "activation", "act_type"), [
    (1, 8, "relu", nn.ReLU), (2, 4, "gelu", nn.GELU), (3, 8, "silu", nn.SiLU),
])
def test_cnn_honours_depth_width_and_activation(depth: int, width: int, activation: str, act_type: type) -> None:
    model = create_model("cnn", 5, model_args={"depth": depth, "width": width, "activation": activation}).model
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == depth * 2  # two convolutions per stage by default
    assert [c.out_channels for c in convs] == [width * 2**i for i in range(depth) for _ in range(2)]
    assert count(model, nn.MaxPool2d) == depth - 1
    assert count(model, act_type) == depth * 2
    other = {nn.ReLU, nn.GELU, nn.SiLU} - {act_type}
    assert not any(count(model, t) for t in other)
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 5)
    assert classifier_module(model) is model.fc and model.fc.in_features == width * 2 ** (depth - 1)


def test_cnn_other_options() -> None:
    model = create_model("cnn", 3, drop_rate=0.3, model_args={"widths": [4, 12], "convs_per_stage": 1, "batch_norm": False}).model
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 12]
    assert all(c.bias is not None for c in convs)  # no batch norm: the convolutions keep their bias
    assert count(model, nn.BatchNorm2d) == 0
    assert model.head_drop.p == pytest.approx(0.3)
    model.train()
    torch.manual_seed(0)
    x = torch.randn(4, 3, 8, 8)
    assert not torch.equal(model(x), model(x))  # dropout is active in training
    model.eval()
    assert torch.equal(model(x), model(x))
    with pytest.raises(ConfigError, match="unknown activation 'swishy'"):
        create_model("cnn", 3, model_args={"activation": "swishy"})


def test_fastnet_maps_32px_images_to_class_scores() -> None:
    created = create_model("fastnet", 7)
    model = created.model.eval()
    assert created.preprocessing.image_size == 32
    out = model(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, 7) and torch.isfinite(out).all()
    assert model.forward_features(torch.randn(3, 3, 32, 32)).shape == (3, 128)
    narrow = create_model("fastnet", 2, model_args={"widths": [8, 16, 24]}).model.eval()
    assert narrow(torch.randn(1, 3, 32, 32)).shape == (1, 2)
    assert narrow.fc.in_features == 24


def test_names_resolve_to_their_source() -> None:
    assert resolve_name("cnn") == ("deepfit", "cnn")
    assert resolve_name("resnet18") == ("timm", "resnet18")  # timm first for names both have
    assert resolve_name("tv/resnet18") == ("torchvision", "resnet18")
    assert resolve_name("torchvision/mobilenet_v2") == ("torchvision", "mobilenet_v2")
    assert resolve_name("timm/resnet18") == ("timm", "resnet18")
    with pytest.raises(ConfigError, match="unknown model source 'tf'"):
        resolve_name("tf/resnet18")


def test_default_preprocessing_of_pretrained_architectures() -> None:
    tv = default_preprocessing(ModelSpec("torchvision", "resnet18", 2))
    assert tv.image_size == 224 and tv.mean == pytest.approx(IMAGENET_MEAN)
    assert tv.resize_size == 256  # IMAGENET1K_V1: resize 256, centre crop 224
    lite = default_preprocessing(ModelSpec("timm", "tf_efficientnet_lite0", 2))
    assert lite.image_size == 224 and lite.mean == pytest.approx((0.5, 0.5, 0.5))


def test_rebuilt_model_matches_the_spec() -> None:
    spec = ModelSpec("deepfit", "cnn", 4, drop_rate=0.2, model_args={"depth": 1, "width": 8})
    model = build_model(spec)
    assert model.fc.out_features == 4 and model.head_drop.p == pytest.approx(0.2)


@pytest.mark.parametrize(("name", "source"), [("resnet18", "timm"), ("tv/resnet18", "torchvision")])
def test_library_architectures_train_from_scratch(name: str, source: str, shapes_data: Path, tmp_path: Path) -> None:
    clf = ImageClassifier(name, image_size=32, epochs=1, batch_size=64, workers=0, output=str(tmp_path), name="r")
    clf.fit(shapes_data)
    meta = json.loads((clf.run_dir / "best.json").read_text())
    assert meta["model"]["source"] == source and meta["model"]["name"] == "resnet18"
    assert meta["model"]["num_classes"] == 3
    assert meta["preprocessing"]["image_size"] == 32
    with (clf.run_dir / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and math.isfinite(float(rows[0]["train_loss"]))
    assert [p.label in clf.classes for p in clf.predict(shapes_data / "ring")] == [True] * 20


def test_library_architecture_takes_one_optimisation_step() -> None:
    """torchvision and timm models are their library's own modules: a plain step changes their weights."""
    for name in ("tv/resnet18", "resnet18"):
        model = create_model(name, 3).model
        before = {k: v.clone() for k, v in model.state_dict().items()}
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 0]))
        loss.backward()
        optimizer.step()
        changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
        assert any("fc" in k for k in changed) and any("conv1" in k for k in changed), name


def test_fastnet_whitening_init_decorrelates_patches() -> None:
    """After init_from_data, the stem's paired filters respond to the data's patches with unit variance."""
    import torch

    from deepfit.models.small import FastNet

    gen = torch.Generator().manual_seed(0)
    base = torch.randn(64, 3, 16, 16, generator=gen)
    images = base + 0.8 * base.roll(1, dims=3)  # neighbouring pixels correlated, as in photos
    model = FastNet(num_classes=3)
    model.init_from_data(images)
    w = model.stem[0].weight  # (16, 3, 3, 3)
    half = w.shape[0] // 2
    assert torch.allclose(w[:half], -w[half:])
    responses = torch.nn.functional.conv2d(images, w[:half], padding=1)[..., 1:-1, 1:-1]  # interior pixels
    variances = responses.transpose(0, 1).reshape(half, -1).var(dim=1)
    assert torch.allclose(variances, torch.ones(half), atol=0.15), variances
