"""Image classification with labels in the file names (`--label-pattern`): train, the split by group, evaluate on
other data read the same way, and `deepfit data check`, from the CLI and from Python."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

import deepfit
from conftest import TINY, TINY_CLI, shape_image
from deepfit.cli import main

PATTERN = r"(?P<label>[a-z]+)_(?P<group>cam\d)_\d+\.png"


def _named_images(root: Path, first: int = 0) -> Path:
    """Flat folder, three classes x three cameras x four shots: CLASS_camN_I.png (and a stray notes.txt)."""
    root.mkdir(parents=True)
    for ci, name in enumerate(["circle", "square", "star"]):
        for cam in range(3):
            for i in range(4):
                shape_image(ci, first + cam * 4 + i, 16, "RGB").save(root / f"{name}_cam{cam}_{i}.png")
    (root / "notes.txt").write_text("shots from three cameras")
    return root


def test_labels_and_groups_from_file_names_train_and_evaluate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _named_images(tmp_path / "shots")
    args = ["train", str(data), "--label-pattern", PATTERN, *TINY_CLI, "--epochs", "2", "--output", str(tmp_path / "runs"),
            "--name", "named", "--val-fraction", "0.3", "--test-fraction", "0.3"]
    assert main(args) == 0
    run = tmp_path / "runs" / "named"
    rows = list(csv.DictReader((run / "split.csv").open()))
    assert {r["label"] for r in rows} == {"circle", "square", "star"} and len(rows) == 36
    cameras = {split: {r["path"].split("_")[1] for r in rows if r["split"] == split} for split in ("train", "val", "test")}
    assert all(len(c) == 1 for c in cameras.values()) and len(set.union(*cameras.values())) == 3  # one camera each

    other = _named_images(tmp_path / "other", first=20)
    assert main(["evaluate", str(run), "--data", str(other), "--label-pattern", PATTERN]) == 0
    assert "accuracy" in capsys.readouterr().out
    assert main(["data", "check", str(other), "--label-pattern", PATTERN]) == 0
    assert "circle" in capsys.readouterr().out


def test_the_python_front_end_takes_the_pattern_and_a_bad_one_is_explained(tmp_path: Path) -> None:
    data = _named_images(tmp_path / "shots")
    clf = deepfit.ImageClassifier(output=str(tmp_path / "runs"), **{**TINY, "epochs": 1}).fit(data, label_pattern=PATTERN)
    assert clf.classes == ["circle", "square", "star"]
    assert clf.evaluate(_named_images(tmp_path / "other", first=20), label_pattern=PATTERN).metrics["accuracy"] >= 0
    with pytest.raises(deepfit.ConfigError, match=r"no \(\?P<label>"):
        deepfit.ImageClassifier(**TINY).fit(data, label_pattern=r"(?P<kind>[a-z]+)_.*\.png")
