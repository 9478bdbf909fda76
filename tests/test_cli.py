"""The `deepfit` command: quickstart end to end, and the small commands around it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

import deepfit
from deepfit.cli import main


def test_quickstart_trains_evaluates_and_reports(
    tmp_path: Path, deepfit_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "runs"
    assert main(["quickstart", "--output", str(output)]) == 0
    run = output / "quickstart"
    for name in ("config.json", "split.csv", "metrics.csv", "best.safetensors", "best.json", "last.safetensors",
                 "report.html", "confusion_matrix.png", "confusion_matrix.csv", "training_curves.png",
                 "test_metrics.json", "test_predictions.csv"):
        assert (run / name).is_file(), f"quickstart did not write {name}"
    metrics = json.loads((run / "test_metrics.json").read_text())
    assert metrics["accuracy"] >= 0.9
    assert metrics["num_samples"] >= 250  # 15% of 1,797 digits
    config = json.loads((run / "config.json").read_text())
    assert config["classes"] == [str(d) for d in range(10)]
    assert config["hflip"] is False  # the preset: flipping a 2 makes a 5-like shape
    with (run / "metrics.csv").open(newline="") as f:
        assert len(list(csv.DictReader(f))) == config["epochs"]
    out = capsys.readouterr().out
    assert f"run folder: {run}" in out and f"test accuracy {metrics['accuracy']:.2%}" in out
    # the digits were written to DEEPFIT_CACHE (a temporary folder here), never into the user's cache
    digits = deepfit_cache / "digits"
    assert (digits / ".complete").is_file()
    assert len(list(digits.rglob("*.png"))) == 1797
    assert Path(config["data_root"]) == digits.resolve()


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == deepfit.__version__


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    out = capsys.readouterr().out
    for command in ("quickstart", "train", "evaluate", "predict", "models"):
        assert command in out


def test_models_lists_all_sources_and_segmenters(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "resnet18"]) == 0
    sections: dict[str, list[str]] = {}
    heading = ""
    for line in capsys.readouterr().out.splitlines():  # a heading, then one name a line
        if line.startswith("  "):
            sections[heading].append(line.strip())
        else:
            heading = line.split(" (")[0]
            sections[heading] = []
    assert set(sections) == {"timm", "torchvision", "segmentation, --task segment", "object detection, --task detect",
                             "instance segmentation, --task segment-instances"}  # deepfit has no match: no section
    assert "resnet18" in sections["timm"] and "tv/resnet18" in sections["torchvision"]
    assert "unet:tv/resnet18" in sections["segmentation, --task segment"]


def test_train_help_lists_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for field in deepfit.TrainConfig.__dataclass_fields__:
        assert "--" + field.replace("_", "-") in out


def test_data_check_recognises_and_summarises_class_folders(tmp_path, capsys) -> None:
    """Without --task, class folders are read as classification data: classes and counts per split, image sizes,
    unreadable files and images that would make the scores optimistic."""
    from conftest import write_class_folders

    root = tmp_path / "pets"
    write_class_folders(root / "train", ["cat", "dog"], 4)
    write_class_folders(root / "test", ["cat", "dog"], 2, first=10)
    (root / "train" / "dog" / "broken.png").write_bytes(b"not an image")
    (root / "test" / "cat" / "copy.png").write_bytes((root / "train" / "cat" / "img0.png").read_bytes())
    assert main(["data", "check", str(root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any("in 2 classes" in line and str(root) in line for line in lines)
    cells = [[cell for cell in line.split() if cell.isalnum()] for line in lines]
    assert ["cat", "4", "3"] in cells and ["dog", "5", "2"] in cells  # train, test
    assert any(line.startswith("image sizes") and "16x16" in line for line in lines)
    assert "unreadable images: 1" in lines and "byte-identical images in two splits: 1" in lines
    assert any("broken.png" in line for line in lines)
