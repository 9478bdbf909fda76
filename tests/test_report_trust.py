"""Reports a person can trust (issue 13, item 20), checked on the HTML every task writes, from synthetic predictions:

confidence intervals on every headline figure (and in the metrics files), a warning when the model answers one class
for everything, the training options, examples of every class, a "worst predictions" gallery that holds mistakes
(worst first, tiny images enlarged), training curves for every task, segmentation's ignored pixels unlike its black
background with an error panel, and a detection per-class table without the classes absent from the data.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import logging
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from PIL import Image

from deepfit.config import TrainConfig
from deepfit.report import stats
from deepfit.report.stats import bootstrap_intervals, wilson_interval
from deepfit.tasks.classify.evaluate import report_evaluation
from deepfit.tasks.detect.data import DetectionSample
from deepfit.tasks.detect.evaluate import score_samples as score_detections
from deepfit.tasks.segment.data import SegmentationSample
from deepfit.tasks.segment.evaluate import score_samples as score_segmentation
from deepfit.tasks.segment.pictures import IGNORE, IGNORE_HATCH, colorize
from deepfit.workflows import compare

CLASSES = ["ant", "bee", "wasp"]


def _section(text: str, heading: str) -> str:
    """The HTML between `<h2>heading</h2>` and the next heading (or the end of the page)."""
    start = text.index(f"<h2>{heading}</h2>")
    end = text.find("<h2>", start + 4)
    return text[start:end if end > 0 else None]


def _pictures(html: str) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(data))) for data in re.findall(r'src="data:image/\w+;base64,([^"]+)"', html)]


def _metrics_csv(run: Path, columns: dict[str, list[float]]) -> None:
    with (run / "metrics.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", "train_loss", *columns])
        for epoch in range(3):
            writer.writerow([epoch + 1, 1.0 / (epoch + 1), *(values[epoch] for values in columns.values())])


# --- the statistics ------------------------------------------------------------------------------------------------


def test_wilson_interval_and_seeded_bootstrap() -> None:
    interval = wilson_interval(8, 10)
    assert (interval.low, interval.high) == pytest.approx((0.4902, 0.9433), abs=1e-4) and interval.method == "wilson"
    assert wilson_interval(0, 10).low == 0.0 and wilson_interval(0, 10).high == pytest.approx(0.2775, abs=1e-4)
    values = np.random.default_rng(0).normal(5.0, 1.0, 400)
    mean = bootstrap_intervals(lambda w: [float(w @ values / w.sum())], len(values), ["mean"])["mean"]
    again = bootstrap_intervals(lambda w: [float(w @ values / w.sum())], len(values), ["mean"])["mean"]
    assert mean == again and mean.low < values.mean() < mean.high  # seeded: the same report twice
    assert mean.high - mean.low == pytest.approx(2 * 1.96 / np.sqrt(400), rel=0.2)
    assert compare.standard_error is stats.standard_error  # one statistics module: compare reuses it


# --- classification -------------------------------------------------------------------------------------------------


def _classification_run(tmp_path: Path) -> tuple[Path, list[Path], dict[str, Any]]:
    run = tmp_path / "run"
    run.mkdir()
    paths = []
    for i in range(12):  # 8 x 8 pictures, as scikit-learn's digits
        path = tmp_path / "images" / f"img{i:02d}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), 20 * i, np.uint8)).save(path)
        paths.append(path)
    _metrics_csv(run, {"val_loss": [1.0, 0.8, 0.7], "train_acc": [0.5, 0.7, 0.8], "val_acc": [0.4, 0.6, 0.75]})
    meta = {"classes": CLASSES, "model": {"source": "deepfit", "name": "cnn"}, "epoch": 3, "val_acc": 0.75,
            "preprocessing": {"image_size": 16}, "config": TrainConfig(model="cnn", epochs=3, lr=0.02).to_dict()}
    return run, paths, meta


def _probs(y_true: np.ndarray, true_prob: list[float], predicted: list[int]) -> np.ndarray:
    """Probabilities giving `true_prob[i]` to the true class and the rest to the predicted one (shared by the two
    other classes when the prediction is right)."""
    probs = np.zeros((len(y_true), len(CLASSES)))
    for i, (t, p, q) in enumerate(zip(y_true, predicted, true_prob, strict=True)):
        others = [p] if p != t else [c for c in range(len(CLASSES)) if c != t]
        probs[i, t] = q
        probs[i, others] = (1.0 - q) / len(others)
    return probs


def test_classification_report_intervals_worst_examples_options_and_curves(tmp_path: Path) -> None:
    run, paths, meta = _classification_run(tmp_path)
    y_true = np.repeat([0, 1, 2], 4)
    # two mistakes (images 10 and 11), and one right answer given only 34% (image 3): it must not be a "mistake"
    true_prob = [0.9, 0.8, 0.95, 0.34, 0.9, 0.9, 0.85, 0.9, 0.9, 0.8, 0.2, 0.05]
    predicted = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 0, 1]
    evaluation = report_evaluation(run, meta, split="test", paths=paths, y_true=y_true,
                                   probs=_probs(y_true, true_prob, predicted), bad=[])
    text = evaluation.report.read_text()

    saved = json.loads((run / "test_metrics.json").read_text())["intervals"]
    assert saved["accuracy"]["method"] == "wilson" and saved["macro_f1"]["method"] == "bootstrap"
    assert saved["accuracy"]["low"] <= evaluation.metrics["accuracy"] <= saved["accuracy"]["high"]
    assert text.count("95% CI") == 3 and f"95% CI {100 * saved['accuracy']['low']:.1f}%" in text

    worst = _section(text, "Worst predictions")
    assert worst.index("img11.png") < worst.index("img10.png")  # 5% for the truth before 20%
    assert "img03.png" not in worst  # right answers never fill the "wrong" gallery
    assert all(min(p.size) >= 128 for p in _pictures(worst))  # 8 x 8 pictures enlarged, pixel by pixel

    examples = _section(text, "Examples of every class")
    assert all(f'<div class="name">{name}</div>' in examples for name in CLASSES)
    assert len(_pictures(examples)) == 12 and all(p.size == (128, 128) for p in _pictures(examples))

    options = _section(text, "Training options")
    assert "--epochs</td><td>3" in options and "--lr</td><td>0.02" in options and "--model</td><td>cnn" in options
    assert "Training curves" in text and (run / "training_curves.png").is_file()


def test_classification_without_mistakes_titles_its_gallery_so(tmp_path: Path) -> None:
    run, paths, meta = _classification_run(tmp_path)
    y_true = np.repeat([0, 1, 2], 4)
    true_prob = [0.9, 0.8, 0.95, 0.34, 0.9, 0.9, 0.85, 0.9, 0.9, 0.8, 0.6, 0.7]
    text = report_evaluation(run, meta, split="test", paths=paths, y_true=y_true, bad=[],
                             probs=_probs(y_true, true_prob, list(y_true))).report.read_text()
    assert "<h2>Worst predictions</h2>" not in text
    gallery = _section(text, "No mistakes: the least sure correct predictions")
    assert gallery.index("img03.png") < gallery.index("img10.png")  # the least sure first


def test_a_classifier_that_answers_one_class_is_flagged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run, paths, meta = _classification_run(tmp_path)
    y_true = np.repeat([0, 1, 2], 4)
    with caplog.at_level(logging.WARNING, logger="deepfit"):
        text = report_evaluation(run, meta, split="test", paths=paths, y_true=y_true, bad=[],
                                 probs=np.tile([0.1, 0.8, 0.1], (12, 1))).report.read_text()
    assert "predicts one class, &#x27;bee&#x27;, for 100.0% of the test images" in text
    assert any("predicts one class" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")


# --- detection ------------------------------------------------------------------------------------------------------


def _detector(tmp_path: Path, predictions: list[dict[str, np.ndarray]]) -> tuple[Any, list[DetectionSample]]:
    """Two test images (a cat; a dog), a class never seen (bird), and a fake predictor answering `predictions`."""
    samples = []
    for i, (box, label) in enumerate([([10, 8, 40, 30], 0), ([20, 10, 56, 40], 1)]):
        path = tmp_path / f"photo{i}.png"
        image = np.full((48, 64, 3), 90, np.uint8)
        image[box[1]:box[3], box[0]:box[2]] = (200, 60, 60)
        Image.fromarray(image).save(path)
        samples.append(DetectionSample(path, 64, 48, np.array([box], np.float32), np.array([label])))
    config = TrainConfig(task="detect", epochs=3).to_dict()
    trained = SimpleNamespace(masks=False, classes=["cat", "dog", "bird"], class_ids=None, image_size=64,
                              spec=SimpleNamespace(name="fake"), meta={"task": "detect", "epoch": 3, "config": config})
    answers = {s.path: p for s, p in zip(samples, predictions, strict=True)}
    predictor = SimpleNamespace(trained=trained, device="cpu",
                                predict=lambda paths, conf, iou: [answers[Path(p)] for p in paths])
    return predictor, samples


def _detections(boxes: list[list[float]], labels: list[int]) -> dict[str, np.ndarray]:
    return {"boxes": np.array(boxes, np.float32).reshape(-1, 4), "labels": np.array(labels, np.int64),
            "scores": np.full(len(labels), 0.9, np.float32)}


def test_detection_report_intervals_curves_examples_absent_classes_and_worst(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    _metrics_csv(run, {"val_map": [0.1, 0.2, 0.3], "val_map50": [0.2, 0.4, 0.5]})
    predictor, samples = _detector(tmp_path, [_detections([[10, 8, 40, 30]], [0]), _detections([], [])])
    evaluation = score_detections(run, predictor, "test", samples)
    text = evaluation.report.read_text()

    assert text.count("95% CI") == 3 and "method" in json.loads((run / "evaluation.json").read_text())["box"]["intervals"]["map"]
    table = _section(text, "Per-class results")
    assert "bird" not in table and "1 of 3 classes are left out" in table  # no bird, and none predicted
    assert "Training curves" in text and (run / "training_curves.png").is_file()
    assert "--epochs</td><td>3" in _section(text, "Training options")
    examples = _section(text, "Examples of every class")
    assert len(_pictures(examples)) == 2 and "no example in the evaluated images" in examples  # cat, dog; bird none
    gallery = _section(text, "Predictions, worst first")
    assert "photo1.png" in gallery and "photo0.png" not in gallery  # the missed dog only: photo0 is perfect


@pytest.mark.parametrize(("answers", "expected"), [
    ([[], []], "made no detections scoring at least 0.25 at all"),
    ([[0], [0]], "predicts one class, &#x27;cat&#x27;, for 100.0% of the detections"),
])
def test_a_detector_that_finds_nothing_or_one_class_is_flagged(tmp_path: Path, answers: list[list[int]], expected: str) -> None:
    boxes = [[10, 8, 40, 30], [20, 10, 56, 40]]
    predictions = [_detections([boxes[i]] * len(labels), labels) for i, labels in enumerate(answers)]
    predictor, samples = _detector(tmp_path, predictions)
    text = score_detections(tmp_path, predictor, "test", samples).report.read_text()
    assert expected in text


# --- semantic segmentation ------------------------------------------------------------------------------------------


def _segmenter(tmp_path: Path, predictions: list[np.ndarray]) -> tuple[Any, Any, list[SegmentationSample]]:
    """Three 32 x 32 test images of a black background, a red and a blue square and an ignored band."""
    masks, samples = {}, []
    for i in range(3):
        mask = np.zeros((32, 32), np.uint8)
        mask[4:14, 4:14], mask[16:28, 16:28], mask[:, 30:] = 1, 2, IGNORE
        path = tmp_path / f"scan{i}.png"
        Image.fromarray(np.where(mask[:, :, None] == 1, (220, 30, 30), 120).astype(np.uint8)).save(path)
        masks[path] = mask
        samples.append(SegmentationSample(path, None, 32, 32))
    dataset = SimpleNamespace(read_mask=lambda sample: masks[sample.path])
    colors = np.array([[0, 0, 0], [220, 30, 30], [30, 30, 220]], np.uint8)  # background black, as in Pascal VOC
    trained = SimpleNamespace(classes=["background", "red", "blue"], colors=colors, spec=SimpleNamespace(name="fake"),
                              meta={"epoch": 2, "config": TrainConfig(task="segment", epochs=2).to_dict()})
    answers = iter(predictions)
    predictor = SimpleNamespace(trained=trained, tile=1024, device="cpu", predict_one=lambda image: next(answers))
    return predictor, dataset, samples


def test_segmentation_report_intervals_stripes_errors_examples_curves_and_worst(tmp_path: Path) -> None:
    right = np.zeros((32, 32), np.uint8)
    right[4:14, 4:14], right[16:28, 16:28] = 1, 2
    wrong = right.copy()
    wrong[16:28, 16:28] = 1  # the blue square called red
    predictor, dataset, samples = _segmenter(tmp_path, [right, wrong, right])
    _metrics_csv(tmp_path, {"val_loss": [1.0, 0.9, 0.8], "val_miou": [0.2, 0.4, 0.5], "val_pixel_acc": [0.5, 0.7, 0.8]})
    evaluation = score_segmentation(tmp_path, predictor, "test", dataset, samples)
    text = evaluation.report.read_text()

    assert text.count("95% CI") == 3 and set(evaluation.metrics["intervals"]) == {"miou", "mean_dice", "pixel_accuracy"}
    assert json.loads((tmp_path / "evaluation.json").read_text())["intervals"]["miou"]["method"] == "bootstrap"
    gallery = _section(text, "Predictions, worst first")
    assert "scan1.png" in gallery and "scan0.png" not in gallery  # only the image with wrong pixels
    assert 'class="swatch ignored"' in gallery and "errors panel" in gallery  # striped "ignored" in the legend
    strip = _pictures(gallery)[0]
    assert strip.width > 3.5 * strip.height  # image | truth | prediction | errors
    picture = colorize(np.array([[0, IGNORE]]), predictor.trained.colors)
    assert picture[0, 0].tolist() == [0, 0, 0] and tuple(picture[0, 1]) in {tuple(c) for c in IGNORE_HATCH}
    # every class in each image where some of its pixels were predicted right: blue is wrong all over scan1
    assert len(_pictures(_section(text, "Examples of every class"))) == 3 + 3 + 2
    assert "Training curves" in text and "--loss</td><td>ce" in _section(text, "Training options")


def test_a_segmenter_that_paints_one_class_is_flagged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    predictor, dataset, samples = _segmenter(tmp_path, [np.zeros((32, 32), np.uint8)] * 3)
    with caplog.at_level(logging.WARNING, logger="deepfit"):
        text = score_segmentation(tmp_path, predictor, "test", dataset, samples).report.read_text()
    assert "predicts one class, &#x27;background&#x27;, for 100.0% of the labelled pixels" in text
    assert any("predicts one class" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert "No mistakes" not in text
