"""Feature extraction and `compare` on sound: MFCC statistics (the classical baseline), a trained sound run cut at a
layer, and an ImageNet network on spectrograms, each a run that predicts from raw recordings like a trained one."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import deepfit
from deepfit.cli import main
from deepfit.errors import ConfigError
from deepfit.modalities.sound.frontend import FrontEndConfig
from deepfit.tasks.classify.sound import discover_labelled
from deepfit.tasks.classify.sound_model import MFCCStatistics
from deepfit.workflows.compare import compare
from test_sound_classify import RATE, make_recordings

# labels from the names, speakers left out of the pattern: a stratified split over every speaker
PATTERN = r"(?P<label>[a-z]+)_s\d_\d+\.wav"


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_recordings(tmp_path_factory.mktemp("sound-features") / "recordings")


@pytest.fixture(scope="module")
def sound_run(recordings: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = tmp_path_factory.mktemp("sound-run")
    deepfit.SoundClassifier("soundcnn", model_args={"depth": 2, "width": 8}, epochs=4, lr=0.003, batch_size=16, workers=0,
                            output=str(runs), name="cnn").fit(recordings, label_pattern=PATTERN)
    return runs / "cnn"


def test_mfcc_statistics_are_mean_spread_and_movement_of_each_coefficient_per_channel() -> None:
    layer = MFCCStatistics(FrontEndConfig(sample_rate=RATE, n_mels=40, n_mfcc=20))
    t = torch.arange(RATE // 2) / RATE
    wave = torch.stack([torch.sin(2 * torch.pi * 440 * t), 0.1 * torch.randn(len(t))])[:, None]  # (2, 1, T)
    out = layer(wave)
    assert out.shape == (2, 60) and torch.isfinite(out).all()
    assert out[0, 40:].abs().mean() < out[1, 40:].abs().mean()  # a steady tone moves less than noise from frame to frame
    with pytest.raises(ConfigError, match="n_mfcc"):
        MFCCStatistics(FrontEndConfig(sample_rate=RATE))


def test_mfcc_baseline_is_a_sound_run_that_loads_predicts_and_evaluates(recordings: Path, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    assert main(["features", str(recordings), "--label-pattern", PATTERN, "--model", "mfcc", "--output", str(runs),
                 "--name", "mfcc", "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "54 clips x 60 dimensions" in out and "test accuracy" in out
    run = runs / "mfcc"
    config = json.loads((run / "config.json").read_text())
    assert config["modality"] == "sound" and config["preprocessing"]["sound"]["sample_rate"] == RATE
    assert json.loads((run / "test_metrics.json").read_text())["accuracy"] >= 0.85  # tones: MFCCs tell them apart

    model = deepfit.load(run)
    assert isinstance(model, deepfit.SoundClassifier)
    assert model.predict(recordings / "high_s0_0.wav").label == "high"
    wave = np.sin(2 * np.pi * 300 * np.arange(RATE // 2) / RATE).astype(np.float32)
    assert model.predict((wave, RATE)).label == "low"  # samples with their rate, as a trained sound network takes
    assert main(["evaluate", str(run)]) == 0 and "test accuracy" in capsys.readouterr().out

    kernel = deepfit.fit_features(recordings, "mfcc", classifier="rbf", label_pattern=PATTERN, output=str(runs),
                                  name="rbf", workers=0)  # a kernel SVM: its support vectors travel in the checkpoint
    rows = kernel.features
    decided = deepfit.load(kernel.run_dir).predictor.predict_proba([str(p) for p in rows.paths]).argmax(1)
    np.testing.assert_array_equal(decided, kernel.classifier.estimator.predict(rows.features))

    again = deepfit.extract_features(recordings, "handmade", label_pattern=PATTERN, workers=0)
    assert again.reused == len(again) == 54  # every clip's vector from the cache, keyed by its bytes
    assert again.sound["samples"] == config["preprocessing"]["sound"]["samples"]


def test_features_of_a_trained_sound_run_at_any_layer(recordings: Path, sound_run: Path, tmp_path: Path) -> None:
    result = deepfit.fit_features(recordings, str(sound_run), label_pattern=PATTERN, classifier="knn",
                                  output=str(tmp_path), name="embedding", workers=0)
    assert result.features.layer == "pre_logits" and result.evaluation is not None
    trained = json.loads((sound_run / "config.json").read_text())["sound"]
    assert result.features.sound["samples"] == trained["samples"]  # clips read as the network was trained to hear them
    assert deepfit.load(result.run_dir).predict(recordings / "mid_s1_2.wav").label in ("low", "mid", "high")

    early = deepfit.extract_features(recordings, str(sound_run), layer="body.features.0", label_pattern=PATTERN, workers=0)
    assert early.features.shape == (54, 8)  # the first block's 8 channels, pooled
    with pytest.raises(ConfigError, match="no layer 'body.featurs.0'.*did you mean body.features.0"):
        deepfit.extract_features(recordings, str(sound_run), layer="body.featurs.0", label_pattern=PATTERN)
    with pytest.raises(ConfigError, match="hears clips as it was trained to: leave out --sample-rate 16000"):
        deepfit.extract_features(recordings, str(sound_run), sample_rate=16000, label_pattern=PATTERN)


def test_an_imagenet_network_on_spectrograms_has_its_normalisation_measured_on_training_clips(
        recordings: Path, tmp_path: Path, weights_dir: Path) -> None:
    weights = weights_dir / "tf_efficientnet_lite0.safetensors"
    result = deepfit.fit_features(recordings, "tf_efficientnet_lite0", weights=str(weights), label_pattern=PATTERN,
                                  output=str(tmp_path), name="lite0", workers=0)
    assert result.features.features.shape == (54, 1280)
    norm = deepfit.load(result.run_dir).predictor.model.features.model.norm  # reloaded from the checkpoint
    assert norm.running_mean.abs().mean() > 1.0  # mean decibels of each band, not the untrained zeros
    assert norm.running_var.min() > 0 and not torch.allclose(norm.running_var, torch.ones_like(norm.running_var))
    rows = list(csv.DictReader((result.run_dir / "test_predictions.csv").open()))
    assert rows and all(Path(r["path"]).suffix == ".wav" for r in rows)


def test_sound_features_refuse_what_would_give_random_or_unused_numbers(recordings: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="untrained soundcnn.*train one first"):
        deepfit.extract_features(recordings, "soundcnn", label_pattern=PATTERN)
    with pytest.raises(ConfigError, match="untrained resnet18.*--weights"):
        deepfit.extract_features(recordings, "resnet18", label_pattern=PATTERN)
    with pytest.raises(ConfigError, match="hand-made features have no layers.*--weights"):
        deepfit.extract_features(recordings, "mfcc", weights="x.safetensors", label_pattern=PATTERN)
    with pytest.raises(ConfigError, match="n_mfcc"):
        deepfit.extract_features(recordings, "mfcc", frontend={"n_mfcc": 0}, label_pattern=PATTERN)


def test_compare_on_sound_puts_mfcc_against_a_trained_run_and_soundcnn_from_scratch(
        recordings: Path, sound_run: Path, tmp_path: Path) -> None:
    catalog, sound = discover_labelled(recordings, "auto", label_pattern=PATTERN)
    assert sound
    result = compare(recordings, models=[str(sound_run)], fractions=[0.5, 1.0], scratch=True, scratch_epochs=2,
                     output=tmp_path, name="cmp", workers=0, catalog=catalog)
    approaches = {r["approach"] for r in result.rows}
    assert approaches == {"MFCC statistics + rbf", "cnn features + svm", "soundcnn from scratch"}
    assert all(r["fraction"] in (0.5, 1.0) for r in result.rows) and len(result.rows) == 6
    assert "test clips" in result.verdict[0] and result.report.is_file()
    scratch_run = json.loads((tmp_path / "cmp" / "runs" / "soundcnn-from-scratch-100pct" / "config.json").read_text())
    mfcc = deepfit.extract_features(recordings, "mfcc", label_pattern=PATTERN, workers=0)
    # every approach hears the clips at one rate and length, chosen once from the training split
    assert scratch_run["sound"]["sample_rate"] == mfcc.sound["sample_rate"] == RATE
