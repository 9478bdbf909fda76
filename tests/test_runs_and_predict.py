"""Runs and prediction as the user report found them: fine-tuning phases, one Ctrl-C under `uv run`,
a moved data folder, and one rule for what `predict` returns and writes."""

from __future__ import annotations

import csv
import inspect
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

import deepfit
from conftest import write_class_folders
from deepfit.api import ImageClassifier, resume
from deepfit.cli import main
from deepfit.config import TrainConfig
from deepfit.errors import DataError
from deepfit.tasks.classify.predict import Prediction, Predictor
from deepfit.tasks.classify.task import plan_phases
from deepfit.workflows.evaluate import evaluate

# --- 8: fine-tuning never silently trains only the head ---------------------------------------------


def test_finetune_keeps_a_whole_network_epoch_when_head_epochs_take_them_all(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="deepfit"):
        assert plan_phases(TrainConfig(pretrained=True, epochs=2, head_epochs=2)) == [("head", 1), ("full", 1)]
    assert "whole network for the last 1" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="deepfit"):
        assert plan_phases(TrainConfig(pretrained=True, epochs=5, head_epochs=2)) == [("head", 2), ("full", 3)]
        assert plan_phases(TrainConfig(epochs=2, head_epochs=2)) == [("train", 2)]  # from scratch: no head phase
    assert caplog.text == ""


def test_finetune_for_one_epoch_warns_that_only_the_head_is_trained(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="deepfit"):
        assert plan_phases(TrainConfig(pretrained=True, epochs=1, head_epochs=2)) == [("head", 1)]
    assert "only the new head is trained" in caplog.text


# --- 4: one Ctrl-C under `uv run` (two SIGINTs within milliseconds) saves a resumable state -----------


def _wait_for(predicate, timeout: float, proc: subprocess.Popen) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, "training ended before it could be interrupted"
        assert time.monotonic() < deadline, "training did not start in time"
        time.sleep(0.02)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_two_sigints_together_are_one_ctrl_c_that_saves_a_resumable_state(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    write_class_folders(data, ["a", "b"], 16)
    out = tmp_path / "runs"
    # steps of tens of milliseconds: the second SIGINT, 10 ms after the first, comes while a step still runs
    options = ["--model", "cnn", "--model-args", "depth=2,width=32", "--image-size", "64", "--batch-size", "16", "--workers", "0"]
    env = {**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "deepfit.cli", "train"]
    log = tmp_path / "stderr.txt"
    with log.open("w") as err:
        proc = subprocess.Popen([*command, str(data), *options, "--epochs", "4", "--save-every-steps", "1", "--output",
                                 str(out), "--name", "ctrlc", "--no-evaluate"], stdout=subprocess.PIPE, stderr=err, env=env)
        try:
            _wait_for(lambda: "epoch 1/4" in log.read_text(), 60, proc)
            proc.send_signal(signal.SIGINT)  # the terminal's
            time.sleep(0.01)
            proc.send_signal(signal.SIGINT)  # and the one `uv run` forwards
            stdout, _ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    text = stdout.decode() + log.read_text()
    assert proc.returncode == 130, text
    (run,) = out.iterdir()
    assert (run / "resume.pt").is_file()
    assert "--resume" in text and "\ninterrupted" not in text
    # in this process: a second interpreter would double the time spent importing torch and the models
    assert main(["train", "--resume", str(run), "--no-evaluate"]) == 0
    assert "epoch 4/4" in capsys.readouterr().err


# --- 7: a moved data folder: --data-root points the run at the data's new place, keeping its split ---------


def _test_rows(run: Path) -> list[str]:
    with (run / "split.csv").open(newline="") as handle:
        return sorted(row["path"] for row in csv.DictReader(handle) if row["split"] == "test")


def test_a_moved_data_folder_is_found_again_with_data_root(run_copy: Path, trained_run, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    old, new = tmp_path / "old" / "data", tmp_path / "new" / "data"
    shutil.copytree(trained_run.data, old)
    config = json.loads((run_copy / "config.json").read_text())
    assert Path(config["data_root"]) == Path(config["data"]) == trained_run.data.resolve()
    config.update(data=str(old.resolve()), data_root=str(old.resolve()))
    (run_copy / "config.json").write_text(json.dumps(config))  # the run as if trained on `old`
    split_before = (run_copy / "split.csv").read_bytes()
    shutil.move(old.parent, new.parent)

    with pytest.raises(DataError, match="--data-root"):
        evaluate(run_copy)
    evaluation = evaluate(run_copy, data_root=new)
    assert evaluation.split == "test"
    with (evaluation.folder / "test_predictions.csv").open(newline="") as handle:
        scored = sorted(Path(row["path"]).resolve().relative_to(new.resolve()).as_posix() for row in csv.DictReader(handle))
    assert scored == _test_rows(run_copy)  # the same test images, now read from the new place

    assert main(["evaluate", str(run_copy), "--data-root", str(new)]) == 0
    assert main(["train", "--resume", str(run_copy), "--epochs", "5", "--data-root", str(new), "--no-evaluate"]) == 0
    assert "epoch 5/5" in capsys.readouterr().err
    config = json.loads((run_copy / "config.json").read_text())
    assert Path(config["data_root"]) == Path(config["data"]) == new.resolve()  # recorded: later commands need no flag
    assert (run_copy / "split.csv").read_bytes() == split_before
    assert resume(run_copy, epochs=6, data_root=new).run_dir == run_copy.resolve()


# --- 14: one rule for predict: one input -> one result, top 3, never overwrite, nothing readable is an error --


def test_one_input_gives_one_prediction_and_a_list_gives_a_list(trained_run) -> None:  # type: ignore[no-untyped-def]
    clf = deepfit.load(trained_run.run_dir)
    path = trained_run.data / "ring" / "img5.png"
    one = clf.predict(path)
    assert isinstance(one, Prediction) and one.source == str(path)
    assert isinstance(clf.predict(str(path)), Prediction)
    assert isinstance(clf.predict(Image.open(path).convert("RGB")), Prediction)
    assert [p.label for p in clf.predict([path])] == [one.label]  # a list of one: a list
    assert len(clf.predict(trained_run.data / "ring")) == 20  # a folder: a list
    assert len(clf.predict(str(trained_run.data / "ring" / "img1*.png"))) == 11  # a glob: a list
    for predict in (ImageClassifier.predict, Predictor.predict, Predictor.predict_files):
        assert inspect.signature(predict).parameters["top_k"].default == 3  # as on the CLI (--top-k)


def test_predict_never_overwrites_and_fails_when_nothing_could_be_read(
    trained_run, run_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],  # type: ignore[no-untyped-def]
) -> None:
    image = str(trained_run.data / "2" / "img3.png")
    assert main(["predict", str(run_copy), image]) == 0
    written = run_copy / "predictions.csv"
    before = written.read_bytes()
    capsys.readouterr()
    assert main(["predict", str(run_copy), str(trained_run.data / "10")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(written) in err[0] and "does not overwrite" in err[0]
    assert written.read_bytes() == before

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    out = tmp_path / "out.csv"
    assert main(["predict", str(run_copy), str(broken), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "error: none of the 1 inputs could be read" in err and str(broken) in err
    assert not out.exists()
