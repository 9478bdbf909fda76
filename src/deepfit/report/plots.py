"""Charts shared by the task reports, drawn with matplotlib's object API, and the code every chart ends with.

Everything is drawn on a ``Figure`` with ``FigureCanvasAgg`` rather than pyplot, so importing this
module never changes the global backend of a caller's notebook or GUI, and figures are freed as soon
as they go out of scope instead of piling up in pyplot's registry.

Here: training curves from a run's ``metrics.csv``, horizontal per-class bar charts (AP, IoU, ...),
precision-recall curves per class, and the small pieces every chart uses (saving, the light grid, the
"nothing to draw" note).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter

from deepfit.fileio import atomic_write_bytes
from deepfit.log import logger
from deepfit.report.drawing import class_color
from deepfit.report.text import clamp, fixed, shorten, to_float

__all__ = [
    "ACCURACY_COLUMNS",
    "keep_ends",
    "light_grid",
    "note_on_axes",
    "plot_class_bars",
    "plot_precision_recall",
    "plot_training_curves",
    "save_figure",
]

_T = TypeVar("_T")
# A classifier's score columns in metrics.csv; other tasks name theirs (validation mAP, mIoU, ...).
ACCURACY_COLUMNS = (("train_acc", "train"), ("val_acc", "validation"))
_SERIES_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")  # train blue, validation red, then others
_INK = "#1f2933"  # dark text on a white figure
_QUIET = "#7b8794"  # notes and dividers: visible, but not competing with the data


# --------------------------------------------------------------------------------------------------
# What every chart uses
# --------------------------------------------------------------------------------------------------


def save_figure(fig: Figure, path: Path, what: str | None = None, dpi: int = 110) -> Path:
    """Render ``fig`` to PNG in memory, then write it atomically; ``what`` names it in a debug log line."""
    FigureCanvasAgg(fig)  # attaches itself to the figure; makes the raster backend explicit
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, facecolor="white")
    saved = atomic_write_bytes(Path(path), buffer.getvalue())
    if what:
        logger.debug("%s written to %s", what, saved)
    return saved


def note_on_axes(ax: Axes, text: str) -> None:
    """A grey note in the middle of empty axes ("no ground truth"): an empty chart must say why it is empty."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color=_QUIET)


def light_grid(ax: Axes, axis: str = "both") -> None:
    """Faint grid lines: enough to read values off, light enough not to compete with the data."""
    ax.grid(True, axis=axis, color="#e3e7ec", linewidth=0.8)


