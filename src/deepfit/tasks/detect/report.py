"""What detection and instance-segmentation evaluation and prediction write to disk.

Pictures of predictions (boxes, masks, and the ground truth as outlines), a per-image match score that
orders the gallery worst first, COCO results JSON that pycocotools and other tools read directly, a flat
CSV for spreadsheets, precision-recall and per-class AP plots, and one self-contained HTML report.

Conventions (numpy arrays or torch tensors are both accepted everywhere):

    prediction = {"boxes": (M, 4) xyxy pixels of the original image, "labels": (M,) 0-based class index,
                  "scores": (M,), optional "masks": (M, H, W) bool (or probabilities, cut at 0.5)}
    truth      = {"boxes": (N, 4), "labels": (N,), optional "masks": (N, H, W) bool}

``class_ids`` maps a class index to the dataset's own category id (COCO's ids have gaps); without it the
category id is index + 1, the same numbering :func:`deepfit.tasks.detect.objective.to_coco` uses.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from deepfit.fileio import atomic_write_text
from deepfit.log import logger
from deepfit.report.drawing import as_numpy, class_color, image_tensor, label_font_path, text_color
from deepfit.report.gallery import scored_gallery
from deepfit.report.html import data_table, esc, metric_cards, score_cells, table_row, write_results_page
from deepfit.report.plots import keep_ends, plot_class_bars, plot_precision_recall
from deepfit.report.text import fixed, to_float, write_csv

__all__ = [
    "draw_detections",
    "image_score",
    "plot_per_class_ap",
    "plot_pr_curves",
    "write_coco_results",
    "write_detection_report",
    "write_detections_csv",
]

_MASK_ALPHA = 0.45
_MAX_PR_CURVES = 20  # more lines than this turn the plot into a hairball
_MAX_AP_BARS = 80  # above this the bar chart keeps the best and the worst half of this many
_GALLERY_MAX_SIZE = (480, 960)  # (width, height) of a drawing in the report
_TRUTH_COLOR = (255, 255, 255)
_TRUTH_HALO = (20, 20, 20)


# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------


def _boxes(value: Any) -> np.ndarray:
    return as_numpy(value).astype(np.float64).reshape(-1, 4)


def _labels(value: Any) -> np.ndarray:
    return as_numpy(value).astype(np.int64).reshape(-1)


def _masks(value: Any) -> np.ndarray:
    """(M, H, W) bool; Mask R-CNN's (M, 1, H, W) probabilities are accepted and cut at 0.5."""
    masks = as_numpy(value)
    if masks.ndim == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    return masks > 0.5 if masks.dtype != bool else masks


def _class_name(classes: Sequence[str], label: int) -> str:
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
# Pictures of predictions
# --------------------------------------------------------------------------------------------------


