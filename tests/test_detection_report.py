"""Detection outputs: drawings show boxes where they are, the match score, COCO results pycocotools reads, CSV, report."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deepfit.tasks.detect.objective import coco_metrics
from deepfit.tasks.detect.outputs import write_coco_results, write_detections_csv
from deepfit.tasks.detect.report import (
    draw_detections,
    image_score,
    plot_per_class_ap,
    plot_pr_curves,
    write_detection_report,
)

CLASSES = ["cat", "dog", "bird"]  # no bird anywhere: a class without ground truth
H, W = 60, 80


def _masks(boxes: list[list[float]]) -> np.ndarray:
    masks = np.zeros((len(boxes), H, W), dtype=bool)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        masks[i, int(y1) : int(y2), int(x1) : int(x2)] = True
    return masks


def _truth(boxes: list[list[float]], labels: list[int]) -> dict:
    return {"boxes": np.array(boxes, dtype=float).reshape(-1, 4), "labels": np.array(labels, dtype=int),
            "masks": _masks(boxes), "height": H, "width": W}


def _pred(boxes: list[list[float]], labels: list[int], scores: list[float]) -> dict:
    t = _truth(boxes, labels)
    return {"boxes": t["boxes"], "labels": t["labels"], "scores": np.array(scores, dtype=float), "masks": t["masks"]}


TRUTHS = [_truth([[10, 10, 40, 40], [50, 20, 70, 50]], [0, 1]), _truth([[5, 5, 30, 25]], [1])]
PREDS = [_pred([[10, 10, 40, 40], [52, 20, 70, 50]], [0, 1], [0.9, 0.8]), _pred([], [], [])]


# ---------------------------------------------------------------------------------------------------------------------
# Drawing
# ---------------------------------------------------------------------------------------------------------------------


def test_drawing_marks_the_box_and_leaves_the_rest_alone() -> None:
    image = np.full((H, W, 3), 128, dtype=np.uint8)
    drawn = np.asarray(draw_detections(image, _pred([[20, 15, 50, 45]], [0], [0.87]), CLASSES))
    assert drawn.shape == (H, W, 3)
    changed = (drawn != image).any(axis=2)
    assert changed[30, 20] and changed[15, 35]  # on the left and the top edge
    # away from the box and from its label (which may run past the box's right edge at the top): untouched
    assert not changed[:14].any() and not changed[47:].any() and not changed[:, :19].any()
    assert not changed[30:, 52:].any()


@pytest.mark.parametrize("kind", ["pil", "tensor"])
def test_drawing_accepts_pil_and_tensors_with_masks_and_truth(kind: str) -> None:
    array = np.full((H, W, 3), 40, dtype=np.uint8)
    image = Image.fromarray(array) if kind == "pil" else torch.from_numpy(array).permute(2, 0, 1)
    pred = {key: torch.as_tensor(value) for key, value in _pred([[10, 10, 40, 40]], [1], [0.5]).items()}
    drawn = np.asarray(draw_detections(image, pred, CLASSES, truth=_truth([[45, 30, 75, 55]], [0])))
    assert drawn.shape == (H, W, 3)
    assert (drawn[25, 25] != 40).any()  # inside the mask: blended with the class colour
    assert (drawn[42, 60] == 40).all()  # inside the true box, off its outline: untouched
    assert (drawn[42, 45] > 200).all() and (drawn[42, 44] < 40).all() and (drawn[42, 46] < 40).all()  # white, dark edges


def test_drawing_nothing_returns_the_image() -> None:
    image = np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)
    drawn = draw_detections(image, _pred([], [], []), CLASSES, truth=_truth([], []))
    assert drawn.size == (W, H) and (np.asarray(drawn) == image).all()


# ---------------------------------------------------------------------------------------------------------------------
# Per-image score
# ---------------------------------------------------------------------------------------------------------------------


def test_image_score_cases() -> None:
    truth = _truth([[10, 10, 40, 40], [50, 20, 70, 50]], [0, 1])
    assert image_score(truth, _pred([[10, 10, 40, 40], [50, 20, 70, 50]], [0, 1], [0.9, 0.8])) == 1.0
    assert image_score(truth, _pred([[10, 10, 40, 40]], [0], [0.9])) == pytest.approx(2 / 3)  # one miss
    assert image_score(truth, _pred([[10, 10, 40, 40], [50, 20, 70, 50]], [0, 0], [0.9, 0.8])) == pytest.approx(0.5)
    # a low-confidence false positive is ignored; the same box above the threshold costs precision
    assert image_score(truth, _pred([[10, 10, 40, 40], [50, 20, 70, 50], [0, 0, 5, 5]], [0, 1, 0], [0.9, 0.8, 0.1])) == 1.0
    assert image_score(truth, _pred([[10, 10, 40, 40], [50, 20, 70, 50], [0, 0, 5, 5]], [0, 1, 0], [0.9, 0.8, 0.3])) == 0.8
    assert image_score(_truth([], []), _pred([], [], [])) == 1.0
    assert image_score(_truth([], []), _pred([[0, 0, 5, 5]], [0], [0.9])) == 0.0
    assert image_score(truth, _pred([], [], [])) == 0.0


def test_image_score_matches_each_truth_once() -> None:
    truth = _truth([[10, 10, 40, 40]], [0])
    twice = _pred([[10, 10, 40, 40], [11, 10, 40, 40]], [0, 0], [0.9, 0.8])  # a duplicate is a false positive
    assert image_score(truth, twice) == pytest.approx(2 / 3)
    assert image_score(truth, _pred([[25, 10, 55, 40]], [0], [0.9]), iou=0.5) == 0.0  # IoU 0.33


# ---------------------------------------------------------------------------------------------------------------------
# Files of predictions
# ---------------------------------------------------------------------------------------------------------------------


def _coco_ap(gt_dict: dict, results_path: Path, iou_type: str) -> float:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = gt_dict
        gt.createIndex()
        dt = gt.loadRes(str(results_path))
        evaluator = COCOeval(gt, dt, iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return float(evaluator.stats[0])


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_coco_results_round_trip_through_pycocotools(iou_type: str, tmp_path: Path) -> None:
    from pycocotools import mask as mask_utils

    class_ids, image_ids = [3, 7, 9], [101, 205]  # COCO-style ids with gaps
    annotations = []
    for image_id, truth in zip(image_ids, TRUTHS, strict=True):
        for box, label, mask in zip(truth["boxes"], truth["labels"], truth["masks"], strict=True):
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            x1, y1, x2, y2 = box.tolist()
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": class_ids[label],
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": float(mask.sum()), "iscrowd": 0,
                                "segmentation": rle})
    gt_dict = {"images": [{"id": i, "height": H, "width": W} for i in image_ids], "annotations": annotations,
               "categories": [{"id": c, "name": n} for c, n in zip(class_ids, CLASSES, strict=True)]}
    perfect = [_pred(t["boxes"].tolist(), t["labels"].tolist(), [0.9] * len(t["labels"])) for t in TRUTHS]
    if iou_type == "bbox":
        for p in perfect:
            del p["masks"]

    path = write_coco_results(tmp_path / "results.json", ["a.jpg", "b.jpg"], perfect, class_ids, image_ids)
    results = json.loads(path.read_text())
    assert len(results) == 3 and {r["file_name"] for r in results} == {"a.jpg", "b.jpg"}
    assert results[0]["bbox"] == [10.0, 10.0, 30.0, 30.0] and results[0]["category_id"] == 3
    assert ("segmentation" in results[0]) == (iou_type == "segm")
    assert _coco_ap(gt_dict, path, iou_type) == pytest.approx(1.0)


def test_coco_results_default_ids(tmp_path: Path) -> None:
    path = write_coco_results(tmp_path / "r.json", ["a.jpg", "b.jpg"], [PREDS[1], PREDS[0]])
    results = json.loads(path.read_text())
    assert {r["image_id"] for r in results} == {2} and [r["category_id"] for r in results] == [1, 2]
    assert write_coco_results(tmp_path / "empty.json", ["a.jpg"], [PREDS[1]]).read_text() == "[]"


def test_detections_csv_lists_every_image(tmp_path: Path) -> None:
    tensor_pred = {key: torch.as_tensor(value) for key, value in PREDS[0].items()}
    path = write_detections_csv(tmp_path / "d.csv", ["a.jpg", "b.jpg"], [tensor_pred, PREDS[1]], CLASSES)
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["path", "class", "score", "x1", "y1", "x2", "y2", "mask_area"]
    assert len(rows) == 3
    assert rows[0] == {"path": "a.jpg", "class": "cat", "score": "0.9000", "x1": "10.00", "y1": "10.00", "x2": "40.00",
                       "y2": "40.00", "mask_area": "900"}
    assert rows[1]["class"] == "dog" and rows[1]["mask_area"] == "540"
    assert rows[2] == {"path": "b.jpg", "class": "", "score": "", "x1": "", "y1": "", "x2": "", "y2": "", "mask_area": ""}
    no_masks = {key: value for key, value in PREDS[0].items() if key != "masks"}
    path = write_detections_csv(tmp_path / "n.csv", ["a.jpg"], [no_masks], CLASSES)
    with path.open(newline="") as handle:
        assert all(row["mask_area"] == "" for row in csv.DictReader(handle))


# ---------------------------------------------------------------------------------------------------------------------
# Plots and report
# ---------------------------------------------------------------------------------------------------------------------


def _assert_png(path: Path) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 100 and image.height > 100


def test_plots_handle_no_ground_truth(tmp_path: Path) -> None:
    metrics = coco_metrics([_truth([], [])], [_pred([], [], [])], CLASSES)
    _assert_png(plot_pr_curves(metrics, tmp_path / "pr.png"))
    _assert_png(plot_per_class_ap(metrics, tmp_path / "ap.png"))


def test_report_writes_every_file(tmp_path: Path) -> None:
    box = coco_metrics(TRUTHS, PREDS, CLASSES, "bbox")
    mask = coco_metrics(TRUTHS, PREDS, CLASSES, "segm")
    image = np.full((H, W, 3), 90, dtype=np.uint8)
    scores = [image_score(t, p) for t, p in zip(TRUTHS, PREDS, strict=True)]
    drawn = [draw_detections(image, p, CLASSES, t) for t, p in zip(TRUTHS, PREDS, strict=True)]
    gallery = sorted(zip(["a.jpg", "b<x>.jpg"], drawn, scores, strict=True), key=lambda item: item[2])
    page = write_detection_report(tmp_path / "out", "Detection <test>", box, mask, gallery, {"model": "fasterrcnn"})

    assert page == tmp_path / "out" / "report.html"
    for name in ["pr_curves_box.png", "per_class_ap_box.png", "pr_curves_mask.png", "per_class_ap_mask.png"]:
        _assert_png(tmp_path / "out" / name)
    with (tmp_path / "out" / "per_class_ap.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["class"] for r in rows] == CLASSES and list(rows[0]) == ["class", "ap", "ap50", "mask_ap", "mask_ap50"]
    assert rows[2]["ap"] == "" and float(rows[0]["ap"]) == pytest.approx(box["per_class"][0]["ap"], abs=1e-4)

    text = page.read_text()
    for value in (box["map"], box["map50"], box["map75"], mask["map"]):
        assert f"{value:.3f}" in text
    assert text.count("data:image/jpeg;base64,") == 2 and text.count("data:image/png;base64,") == 4
    assert text.index("b&lt;x&gt;.jpg") < text.index("a.jpg")  # worst (the missed dog) first, names escaped
    assert "<test>" not in text and "fasterrcnn" in text
    assert "1 of 3 classes are left out" in text  # bird: no object and no detection anywhere


def test_report_without_masks_and_gallery(tmp_path: Path) -> None:
    box = coco_metrics(TRUTHS, PREDS, CLASSES, "bbox")
    page = write_detection_report(tmp_path, "boxes only", box, None, [], {})
    assert not (tmp_path / "pr_curves_mask.png").exists() and (tmp_path / "per_class_ap_box.png").is_file()
    assert (tmp_path / "per_class_ap.csv").read_text().splitlines()[0] == "class,ap,ap50"
    assert "Mask mAP" not in page.read_text() and "No images to show" in page.read_text()
