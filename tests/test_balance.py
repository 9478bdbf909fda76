"""Class imbalance: --class-weights balanced and --sampler balanced for every modality, and reports that lead with
class-averaged scores when the classes are imbalanced (detection and segmentation train with both options in
test_detection_train.py and test_segmentation_train.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY, shape_image
from deepfit import ImageClassifier
from deepfit.cli import main
from deepfit.tasks.balance import class_weights, imbalance_ratio, label_counts, sample_weights
from test_sound_classify import PATTERN, make_recordings
from test_text_classify import write_table


def test_a_balanced_sampler_draws_every_class_about_equally() -> None:
    labels = ["a"] * 80 + ["b"] * 15 + ["c"] * 5
    weights = sample_weights(label_counts(labels, ["a", "b", "c"]))
    drawn = torch.multinomial(weights, 30_000, replacement=True, generator=torch.Generator().manual_seed(0))
    shares = np.bincount(np.array(labels)[drawn.numpy()].view(np.uint32) - ord("a"), minlength=3) / 30_000
    assert np.allclose(shares, 1 / 3, atol=0.02)
    # an image is drawn for the rarest class it holds; an image with none, as the commonest class's
    counts = np.array([[3, 0], [1, 1], [2, 0], [0, 0]])
    assert sample_weights(counts).tolist() == pytest.approx([1 / 3, 1.0, 1 / 3, 1 / 3])
    assert class_weights([80, 15, 5]).tolist() == pytest.approx([15 / 80, 1.0, 3.0])
    assert imbalance_ratio([80, 15, 5, 0]) == 16.0 and imbalance_ratio([7]) == 1.0


def test_imbalanced_images_train_balanced_and_the_report_leads_with_balanced_accuracy(tmp_path: Path,
                                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    for index, (name, count) in enumerate((("big", 40), ("small", 8), ("tiny", 8))):
        (data / name).mkdir(parents=True)
        for i in range(count):
            shape_image(index, i).save(data / name / f"{i}.png")
    clf = ImageClassifier(**TINY, class_weights="balanced", sampler="balanced", output=str(tmp_path / "runs"), name="b",
                          test_fraction=0.3)
    clf.fit(data)
    config = json.loads((clf.run_dir / "config.json").read_text())
    assert config["class_weights"] == "balanced" and config["sampler"] == "balanced"
    assert main(["evaluate", str(clf.run_dir)]) == 0
    headline = capsys.readouterr().out
    assert "test balanced accuracy" in headline and "classes imbalanced" in headline
    report = (clf.run_dir / "report.html").read_text()
    assert "Classes are imbalanced" in report
    assert report.index("Balanced accuracy") < report.index(">Accuracy<")  # the class-averaged score comes first
    assert "--sampler" in report and "--class-weights" in report  # the options shown with the run


@pytest.mark.parametrize("modality", ["sound", "text"])
def test_sound_and_text_train_with_both_options_and_lr_find(modality: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    if modality == "sound":
        data = make_recordings(tmp_path / "rec", speakers=2, takes=4)
        args = [str(data), "--label-pattern", PATTERN, "--modality", "sound", "--model-args", "depth=2,width=8"]
    else:
        (tmp_path / "texts").mkdir()
        data = write_table(tmp_path / "texts" / "news.csv", n=30)
        args = [str(data), "--text-column", "body", "--vocab-size", "200", "--model-args", "dim=16,buckets=4096"]
    code = main(["train", *args, "--epochs", "1", "--batch-size", "8", "--workers", "0", "--class-weights", "balanced",
                 "--sampler", "balanced", "--lr", "find", "--output", str(tmp_path / "runs"), "--name", "r", "--no-evaluate"])
    assert code == 0
    assert "class weights:" in caplog.text and "balanced sampler" in caplog.text
    assert json.loads((tmp_path / "runs" / "r" / "config.json").read_text())["lr_find"]["steps"] > 20