def keep_ends(rows: Sequence[_T], most: int) -> list[_T]:
    """``rows`` when there are at most ``most``; else the first and the last ``most // 2`` of them.

    For sorted rows that keeps the best and the worst, the ones worth reading, out of a chart too long to read.
    """
    if len(rows) <= most:
        return list(rows)
    return [*rows[: most // 2], *rows[-(most // 2):]]


# --------------------------------------------------------------------------------------------------
# Per-class bar charts
# --------------------------------------------------------------------------------------------------


def plot_class_bars(
    path: Path, names: Sequence[str], values: Sequence[float], layers: Sequence[Mapping[str, Any]], *,
    title: str, x_label: str, x_max: float, max_height: float, empty_text: str,
    legend: bool = False, divider: float | None = None, what: str = "bar chart",
) -> Path:
    """Horizontal bars, one row per class, a score in [0, 1] each, and save a PNG.

    ``names`` and ``values`` (printed at the end of each bar) go bottom to top, as ``barh`` draws them;
    each of ``layers`` is one call of ``Axes.barh`` (its ``width``, ``color``, ...), drawn in order so a
    wide light layer can sit behind a narrow dark one. ``divider`` draws a dashed line at that row
    position (where rows were left out, see :func:`keep_ends`). With no rows, ``empty_text`` says why.
    The figure grows with the number of rows, up to ``max_height`` inches.
    """
    fig = Figure(figsize=(8.5, clamp(1.4 + 0.26 * len(names), 3.0, max_height)), layout="constrained")
    ax = fig.add_subplot()
    if names:
        positions = np.arange(len(names))
        for layer in layers:
            ax.barh(positions, **layer)
        ax.set_yticks(positions, [shorten(name) for name in names], fontsize=clamp(11.0 - 0.05 * len(names), 6.0, 10.0))
        for y, value in enumerate(values):
            ax.text(min(value, 1.0) + 0.01, y, f"{value:.3f}", va="center", fontsize=7.5, color=_INK)
        if legend:
            ax.legend(loc="lower right", fontsize=8.5)
        if divider is not None:
            ax.axhline(divider, color=_QUIET, linestyle="--", linewidth=1.0)
    else:
        note_on_axes(ax, empty_text)
        ax.set_yticks([])
    ax.set_xlim(0.0, x_max)
    ax.set_xlabel(x_label)
    ax.set_title(title)
    light_grid(ax, axis="x")
    ax.set_axisbelow(True)
    return save_figure(fig, path, what)


# --------------------------------------------------------------------------------------------------
# Precision-recall curves
# --------------------------------------------------------------------------------------------------


def plot_precision_recall(
    curves: Sequence[Mapping[str, Any]], ap50: Sequence[Any], path: Path, *, mean_ap50: Any, subject: str,
    most: int = 20,
) -> Path:
    """Precision against recall at IoU 0.50 for the best classes, and the mean over all classes (thick).

    ``curves[k]`` is class k's ``{"class", "recall", "precision"}``, every class on the same recall points;
    an empty precision means the class has no ground truth (no curve). ``ap50[k]`` ranks the classes and
    is shown in the legend; ``mean_ap50`` in the title, with ``subject`` ("boxes", "masks"). Only the
    ``most`` classes with the highest AP50 are drawn, since more lines turn the plot into a hairball;
    the mean curve still covers every class with ground truth, so its area is the mAP@.50 in the title.
    """
    with_gt = [(k, c) for k, c in enumerate(curves) if c.get("precision")]
    scores = {k: to_float(ap50[k]) if k < len(ap50) else math.nan for k, _ in with_gt}
    with_gt.sort(key=lambda item: -np.nan_to_num(scores[item[0]], nan=-1.0))

    fig = Figure(figsize=(9.0, 6.0), layout="constrained")
    ax = fig.add_subplot()
    for k, curve in with_gt[:most]:
        ax.plot(curve["recall"], curve["precision"], color=np.array(class_color(k)) / 255.0, linewidth=1.3, alpha=0.85,
                label=f"{shorten(str(curve['class']))} ({fixed(scores[k])})")
    if with_gt:
        mean = np.mean([np.asarray(c["precision"], dtype=float) for _, c in with_gt], axis=0)
        ax.plot(with_gt[0][1]["recall"], mean, color="#111111", linewidth=3.2,
                label=f"mean of {len(with_gt)} classes ({fixed(mean_ap50)})")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8.5, frameon=False, title="class (AP50)")
    else:
        note_on_axes(ax, "no ground truth")
    more = f", best {most} of {len(with_gt)} classes shown" if len(with_gt) > most else ""
    ax.set_title(f"Precision-recall at IoU 0.50 ({subject}{more}); mAP@.50 = {fixed(mean_ap50)}")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.02)
    light_grid(ax)
    return save_figure(fig, path, "precision-recall curves")


# --------------------------------------------------------------------------------------------------
# Training curves
# --------------------------------------------------------------------------------------------------


def _read_metrics_rows(metrics_csv: Path) -> list[dict[str, str]] | None:
    try:
        # utf-8-sig tolerates a byte-order mark left by spreadsheet programs.
        with metrics_csv.open(newline="", encoding="utf-8-sig") as handle:
            return [dict(row) for row in csv.DictReader(handle)]
    except FileNotFoundError:
        logger.warning("no training curves: %s does not exist", metrics_csv)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        logger.warning("no training curves: cannot read %s (%s)", metrics_csv, error)
    return None


def _epoch_axis(rows: list[dict[str, str]]) -> tuple[list[dict[str, str]], np.ndarray, bool]:
    """Return the usable rows and their x positions.

    Epochs are used as-is when they never go backwards. Some runs restart the count for each
    phase (head 1..3, then full 1..5); plotting those raw would fold the curves onto each other,
    so the rows are then numbered consecutively instead (the flag reports that).
    """
    usable = [row for row in rows if not math.isnan(to_float(row.get("epoch")))]
    epochs = np.array([to_float(row["epoch"]) for row in usable], dtype=float)
    if epochs.size < 2 or np.all(np.diff(epochs) >= 0):
        return usable, epochs, False
    positions = np.empty_like(epochs)
    step = 0
    for index, epoch in enumerate(epochs):
        if index == 0 or epoch != epochs[index - 1]:
            step += 1
        positions[index] = step
    return usable, positions, True


