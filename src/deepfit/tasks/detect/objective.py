"""COCO metrics for detection and instance segmentation, computed by pycocotools itself.

Why not our own implementation: the COCO numbers people compare against are defined by pycocotools'
COCOeval (its 101-point interpolation, area ranges, crowd handling and 100 detections per image).
Calling it on in-memory COCO dictionaries gives exactly those numbers, with no file round trip.

    targets[i]     = {"boxes": (N, 4) xyxy pixels, "labels": (N,) 0-based, "height": H, "width": W,
                      optional "masks": (N, H, W) bool, optional "iscrowd": (N,)}
    predictions[i] = {"boxes": (M, 4), "scores": (M,), "labels": (M,), optional "masks": (M, H, W) bool}
    (masks may also be lists of COCO RLE dicts: full-size masks of a whole data set do not fit in memory)
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

# The index of "all areas" and of "100 detections per image" in COCOeval's precision array.
_ALL_AREAS, _MAX_DETS = 0, 2


def _rle(mask: np.ndarray | dict[str, Any], threshold: float = 0.5) -> dict[str, Any]:
    """COCO RLE of a mask (bool, or probabilities cut at `threshold`), or of an RLE already made."""
    from pycocotools import mask as mask_utils

    if isinstance(mask, dict):
        rle = dict(mask)
    else:
        mask = np.asarray(mask)
        rle = mask_utils.encode(np.asfortranarray((mask > threshold if mask.dtype != bool else mask).astype(np.uint8)))
    if isinstance(rle["counts"], bytes):
        rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _xywh(box: np.ndarray) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def to_coco(
    targets: list[dict[str, Any]], predictions: list[dict[str, Any]], num_classes: int, iou_type: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Ground truth as a COCO dataset dict and predictions as a COCO results list (category id = label + 1)."""
    images, annotations, results = [], [], []
    for image_id, (t, p) in enumerate(zip(targets, predictions, strict=True), start=1):
        images.append({"id": image_id, "height": int(t["height"]), "width": int(t["width"])})
        crowd = np.asarray(t.get("iscrowd", np.zeros(len(t["labels"]))), dtype=int)
        for j, (box, label) in enumerate(zip(np.asarray(t["boxes"]), np.asarray(t["labels"]), strict=True)):
            ann = {"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label) + 1,
                   "bbox": _xywh(box), "iscrowd": int(crowd[j])}
            if iou_type == "segm":
                from pycocotools import mask as mask_utils

                ann["segmentation"] = _rle(t["masks"][j])
                ann["area"] = float(mask_utils.area(ann["segmentation"]))
            else:
                ann["area"] = ann["bbox"][2] * ann["bbox"][3]
            annotations.append(ann)
        for j, (box, score, label) in enumerate(zip(np.asarray(p["boxes"]), np.asarray(p["scores"]), np.asarray(p["labels"]), strict=True)):
            res = {"image_id": image_id, "category_id": int(label) + 1, "bbox": _xywh(box), "score": float(score)}
            if iou_type == "segm":
                res["segmentation"] = _rle(p["masks"][j])
            results.append(res)
    categories = [{"id": k + 1, "name": str(k)} for k in range(num_classes)]
    return {"images": images, "annotations": annotations, "categories": categories}, results