def draw_detections(
    image: Any, prediction: Mapping[str, Any], classes: Sequence[str], truth: Mapping[str, Any] | None = None,
    conf: float = 0.0,
) -> Image.Image:
    """The image with predicted masks and boxes in per-class colours, labelled "name 0.87".

    Ground-truth boxes (when given) are drawn underneath as thin white lines with a dark edge, visible on
    any background: a white outline with no coloured box on it is an object the model missed.
    Predictions scoring below ``conf`` are left out.
    """
    import torch
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    canvas = image_tensor(image)
    height, width = int(canvas.shape[1]), int(canvas.shape[2])
    line = max(1, round(max(height, width) / 320))  # boxes stay visible on large photos

    def clipped(boxes: np.ndarray) -> Any:
        boxes = boxes.copy()
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, width - 1)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, height - 1)
        boxes[:, 2] = np.maximum(boxes[:, 0], boxes[:, 2])  # torchvision refuses reversed corners
        boxes[:, 3] = np.maximum(boxes[:, 1], boxes[:, 3])
        return torch.from_numpy(np.nan_to_num(boxes))

    boxes = _boxes(prediction.get("boxes", np.zeros((0, 4))))
    labels = _labels(prediction.get("labels", np.zeros(0)))
    scores = as_numpy(prediction.get("scores", np.ones(len(labels)))).astype(np.float64).reshape(-1)
    keep = scores >= conf
    boxes, labels, scores = boxes[keep], labels[keep], scores[keep]
    colors = [class_color(int(label)) for label in labels]

    if prediction.get("masks") is not None and len(labels):
        masks = _masks(prediction["masks"])[keep]
        if masks.shape[1:] != (height, width):
            raise ValueError(f"prediction masks are {masks.shape[1:]}, the image is {(height, width)}: "
                             "masks must be at the original image size")
        canvas = draw_segmentation_masks(canvas, torch.from_numpy(masks), alpha=_MASK_ALPHA, colors=colors)

    if truth is not None:
        true_boxes = _boxes(truth.get("boxes", np.zeros((0, 4))))
        if len(true_boxes):
            # A dark line one pixel either side of the white one (rectangles are drawn inwards from the box).
            halo = clipped(true_boxes + np.array([-1.0, -1.0, 1.0, 1.0]))
            canvas = draw_bounding_boxes(canvas, halo, colors=_TRUTH_HALO, width=line + 2)
            canvas = draw_bounding_boxes(canvas, clipped(true_boxes), colors=_TRUTH_COLOR, width=line)

    if len(labels):
        font = label_font_path()
        texts = [f"{_class_name(classes, int(label))} {score:.2f}" for label, score in zip(labels, scores, strict=True)]
        canvas = draw_bounding_boxes(
            canvas, clipped(boxes), labels=texts, colors=colors, width=line + 1, font=font,
            font_size=max(10, round(min(height, width) / 40)) if font else None,
            fill_labels=True, label_colors=[text_color(c) for c in colors], label_background_colors=colors,
        )
    return Image.fromarray(canvas.permute(1, 2, 0).numpy())


def image_score(truth: Mapping[str, Any], prediction: Mapping[str, Any], iou: float = 0.5, conf: float = 0.25) -> float:
    """F1 of a greedy one-to-one match of predictions to truth, in [0, 1]; 1.0 when both are empty.

    Not a COCO metric: one number per image that is low when objects are missed *or* invented, used to
    put the images worth looking at first. Predictions below ``conf`` are ignored; highest score matches
    first, each to the unmatched true box of its class with the highest IoU (at least ``iou``).
    """
    import torch
    from torchvision.ops import box_iou

    true_boxes, true_labels = _boxes(truth["boxes"]), _labels(truth["labels"])
    scores = as_numpy(prediction["scores"]).astype(np.float64).reshape(-1)
    keep = scores >= conf
    pred_boxes, pred_labels, scores = _boxes(prediction["boxes"])[keep], _labels(prediction["labels"])[keep], scores[keep]
    n_true, n_pred = len(true_labels), len(pred_labels)
    if n_true == 0 and n_pred == 0:
        return 1.0
    if n_true == 0 or n_pred == 0:
        return 0.0
    overlaps = box_iou(torch.from_numpy(pred_boxes), torch.from_numpy(true_boxes)).numpy()
    overlaps[pred_labels[:, None] != true_labels[None, :]] = -1.0  # another class never matches
    matched = np.zeros(n_true, dtype=bool)
    for i in np.argsort(-scores, kind="stable"):
        row = np.where(matched, -1.0, overlaps[i])
        j = int(row.argmax())
        if row[j] >= iou:
            matched[j] = True
    return float(2.0 * matched.sum() / (n_pred + n_true))


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
        boxes, labels = _boxes(prediction["boxes"]), _labels(prediction["labels"])
        scores = as_numpy(prediction["scores"]).astype(np.float64).reshape(-1)
        masks = prediction.get("masks")
        if masks is not None and not _is_rle_list(masks):
            masks = _masks(masks)
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
        boxes, labels = _boxes(prediction["boxes"]), _labels(prediction["labels"])
        scores = as_numpy(prediction["scores"]).astype(np.float64).reshape(-1)
        masks = _masks(prediction["masks"]) if prediction.get("masks") is not None else None
        if not len(labels):
            yield [file, "", "", "", "", "", "", ""]
            continue
        for j, (box, label, score) in enumerate(zip(boxes, labels, scores, strict=True)):
            area = str(int(masks[j].sum())) if masks is not None else ""
            yield [file, _class_name(classes, int(label)), f"{score:.4f}", *(f"{float(v):.2f}" for v in box), area]


