"""Detections as files: COCO results JSON that pycocotools and other tools read directly, and a flat CSV for
spreadsheets; and the array conventions every detection output (these files, the drawings of the report) reads.

Conventions (numpy arrays or torch tensors are both accepted everywhere):

    prediction = {"boxes": (M, 4) xyxy pixels of the original image, "labels": (M,) 0-based class index,
                  "scores": (M,), optional "masks": (M, H, W) bool (or probabilities, cut at 0.5),
                  or a list of COCO RLE dicts}

``class_ids`` maps a class index to the dataset's own category id (COCO's ids have gaps); without it the
category id is index + 1, the same numbering :func:`deepfit.tasks.detect.objective.to_coco` uses.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deepfit.fileio import atomic_write_text
from deepfit.log import logger
from deepfit.report.drawing import as_numpy
from deepfit.report.text import write_csv

__all__ = ["boxes_of", "class_name", "labels_of", "masks_of", "write_coco_results", "write_detections_csv"]


# --------------------------------------------------------------------------------------------------
# Arrays as every detection output reads them
# --------------------------------------------------------------------------------------------------


def boxes_of(value: Any) -> np.ndarray:
    """(M, 4) float64 xyxy boxes from any array-like (an empty one too)."""
    return as_numpy(value).astype(np.float64).reshape(-1, 4)


def labels_of(value: Any) -> np.ndarray:
    """(M,) int64 0-based class indexes."""
    return as_numpy(value).astype(np.int64).reshape(-1)


def masks_of(value: Any) -> np.ndarray:
    """(M, H, W) bool; Mask R-CNN's (M, 1, H, W) probabilities are accepted and cut at 0.5."""
    masks = as_numpy(value)
    if masks.ndim == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    return masks > 0.5 if masks.dtype != bool else masks


def class_name(classes: Sequence[str], label: int) -> str:
    """The name of class index ``label``, or the number itself when the model knows no such class."""
    return str(classes[label]) if 0 <= label < len(classes) else str(label)


def _category_id(label: int, class_ids: Sequence[int] | None) -> int:
    return int(class_ids[label]) if class_ids is not None else int(label) + 1


def _rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO run-length encoding with ``counts`` as text, so it can go into JSON."""
    from pycocotools import mask as mask_utils

    return _rle_text(mask_utils.encode(np.asfortranarray(mask.astype(np.uint8))))


def _rle_text(rle: Mapping[str, Any]) -> dict[str, Any]:
    counts = rle["counts"]
    return {"size": [int(v) for v in rle["size"]], "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def _is_rle_list(masks: Any) -> bool:
    """Masks already run-length encoded (a list of COCO RLE dicts), as evaluation keeps them to save memory."""
    return isinstance(masks, list) and all(isinstance(m, dict) for m in masks)


# --------------------------------------------------------------------------------------------------
# Predictions as files
# --------------------------------------------------------------------------------------------------


def write_coco_results(
    path: Path, files: Sequence[str], predictions: Sequence[Mapping[str, Any]], class_ids: Sequence[int] | None = None,
    image_ids: Sequence[int] | None = None,
) -> Path:
    """Write predictions as a COCO results JSON list, the format ``COCO.loadRes`` and most tools read.

    Each detection carries its ``file_name`` too, so the file is still usable without the image-id map.
    ``image_id`` comes from ``image_ids`` (the dataset's ids) or is the 1-based position in ``files``.
    """
    if len(files) != len(predictions):
        raise ValueError(f"{len(files)} files but {len(predictions)} predictions")
    if image_ids is not None and len(image_ids) != len(files):
        raise ValueError(f"{len(files)} files but {len(image_ids)} image ids")
    results: list[dict[str, Any]] = []
    for position, (file, prediction) in enumerate(zip(files, predictions, strict=True)):
        image_id = int(image_ids[position]) if image_ids is not None else position + 1
        boxes, labels = boxes_of(prediction["boxes"]), labels_of(prediction["labels"])
        scores = as_numpy(prediction["scores"]).astype(np.float64).reshape(-1)
        masks = prediction.get("masks")
        if masks is not None and not _is_rle_list(masks):
            masks = masks_of(masks)
        for j, (box, label, score) in enumerate(zip(boxes, labels, scores, strict=True)):
            x1, y1, x2, y2 = (float(v) for v in box)
            result: dict[str, Any] = {
                "image_id": image_id, "category_id": _category_id(int(label), class_ids),
                "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)], "score": round(float(score), 4),
            }
            if masks is not None:
                result["segmentation"] = _rle(masks[j]) if not isinstance(masks[j], dict) else _rle_text(masks[j])
            result["file_name"] = str(file)
            results.append(result)
    saved = atomic_write_text(Path(path), json.dumps(results))
    logger.debug("%d detections written to %s", len(results), saved)
    return saved


def write_detections_csv(
    path: Path, files: Sequence[str], predictions: Sequence[Mapping[str, Any]], classes: Sequence[str]
) -> Path:
    """One row per detection; an image with none gets one row with only its path, so every image appears."""
    if len(files) != len(predictions):
        raise ValueError(f"{len(files)} files but {len(predictions)} predictions")
    header = ["path", "class", "score", "x1", "y1", "x2", "y2", "mask_area"]
    return write_csv(Path(path), header, _detection_rows(files, predictions, classes))


def _detection_rows(
    files: Sequence[str], predictions: Sequence[Mapping[str, Any]], classes: Sequence[str]
) -> Iterator[list[str]]:
    for file, prediction in zip(files, predictions, strict=True):
        boxes, labels = boxes_of(prediction["boxes"]), labels_of(prediction["labels"])
        scores = as_numpy(prediction["scores"]).astype(np.float64).reshape(-1)
        masks = masks_of(prediction["masks"]) if prediction.get("masks") is not None else None
        if not len(labels):
            yield [file, "", "", "", "", "", "", ""]
            continue
        for j, (box, label, score) in enumerate(zip(boxes, labels, scores, strict=True)):
            area = str(int(masks[j].sum())) if masks is not None else ""
            yield [file, class_name(classes, int(label)), f"{score:.4f}", *(f"{float(v):.2f}" for v in box), area]
