"""The pictures and the report of detection and instance-segmentation evaluation.

Pictures of predictions (boxes, masks, and the ground truth as outlines), a per-image match score that
orders the gallery worst first, precision-recall and per-class AP plots, and one self-contained HTML report
(the COCO results JSON and the CSV of predictions are in :mod:`deepfit.tasks.detect.outputs`).

Conventions (numpy arrays or torch tensors are both accepted everywhere):

    prediction = {"boxes": (M, 4) xyxy pixels of the original image, "labels": (M,) 0-based class index,
                  "scores": (M,), optional "masks": (M, H, W) bool (or probabilities, cut at 0.5)}
    truth      = {"boxes": (N, 4), "labels": (N,), optional "masks": (N, H, W) bool}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from deepfit.explain.result import Explanation
from deepfit.report.drawing import as_numpy, class_color, image_tensor, label_font_path, text_color
from deepfit.report.gallery import scored_gallery
from deepfit.report.html import data_table, empty_note, esc, metric_cards, score_cells, table_row
from deepfit.report.page import RunDetails, write_results_page
from deepfit.report.plots import keep_ends, plot_class_bars, plot_precision_recall
from deepfit.report.text import fixed, to_float, write_csv
from deepfit.report.trust import interval_hint
from deepfit.tasks.detect.explained import EXPLAINED_CSS, explained_gallery
from deepfit.tasks.detect.outputs import boxes_of, class_name, labels_of, masks_of

__all__ = ["draw_detections", "image_score", "plot_per_class_ap", "plot_pr_curves", "write_detection_report"]

_MASK_ALPHA = 0.45
_MAX_PR_CURVES = 20  # more lines than this turn the plot into a hairball
_MAX_AP_BARS = 80  # above this the bar chart keeps the best and the worst half of this many
_GALLERY_MAX_SIZE = (480, 960)  # (width, height) of a drawing in the report
_TRUTH_COLOR = (255, 255, 255)
_TRUTH_HALO = (20, 20, 20)


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

    boxes = boxes_of(prediction.get("boxes", np.zeros((0, 4))))
    labels = labels_of(prediction.get("labels", np.zeros(0)))
    scores = as_numpy(prediction.get("scores", np.ones(len(labels)))).astype(np.float64).reshape(-1)
    keep = scores >= conf
    boxes, labels, scores = boxes[keep], labels[keep], scores[keep]
    colors = [class_color(int(label)) for label in labels]

    if prediction.get("masks") is not None and len(labels):
        masks = masks_of(prediction["masks"])[keep]
        if masks.shape[1:] != (height, width):
            raise ValueError(f"prediction masks are {masks.shape[1:]}, the image is {(height, width)}: "
                             "masks must be at the original image size")
        canvas = draw_segmentation_masks(canvas, torch.from_numpy(masks), alpha=_MASK_ALPHA, colors=colors)

    if truth is not None:
        true_boxes = boxes_of(truth.get("boxes", np.zeros((0, 4))))
        if len(true_boxes):
            # A dark line one pixel either side of the white one (rectangles are drawn inwards from the box).
            halo = clipped(true_boxes + np.array([-1.0, -1.0, 1.0, 1.0]))
            canvas = draw_bounding_boxes(canvas, halo, colors=_TRUTH_HALO, width=line + 2)
            canvas = draw_bounding_boxes(canvas, clipped(true_boxes), colors=_TRUTH_COLOR, width=line)

    if len(labels):
        font = label_font_path()
        texts = [f"{class_name(classes, int(label))} {score:.2f}" for label, score in zip(labels, scores, strict=True)]
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

    true_boxes, true_labels = boxes_of(truth["boxes"]), labels_of(truth["labels"])
    scores = as_numpy(prediction["scores"]).astype(np.float64).reshape(-1)
    keep = scores >= conf
    pred_boxes, pred_labels, scores = boxes_of(prediction["boxes"])[keep], labels_of(prediction["labels"])[keep], scores[keep]
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
.swatch { display: inline-block; width: 22px; height: 12px; vertical-align: middle; margin: 0 4px 0 10px;
          border-radius: 2px; }
.swatch.pred { background: linear-gradient(90deg, #1f77b4, #ff7f0e, #2ca02c); }
.swatch.truth { border: 2px solid #fff; outline: 1px solid #141414; background: #9aa5b1; }
</style>"""