# --------------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------------


def _kind(metrics: Mapping[str, Any]) -> str:
    return "masks" if metrics.get("iou_type") == "segm" else "boxes"


def plot_pr_curves(metrics: Mapping[str, Any], path: Path) -> Path:
    """Precision against recall at IoU 0.50 for the best classes, and the mean over all classes (thick).

    Only the ``_MAX_PR_CURVES`` classes with the highest AP50 are drawn; the mean curve still covers
    every class with ground truth, so its area is the mAP@.50 in the title.
    """
    ap50 = [row.get("ap50") for row in metrics.get("per_class") or []]
    return plot_precision_recall(list(metrics.get("pr_curves") or []), ap50, path, mean_ap50=metrics.get("map50"),
                                 subject=_kind(metrics), most=_MAX_PR_CURVES)


def plot_per_class_ap(metrics: Mapping[str, Any], path: Path) -> Path:
    """AP (dark) and AP50 (light, behind) per class as horizontal bars, best at the top.

    Classes without ground truth have no AP and are left out rather than drawn as zero. With more
    than ``_MAX_AP_BARS`` classes only the best and the worst half of that many are drawn.
    """
    rows = [(str(r["class"]), to_float(r.get("ap")), to_float(r.get("ap50")))
            for r in metrics.get("per_class") or [] if r.get("ap") is not None]
    rows.sort(key=lambda r: (-r[1], r[0]))
    total = len(rows)
    rows = keep_ends(rows, _MAX_AP_BARS)[::-1]  # barh draws the first row at the bottom
    layers = [
        {"width": [r[2] for r in rows], "color": "#bfd3fb", "height": 0.8, "label": "AP@.50"},
        {"width": [r[1] for r in rows], "color": "#2563eb", "height": 0.5, "label": "AP@[.50:.95]"},
    ]
    shown = f"; best and worst {_MAX_AP_BARS // 2} of {total}" if total > _MAX_AP_BARS else ""
    return plot_class_bars(
        path, [r[0] for r in rows], [r[1] for r in rows], layers,
        title=f"AP per class ({_kind(metrics)}{shown}); mAP = {fixed(metrics.get('map'))}",
        x_label="average precision", x_max=1.08, max_height=26.0, empty_text="no class with ground truth",
        legend=True, what="per-class AP chart",
    )


# --------------------------------------------------------------------------------------------------
# HTML report
# --------------------------------------------------------------------------------------------------

# Added to the page's styles (deepfit.report.html.PAGE_CSS): detection pictures need to be much larger
# than classification thumbnails.
_DETECTION_CSS = """<style>
.det-gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(320px, 1fr)); gap: 14px; }
.det-gallery .shot img { display: block; max-width: 100%; max-height: none; height: auto; }
.legend { color: var(--muted); }
.swatch { display: inline-block; width: 22px; height: 12px; vertical-align: middle; margin: 0 4px 0 10px;
          border-radius: 2px; }
.swatch.pred { background: linear-gradient(90deg, #1f77b4, #ff7f0e, #2ca02c); }
.swatch.truth { border: 2px solid #fff; outline: 1px solid #141414; background: #9aa5b1; }
.per-class td.none { color: var(--muted); }
</style>"""


def _cards(box_metrics: Mapping[str, Any], mask_metrics: Mapping[str, Any] | None) -> str:
    cards = []
    for name, metrics in (("Box", box_metrics), ("Mask", mask_metrics)):
        if metrics is None:
            continue
        counts = f"{esc(metrics.get('num_images', '?'))} images, {esc(metrics.get('num_objects', '?'))} objects"
        cards += [
            (f"{name} mAP@[.50:.95]", fixed(metrics.get("map")), f"COCO's main number; {counts}"),
            (f"{name} mAP@.50", fixed(metrics.get("map50")), "overlap of at least half counts"),
            (f"{name} mAP@.75", fixed(metrics.get("map75")), "tight localisation needed"),
        ]
    return metric_cards(cards)


