"""Transfer learning offline from the shared ImageNet weights: a timm model fine-tuned on a small slice of
the ants/bees photos (head phase, then the whole network), and torchvision's MobileNetV2 loaded from a file."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from deepfit.cli import main
from deepfit.models import create_model
from deepfit.models.factory import IMAGENET_MEAN, IMAGENET_STD


def test_fine_tune_efficientnet_lite0_on_a_slice_of_hymenoptera(
    hymenoptera_slice: Path, weights_dir: Path, tmp_path: Path,
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str],
) -> None:
    weights = weights_dir / "tf_efficientnet_lite0.safetensors"
    caplog.set_level(logging.INFO, logger="deepfit")
    rc = main([
        "train", str(hymenoptera_slice), "--model", "tf_efficientnet_lite0", "--weights", str(weights),
        "--epochs", "2", "--head-epochs", "1", "--batch-size", "8", "--output", str(tmp_path / "runs"), "--name", "t",
    ])
    assert rc == 0
    run = tmp_path / "runs" / "t"
    messages = [r.getMessage() for r in caplog.records]
    replaced = [m for m in messages if "classifier replaced" in m]
    assert len(replaced) == 1 and str(weights) in replaced[0] and "(2, 1280)" in replaced[0]

    with (run / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["epoch"], r["phase"]) for r in rows] == [("1", "head"), ("2", "full")]
    # ImageNet features separate ants from bees: a linear head alone gets most of them right in one epoch
    assert float(rows[0]["val_acc"]) > 0.6

    best = json.loads((run / "best.json").read_text())
    prep = best["preprocessing"]
    assert prep["image_size"] == 224  # the model's pretrained config; the user gave no --image-size
    assert prep["mean"] == [0.5, 0.5, 0.5] and prep["std"] == [0.5, 0.5, 0.5]
    assert best["model"]["source"] == "timm" and best["model"]["name"] == "tf_efficientnet_lite0"
    assert best["pretrained_from"] == str(weights.resolve())
    config = json.loads((run / "config.json").read_text())
    assert config["image_size"] is None and config["preprocessing"] == prep
    assert config["classes"] == ["ants", "bees"]

    # no test/ folder: evaluate falls back to the validation split, and says so
    out = capsys.readouterr().out
    assert "val accuracy" in out
    metrics = json.loads((run / "val_metrics.json").read_text())
    assert metrics["num_samples"] == 16
    assert "No separate test split" in (run / "report.html").read_text()


def test_mobilenet_v2_from_a_torchvision_weights_file(weights_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = weights_dir / "mobilenet_v2.safetensors"
    caplog.set_level(logging.INFO, logger="deepfit")
    created = create_model("tv/mobilenet_v2", 3, weights=path)
    assert created.spec.source == "torchvision" and created.spec.name == "mobilenet_v2"
    prep = created.preprocessing
    assert prep.image_size == 224
    assert prep.mean == pytest.approx(IMAGENET_MEAN) and prep.std == pytest.approx(IMAGENET_STD)

    file_state = load_file(str(path))
    state = created.model.state_dict()
    head = {"classifier.1.weight", "classifier.1.bias"}
    assert set(file_state) == set(state)
    for key, tensor in file_state.items():
        if key not in head:
            assert torch.equal(state[key], tensor), key
    assert tuple(file_state["classifier.1.weight"].shape) == (1000, 1280)
    assert tuple(state["classifier.1.weight"].shape) == (3, 1280)
    assert not state["classifier.1.weight"].any() and not state["classifier.1.bias"].any()  # zero-initialised
    assert any("classifier replaced" in r.getMessage() for r in caplog.records)

    created.model.eval()
    with torch.no_grad():
        out = created.model(torch.randn(2, 3, 224, 224))
    assert out.shape == (2, 3)
    assert torch.allclose(out, torch.zeros_like(out))  # a zero head predicts the uniform distribution


def test_pretrained_by_name_goes_through_torchvisions_downloader(
    weights_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """--pretrained asks torchvision's weights enum for the official weights (its own cached download);
    here the 'download' is served from the shared file, since this machine has no internet."""
    from torchvision.models._api import WeightsEnum

    requested = []

    def fake_download(self: WeightsEnum, *args: object, **kwargs: object) -> dict:
        requested.append(self.url)
        return load_file(str(weights_dir / "mobilenet_v2.safetensors"))

    monkeypatch.setattr(WeightsEnum, "get_state_dict", fake_download)
    monkeypatch.setattr("deepfit.models.weights.network_reachable", lambda *a, **k: True)  # the fake is 'online'
    with caplog.at_level(logging.INFO, logger="deepfit"):
        created = create_model("tv/mobilenet_v2", 3, pretrained=True)
    assert requested and requested[0].startswith("https://download.pytorch.org/models/mobilenet_v2")
    assert "classifier replaced" in caplog.text
    assert created.pretrained_source == "torchvision:mobilenet_v2:pretrained"
    head = created.model.classifier[-1]
    assert head.out_features == 3 and torch.count_nonzero(head.weight) == 0


def test_pretrained_without_internet_says_to_use_a_weights_file(monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib.error

    from torchvision.models._api import WeightsEnum

    from deepfit.errors import WeightsError

    def offline(*args: object, **kwargs: object) -> dict:
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    with pytest.raises(WeightsError, match="--weights FILE"):
        create_model("tv/resnet18", 2, pretrained=True)


def test_folded_batch_norm_statistics_stay_frozen_in_training(weights_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The shared mobilenet_v2 file comes from TFLite: its batch-norm layers hold identity statistics (the
    normalisation is folded into the convolutions). Batch statistics in train mode would undo that, so
    those layers stay in eval mode; a normal checkpoint (efficientnet-lite0) keeps trainable statistics."""
    from deepfit.engine.trainer import keep_frozen_norms_in_eval

    with caplog.at_level(logging.WARNING, logger="deepfit"):
        folded = create_model("tv/mobilenet_v2", 2, weights=weights_dir / "mobilenet_v2.safetensors").model
    assert "52 batch-norm layers have identity statistics" in caplog.text
    folded.train()
    keep_frozen_norms_in_eval(folded)
    norms = [m for m in folded.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and not any(m.training for m in norms)

    normal = create_model("tf_efficientnet_lite0", 2, weights=weights_dir / "tf_efficientnet_lite0.safetensors").model
    normal.train()
    keep_frozen_norms_in_eval(normal)
    assert all(m.training for m in normal.modules() if isinstance(m, torch.nn.BatchNorm2d))
