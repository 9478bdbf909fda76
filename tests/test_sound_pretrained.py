"""Pretrained audio networks from `transformers` (`--model hf:NAME_OR_FOLDER`), tested offline on a small wav2vec 2.0
that the test builds and saves itself, as `save_pretrained` would have saved a downloaded one."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import deepfit
from deepfit.cli import main
from deepfit.errors import ConfigError
from deepfit.models.audio_encoders import encoder_info
from deepfit.tasks.classify.sound import SoundSpec, build_sound_model
from test_sound_classify import RATE, make_recordings

PATTERN = r"(?P<label>[a-z]+)_s\d_\d+\.wav"


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_recordings(tmp_path_factory.mktemp("sound-pretrained") / "recordings")


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wav2vec 2.0 of the real architecture, a few thousand weights, with its preprocessor config (8 kHz)."""
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    torch.manual_seed(0)
    config = Wav2Vec2Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                            conv_dim=(8, 8), conv_kernel=(10, 3), conv_stride=(5, 2), num_conv_pos_embeddings=8,
                            num_conv_pos_embedding_groups=2, vocab_size=4)
    folder = tmp_path_factory.mktemp("encoders") / "tiny-wav2vec2"
    Wav2Vec2Model(config).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(sampling_rate=RATE, do_normalize=True).save_pretrained(folder)
    return folder


def test_the_encoder_is_loaded_with_exactly_the_saved_weights(tiny_encoder: Path) -> None:
    info = encoder_info(f"hf:{tiny_encoder}")
    assert info.sample_rate == RATE and info.normalize and info.config["model_type"] == "wav2vec2"
    spec = SoundSpec(f"hf:{tiny_encoder}", 3, RATE, RATE // 2, 1, {}, {})
    model, origin, encoder = build_sound_model(spec)
    saved = load_file(tiny_encoder / "model.safetensors")
    loaded = model.encoder.state_dict()
    assert saved and all(torch.equal(loaded[k], v) for k, v in saved.items() if k in loaded)
    assert len([k for k in saved if k in loaded]) >= len(saved) - 2  # (a weight-norm pair may be stored as one)
    assert origin == str(tiny_encoder) and encoder.source == "transformers"
    assert model(torch.randn(2, 1, RATE // 2)).shape == (2, 3)


def test_a_pretrained_audio_encoder_is_fine_tuned_and_needs_no_folder_afterwards(recordings: Path, tiny_encoder: Path,
                                                                                tmp_path: Path) -> None:
    folder = tmp_path / "encoder"
    shutil.copytree(tiny_encoder, folder)
    runs = tmp_path / "runs"
    assert main(["train", str(recordings), "--label-pattern", PATTERN, "--model", f"hf:{folder}", "--epochs", "3",
                 "--batch-size", "16", "--workers", "0", "--output", str(runs), "--name", "w2v", "--no-evaluate"]) == 0
    run = runs / "w2v"
    config = json.loads((run / "config.json").read_text())
    assert config["modality"] == "sound" and config["sound"]["sample_rate"] == RATE  # the encoder's own rate
    phases = [row["phase"] for row in csv.DictReader((run / "metrics.csv").open())]
    assert phases == ["head", "full", "full"]  # transfer learning: the new head first, then the whole network
    shutil.rmtree(folder)  # the sidecar holds the architecture: the run no longer needs the encoder's folder
    clf = deepfit.load(run)  # trained with --modality auto: found to be sound, and read back as a SoundClassifier
    assert clf.predict(recordings / "low_s0_1.wav").label in ("low", "mid", "high")
    assert main(["evaluate", str(run)]) == 0


def test_features_of_a_pretrained_audio_encoder(recordings: Path, tiny_encoder: Path, tmp_path: Path) -> None:
    result = deepfit.fit_features(recordings, f"hf:{tiny_encoder}", label_pattern=PATTERN, output=str(tmp_path),
                                  name="w2v-features", workers=0)
    assert result.features.features.shape == (54, 16)  # the frames' mean of a 16-wide encoder
    again = deepfit.extract_features(recordings, f"hf:{tiny_encoder}", label_pattern=PATTERN, workers=0)
    assert again.reused == 54
    assert deepfit.load(result.run_dir).predict(recordings / "high_s2_3.wav").label in ("low", "mid", "high")


def test_what_cannot_be_an_audio_encoder_is_named(tmp_path: Path, recordings: Path, tiny_encoder: Path) -> None:
    from transformers import BertConfig

    BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8).save_pretrained(tmp_path / "bert")
    with pytest.raises(ConfigError, match="'bert' network, not an encoder of waveforms; .*wav2vec2"):
        encoder_info(f"hf:{tmp_path / 'bert'}")
    missing = tmp_path / "no-such-folder"  # (a name would be looked up on the hub: slow, and not what is tested here)
    with pytest.raises(ConfigError, match=f"cannot load the audio network '{missing}'.*save_pretrained"):
        encoder_info(f"hf:{missing}")
    with pytest.raises(ConfigError, match="hears 8000 Hz, as it was pretrained: leave out --sample-rate 16000"):
        deepfit.extract_features(recordings, f"hf:{tiny_encoder}", sample_rate=16000, label_pattern=PATTERN)
    with pytest.raises(ConfigError, match="brings its own weights"):
        deepfit.extract_features(recordings, f"hf:{tiny_encoder}", weights="x.safetensors", label_pattern=PATTERN)


def test_a_stopped_encoder_run_resumes_without_its_folder(recordings: Path, tiny_encoder: Path, tmp_path: Path) -> None:
    from conftest import ctrl_c_after
    from deepfit.errors import TrainingInterrupted

    folder = tmp_path / "encoder"
    shutil.copytree(tiny_encoder, folder)
    options = dict(output=str(tmp_path), epochs=2, batch_size=8, workers=0, save_every_steps=1)
    whole = deepfit.SoundClassifier(f"hf:{folder}", name="whole", **options).fit(recordings, label_pattern=PATTERN)
    with ctrl_c_after(5), pytest.raises(TrainingInterrupted):  # the second epoch, after the head's
        deepfit.SoundClassifier(f"hf:{folder}", name="stopped", **options).fit(recordings, label_pattern=PATTERN)
    shutil.rmtree(folder)  # resuming rebuilds the encoder from the run's config.json
    deepfit.resume(tmp_path / "stopped")
    a, b = load_file(str(whole.run_dir / "last.safetensors")), load_file(str(tmp_path / "stopped" / "last.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