def _phase_changes(rows: list[dict[str, str]], x: np.ndarray) -> list[tuple[float, str]]:
    """Where the ``phase`` column switches value: (x position of the boundary, "old → new")."""
    changes: list[tuple[float, str]] = []
    previous_phase: str | None = None
    previous_x = math.nan
    for row, position in zip(rows, x, strict=True):
        phase = (row.get("phase") or "").strip()
        if not phase:
            continue  # an empty cell is not a change of phase
        if previous_phase is not None and phase != previous_phase:
            # Halfway between the last epoch of the old phase and the first of the new one.
            boundary = (previous_x + position) / 2.0 if position != previous_x else float(position)
            changes.append((boundary, f"{previous_phase} → {phase}"))
        previous_phase, previous_x = phase, float(position)
    return changes


def plot_training_curves(
    metrics_csv: Path, path: Path, *, scores: Sequence[tuple[str, str]] = ACCURACY_COLUMNS, score_title: str = "Accuracy",
    as_percent: bool = True,
) -> Path | None:
    """Plot loss and a score against epoch from a run's ``metrics.csv`` and save a PNG.

    The left panel is the training and validation loss; the right one the ``scores`` columns, each
    (column, legend label): accuracy for a classifier, validation mAP for a detector, validation mIoU for
    a segmenter, titled ``score_title`` and read as percentages with ``as_percent`` (fractions only).
    Missing columns and empty cells are tolerated (they just leave gaps or absent lines), because
    a run that stopped early or logged train and validation on separate rows is still worth
    seeing. Returns ``None`` (after a warning) when there is nothing to draw.
    """
    metrics_csv, path = Path(metrics_csv), Path(path)
    rows = _read_metrics_rows(metrics_csv)
    if rows is None:
        return None
    if not rows:
        logger.warning("no training curves: %s has no rows", metrics_csv)
        return None
    usable, x, renumbered = _epoch_axis(rows)
    if not usable:
        logger.warning("no training curves: %s has no usable 'epoch' values", metrics_csv)
        return None

    fig = Figure(figsize=(11.0, 4.2), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    panels = [
        (loss_ax, "Loss", "loss", [("train_loss", "train"), ("val_loss", "validation")], False),
        (acc_ax, score_title, score_title.lower(), list(scores), as_percent),
    ]
    changes = _phase_changes(usable, x)

    for ax, title, ylabel, series, percent in panels:
        drawn: list[np.ndarray] = []
        for color, (column, label) in zip(_SERIES_COLORS, series, strict=False):
            values = np.array([to_float(row.get(column)) for row in usable], dtype=float)
            keep = np.isfinite(values)
            if not keep.any():
                continue
            # Dropping gaps (rather than plotting NaN) joins points logged on alternate rows.
            marker = "o" if keep.sum() <= 40 else None
            ax.plot(x[keep], values[keep], label=label, color=color, marker=marker, markersize=3.5)
            drawn.append(values[keep])
        ax.set_title(title)
        ax.set_xlabel("epoch (consecutive)" if renumbered else "epoch")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        light_grid(ax)
        if not drawn:
            note_on_axes(ax, "not logged")
        else:
            ax.legend(loc="best", frameon=False)
            # Accuracies logged as fractions read better as percentages.
            if percent and all(np.nanmax(v) <= 1.0 for v in drawn):
                ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
        for boundary, label in changes:
            ax.axvline(boundary, color="#52606d", linestyle="--", linewidth=1.1)
            # x in data units, y in axes units: the label sits at the top whatever the value range.
            ax.text(
                boundary,
                0.98,
                f" {label}",
                transform=ax.get_xaxis_transform(),
                ha="left",
                va="top",
                fontsize=8.5,
                color="#52606d",
            )

    fig.suptitle("Training curves")
    return save_figure(fig, path, "training curves")
