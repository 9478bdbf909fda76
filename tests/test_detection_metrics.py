"""COCO metrics: hand-computed cases, and the same numbers as pycocotools run on COCO files the usual way."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from deepfit.tasks.detect.objective import coco_metrics, to_coco

CLASSES = ["cat", "dog"]


def _target(boxes: list[list[float]], labels: list[int], h: int = 100, w: int = 100) -> dict:
    masks = np.zeros((len(boxes), h, w), dtype=bool)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        masks[i, int(y1) : int(y2), int(x1) : int(x2)] = True
    return {"boxes": np.array(boxes, dtype=float).reshape(-1, 4), "labels": np.array(labels), "height": h, "width": w,
            "masks": masks}


def _pred(boxes: list[list[float]], scores: list[float], labels: list[int]) -> dict:
    t = _target(boxes, labels)
    return {"boxes": t["boxes"], "scores": np.array(scores), "labels": t["labels"], "masks": t["masks"]}


def test_a_perfect_detection_scores_one() -> None:
    m = coco_metrics([_target([[10, 10, 50, 50]], [0])], [_pred([[10, 10, 50, 50]], [0.9], [0])], CLASSES)
    assert m["map"] == pytest.approx(1.0) and m["map50"] == pytest.approx(1.0)
    assert m["per_class"][0]["ap"] == pytest.approx(1.0) and m["per_class"][1]["ap"] is None  # no dogs to find


def test_iou_062_counts_at_three_of_ten_thresholds() -> None:
    # ground truth 40x40; prediction shifted right by 9: IoU = 31*40 / (49*40) = 0.633 -> matched at .50, .55, .60
    m = coco_metrics([_target([[10, 10, 50, 50]], [0])], [_pred([[19, 10, 59, 50]], [0.9], [0])], CLASSES)
    assert m["map50"] == pytest.approx(1.0) and m["map75"] == pytest.approx(0.0)
    assert m["map"] == pytest.approx(0.3)


def test_a_confident_false_positive_halves_the_precision() -> None:
    # detections by score: a wrong box (0.9), then the right one (0.8): precision 1/2 at recall 1 -> AP 0.5
    preds = _pred([[60, 60, 90, 90], [10, 10, 50, 50]], [0.9, 0.8], [0, 0])
    m = coco_metrics([_target([[10, 10, 50, 50]], [0])], [preds], CLASSES)
    assert m["map"] == pytest.approx(0.5)
    curve = m["pr_curves"][0]
    assert len(curve["recall"]) == 101 and curve["precision"][-1] == pytest.approx(0.5)


def test_no_detections_score_zero() -> None:
    empty = {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, dtype=int), "masks": np.zeros((0, 100, 100))}
    m = coco_metrics([_target([[10, 10, 50, 50]], [0])], [empty], CLASSES)
    assert m["map"] == 0.0 and m["map50"] == 0.0


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_agrees_with_pycocotools_on_files(iou_type: str, tmp_path: Path) -> None:
    """Random scenes scored by deepfit, and by pycocotools reading the same data from JSON files."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(0)
    targets, predictions = [], []
    for _ in range(6):
        boxes, labels = [], []
        for _ in range(int(rng.integers(1, 5))):
            x, y = rng.integers(0, 60, 2)
            w, h = rng.integers(8, 40, 2)
            boxes.append([x, y, min(x + w, 99), min(y + h, 99)])
            labels.append(int(rng.integers(0, 2)))
        targets.append(_target(boxes, labels))
        jittered = [[v + rng.normal(0, 3) for v in b] for b in boxes] + [[5, 5, 30, 30]]
        jittered = [[max(0, b[0]), max(0, b[1]), min(99, max(b[2], b[0] + 2)), min(99, max(b[3], b[1] + 2))] for b in jittered]
        predictions.append(_pred(jittered, rng.random(len(jittered)).tolist(), [*labels, int(rng.integers(0, 2))]))
    ours = coco_metrics(targets, predictions, CLASSES, iou_type)

    gt_dict, results = to_coco(targets, predictions, len(CLASSES), iou_type)
    (tmp_path / "gt.json").write_text(json.dumps(gt_dict))
    (tmp_path / "dt.json").write_text(json.dumps(results))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(tmp_path / "gt.json"))
        evaluator = COCOeval(gt, gt.loadRes(str(tmp_path / "dt.json")), iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert ours["map"] == pytest.approx(evaluator.stats[0]) and 0.2 < ours["map"] < 0.95
    assert ours["map50"] == pytest.approx(evaluator.stats[1])
    assert ours["map75"] == pytest.approx(evaluator.stats[2])