def _per_class_rows(box_metrics: Mapping[str, Any], mask_metrics: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Box and mask AP side by side, by class index (both metrics come from the same class list)."""
    masks = list(mask_metrics.get("per_class") or []) if mask_metrics is not None else []
    rows = []
    for k, row in enumerate(box_metrics.get("per_class") or []):
        merged = {"class": row["class"], "ap": row.get("ap"), "ap50": row.get("ap50")}
        if mask_metrics is not None:
            mask_row = masks[k] if k < len(masks) else {}
            merged["mask_ap"], merged["mask_ap50"] = mask_row.get("ap"), mask_row.get("ap50")
        rows.append(merged)
    return rows


def _write_per_class_csv(path: Path, rows: Sequence[Mapping[str, Any]], with_masks: bool) -> Path:
    columns = ["class", "ap", "ap50", *(["mask_ap", "mask_ap50"] if with_masks else [])]
    # An empty cell, not 0, for a class without ground truth: it was not measured.
    return write_csv(path, columns, (
        [row["class"], *("" if row.get(c) is None else f"{float(row[c]):.4f}" for c in columns[1:])] for row in rows
    ))


def _per_class_table(rows: Sequence[Mapping[str, Any]], with_masks: bool) -> str:
    columns = {"ap": "box AP", "ap50": "box AP50"}
    if with_masks:
        columns.update({"mask_ap": "mask AP", "mask_ap50": "mask AP50"})
    body = (
        table_row(f"<td>{esc(row['class'])}</td>{score_cells(row, list(columns), missing_html='no ground truth')}")
        for row in rows
    )
    return data_table(["class", *columns.values()], body, empty_html="No per-class results.")


def write_detection_report(
    out_dir: Path, title: str, box_metrics: Mapping[str, Any], mask_metrics: Mapping[str, Any] | None,
    gallery: Sequence[tuple[str, Image.Image, float]], summary: Mapping[str, str],
) -> Path:
    """Write the plots, ``per_class_ap.csv`` and one self-contained ``report.html``; return the HTML path.

    ``gallery`` holds (name, drawn image, image score) and is shown in the order given: callers pass it
    worst first, because the images the model gets most wrong are the ones worth a look.
    """
    out_dir = Path(out_dir)
    images: dict[str, Path] = {}
    for suffix, metrics in (("box", box_metrics), ("mask", mask_metrics)):
        if metrics is None:
            continue
        kind = "boxes" if suffix == "box" else "masks"
        images[f"Precision-recall per class at IoU 0.50 ({kind})"] = plot_pr_curves(metrics, out_dir / f"pr_curves_{suffix}.png")
        images[f"Average precision per class ({kind})"] = plot_per_class_ap(metrics, out_dir / f"per_class_ap_{suffix}.png")
    rows = _per_class_rows(box_metrics, mask_metrics)
    _write_per_class_csv(out_dir / "per_class_ap.csv", rows, mask_metrics is not None)

    legend = (
        '<p class="legend">Predicted objects are drawn in colour<span class="swatch pred"></span>(one colour per class, '
        'labelled with class and confidence); ground truth as white outlines<span class="swatch truth"></span>. '
        "A white outline with no coloured box on it is a missed object; a coloured box without one is a false "
        "detection. Images are sorted worst first by match score (F1 of predictions matched to the truth).</p>"
    )
    gallery_html = [legend, scored_gallery(gallery, score_label="match score (F1)", decimals=2,
                                           max_size=_GALLERY_MAX_SIZE, extra_class="det-gallery")]
    return write_results_page(
        out_dir / "report.html", title, summary=dict(summary), class_names=[str(r["class"]) for r in rows],
        cards_html=_cards(box_metrics, mask_metrics), per_class_html=_per_class_table(rows, mask_metrics is not None),
        images=images, gallery_title="Predictions, worst first", gallery_html=gallery_html,
        styles=_DETECTION_CSS, what="detection report",
    )
