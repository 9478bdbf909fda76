"""Cross-validation (`--cv N`): a run per fold tested on its fold, the folds by the data's own folds, by group or by
class, and the scores' mean and spread; from the CLI and from Python."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

import deepfit
from conftest import TINY, TINY_CLI
from deepfit.cli import main
from deepfit.data.catalog import LabeledFile
from deepfit.errors import ConfigError
from deepfit.workflows.crossval import assign_folds
from test_sound_classify import PATTERN, make_recordings


def test_every_file_is_tested_once_in_a_stratified_cv_from_the_cli(shapes_data: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", str(shapes_data), *TINY_CLI, "--epochs", "2", "--cv", "3", "--output", str(tmp_path), "--name", "cv"]) == 0
    out = capsys.readouterr().out
    assert "3-fold cross-validation (folds by classes): test accuracy" in out and "± " in out
    folder = tmp_path / "cv"
    rows = list(csv.DictReader((folder / "results.csv").open()))
    assert [r["run"] for r in rows] == ["fold1", "fold2", "fold3"]
    summary = json.loads((folder / "cv.json").read_text())
    assert summary["accuracy"] == [float(r["test_accuracy"]) for r in rows]
    tested = []
    for run in ("fold1", "fold2", "fold3"):
        split = list(csv.DictReader((folder / run / "split.csv").open()))
        test = [r["path"] for r in split if r["split"] == "test"]
        assert len(test) == 20 and {r["label"] for r in split if r["split"] == "test"} == {"2", "10", "ring"}
        tested += test
    assert len(set(tested)) == 60  # every image tested exactly once


def test_sound_folds_keep_each_speaker_in_one_fold(tmp_path: Path) -> None:
    recordings = make_recordings(tmp_path / "rec", speakers=3, takes=3)
    clf = deepfit.SoundClassifier(output=str(tmp_path), model_args={"depth": 2, "width": 8}, epochs=2, batch_size=16,
                                  workers=0, clip_seconds=0.5, cv=3)
    clf.fit(recordings, label_pattern=PATTERN)
    cv = clf.cv_result
    assert cv is not None and len(cv.runs) == 3 and cv.folds_from == "groups" and 0 <= cv.mean <= 1
    for run in cv.runs:
        split = list(csv.DictReader((run / "split.csv").open()))
        speakers = {s: {Path(r["path"]).name.split("_")[1] for r in split if r["split"] == s} for s in ("train", "val", "test")}
        assert len(speakers["test"]) == 1 and not speakers["test"] & (speakers["train"] | speakers["val"])
    with pytest.raises(deepfit.DeepfitError, match="one model per fold"):
        clf.predict(recordings / "low_s0_0.wav")


def test_the_datas_own_folds_are_used_and_mismatches_explained() -> None:
    files = [LabeledFile(Path(f"/d/{i}.wav"), "ab"[i % 2], fold=str(i % 3 + 1)) for i in range(12)]
    folds, follows = assign_folds(files, 3, seed=0)
    assert follows == "the data's folds" and folds == [i % 3 for i in range(12)]
    with pytest.raises(ConfigError, match=r"3 folds of its own \(1, 2, 3\), and --cv 5"):
        assign_folds(files, 5, seed=0)
    with pytest.raises(ConfigError, match="a class has only 2 files"):
        assign_folds([LabeledFile(Path(f"/d/{i}"), "ab"[i % 2]) for i in range(4)], 3, seed=0)
    with pytest.raises(ConfigError, match="--cv 1 leaves nothing to test"):
        deepfit.ImageClassifier(**TINY, cv=1)
