"""What semantic-segmentation evaluation and prediction write to disk.

A per-image score that orders the gallery worst first, masks as palette PNGs that any tool reads back as
class indexes, a per-class CSV, an IoU-per-class chart, the confusion matrix, and one self-contained HTML
report (the pictures of masks, strips and overlays are in :mod:`deepfit.tasks.segment.pictures`).

Conventions:

    mask   = (H, W) uint8 class indexes 0..K-1; ``IGNORE`` (255) marks unlabelled or ambiguous pixels
    colors = (K, 3) uint8, the display colour of each class
    metrics = what ``deepfit.tasks.segment.objective.segmentation_metrics`` returns: pixel_accuracy, miou,
              mean_dice, per_class (class, iou, dice, precision, recall, pixels, predicted), confusion

Everything is drawn with PIL and matplotlib's object API (no pyplot); the page, the confusion matrix, the
bar chart, the panel strips and the page come from the shared report kit, :mod:`deepfit.report`.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from deepfit.explain.result import Explanation
from deepfit.fileio import atomic_write_bytes
from deepfit.log import logger
from deepfit.report.confusion import plot_confusion_matrix, write_confusion_csv
from deepfit.report.drawing import as_numpy, class_color, hex_color
from deepfit.report.gallery import scored_gallery
from deepfit.report.html import (
    WEAKEST_BADGE,
    data_table,
    empty_note,
    esc,
    metric_cards,
    score_cells,
    table_row,
)
from deepfit.report.page import RunDetails, write_results_page
from deepfit.report.plots import keep_ends, plot_class_bars
from deepfit.report.text import fixed, percent, to_float, write_csv
from deepfit.report.trust import interval_hint
from deepfit.tasks.detect.explained import EXPLAINED_CSS, explained_gallery
from deepfit.tasks.segment.pictures import (
    ERROR_COLOR,
    IGNORE,
    IGNORE_COLOR,
    IGNORE_HATCH,
    class_indexes,
    color_table,
)

__all__ = [
    "image_score",
    "plot_per_class_iou",
    "save_mask_png",
    "write_per_class_csv",
    "write_segmentation_report",
]

_MAX_IOU_BARS = 60  # above this the chart keeps the worst and the best half of this many
_MAX_CONFUSION_CLASSES = 40  # above this the confusion picture keeps only the classes that occur
_MAX_LEGEND_SWATCHES = 40
_GALLERY_MAX_SIZE = (1300, 600)  # four panels side by side need more room than detection's 480 px drawings


def _swatch(colors: np.ndarray | None, index: int) -> tuple[int, int, int]:
    if colors is None:
        return class_color(index)
    if 0 <= index < len(colors):
        r, g, b = (int(v) for v in colors[index])
        return r, g, b
    return IGNORE_COLOR


# --------------------------------------------------------------------------------------------------
# Scores and files
# --------------------------------------------------------------------------------------------------


def image_score(confusion: np.ndarray) -> float:
    """Mean IoU of one image over the classes present in its truth or its prediction, in [0, 1].

    ``confusion`` is the image's (K, K) pixel confusion (rows truth, columns prediction, ignored pixels
    already left out). Classes absent from both are skipped: they say nothing about this image, and
    counting them as perfect would push every image towards 1. An image with no valid pixel scores 1.0
    (there is nothing wrong to look at). Used to put the worst images first in the gallery.
    """
    matrix = as_numpy(confusion).astype(np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"expected a square (K, K) confusion matrix, got shape {matrix.shape}")
    overlap = np.diag(matrix)
    union = matrix.sum(axis=1) + matrix.sum(axis=0) - overlap
    present = union > 0
    if not present.any():
        return 1.0
    return float(np.mean(overlap[present] / union[present]))


def save_mask_png(path: Path, mask: np.ndarray, colors: np.ndarray) -> Path:
    """Write the mask as a palette PNG and return the path (written atomically).

    The pixel values are the class indexes themselves, so ``np.array(Image.open(path))`` gives the mask
    back in any tool, while the palette (the class colours, index 255 = IGNORE in grey, unused indexes
    grey too) makes image viewers show the classes in colour.
    """
    table = color_table(colors)
    if len(table) > IGNORE:
        raise ValueError(f"a palette PNG holds at most {IGNORE} classes besides IGNORE, got {len(table)} colours")
    index = class_indexes(mask)
    if index.size and (index.min() < 0 or index.max() > 255):
        raise ValueError(f"mask values must be in [0, 255], got {index.min()}..{index.max()}")
    height, width = index.shape
    picture = Image.frombytes("P", (width, height), np.ascontiguousarray(index.astype(np.uint8)).tobytes())
    palette = np.tile(np.array(IGNORE_COLOR, dtype=np.uint8), (256, 1))
    palette[: len(table)] = table
    picture.putpalette(palette.tobytes())
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return atomic_write_bytes(Path(path), buffer.getvalue())


_CSV_COLUMNS = ("class", "iou", "dice", "precision", "recall", "pixels", "predicted")


def write_per_class_csv(path: Path, metrics: Mapping[str, Any]) -> Path:
    """One row per class: class,iou,dice,precision,recall,pixels,predicted.

    Ratios have four decimals; a class with no true and no predicted pixel gets empty cells, not 0,
    because it was not measured.
    """
    rows = (
        [row["class"],
         *("" if row.get(key) is None else f"{float(row[key]):.4f}" for key in ("iou", "dice", "precision", "recall")),
         *("" if row.get(key) is None else str(int(row[key])) for key in ("pixels", "predicted"))]
        for row in metrics.get("per_class") or []
    )
    return write_csv(Path(path), _CSV_COLUMNS, rows)


def plot_per_class_iou(metrics: Mapping[str, Any], path: Path, colors: np.ndarray | None = None) -> Path:
    """IoU per class as horizontal bars in the class colours, worst at the top, and save a PNG.

    Classes without any pixel in truth or prediction have no IoU and are left out rather than drawn as
    zero. With more than ``_MAX_IOU_BARS`` classes only the worst and the best half of that many are drawn.
    """
    table = color_table(colors) if colors is not None else None
    rows = [(str(r["class"]), to_float(r["iou"]), k) for k, r in enumerate(metrics.get("per_class") or [])
            if r.get("iou") is not None]
    rows.sort(key=lambda r: (r[1], r[0]))
    total = len(rows)
    # barh draws the first row at the bottom; the worst class belongs at the top
    rows = keep_ends(rows, _MAX_IOU_BARS)[::-1]
    # A thin dark edge keeps white or pale class colours visible on the white background.
    bars = {"width": [r[1] for r in rows], "color": [np.array(_swatch(table, k)) / 255.0 for _, _, k in rows],
            "edgecolor": "#52606d", "linewidth": 0.5, "height": 0.7}
    shown = f"; worst and best {_MAX_IOU_BARS // 2} of {total} shown" if total > _MAX_IOU_BARS else ""
    return plot_class_bars(
        path, [r[0] for r in rows], [r[1] for r in rows], [bars],
        title=f"IoU per class, worst first{shown}; mIoU = {fixed(metrics.get('miou'))}",
        x_label="IoU (intersection over union)", x_max=1.1, max_height=20.0,
        empty_text="no class in truth or prediction", what="per-class IoU chart",
        divider=_MAX_IOU_BARS // 2 - 0.5 if total > _MAX_IOU_BARS else None,
    )


# --------------------------------------------------------------------------------------------------
# HTML report
# --------------------------------------------------------------------------------------------------


# Added to the page's styles (deepfit.report.html.PAGE_CSS): whole-width strips for four panels, colour swatches for
# classes, and the stripes of ignored pixels as the pictures draw them.
_SEGMENTATION_CSS = f"""<style>
.seg-gallery {{ display: grid; grid-template-columns: 1fr; gap: 14px; }}
.legend .item {{ display: inline-block; margin-right: 12px; white-space: nowrap; }}
.swatch {{ display: inline-block; width: 14px; height: 14px; vertical-align: middle; margin-right: 5px;
          border-radius: 3px; border: 1px solid rgba(0, 0, 0, .25); }}