def coco_metrics(
    targets: list[dict[str, Any]], predictions: list[dict[str, Any]], classes: list[str], iou_type: str = "bbox", *,
    intervals: bool = False,
) -> dict[str, Any]:
    """mAP@[.50:.95], mAP@.50, mAP@.75, AP per class and the precision-recall curve (IoU .50) per class.

    Each class's row also counts its true objects (`objects`, crowd regions included) and its predictions
    (`detections`). With `intervals`, the three mAPs get 95% bootstrap intervals over the images (`intervals`)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', not {iou_type!r}")
    gt_dict, results = to_coco(targets, predictions, len(classes), iou_type)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and the summary table
        gt = COCO()
        gt.dataset = gt_dict
        gt.createIndex()
        dt = gt.loadRes(results) if results else COCO()
        if not results:  # no detection at all: every AP is 0, not an error
            dt.dataset = {"images": gt_dict["images"], "annotations": [], "categories": gt_dict["categories"]}
            dt.createIndex()
        evaluator = COCOeval(gt, dt, iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    precision = evaluator.eval["precision"]  # (IoU thresholds, recall points, classes, areas, max dets)
    objects = np.bincount([a["category_id"] - 1 for a in gt_dict["annotations"]], minlength=len(classes))
    detections = np.bincount([r["category_id"] - 1 for r in results], minlength=len(classes))
    per_class, curves = [], []
    for k, name in enumerate(classes):
        p = precision[:, :, k, _ALL_AREAS, _MAX_DETS]
        has_gt = bool((p > -1).any())
        per_class.append({"class": name, "ap": float(p[p > -1].mean()) if has_gt else None,
                          "ap50": float(p[0][p[0] > -1].mean()) if has_gt else None,
                          "objects": int(objects[k]), "detections": int(detections[k])})
        curves.append({"class": name, "recall": evaluator.params.recThrs.tolist(),
                       "precision": np.clip(p[0], 0, None).tolist() if has_gt else []})
    stats = evaluator.stats
    return {
        "iou_type": iou_type, "map": float(max(stats[0], 0.0)), "map50": float(max(stats[1], 0.0)),
        "map75": float(max(stats[2], 0.0)), "per_class": per_class, "pr_curves": curves,
        "num_images": len(targets), "num_objects": len(gt_dict["annotations"]),
        **({"intervals": map_intervals(evaluator)} if intervals else {}),
    }


# --- confidence intervals of mAP ----------------------------------------------------------------------


def _class_tables(evaluator: Any) -> list[tuple[np.ndarray, np.ndarray, np.ndarray] | None]:
    """Per class, what COCOeval's accumulate reads, all images at once, detections sorted by score (as it does):
    (image of each detection (D,), counted true positive (T, D) -1/0/1 as +tp/-fp/ignored, non-ignored true objects
    per image (N,)); None for a class with neither objects nor detections anywhere."""
    n_images, n_areas = len(evaluator.params.imgIds), len(evaluator.params.areaRng)
    tables: list[tuple[np.ndarray, np.ndarray, np.ndarray] | None] = []
    for k in range(len(evaluator.params.catIds)):
        start = k * n_areas * n_images + _ALL_AREAS * n_images
        entries = [(i, e) for i, e in enumerate(evaluator.evalImgs[start:start + n_images]) if e is not None]
        if not entries:
            tables.append(None)
            continue
        scores = np.concatenate([np.asarray(e["dtScores"], dtype=np.float64) for _, e in entries])
        owner = np.concatenate([np.full(len(e["dtScores"]), i) for i, e in entries]).astype(np.int64)
        matched = np.concatenate([e["dtMatches"] for _, e in entries], axis=1) > 0
        ignored = np.concatenate([e["dtIgnore"] for _, e in entries], axis=1).astype(bool)
        truth = np.zeros(n_images)
        for i, e in entries:
            truth[i] = np.count_nonzero(np.asarray(e["gtIgnore"]) == 0)
        order = np.argsort(-scores, kind="mergesort")  # pycocotools' own sort, so equal scores keep its order
        outcome = np.where(ignored, 0, np.where(matched, 1, -1))[:, order]
        tables.append((owner[order], outcome, truth))
    return tables


def _resampled_maps(tables: list, weights: np.ndarray, rec_thrs: np.ndarray) -> tuple[float, float, float]:
    """(mAP@[.50:.95], mAP@.50, mAP@.75) with image i counted weights[i] times: COCOeval's accumulate and
    summarize for all areas and 100 detections, with weighted counts instead of repeated images."""
    n_thresholds = next((t[1].shape[0] for t in tables if t is not None), 10)
    precision = -np.ones((n_thresholds, len(rec_thrs), len(tables)))
    for k, table in enumerate(tables):
        if table is None:
            continue
        owner, outcome, truth = table
        positives = float(weights @ truth)
        if positives == 0:
            continue
        w = weights[owner]
        keep = w > 0
        outcome, w = outcome[:, keep], w[keep]
        precision[:, :, k] = 0.0
        if not w.size:
            continue
        tp = np.cumsum((outcome == 1) * w, axis=1)
        fp = np.cumsum((outcome == -1) * w, axis=1)
        recall = tp / positives
        interpolated = np.maximum.accumulate((tp / (tp + fp + np.spacing(1)))[:, ::-1], axis=1)[:, ::-1]
        for t in range(n_thresholds):
            at = np.searchsorted(recall[t], rec_thrs, side="left")
            valid = at < w.size
            precision[t, valid, k] = interpolated[t, at[valid]]

    def mean(p: np.ndarray) -> float:
        return float(p[p > -1].mean()) if (p > -1).any() else 0.0

    return mean(precision), mean(precision[0]), mean(precision[5])


def map_intervals(evaluator: Any) -> dict[str, dict]:
    """95% bootstrap intervals of mAP, mAP50 and mAP75 over the images of an evaluated COCOeval (one evaluate():
    the per-image matching is done once, each resample only re-accumulates).

    AP is not an average over images, so resampled values lean a little high (rare classes drop out of a resample,
    repeated images sharpen the precision-recall steps); on a reasonable detector the interval still holds the
    measured mAP, on a near-random one with many rare classes it may sit just above it."""
    from deepfit.report.stats import bootstrap_intervals

    tables = _class_tables(evaluator)
    rec_thrs = np.asarray(evaluator.params.recThrs)
    found = bootstrap_intervals(lambda w: _resampled_maps(tables, w, rec_thrs), len(evaluator.params.imgIds),
                                ["map", "map50", "map75"])
    return {name: interval.to_dict() for name, interval in found.items()}


class DetectionTask:
    """What the engine needs to know about detection and instance segmentation.

    torchvision's detectors compute their own losses (RPN, box, class, mask) when given targets in
    training mode; the task converts our 0-based labels to their convention (0 = background) and sums
    the losses. Validation runs the model in inference mode and scores boxes with COCO mAP: mask mAP
    needs every mask pasted at full size, too slow to repeat every epoch, so it is left to `evaluate`.
    """

    monitor = "val_map"
    # no training accuracy and no validation loss (torchvision's detectors return losses only in training mode)
    columns = ("val_map", "val_map50")

    def __init__(self, classes: list[str], masks: bool, weight: torch.Tensor | None = None) -> None:
        self.classes, self.masks = classes, masks
        self.weight = weight  # (K,) --class-weights of the box classifier (Faster / Mask R-CNN), None: unweighted
        self.name = "segment-instances" if masks else "detect"

    def model_targets(self, targets: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for t in targets:
            target = {"boxes": t["boxes"], "labels": t["labels"] + 1}
            if self.masks:
                target["masks"] = t["masks"]
            out.append(target)
        return out

    def training_loss(self, model: Any, x: Any, targets: list[dict[str, Any]]) -> tuple[Any, None]:
        with weighted_box_classifier(self.weight) if self.weight is not None else contextlib.nullcontext():
            losses = model(list(x), self.model_targets(targets))  # {"loss_classifier": ..., "loss_box_reg": ..., ...}
        return sum(v.float() for v in losses.values()), None

    @staticmethod
    def predictions(outputs: list[dict[str, Any]]) -> list[dict[str, np.ndarray]]:
        """The model's outputs as numpy, 0-based labels (masks, where present, stay as (M, 1, H, W) probabilities)."""
        out = []
        for o in outputs:
            p = {"boxes": o["boxes"].float().cpu().numpy(), "scores": o["scores"].float().cpu().numpy(),
                 "labels": o["labels"].cpu().numpy() - 1}
            if "masks" in o:
                p["masks"] = o["masks"].float().cpu().numpy()
            out.append(p)
        return out

    def validation_batch(self, model: Any, x: Any, targets: list[dict[str, Any]]) -> list[tuple[dict, dict]]:
        """(truth, prediction) box pairs of the batch, on the CPU."""
        outputs = self.predictions(model(list(x)))
        h, w = x.shape[-2:]
        pairs = []
        for t, p in zip(targets, outputs, strict=True):
            truth = {"boxes": t["boxes"].cpu().numpy(), "labels": t["labels"].cpu().numpy(), "height": h, "width": w,
                     "iscrowd": t["iscrowd"].cpu().numpy()}  # crowd regions: detections there neither count nor miss
            pairs.append((truth, {k: v for k, v in p.items() if k != "masks"}))
        return pairs

    def validation_result(self, parts: list[list[tuple[dict, dict]]]) -> dict[str, float]:
        pairs = [pair for part in parts for pair in part]
        metrics = coco_metrics([t for t, _ in pairs], [p for _, p in pairs], self.classes, "bbox")
        return {"val_map": metrics["map"], "val_map50": metrics["map50"]}


@contextlib.contextmanager
def weighted_box_classifier(weight: torch.Tensor) -> Iterator[None]:
    """Faster / Mask R-CNN with class weights in their box classifier's cross-entropy, for one forward pass.

    torchvision computes that loss in `roi_heads.fastrcnn_loss`, a module-level function without a weight argument
    that `RoIHeads.forward` looks up when it runs, and offers no other hook; rewriting RoIHeads.forward (a hundred
    lines that change between releases) would be worse. So while the pass runs, the function is replaced by one that
    keeps torchvision's box loss and weights the classes (the background, label 0, weighs 1)."""
    from torchvision.models.detection import roi_heads

    original = roi_heads.fastrcnn_loss

    def weighted(class_logits: torch.Tensor, box_regression: torch.Tensor, labels: list[torch.Tensor],
                 regression_targets: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        _, box_loss = original(class_logits, box_regression, labels, regression_targets)
        full = torch.cat([weight.new_ones(1), weight]).to(class_logits)  # (K + 1,): background first
        return F.cross_entropy(class_logits, torch.cat(labels), weight=full), box_loss

    roi_heads.fastrcnn_loss = weighted
    try:
        yield
    finally:
        roi_heads.fastrcnn_loss = original
