"""Sound classification end to end on recordings the test makes: the classify task on the sound modality, from the
CLI and from Python; labels and speakers from file names, a split by speaker, evaluate, predict, load."""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

import deepfit
from deepfit.cli import main

RATE = 8000
PATTERN = r"(?P<label>[a-z]+)_(?P<group>s\d)_\d+\.wav"
TONES = {"low": 300.0, "mid": 900.0, "high": 2400.0}
SOUND_CLI = ["--model-args", "depth=2,width=8", "--epochs", "3", "--batch-size", "16", "--lr", "0.003", "--workers", "0"]


def make_recordings(root: Path, speakers: int = 3, takes: int = 6, seed: int = 0) -> Path:
    """LABEL_sN_I.wav: a tone per class, its pitch, length and loudness varying by speaker and take, over noise."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    for label, hz in TONES.items():
        for s in range(speakers):
            for i in range(takes):
                seconds = rng.uniform(0.3, 0.6)
                t = np.arange(int(RATE * seconds)) / RATE
                wave = rng.uniform(0.2, 0.6) * np.sin(2 * np.pi * hz * (1 + 0.05 * s) * t) + 0.02 * rng.standard_normal(len(t))
                soundfile.write(root / f"{label}_s{s}_{i}.wav", wave.astype(np.float32), RATE, subtype="PCM_16")
    return root


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_recordings(tmp_path_factory.mktemp("sound") / "recordings")


def test_train_evaluate_and_predict_sound_from_the_cli(recordings: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    assert main(["train", str(recordings), "--label-pattern", PATTERN, "--modality", "sound", *SOUND_CLI,
                 "--output", str(runs), "--name", "tones", "--val-fraction", "0.3", "--test-fraction", "0.3", "--no-evaluate"]) == 0
    run = runs / "tones"
    config = json.loads((run / "config.json").read_text())
    assert config["modality"] == "sound" and config["model"] == "soundcnn"
    assert config["sound"]["sample_rate"] == RATE and config["sound"]["samples"] == round(0.6 * RATE)  # 9 in 10 fit whole
    rows = list(csv.DictReader((run / "split.csv").open()))
    speakers = {s: {Path(r["path"]).name.split("_")[1] for r in rows if r["split"] == s} for s in ("train", "val", "test")}
    assert all(len(v) == 1 for v in speakers.values())  # one speaker each: the test speaker is never heard in training

    assert main(["evaluate", str(run)]) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and "on 18 clips" not in out and (run / "report.html").is_file()
    metrics = json.loads((run / "test_metrics.json").read_text())
    assert metrics["accuracy"] > 0.5  # three tones an octave or more apart: a few epochs separate them
    report = (run / "report.html").read_text()
    assert "spectrogram of " in report and "on 18 clips" not in report
    audio = report.split('src="data:audio/wav;base64,', 1)[1].split('"', 1)[0]  # the first worst clip, as it is heard
    samples, rate = soundfile.read(io.BytesIO(base64.b64decode(audio)))
    assert rate == RATE and len(samples) == config["sound"]["samples"]

    assert main(["predict", str(run), str(recordings), "--output", str(tmp_path / "p.csv")]) == 0
    predicted = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert len(predicted) == 54 and {p["label"] for p in predicted} <= set(TONES)


def test_the_python_front_end_takes_files_samples_with_their_rate_and_reloads(recordings: Path, tmp_path: Path) -> None:
    clf = deepfit.SoundClassifier(output=str(tmp_path), model_args={"depth": 2, "width": 8}, epochs=3, batch_size=16,
                                  lr=0.003, workers=0, clip_seconds=0.5)
    clf.fit(recordings, label_pattern=PATTERN)
    assert clf.classes == ["high", "low", "mid"]
    one = clf.predict(recordings / "high_s0_0.wav")
    assert one.label in TONES and 0 < one.probability <= 1
    samples, rate = soundfile.read(recordings / "low_s1_2.wav", dtype="float32")
    from_samples = clf.predict((samples, rate))
    assert from_samples.top == clf.predict(recordings / "low_s1_2.wav").top  # the same clip, as samples or as a file
    resampled = clf.predict((np.interp(np.arange(0, len(samples), 0.5), np.arange(len(samples)), samples), 2 * rate))
    assert resampled.label in TONES  # another rate is resampled to the model's
    assert len(clf.predict(str(recordings))) == 54
    again = deepfit.load(clf.run_dir)
    assert type(again) is deepfit.SoundClassifier
    reloaded = again.predict(recordings / "high_s0_0.wav")
    assert reloaded.label == one.label and reloaded.probability == pytest.approx(one.probability, abs=1e-5)
    # exported with its spectrogram front end inside: raw samples in, the same classes out
    from deepfit.workflows.export import export

    made = export(clf.run_dir)
    assert made.figures["parity"]["top1_agreement"] == 1.0 and "waveforms" in made.figures["inputs"]
    in_onnx = deepfit.load(clf.run_dir, backend="onnx").predict(recordings / "high_s0_0.wav")
    assert in_onnx.label == one.label and in_onnx.probability == pytest.approx(one.probability, abs=0.02)


def test_a_sound_stream_is_classified_window_by_window_as_it_arrives(recordings: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    clf = deepfit.SoundClassifier(output=str(tmp_path), model_args={"depth": 2, "width": 8}, epochs=1, batch_size=16,
                                  workers=0, clip_seconds=0.5).fit(recordings, label_pattern=PATTERN)
    # a FLAC file read through FFmpeg as a stream: three recordings one after another, 1.4 s
    waves = [soundfile.read(recordings / name, dtype="float32")[0] for name in ("high_s0_0.wav", "low_s1_2.wav", "mid_s2_1.wav")]
    soundfile.write(tmp_path / "tones.flac", np.concatenate(waves), RATE)
    windows = list(clf.stream(tmp_path / "tones.flac", hop=0.25))
    total = sum(len(w) for w in waves) / RATE
    assert [w.index for w in windows] == list(range(len(windows))) and len(windows) == 1 + int((total - 0.5) / 0.25) + 1
    assert windows[1].time == pytest.approx(0.25) and windows[0].seconds == pytest.approx(0.5)
    assert windows[-1].time + 0.5 == pytest.approx(total, abs=1e-3) and windows[0].result.label in TONES
    out = tmp_path / "out"
    assert main(["predict", str(clf.run_dir), "--source", str(tmp_path / "tones.flac"), "--output", str(out),
                 "--max-frames", "3"]) == 0
    assert "3 windows" in capsys.readouterr().out and len((out / "tones.csv").read_text().splitlines()) == 4
    assert main(["predict", str(clf.run_dir), "--source", "mic:hw:9", "--output", str(out / "mic")]) == 2
    err = capsys.readouterr().err
    assert "microphone mic:hw:9 could not be opened" in err and err.count("\n") == 1 and not (out / "mic").exists()


def test_sound_data_is_recognised_and_the_image_default_network_is_named(recordings: Path, tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    clf = deepfit.ImageClassifier("crnn", output=str(tmp_path), model_args={"depth": 2, "width": 8, "hidden": 8}, epochs=1,
                                  batch_size=16, workers=0)
    clf.fit(recordings, label_pattern=PATTERN)  # modality auto: the folder holds sound files
    assert json.loads((clf.run_dir / "config.json").read_text())["modality"] == "sound"
    assert "holds sound files: sound classification with crnn" in caplog.text


def test_a_misspelt_front_end_setting_is_named_before_anything_is_decoded(recordings: Path, tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", str(recordings), "--label-pattern", PATTERN, "--modality", "sound", "--frontend", "n_mel=40",
                 "--output", str(tmp_path)])
    assert code != 0
    err = capsys.readouterr().err
    assert "--frontend has no setting 'n_mel' (did you mean 'n_mels'?)" in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())  # no run folder was made


def test_data_check_shows_clips_per_class_durations_rates_groups_and_bad_files(tmp_path: Path,
                                                                                capsys: pytest.CaptureFixture[str]) -> None:
    data = make_recordings(tmp_path / "rec", speakers=2, takes=2)
    (data / "low_s9_0.wav").write_text("not a recording")
    assert main(["data", "check", str(data), "--label-pattern", PATTERN]) == 0
    out = capsys.readouterr().out
    assert "task: classify" in out and "13 clips in 3 classes" in out
    assert "durations (12 clips): shortest" in out and "sample rates: 8000 Hz (12)" in out and "channels: 1 (12)" in out
    assert "groups: 3" in out and "unreadable clips: 1" in out and "low_s9_0.wav" in out


def test_windows_cover_a_long_recording_read_in_pieces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deepfit.tasks.classify import timeline

    monkeypatch.setattr(timeline, "PIECE_SECONDS", 0.7)  # several pieces, so windows straddle their joints
    wave = (np.arange(int(5.3 * RATE)) % 1000 / 1000).astype(np.float32)
    path = tmp_path / "long.wav"
    soundfile.write(path, wave, RATE, subtype="FLOAT")
    got = list(timeline.windows(path, RATE, RATE, RATE // 2, 1))
    assert [s for s, _ in got] == [0, 4000, 8000, 12000, 16000, 20000, 24000, 28000, 32000, 34400]  # the last ends at 5.3 s
    for start, window in got:
        assert np.array_equal(window[0], wave[start : start + RATE])
    short = tmp_path / "short.wav"
    soundfile.write(short, wave[:3000], RATE, subtype="FLOAT")
    [(start, window)] = list(timeline.windows(short, RATE, RATE, RATE // 2, 1))
    assert start == 0 and window.shape == (1, RATE) and np.array_equal(window[0, :3000], wave[:3000])


def test_a_long_recording_is_labelled_window_by_window(recordings: Path, tmp_path: Path) -> None:
    clf = deepfit.SoundClassifier(output=str(tmp_path), model_args={"depth": 2, "width": 8}, epochs=6, batch_size=16,
                                  lr=0.003, workers=0, clip_seconds=0.5)
    clf.fit(recordings, label_pattern=PATTERN)
    t = np.arange(2 * RATE) / RATE
    long = tmp_path / "long" / "low_then_high.wav"
    long.parent.mkdir()
    soundfile.write(long, np.concatenate([0.4 * np.sin(2 * np.pi * 300 * t), 0.4 * np.sin(2 * np.pi * 2400 * t)]), RATE)
    assert main(["predict", str(clf.run_dir), str(long.parent), "--hop", "0.25", "--output", str(tmp_path / "p.csv")]) == 0
    rows = list(csv.DictReader((tmp_path / "p_windows.csv").open()))
    assert len(rows) == 15 and rows[0]["start_s"] == "0.000" and rows[-1]["end_s"] == "4.000"
    assert rows[0]["label"] == "low" and rows[-1]["label"] == "high"  # what is heard changes half-way
    assert (tmp_path / "p_timeline_low_then_high.png").stat().st_size > 1000
    assert clf.predict(long, hop=0.25).label in ("low", "high") and len(clf.predictor.timelines) == 1
    with pytest.raises(deepfit.ConfigError, match="already exists"):
        from deepfit.workflows.predict import predict_files
        predict_files(clf.run_dir, [long], tmp_path / "p2.csv", hop=0.25)
        predict_files(clf.run_dir, [long], tmp_path / "p2.csv", hop=0.25)


def test_a_stopped_sound_run_resumes_to_the_weights_of_one_never_stopped(recordings: Path, tmp_path: Path) -> None:
    """Time shifts, gains (the trainer's generator), SpecAugment and mixup (torch's): all in the resumable state."""
    from safetensors.torch import load_file

    from conftest import ctrl_c_after
    from deepfit.errors import TrainingInterrupted

    options = dict(output=str(tmp_path), model_args={"depth": 2, "width": 8}, epochs=3, batch_size=8, workers=0,
                   clip_seconds=0.5, mixup=0.2, save_every_steps=1)
    whole = deepfit.SoundClassifier(name="whole", **options).fit(recordings, label_pattern=PATTERN)
    with ctrl_c_after(4), pytest.raises(TrainingInterrupted):  # epoch 2, step 1 of 3
        deepfit.SoundClassifier(name="stopped", **options).fit(recordings, label_pattern=PATTERN)
    deepfit.resume(tmp_path / "stopped")
    a, b = load_file(str(whole.run_dir / "last.safetensors")), load_file(str(tmp_path / "stopped" / "last.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_an_imagenet_network_is_fine_tuned_on_spectrograms(recordings: Path, tmp_path: Path, weights_dir: Path) -> None:
    """Transfer learning offline: the shared ImageNet lite0 on the spectrogram (repeated to three channels), the new
    head (and the per-bin normalisation) first, then the whole network at a lower rate."""
    clf = deepfit.SoundClassifier("tf_efficientnet_lite0", weights=str(weights_dir / "tf_efficientnet_lite0.safetensors"),
                                  output=str(tmp_path), epochs=2, head_epochs=1, batch_size=16, workers=0, clip_seconds=0.5)
    clf.fit(recordings, label_pattern=PATTERN)
    rows = list(csv.DictReader((clf.run_dir / "metrics.csv").open()))
    assert [r["phase"] for r in rows] == ["head", "full"]
    meta = json.loads((clf.run_dir / "best.json").read_text())
    assert meta["model"]["name"] == "tf_efficientnet_lite0" and meta["pretrained_from"].endswith("tf_efficientnet_lite0.safetensors")
    again = deepfit.load(clf.run_dir)  # rebuilt from the sidecar: the image network inside the sound classifier
    assert again.predict(recordings / "mid_s2_1.wav").label in TONES
