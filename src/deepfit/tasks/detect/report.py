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

import csv
import functools
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image

from deepfit.fileio import atomic_write_bytes, atomic_write_text
from deepfit.log import logger
from deepfit.tasks.classify.report import (
    _clamp,
    _data_uri,
    _esc,
    _fixed,
    _html_document,
    _images_html,
    _save_figure,
    _shorten,
    _summary_html,
    _to_float,
)

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
_GALLERY_WIDTH_PX = 480
_GALLERY_MAX_HEIGHT_PX = 960
_TRUTH_COLOR = (255, 255, 255)
_TRUTH_HALO = (20, 20, 20)

# tab10's strong colours first, then tab20's light ones: neighbouring class indices differ clearly.
_TAB20 = colormaps["tab20"].colors
_PALETTE: list[tuple[int, int, int]] = [
    (int(round(255 * r)), int(round(255 * g)), int(round(255 * b))) for r, g, b in [*_TAB20[0::2], *_TAB20[1::2]]
]


# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------


def _np(value: Any) -> np.ndarray:
    """numpy view of a numpy array, torch tensor (any device) or list."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _boxes(value: Any) -> np.ndarray:
    return _np(value).astype(np.float64).reshape(-1, 4)


def _labels(value: Any) -> np.ndarray:
    return _np(value).astype(np.int64).reshape(-1)


def _masks(value: Any) -> np.ndarray:
    """(M, H, W) bool; Mask R-CNN's (M, 1, H, W) probabilities are accepted and cut at 0.5."""
    masks = _np(value)
    if masks.ndim == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    return masks > 0.5 if masks.dtype != bool else masks


def _class_name(classes: Sequence[str], label: int) -> str:
    return str(classes[label]) if 0 <= label < len(classes) else str(label)


def _class_color(index: int) -> tuple[int, int, int]:
    return _PALETTE[index % len(_PALETTE)]


