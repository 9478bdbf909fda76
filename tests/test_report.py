"""Tests for the evaluation report: pictures are valid PNGs, the CSV is exact, the HTML is one safe file."""

from __future__ import annotations

import csv
import html
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepfit.report.confusion import plot_confusion_matrix, write_confusion_csv
from deepfit.report.plots import plot_training_curves
from deepfit.tasks.classify.report import WorstPrediction, write_html_report

# A class name with markup and an entity: it must come out escaped, never as live HTML.
CLASSES = ["cat", "<b>&amp", "dog"]
CONFUSION = np.array([[8, 1, 1], [2, 5, 0], [0, 0, 9]])


def _assert_png(path: Path) -> None:
    assert path.is_file()
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width > 100 and image.height > 100
        image.verify()


def _write_metrics_csv(path: Path) -> Path:
    """A run with a head → full phase change, an empty cell, and an extra column the plot ignores."""
    rows = [
        ["epoch", "phase", "train_loss", "val_loss", "train_acc", "val_acc", "lr", "seconds"],
        ["1", "head", "1.20", "1.00", "0.40", "0.50", "0.001", "3.1"],
        ["2", "head", "0.90", "", "0.60", "", "0.001", "3.0"],
        ["3", "full", "0.60", "0.70", "0.75", "0.72", "0.0001", "9.4"],
        ["4", "full", "0.45", "0.62", "0.83", "0.78", "", "9.2"],
    ]
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)
    return path


def test_confusion_matrix_png_is_valid(tmp_path: Path) -> None:
    normalized = plot_confusion_matrix(CONFUSION, CLASSES, tmp_path / "cm.png")
    counts = plot_confusion_matrix(CONFUSION, CLASSES, tmp_path / "sub" / "cm_counts.png", normalize=False)
    assert normalized == tmp_path / "cm.png"
    _assert_png(normalized)
    _assert_png(counts)
    # Atomic writes must not leave temporaries behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cm.png", "sub"]


def test_confusion_matrix_many_classes_and_empty_row(tmp_path: Path) -> None:
    names = [f"class_{i:02d}_with_a_rather_long_name" for i in range(32)]
    matrix = np.eye(32, dtype=int) * 4
    matrix[3] = 0  # a class with no samples must not produce NaNs or warnings
    _assert_png(plot_confusion_matrix(matrix, names, tmp_path / "big.png"))


def test_confusion_matrix_rejects_mismatched_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="shape"):
        plot_confusion_matrix(CONFUSION, ["a", "b"], tmp_path / "cm.png")


def test_confusion_csv_content(tmp_path: Path) -> None:
    path = write_confusion_csv(CONFUSION, CLASSES, tmp_path / "confusion.csv")
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["true \\ predicted", *CLASSES]
    assert rows[1:] == [
        ["cat", "8", "1", "1"],
        ["<b>&amp", "2", "5", "0"],
        ["dog", "0", "0", "9"],
    ]


def test_training_curves_with_phase_change(tmp_path: Path) -> None:
    metrics_csv = _write_metrics_csv(tmp_path / "metrics.csv")
    result = plot_training_curves(metrics_csv, tmp_path / "curves.png")
    assert result == tmp_path / "curves.png"
    _assert_png(result)


def test_training_curves_missing_or_empty_csv(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="deepfit"):
        assert plot_training_curves(tmp_path / "nope.csv", tmp_path / "curves.png") is None
    assert "does not exist" in caplog.text
    header_only = tmp_path / "header.csv"
    header_only.write_text("epoch,train_loss,val_loss\n", encoding="utf-8")
    assert plot_training_curves(header_only, tmp_path / "curves.png") is None
    assert not (tmp_path / "curves.png").exists()


def test_html_report_is_self_contained_and_escaped(tmp_path: Path) -> None:
    cm_png = plot_confusion_matrix(CONFUSION, CLASSES, tmp_path / "cm.png")
    curves_png = plot_training_curves(_write_metrics_csv(tmp_path / "metrics.csv"), tmp_path / "curves.png")
    assert curves_png is not None

    real_image = tmp_path / "a&b <odd>.jpg"
    Image.new("RGB", (400, 300), (200, 40, 40)).save(real_image)
    not_an_image = tmp_path / "broken.png"
    not_an_image.write_bytes(b"this is not a png")
    missing = str(tmp_path / "gone" / "<missing>.jpg")
    worst = [
        WorstPrediction(str(real_image), "cat", "dog", 0.97, 0.01),
        WorstPrediction(missing, "<b>&amp", "cat", 0.88, 0.05),
        WorstPrediction(str(not_an_image), "dog", "cat", 0.70, 0.20),
    ]
    metrics = {
        "accuracy": 0.8,
        "balanced_accuracy": 0.7767,
        "num_samples": 26,
        "macro_f1": 0.78,
        "per_class": [
            {"class": "cat", "precision": 0.8, "recall": 0.8, "f1": 0.8, "support": 10},
            {"class": "<b>&amp", "precision": 0.833, "recall": 0.714, "f1": 0.769, "support": 7},
            {"class": "dog", "precision": 0.9, "recall": 1.0, "f1": 0.947, "support": 9},
        ],
    }
    path = write_html_report(
        tmp_path / "out" / "report.html",
        title="Evaluation <test>",
        summary={"model": "resnet18", "data": "/data/pets & co"},
        metrics=metrics,
        class_names=CLASSES,
        images={"Confusion matrix": cm_png, "Training curves": curves_png, "Gone": tmp_path / "x.png"},
        worst=worst,
        notes=["no separate test split: measured on the validation set"],
    )
    text = path.read_text(encoding="utf-8")

    # One offline file: everything embedded, nothing fetched.
    assert "data:image/png;base64," in text
    assert "data:image/jpeg;base64," in text  # the thumbnail of the real image
    assert 'src="http' not in text
    assert "<link" not in text
    assert "<script" not in text

    # User text is escaped everywhere it appears.
    assert "<b>&amp" not in text
    assert html.escape("<b>&amp") in text
    assert "cat" in text and "dog" in text
    for item in worst:
        assert html.escape(item.path) in text
    assert html.escape("Evaluation <test>") in text
    assert "/data/pets &amp; co" in text

    # Headline numbers as percentages, per-class values to 3 decimals, weakest class marked.
    assert "80.0%" in text and "77.7%" in text
    assert "0.769" in text and "0.947" in text
    assert 'class="weak"' in text
    assert "no separate test split" in text
    assert text.count('class="placeholder"') == 2  # the missing and the broken file
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]