def _cards(box_metrics: Mapping[str, Any], mask_metrics: Mapping[str, Any] | None) -> str:
    cards = []
    for name, metrics in (("Box", box_metrics), ("Mask", mask_metrics)):
        if metrics is None:
            continue
        counts = f"{esc(metrics.get('num_images', '?'))} images, {esc(metrics.get('num_objects', '?'))} objects"
        ci = metrics.get("intervals") or {}
        cards += [
            (f"{name} mAP@[.50:.95]", fixed(metrics.get("map")), f"COCO's main number; {counts}" + interval_hint(ci.get("map"))),
            (f"{name} mAP@.50", fixed(metrics.get("map50")), "overlap of at least half counts" + interval_hint(ci.get("map50"))),
            (f"{name} mAP@.75", fixed(metrics.get("map75")), "tight localisation needed" + interval_hint(ci.get("map75"))),
        ]
    return metric_cards(cards)


def _per_class_rows(box_metrics: Mapping[str, Any], mask_metrics: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Box and mask AP side by side, by class index (both metrics come from the same class list)."""
    masks = list(mask_metrics.get("per_class") or []) if mask_metrics is not None else []
    rows = []
    for k, row in enumerate(box_metrics.get("per_class") or []):
        merged = {key: row.get(key) for key in ("class", "ap", "ap50", "objects", "detections")}
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
    """The per-class table, without the classes the evaluated images neither hold nor were predicted to hold
    (a COCO-trained model scored on a few of its classes would otherwise list 80 rows of "no ground truth")."""
    columns = {"ap": "box AP", "ap50": "box AP50"}
    if with_masks:
        columns.update({"mask_ap": "mask AP", "mask_ap50": "mask AP50"})
    shown = [row for row in rows if row.get("objects") != 0 or row.get("detections") != 0]
    body = (
        table_row(f"<td>{esc(row['class'])}</td>{score_cells(row, list(columns), missing_html='no ground truth')}"
                  f"<td>{esc(row.get('objects', '–'))}</td><td>{esc(row.get('detections', '–'))}</td>")
        for row in shown
    )
    left_out = len(rows) - len(shown)
    note = empty_note(f"{left_out} of {len(rows)} classes are left out: the evaluated images hold no object of them and "
                      "the model predicted none (per_class_ap.csv lists every class).") if left_out else ""
    return data_table(["class", *columns.values(), "objects", "detections"], body,
                      empty_html="No per-class results.") + note


def write_detection_report(
    out_dir: Path, title: str, box_metrics: Mapping[str, Any], mask_metrics: Mapping[str, Any] | None,
    gallery: Sequence[tuple[str, Image.Image, float]], summary: Mapping[str, str], details: RunDetails | None = None,
    explanations: Sequence[Explanation | None] | None = None,
) -> Path:
    """Write the plots, ``per_class_ap.csv`` and one self-contained ``report.html``; return the HTML path.

    ``gallery`` holds (name, drawn image, image score) and is shown in the order given: callers pass the
    imperfect images worst first, because the images the model gets most wrong are the ones worth a look
    (only perfect ones, scoring 1, when there is no mistake: the gallery is then titled so). ``details`` are
    the run's warnings, training options, curves and class examples (:class:`~deepfit.report.page.RunDetails`);
    ``explanations`` (one per gallery image, or None) are drawn beside their images (:mod:`deepfit.tasks.detect.explained`).
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

    explained = any(e is not None for e in explanations or [])
    legend = (
        '<p class="legend">Predicted objects are drawn in colour<span class="swatch pred"></span>(one colour per class, '
        'labelled with class and confidence); ground truth as white outlines<span class="swatch truth"></span>. '
        "A white outline with no coloured box on it is a missed object; a coloured box without one is a false "
        "detection. Images are sorted worst first by match score (F1 of predictions matched to the truth)."
        + (" Beside each image: where the detector looked for its most confident object, a class-activation map from "
           "blue (nothing) to red (the most)." if explained else "") + "</p>"
    )
    perfect = bool(gallery) and all(score >= 1.0 for _, _, score in gallery)
    if explained:
        drawn = explained_gallery(gallery, explanations or [], score_label="match score (F1)", decimals=2,
                                  max_size=_GALLERY_MAX_SIZE, extra_class="det-gallery large with-explanations")
    else:
        drawn = scored_gallery(gallery, score_label="match score (F1)", decimals=2, max_size=_GALLERY_MAX_SIZE,
                               extra_class="det-gallery large")
    return write_results_page(
        out_dir / "report.html", title, summary=dict(summary), class_names=[str(r["class"]) for r in rows],
        cards_html=_cards(box_metrics, mask_metrics), per_class_html=_per_class_table(rows, mask_metrics is not None),
        images=images, gallery_title="No mistakes: every object found" if perfect else "Predictions, worst first",
        gallery_html=[legend, drawn], details=details, styles=_DETECTION_CSS + EXPLAINED_CSS, what="detection report",
    )