.swatch.ignored {{ background: repeating-linear-gradient(45deg, {hex_color(IGNORE_HATCH[0])} 0 3px,
                   {hex_color(IGNORE_HATCH[1])} 3px 6px); }}
</style>"""


def _cards(metrics: Mapping[str, Any]) -> str:
    per_class = list(metrics.get("per_class") or [])
    scored = sum(1 for row in per_class if row.get("iou") is not None)
    labelled = sum(int(row.get("pixels") or 0) for row in per_class)
    ci = metrics.get("intervals") or {}
    return metric_cards([
        ("Mean IoU", fixed(metrics.get("miou")),
         f"overlap / union, mean over {scored} of {len(per_class)} classes" + interval_hint(ci.get("miou"))),
        ("Mean Dice", fixed(metrics.get("mean_dice")),
         "2 × overlap / (truth + prediction); kinder than IoU" + interval_hint(ci.get("mean_dice"))),
        ("Pixel accuracy", percent(metrics.get("pixel_accuracy")),
         f"of {labelled:,} labelled pixels; large classes dominate it" + interval_hint(ci.get("pixel_accuracy"), percent)),
    ])


def _weakest(per_class: Sequence[Mapping[str, Any]]) -> int | None:
    scored = [(to_float(row["iou"]), k) for k, row in enumerate(per_class) if row.get("iou") is not None]
    return min(scored)[1] if len(scored) >= 2 else None  # with a single class "weakest" means nothing


def _per_class_table(per_class: Sequence[Mapping[str, Any]], colors: np.ndarray) -> str:
    total = sum(int(row.get("pixels") or 0) for row in per_class)
    weakest = _weakest(per_class)
    body = []
    for k, row in enumerate(per_class):
        swatch = f'<span class="swatch" style="background:{hex_color(_swatch(colors, k))}"></span>'
        badge = WEAKEST_BADGE if k == weakest else ""
        share = percent(int(row.get("pixels") or 0) / total) if total else "–"
        cells = score_cells(row, ["iou", "dice", "precision", "recall"],
                            missing_html="absent (in neither truth nor prediction)")
        body.append(table_row(f"<td>{swatch}{esc(row['class'])}{badge}</td>{cells}<td>{share}</td>", weak=k == weakest))
    columns = ["class", "IoU", "Dice", "precision", "recall", "share of true pixels"]
    return data_table(columns, body, empty_html="No per-class results.")


def _legend(per_class: Sequence[Mapping[str, Any]], colors: np.ndarray) -> str:
    """Class colours for reading the gallery; classes that occur come first, as they are the ones drawn."""
    occurs = [k for k, row in enumerate(per_class) if int(row.get("pixels") or 0) + int(row.get("predicted") or 0) > 0]
    seen = set(occurs)
    order = occurs + [k for k in range(len(per_class)) if k not in seen]
    items = [
        f'<span class="item"><span class="swatch" style="background:{hex_color(_swatch(colors, k))}"></span>'
        f"{esc(per_class[k]['class'])}</span>"
        for k in order[:_MAX_LEGEND_SWATCHES]
    ]
    if len(order) > _MAX_LEGEND_SWATCHES:
        items.append(f'<span class="item">… and {len(order) - _MAX_LEGEND_SWATCHES} more</span>')
    items.append('<span class="item"><span class="swatch ignored"></span>ignored / unlabelled (not scored)</span>')
    items.append(f'<span class="item"><span class="swatch" style="background:{hex_color(ERROR_COLOR)}"></span>'
                 "errors panel: prediction differs from the truth</span>")
    return f'<p class="legend">{"".join(items)}</p>'


def _confusion_picture(confusion: np.ndarray, names: list[str], path: Path) -> tuple[str, Path] | None:
    """Plot the row-normalised confusion matrix; with many classes only those that occur.

    A 150-class matrix is mostly empty rows and columns for classes the test images never show, and at
    that size the cells are too small to read: dropping them keeps the picture useful. The CSV keeps all.
    """
    k = len(names)
    caption = "Confusion matrix of pixels (rows: true class, as a share of its pixels)"
    if k > _MAX_CONFUSION_CLASSES:
        occurs = np.flatnonzero((confusion.sum(axis=1) > 0) | (confusion.sum(axis=0) > 0))
        if not len(occurs):
            logger.debug("no confusion picture: no class occurs in the truth or the predictions")
            return None
        confusion = confusion[np.ix_(occurs, occurs)]
        names = [names[i] for i in occurs]
        caption += (f"; only the {len(occurs)} of {k} classes that occur in the truth or the predictions "
                    "(confusion.csv has all)")
    return caption, plot_confusion_matrix(confusion, names, path, normalize=True)


def write_segmentation_report(
    out_dir: Path, title: str, metrics: Mapping[str, Any], gallery: Sequence[tuple[str, Image.Image, float]],
    summary: Mapping[str, str], colors: np.ndarray, details: RunDetails | None = None,
    explanations: Sequence[Explanation | None] | None = None,
) -> Path:
    """Write the pictures, the CSVs and one self-contained ``report.html`` into ``out_dir``; return the HTML path.

    Files: per_class_iou.png, confusion_matrix.png, confusion.csv (every class), per_class.csv and
    report.html. ``gallery`` holds (name, picture, image score), usually ``side_by_side`` strips with
    :func:`image_score`, and is shown in the order given: callers pass the imperfect images worst first,
    because the images the model gets most wrong are the ones worth a look (only perfect ones, scoring 1,
    when there is no mistake: the gallery is then titled so). ``details`` are the run's warnings, training
    options, curves and class examples (:class:`~deepfit.report.page.RunDetails`); ``explanations`` (one per gallery
    image, or None) are drawn beside their strips (:mod:`deepfit.tasks.detect.explained`).
    """
    out_dir = Path(out_dir)
    table = color_table(colors)
    per_class = list(metrics.get("per_class") or [])
    names = [str(row["class"]) for row in per_class]

    images: dict[str, Path] = {"IoU per class, worst first": plot_per_class_iou(metrics, out_dir / "per_class_iou.png", table)}
    if metrics.get("confusion") is not None and names:
        confusion = np.asarray(metrics["confusion"], dtype=np.int64)
        write_confusion_csv(confusion, names, out_dir / "confusion.csv")
        picture = _confusion_picture(confusion, names, out_dir / "confusion_matrix.png")
        if picture is not None:
            images[picture[0]] = picture[1]
    write_per_class_csv(out_dir / "per_class.csv", metrics)

    perfect = bool(gallery) and all(score >= 1.0 for _, _, score in gallery)
    explained = any(e is not None for e in explanations or [])
    explanation = empty_note(
        "Each image beside its true and predicted masks and its errors (in the colour below), sorted worst first by "
        "the image's mean IoU over the classes it shows or is predicted to show."
        + (" No image has a wrong pixel: these are some of the evaluated ones." if perfect else "")
        + (" Last: where the segmenter looked to paint the class it painted most wrongly (its largest region where "
           "none is wrong), outlined in white; a class-activation map from blue (nothing) to red (the most)."
           if explained else "")
    )
    if explained:
        strips = explained_gallery(gallery, explanations or [], score_label="mean IoU of this image", decimals=3,
                                   max_size=_GALLERY_MAX_SIZE, quality=88, extra_class="seg-gallery large")
    else:
        strips = scored_gallery(gallery, score_label="mean IoU of this image", decimals=3, max_size=_GALLERY_MAX_SIZE,
                                quality=88, extra_class="seg-gallery large")
    return write_results_page(
        out_dir / "report.html", title, summary=dict(summary), class_names=names, cards_html=_cards(metrics),
        per_class_html=_per_class_table(per_class, table), images=images,
        gallery_title="No mistakes: every pixel right" if perfect else "Predictions, worst first",
        gallery_html=[explanation, _legend(per_class, table), strips], details=details,
        styles=_SEGMENTATION_CSS + EXPLAINED_CSS, what="segmentation report",
    )
