"""Segmentation outputs: exact mask colours and blends, strip sizes, the image score, palette PNGs, CSV, report."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from deepfit.tasks.segment import report as segmentation_report
from deepfit.tasks.segment.pictures import (
    ERROR_COLOR,
    IGNORE,
    IGNORE_COLOR,
    IGNORE_HATCH,
    colorize,
    overlay,
    side_by_side,
)
from deepfit.tasks.segment.report import (
    image_score,
    plot_per_class_iou,
    save_mask_png,
    write_per_class_csv,
    write_segmentation_report,
)

COLORS = np.array([[200, 0, 0], [0, 100, 0], [0, 0, 250]], dtype=np.uint8)
HATCH = {tuple(c) for c in IGNORE_HATCH}  # the two shades of the stripes ignored pixels are drawn in
MASK = np.array([[0, 1, 2], [IGNORE, 1, 7]], dtype=np.uint8)  # 7: an index with no colour

# Rows truth, columns prediction: road mostly right, car often confused with road, sky never seen.
CLASSES = ["road", "car & bus", "sky"]
CONFUSION = [[90, 10, 0], [5, 15, 0], [0, 0, 0]]


def _metrics(confusion: Any, classes: list[str]) -> dict[str, Any]:
    """The dict segmentation_metrics returns, built here so the report is tested on its own."""
    matrix = np.asarray(confusion, dtype=np.int64)
    tp, true, predicted = np.diag(matrix), matrix.sum(1), matrix.sum(0)
    per_class, ious, dices = [], [], []
    for c, name in enumerate(classes):
        t, fp, fn = int(tp[c]), int(predicted[c] - tp[c]), int(true[c] - tp[c])
        row: dict[str, Any] = {"class": name, "iou": None, "dice": None, "precision": None, "recall": None,
                               "pixels": int(true[c]), "predicted": int(predicted[c])}
        if t + fp + fn:
            row.update(iou=t / (t + fp + fn), dice=2 * t / (2 * t + fp + fn),
                       precision=t / (t + fp) if t + fp else 0.0, recall=t / (t + fn) if t + fn else 0.0)
            ious.append(row["iou"])
            dices.append(row["dice"])
        per_class.append(row)
    return {"pixel_accuracy": float(tp.sum() / matrix.sum()) if matrix.sum() else 0.0,
            "miou": float(np.mean(ious)) if ious else 0.0, "mean_dice": float(np.mean(dices)) if dices else 0.0,
            "per_class": per_class, "confusion": matrix.tolist()}


# ---------------------------------------------------------------------------------------------------------------------
# Pictures
# ---------------------------------------------------------------------------------------------------------------------


def test_colorize_exact_colours_and_stripes_for_ignore_and_unknown() -> None:
    picture = colorize(MASK, COLORS)
    assert picture.dtype == np.uint8 and picture.shape == (2, 3, 3)
    assert picture[0].tolist() == [[200, 0, 0], [0, 100, 0], [0, 0, 250]] and picture[1, 1].tolist() == [0, 100, 0]
    assert tuple(picture[1, 0]) in HATCH and tuple(picture[1, 2]) in HATCH


def test_overlay_blends_classes_and_leaves_ignored_pixels_alone() -> None:
    image = np.full((2, 3, 3), 100, dtype=np.uint8)
    image[1, 0] = (10, 20, 30)  # the IGNORE pixel: must come back exactly
    blended = overlay(image, MASK, COLORS, alpha=0.5)
    assert blended.dtype == np.uint8 and blended.shape == (2, 3, 3)
    assert blended[0, 0].tolist() == [150, 50, 50]
    assert blended[0, 1].tolist() == [50, 100, 50]
    assert blended[0, 2].tolist() == [50, 50, 175]
    assert blended[1, 0].tolist() == [10, 20, 30]
    assert blended[1, 2].tolist() == [100, 100, 100]  # no colour for index 7: the image as well
    quarter = overlay(image, MASK, COLORS, alpha=0.25)
    assert quarter[0, 0].tolist() == [125, 75, 75]
    assert np.array_equal(overlay(image, MASK, COLORS, alpha=0.0), image)
    assert np.array_equal(overlay(image, MASK, COLORS, alpha=1.0)[0], colorize(MASK, COLORS)[0])


def test_overlay_rejects_bad_input() -> None:
    image = np.zeros((2, 3, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="alpha"):
        overlay(image, MASK, COLORS, alpha=1.5)
    with pytest.raises(ValueError, match="must match"):
        overlay(np.zeros((4, 4, 3), dtype=np.uint8), MASK, COLORS)
    with pytest.raises(ValueError, match=r"\(K, 3\)"):
        colorize(MASK, np.zeros((3, 4), dtype=np.uint8))


def test_side_by_side_sizes_and_nearest_masks() -> None:
    image = np.full((30, 40, 3), 77, dtype=np.uint8)
    truth = np.zeros((30, 40), dtype=np.uint8)
    truth[:, 20:] = 1  # left half class 0, right half class 1
    prediction = np.full((30, 40), 2, dtype=np.uint8)
    prediction[:15] = IGNORE

    four = side_by_side(image, truth, prediction, COLORS, height=60)  # image | truth | prediction | errors
    two = side_by_side(image, None, prediction, COLORS, height=60)
    assert isinstance(four, Image.Image) and four.mode == "RGB"
    panel = 80  # 40 x 30 scaled to 60 high
    strip = four.height - 60
    assert 10 <= strip <= 40 and two.height == four.height  # a caption strip above every panel
    gap = two.width - 2 * panel
    assert 0 <= gap <= 10 and four.width == 4 * panel + 3 * gap

    pixels = np.asarray(four)
    assert np.all(pixels[strip:, :panel] == 77)  # the image panel, scaled
    truth_panel = pixels[strip:, panel + gap : 2 * panel + gap]
    # NEAREST: only the two class colours, no blend at the border between them.
    assert {tuple(v) for v in truth_panel.reshape(-1, 3)} == {(200, 0, 0), (0, 100, 0)}
    prediction_panel = pixels[strip:, 2 * (panel + gap) : 3 * panel + 2 * gap]
    assert prediction_panel[-1, -1].tolist() == [0, 0, 250] and tuple(prediction_panel[0, 0]) in HATCH
    errors_panel = pixels[strip:, 3 * (panel + gap) :]
    assert {tuple(v) for v in errors_panel.reshape(-1, 3)} == {ERROR_COLOR}  # every pixel is wrong
    assert not np.all(pixels[:strip, :panel] == pixels[strip, 0])  # the caption strip is drawn, not blank
    assert np.asarray(two)[-1, -1].tolist() == [0, 0, 250]  # image | prediction


def test_image_score_hand_cases() -> None:
    # class 0: overlap 3, union 4; class 1: overlap 1, union 2; classes 2 and 3 nowhere: left out.
    assert image_score(np.array([[3, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])) == pytest.approx(0.625)
    # class 2 predicted but never true counts as IoU 0; class 1 now 1 / 3.
    with_false_class = np.array([[3, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    assert image_score(with_false_class) == pytest.approx((0.75 + 1 / 3 + 0.0) / 3)
    assert image_score(np.zeros((4, 4), dtype=np.int64)) == 1.0  # every pixel ignored
    assert image_score(np.diag([5, 0, 7])) == 1.0
    with pytest.raises(ValueError, match="square"):
        image_score(np.zeros((2, 3)))


# ---------------------------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------------------------


def test_save_mask_png_round_trip(tmp_path: Path) -> None:
    mask = np.array([[0, 1, 2, 2], [IGNORE, 1, 0, IGNORE]], dtype=np.uint8)
    path = save_mask_png(tmp_path / "sub" / "mask.png", mask, COLORS)
    assert path == tmp_path / "sub" / "mask.png"
    assert [p.name for p in path.parent.iterdir()] == ["mask.png"]  # no temporary file left behind
    with Image.open(path) as opened:
        assert opened.format == "PNG" and opened.mode == "P"
        assert np.array_equal(np.asarray(opened), mask)
        palette = np.array(opened.getpalette(), dtype=np.uint8).reshape(-1, 3)
    assert np.array_equal(palette[:3], COLORS)
    assert len(palette) == 256 and tuple(palette[IGNORE]) == IGNORE_COLOR


def test_save_mask_png_rejects_what_a_palette_cannot_hold(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at most"):
        save_mask_png(tmp_path / "m.png", MASK, np.zeros((256, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        save_mask_png(tmp_path / "m.png", np.array([[-1, 0]]), COLORS)


def test_per_class_csv_is_exact(tmp_path: Path) -> None:
    path = write_per_class_csv(tmp_path / "per_class.csv", _metrics(CONFUSION, CLASSES))
    assert path.read_text() == (
        "class,iou,dice,precision,recall,pixels,predicted\n"
        "road,0.8571,0.9231,0.9474,0.9000,100,95\n"
        "car & bus,0.5000,0.6667,0.6000,0.7500,20,25\n"
        "sky,,,,,0,0\n"
    )


def _assert_png(path: Path) -> None:
    assert path.is_file()
    with Image.open(path) as opened:
        assert opened.format == "PNG" and opened.width > 100


def test_iou_chart_with_no_class_and_with_many(tmp_path: Path) -> None:
    _assert_png(plot_per_class_iou(_metrics(np.zeros((3, 3)), CLASSES), tmp_path / "empty.png"))
    many = [f"class {k}" for k in range(100)]
    _assert_png(plot_per_class_iou(_metrics(np.diag(np.arange(1, 101)) + 1, many), tmp_path / "many.png"))


# ---------------------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------------------


def _gallery(count: int) -> list[tuple[str, Image.Image, float]]:
    image = np.full((20, 30, 3), 120, dtype=np.uint8)
    mask = np.zeros((20, 30), dtype=np.uint8)
    return [(f"img{i}<{i}>.png", side_by_side(image, mask, mask, COLORS, height=40), 0.1 * i) for i in range(count)]


def test_report_writes_every_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    metrics = _metrics(CONFUSION, CLASSES)
    with caplog.at_level(logging.INFO, logger="deepfit"):
        page = write_segmentation_report(tmp_path / "out", "Segmentation <test>", metrics, _gallery(3),
                                         {"model": "unet"}, COLORS)

    out = tmp_path / "out"
    assert page == out / "report.html"
    assert str(page) in caplog.text
    for name in ["per_class_iou.png", "confusion_matrix.png"]:
        _assert_png(out / name)
    assert (out / "per_class.csv").read_text().splitlines()[1] == "road,0.8571,0.9231,0.9474,0.9000,100,95"
    with (out / "confusion.csv").open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["true \\ predicted", *CLASSES] and rows[1] == ["road", "90", "10", "0"]

    text = page.read_text()
    assert "<test>" not in text and "Segmentation &lt;test&gt;" in text and "unet" in text
    assert "road" in text and "car &amp; bus" in text and "sky" in text
    assert "0.679" in text and "0.795" in text and "87.5%" in text  # mean IoU, mean Dice, pixel accuracy
    assert "0.857" in text and "0.500" in text and "83.3%" in text and "16.7%" in text  # per class, pixel shares
    assert "absent" in text  # sky has no pixel anywhere
    assert "#c80000" in text and "#006400" in text  # class swatches in their colours
    assert text.count("data:image/jpeg;base64,") == 3 and text.count("data:image/png;base64,") == 2
    positions = [text.index(f"img{i}&lt;{i}&gt;.png") for i in range(3)]
    assert positions == sorted(positions)  # the gallery keeps the order given
    assert "weakest" in text


def test_report_without_gallery(tmp_path: Path) -> None:
    page = write_segmentation_report(tmp_path, "empty", _metrics(CONFUSION, CLASSES), [], {}, COLORS)
    text = page.read_text()
    assert "No images to show" in text and "data:image/jpeg" not in text


def test_report_with_many_classes_draws_only_those_that_occur(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    classes = [f"c{k:02d}" for k in range(60)]
    occurring = [3, 17, 18, 40, 59]
    confusion = np.zeros((60, 60), dtype=np.int64)
    for i, k in enumerate(occurring[:-1]):
        confusion[k, k] = 10 + i
    confusion[40, 59] = 4  # class 59 occurs only as a prediction
    colors = np.random.default_rng(0).integers(0, 256, (60, 3), dtype=np.uint8)

    drawn: list[list[str]] = []
    original = segmentation_report.plot_confusion_matrix

    def spy(matrix: np.ndarray, names: list[str], path: Path, normalize: bool = True) -> Path:
        drawn.append(list(names))
        assert np.asarray(matrix).shape == (len(names), len(names)) and normalize
        return original(matrix, names, path, normalize)

    monkeypatch.setattr(segmentation_report, "plot_confusion_matrix", spy)
    page = write_segmentation_report(tmp_path, "many", _metrics(confusion, classes), _gallery(1), {}, colors)

    assert drawn == [[classes[k] for k in occurring]]
    text = page.read_text()
    assert "only the 5 of 60 classes" in text
    assert "… and 20 more" in text  # the legend stops at 40 swatches
    assert len((tmp_path / "confusion.csv").read_text().splitlines()) == 61  # the CSV keeps every class
    _assert_png(tmp_path / "confusion_matrix.png")


def test_report_with_few_classes_draws_them_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    drawn: list[list[str]] = []
    monkeypatch.setattr(segmentation_report, "plot_confusion_matrix",
                        lambda matrix, names, path, normalize=True: drawn.append(list(names)) or path)
    page = write_segmentation_report(tmp_path, "few", _metrics(CONFUSION, CLASSES), [], {}, COLORS)
    assert drawn == [CLASSES] and "classes that occur" not in page.read_text()