def _text_color(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black on light label backgrounds, white on dark ones, so every label stays readable."""
    r, g, b = background
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 150 else (255, 255, 255)


@functools.lru_cache(maxsize=1)
def _font_path() -> str | None:
    """matplotlib ships DejaVu Sans; with a TrueType font the label size can follow the image size."""
    from matplotlib import font_manager

    try:
        return font_manager.findfont("DejaVu Sans", fallback_to_default=True)
    except Exception as error:  # a broken font cache must not stop the pictures
        logger.debug("no TrueType font for labels (%s); using PIL's default", error)
        return None


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


def _image_tensor(image: Any) -> Any:
    """(3, H, W) uint8 tensor from a PIL image, an (H, W[, C]) numpy array or a ([C,] H, W) tensor."""
    import torch

    if isinstance(image, Image.Image):
        return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).contiguous()
    if isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        if tensor.ndim == 2:
            tensor = tensor[None]
    else:
        array = np.asarray(image)
        if array.ndim == 2:
            array = array[:, :, None]
        tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)
    if tensor.ndim != 3:
        raise ValueError(f"expected one image, got an array of shape {tuple(tensor.shape)}")
    if tensor.shape[0] == 1:
        tensor = tensor.expand(3, -1, -1)
    elif tensor.shape[0] == 4:
        tensor = tensor[:3]  # alpha is dropped: the picture is for looking at
    elif tensor.shape[0] != 3:
        raise ValueError(f"expected 1, 3 or 4 channels, got an image of shape {tuple(tensor.shape)}")
    if tensor.is_floating_point():
        tensor = (tensor.clamp(0, 1) * 255).round()  # float images are taken to be in [0, 1]
    return tensor.to(torch.uint8).contiguous()


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

    canvas = _image_tensor(image)
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
    scores = _np(prediction.get("scores", np.ones(len(labels)))).astype(np.float64).reshape(-1)
    keep = scores >= conf
    boxes, labels, scores = boxes[keep], labels[keep], scores[keep]
    colors = [_class_color(int(label)) for label in labels]

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
        font = _font_path()
        texts = [f"{_class_name(classes, int(label))} {score:.2f}" for label, score in zip(labels, scores, strict=True)]
        canvas = draw_bounding_boxes(
            canvas, clipped(boxes), labels=texts, colors=colors, width=line + 1, font=font,
            font_size=max(10, round(min(height, width) / 40)) if font else None,
            fill_labels=True, label_colors=[_text_color(c) for c in colors], label_background_colors=colors,
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
    scores = _np(prediction["scores"]).astype(np.float64).reshape(-1)
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
        scores = _np(prediction["scores"]).astype(np.float64).reshape(-1)
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
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "class", "score", "x1", "y1", "x2", "y2", "mask_area"])
    for file, prediction in zip(files, predictions, strict=True):
        boxes, labels = _boxes(prediction["boxes"]), _labels(prediction["labels"])
        scores = _np(prediction["scores"]).astype(np.float64).reshape(-1)
        masks = _masks(prediction["masks"]) if prediction.get("masks") is not None else None
        if not len(labels):
            writer.writerow([file, "", "", "", "", "", "", ""])
            continue
        for j, (box, label, score) in enumerate(zip(boxes, labels, scores, strict=True)):
            area = str(int(masks[j].sum())) if masks is not None else ""
            writer.writerow([file, _class_name(classes, int(label)), f"{score:.4f}", *(f"{float(v):.2f}" for v in box), area])
    return atomic_write_text(Path(path), buffer.getvalue())


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
    per_class = list(metrics.get("per_class") or [])
    curves = list(metrics.get("pr_curves") or [])
    with_gt = [(k, c) for k, c in enumerate(curves) if c.get("precision")]
    ap50 = {k: _to_float(per_class[k].get("ap50")) if k < len(per_class) else math.nan for k, _ in with_gt}
    with_gt.sort(key=lambda item: -np.nan_to_num(ap50[item[0]], nan=-1.0))

    fig = Figure(figsize=(9.0, 6.0), layout="constrained")
    ax = fig.add_subplot()
    for k, curve in with_gt[:_MAX_PR_CURVES]:
        ax.plot(curve["recall"], curve["precision"], color=np.array(_class_color(k)) / 255.0, linewidth=1.3, alpha=0.85,
                label=f"{_shorten(str(curve['class']))} ({_fixed(ap50[k])})")
    if with_gt:
        mean = np.mean([np.asarray(c["precision"], dtype=float) for _, c in with_gt], axis=0)
        ax.plot(with_gt[0][1]["recall"], mean, color="#111111", linewidth=3.2,
                label=f"mean of {len(with_gt)} classes ({_fixed(metrics.get('map50'))})")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8.5, frameon=False, title="class (AP50)")
    else:
        ax.text(0.5, 0.5, "no ground truth", transform=ax.transAxes, ha="center", va="center", color="#7b8794")
    more = f", best {_MAX_PR_CURVES} of {len(with_gt)} classes shown" if len(with_gt) > _MAX_PR_CURVES else ""
    ax.set_title(f"Precision-recall at IoU 0.50 ({_kind(metrics)}{more}); mAP@.50 = {_fixed(metrics.get('map50'))}")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.grid(True, color="#e3e7ec", linewidth=0.8)
    saved = _save_figure(fig, Path(path))
    logger.debug("precision-recall curves written to %s", saved)
    return saved


def plot_per_class_ap(metrics: Mapping[str, Any], path: Path) -> Path:
    """AP (dark) and AP50 (light, behind) per class as horizontal bars, best at the top.

    Classes without ground truth have no AP and are left out rather than drawn as zero. With more
    than ``_MAX_AP_BARS`` classes only the best and the worst half of that many are drawn.
    """
    rows = [(str(r["class"]), _to_float(r.get("ap")), _to_float(r.get("ap50")))
            for r in metrics.get("per_class") or [] if r.get("ap") is not None]
    rows.sort(key=lambda r: (-r[1], r[0]))
    total = len(rows)
    if total > _MAX_AP_BARS:
        rows = rows[: _MAX_AP_BARS // 2] + rows[-(_MAX_AP_BARS // 2):]
    rows.reverse()  # barh draws the first row at the bottom

    fig = Figure(figsize=(8.5, _clamp(1.4 + 0.26 * len(rows), 3.0, 26.0)), layout="constrained")
    ax = fig.add_subplot()
    if rows:
        positions = np.arange(len(rows))
        ax.barh(positions, [r[2] for r in rows], color="#bfd3fb", height=0.8, label="AP@.50")
        ax.barh(positions, [r[1] for r in rows], color="#2563eb", height=0.5, label="AP@[.50:.95]")
        ax.set_yticks(positions, [_shorten(r[0]) for r in rows], fontsize=_clamp(11.0 - 0.05 * len(rows), 6.0, 10.0))
        for y, (_, ap, _ap50) in enumerate(rows):
            ax.text(min(ap, 1.0) + 0.01, y, f"{ap:.3f}", va="center", fontsize=7.5, color="#1f2933")
        ax.legend(loc="lower right", fontsize=8.5)
    else:
        ax.text(0.5, 0.5, "no class with ground truth", transform=ax.transAxes, ha="center", va="center", color="#7b8794")
        ax.set_yticks([])
    ax.set_xlim(0.0, 1.08)
    ax.set_xlabel("average precision")
    shown = f"; best and worst {_MAX_AP_BARS // 2} of {total}" if total > _MAX_AP_BARS else ""
    ax.set_title(f"AP per class ({_kind(metrics)}{shown}); mAP = {_fixed(metrics.get('map'))}")
    ax.grid(True, axis="x", color="#e3e7ec", linewidth=0.8)
    ax.set_axisbelow(True)
    saved = _save_figure(fig, Path(path))
    logger.debug("per-class AP chart written to %s", saved)
    return saved


# --------------------------------------------------------------------------------------------------
# HTML report
# --------------------------------------------------------------------------------------------------

# Added to report.py's styles: detection pictures need to be much larger than classification thumbnails.
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
        counts = f"{_esc(metrics.get('num_images', '?'))} images, {_esc(metrics.get('num_objects', '?'))} objects"
        cards += [
            (f"{name} mAP@[.50:.95]", _fixed(metrics.get("map")), f"COCO's main number; {counts}"),
            (f"{name} mAP@.50", _fixed(metrics.get("map50")), "overlap of at least half counts"),
            (f"{name} mAP@.75", _fixed(metrics.get("map75")), "tight localisation needed"),
        ]
    parts = [
        f'<div class="card"><div class="label">{_esc(label)}</div><div class="value">{value}</div>'
        f'<div class="hint">{hint}</div></div>'
        for label, value, hint in cards
    ]
    return f'<div class="cards">{"".join(parts)}</div>'


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
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        # An empty cell, not 0, for a class without ground truth: it was not measured.
        writer.writerow([row["class"], *("" if row.get(c) is None else f"{float(row[c]):.4f}" for c in columns[1:])])
    return atomic_write_text(path, buffer.getvalue())


def _per_class_table(rows: Sequence[Mapping[str, Any]], with_masks: bool) -> str:
    if not rows:
        return '<p class="empty">No per-class results.</p>'
    columns = [("ap", "box AP"), ("ap50", "box AP50")]
    if with_masks:
        columns += [("mask_ap", "mask AP"), ("mask_ap50", "mask AP50")]
    head = "<tr><th>class</th>" + "".join(f"<th>{title}</th>" for _, title in columns) + "</tr>"
    body = []
    for row in rows:
        if row.get("ap") is None:
            cells = f'<td class="none" colspan="{len(columns)}">no ground truth</td>'
        else:
            ap = _to_float(row["ap"])
            bar = f'<span class="bar"><span style="width:{_clamp(100.0 * ap, 0.0, 100.0):.0f}%"></span></span>'
            cells = "".join(f"<td>{_fixed(row.get(key))}{bar if key == 'ap' else ''}</td>" for key, _ in columns)
        body.append(f"<tr><td>{_esc(row['class'])}</td>{cells}</tr>")
    return f'<table class="per-class"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>'


def _jpeg_uri(picture: Image.Image) -> str:
    shown = picture.convert("RGB")
    shown.thumbnail((_GALLERY_WIDTH_PX, _GALLERY_MAX_HEIGHT_PX))  # never enlarges
    buffer = io.BytesIO()
    shown.save(buffer, format="JPEG", quality=85)
    return _data_uri(buffer.getvalue(), "image/jpeg")


def _gallery(gallery: Sequence[tuple[str, Image.Image, float]]) -> str:
    if not gallery:
        return '<p class="empty">No images to show.</p>'
    cards = [
        f'<div class="shot"><img src="{_jpeg_uri(picture)}" alt="{_esc(name)}">'
        f'<div class="path">{_esc(name)}</div><div class="row">match score (F1): <b>{_fixed(score, 2)}</b></div></div>'
        for name, picture, score in gallery
    ]
    return f'<div class="gallery det-gallery">{"".join(cards)}</div>'


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
    sections = [
        _DETECTION_CSS,
        f"<h1>{_esc(title)}</h1>",
        _summary_html(dict(summary), [str(r["class"]) for r in rows]),
        _cards(box_metrics, mask_metrics),
        "<h2>Per-class results</h2>",
        _per_class_table(rows, mask_metrics is not None),
        "<h2>Pictures</h2>",
        _images_html(images),
        "<h2>Predictions, worst first</h2>",
        legend,
        _gallery(gallery),
        "<footer>Generated by deepfit.</footer>",
    ]
    saved = atomic_write_bytes(out_dir / "report.html", _html_document(title, sections))
    logger.info("detection report written to %s", saved)
    return saved
