"""Evaluation reports meant to be looked at: a confusion-matrix picture, training curves and one HTML page.

Everything here is drawn with matplotlib's object API (``Figure`` + ``FigureCanvasAgg``) rather than
pyplot, so importing this module never changes the global backend of a caller's notebook or GUI, and
figures are freed as soon as they go out of scope instead of piling up in pyplot's registry.

The HTML report is one self-contained file: styles are inline and every picture is embedded as a
``data:`` URI, so it can be mailed, attached to a ticket or opened offline and still look complete.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter

from deepfit.fileio import atomic_write_bytes
from deepfit.log import logger

__all__ = [
    "WorstPrediction",
    "plot_confusion_matrix",
    "plot_learning_curves",
    "plot_training_curves",
    "write_comparison_report",
    "write_confusion_csv",
    "write_html_report",
]

# Above this many classes the per-cell numbers become unreadable smudges, so only colours are drawn.
_MAX_ANNOTATED_CLASSES = 30
# Long class names would squeeze the matrix itself; the full names are still in the CSV and the HTML.
_MAX_TICK_LABEL_CHARS = 24
_THUMBNAIL_PX = 160


# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------


def _save_figure(fig: Figure, path: Path, dpi: int = 110) -> Path:
    """Render ``fig`` to PNG in memory, then write it atomically."""
    FigureCanvasAgg(fig)  # attaches itself to the figure; makes the raster backend explicit
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, facecolor="white")
    return atomic_write_bytes(path, buffer.getvalue())


def _shorten(text: str, limit: int = _MAX_TICK_LABEL_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _clamp(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))


def _to_float(value: Any) -> float:
    """Parse a CSV cell or metric value; anything empty or unparseable becomes NaN (drawn as a gap)."""
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _check_confusion(confusion: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    matrix = np.asarray(confusion)
    n = len(class_names)
    if n == 0:
        raise ValueError("a confusion matrix needs at least one class name")
    if matrix.shape != (n, n):
        raise ValueError(
            f"confusion matrix has shape {matrix.shape}, expected ({n}, {n}) for {n} class names"
        )
    return matrix


# --------------------------------------------------------------------------------------------------
# Confusion matrix
# --------------------------------------------------------------------------------------------------


def plot_confusion_matrix(
    confusion: np.ndarray, class_names: list[str], path: Path, normalize: bool = True
) -> Path:
    """Draw the confusion matrix as a heat map (rows = true class, columns = predicted) and save a PNG.

    With ``normalize`` the colours show the fraction of each *true* class that went to each
    prediction, so a rare class that is always wrong is as visible as a frequent one; cells then
    show the raw count and that row percentage. Without it, colours and numbers are raw counts.
    """
    path = Path(path)
    matrix = _check_confusion(confusion, class_names)
    counts = matrix.astype(float)
    n = len(class_names)

    if normalize:
        row_totals = counts.sum(axis=1, keepdims=True)
        # A class with no samples gets an empty (all-zero) row instead of a division warning.
        shown = np.divide(counts, row_totals, out=np.zeros_like(counts), where=row_totals > 0)
        vmax = 1.0
    else:
        shown = counts
        vmax = float(counts.max()) if counts.size and counts.max() > 0 else 1.0

    # The figure grows with the class count so each cell keeps roughly the same size on screen.
    side = _clamp(1.6 + 0.42 * n, 4.5, 18.0)
    fig = Figure(figsize=(side + 1.4, side), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(shown, cmap="Blues", vmin=0.0, vmax=vmax, interpolation="nearest")
    colorbar = fig.colorbar(image, ax=ax, shrink=0.8)
    colorbar.set_label("fraction of the true class" if normalize else "number of images")
    if normalize:
        colorbar.formatter = PercentFormatter(xmax=1.0, decimals=0)
        colorbar.update_ticks()

    tick_size = _clamp(12.0 - 0.17 * n, 6.0, 11.0)
    labels = [_shorten(str(name)) for name in class_names]
    ax.set_xticks(range(n), labels, rotation=45, ha="right", rotation_mode="anchor", fontsize=tick_size)
    ax.set_yticks(range(n), labels, fontsize=tick_size)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("Confusion matrix" + (" (share of each true class)" if normalize else " (counts)"))

    # Thin white grid lines between cells make long rows easier to follow by eye.
    ax.set_xticks(np.arange(-0.5, n, 1.0), minor=True)
    ax.set_yticks(np.arange(-0.5, n, 1.0), minor=True)
    ax.grid(which="minor", color="white", linewidth=1.0)
    ax.tick_params(which="minor", length=0)

    if n <= _MAX_ANNOTATED_CLASSES:
        text_size = _clamp(13.0 - 0.25 * n, 6.0, 11.0)
        integral = np.allclose(counts, np.round(counts))
        for i in range(n):
            for j in range(n):
                count = counts[i, j]
                count_text = f"{int(round(count))}" if integral else f"{count:.3g}"
                if count == 0:
                    # Zeros are the common case off the diagonal; keep them quiet so errors stand out.
                    ax.text(j, i, "0", ha="center", va="center", fontsize=text_size, color="#b0b7c3")
                    continue
                text = f"{count_text}\n{100.0 * shown[i, j]:.0f}%" if normalize else count_text
                # Dark cells get white text, light cells dark text, so every number stays readable.
                color = "white" if shown[i, j] > 0.55 * vmax else "#1f2933"
                ax.text(
                    j, i, text, ha="center", va="center", fontsize=text_size, color=color, linespacing=1.1
                )

    saved = _save_figure(fig, path)
    logger.debug("confusion matrix picture written to %s", saved)
    return saved


def write_confusion_csv(confusion: np.ndarray, class_names: list[str], path: Path) -> Path:
    """Write the confusion matrix as CSV: one row per true class, one column per predicted class.

    The corner cell names both axes because a bare matrix is easy to read transposed by mistake.
    """
    path = Path(path)
    matrix = _check_confusion(confusion, class_names)
    integral = np.allclose(matrix, np.round(matrix))

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["true \\ predicted", *class_names])
    for name, row in zip(class_names, matrix, strict=True):
        cells = [str(int(round(float(v)))) if integral else repr(float(v)) for v in row]
        writer.writerow([name, *cells])
    return atomic_write_bytes(path, buffer.getvalue().encode("utf-8"))


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
    usable = [row for row in rows if not math.isnan(_to_float(row.get("epoch")))]
    epochs = np.array([_to_float(row["epoch"]) for row in usable], dtype=float)
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


def plot_training_curves(metrics_csv: Path, path: Path) -> Path | None:
    """Plot loss and accuracy against epoch from a run's ``metrics.csv`` and save a PNG.

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
        (loss_ax, "Loss", "loss", [("train_loss", "train"), ("val_loss", "validation")]),
        (acc_ax, "Accuracy", "accuracy", [("train_acc", "train"), ("val_acc", "validation")]),
    ]
    colors = {"train": "#1f77b4", "validation": "#d62728"}
    changes = _phase_changes(usable, x)

    for ax, title, ylabel, series in panels:
        drawn: list[np.ndarray] = []
        for column, label in series:
            values = np.array([_to_float(row.get(column)) for row in usable], dtype=float)
            keep = np.isfinite(values)
            if not keep.any():
                continue
            # Dropping gaps (rather than plotting NaN) joins points logged on alternate rows.
            marker = "o" if keep.sum() <= 40 else None
            ax.plot(x[keep], values[keep], label=label, color=colors[label], marker=marker, markersize=3.5)
            drawn.append(values[keep])
        ax.set_title(title)
        ax.set_xlabel("epoch (consecutive)" if renumbered else "epoch")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, color="#e3e7ec", linewidth=0.8)
        if not drawn:
            ax.text(0.5, 0.5, "not logged", transform=ax.transAxes, ha="center", va="center", color="#7b8794")
        else:
            ax.legend(loc="best", frameon=False)
            # Accuracies logged as fractions read better as percentages.
            if ylabel == "accuracy" and all(np.nanmax(v) <= 1.0 for v in drawn):
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
    saved = _save_figure(fig, path)
    logger.debug("training curves written to %s", saved)
    return saved


# --------------------------------------------------------------------------------------------------
# HTML report
# --------------------------------------------------------------------------------------------------


@dataclass
class WorstPrediction:
    """One confidently wrong (or barely right) prediction, shown as a card in the report."""

    path: str  # file path as shown to the user
    true_label: str
    predicted_label: str
    confidence: float  # probability of the predicted class
    true_prob: float  # probability given to the true class


_CSS = """
:root { --ink:#1f2933; --muted:#616e7c; --line:#e4e7eb; --accent:#2563eb; --bad:#b42318;
        --bad-bg:#fef3f2; --warn-bg:#fffaeb; --warn-line:#f79009; --card:#f8fafc; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: var(--ink); background: #fff; }
main { max-width: 1100px; margin: 0 auto; padding: 28px 24px 48px; }
h1 { font-size: 26px; margin: 0 0 14px; }
h2 { font-size: 19px; margin: 34px 0 12px; padding-bottom: 6px; border-bottom: 1px solid var(--line); }
table { border-collapse: collapse; }
.summary td { padding: 2px 18px 2px 0; vertical-align: top; }
.summary td:first-child { color: var(--muted); white-space: nowrap; }
.notes { list-style: none; padding: 0; margin: 18px 0 0; }
.notes li { background: var(--warn-bg); border-left: 4px solid var(--warn-line); padding: 8px 12px;
            margin-bottom: 8px; border-radius: 4px; }
.cards { display: flex; flex-wrap: wrap; gap: 14px; margin-top: 22px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 14px 20px;
        min-width: 190px; }
.card .label { color: var(--muted); font-size: 13px; text-transform: uppercase; letter-spacing: .04em; }
.card .value { font-size: 34px; font-weight: 650; line-height: 1.2; }
.card .hint { color: var(--muted); font-size: 13px; }
.per-class { width: 100%; font-variant-numeric: tabular-nums; }
.per-class th, .per-class td { padding: 6px 10px; border-bottom: 1px solid var(--line); text-align: right; }
.per-class th:first-child, .per-class td:first-child { text-align: left; }
.per-class th { font-size: 13px; color: var(--muted); font-weight: 600; }
.per-class tr.weak td { background: var(--bad-bg); }
.per-class tr.weak td:first-child { border-left: 4px solid var(--bad); }
.badge { display: inline-block; margin-left: 8px; padding: 0 7px; border-radius: 9px; font-size: 12px;
         background: var(--bad); color: #fff; }
.bar { display: inline-block; width: 70px; height: 7px; background: var(--line); border-radius: 4px;
       margin-left: 8px; vertical-align: middle; overflow: hidden; }
.bar span { display: block; height: 100%; background: var(--accent); }
figure { margin: 0 0 26px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 6px; }
figcaption { color: var(--muted); font-size: 14px; margin-top: 6px; }
.missing { padding: 24px; background: var(--card); border: 1px dashed var(--line); color: var(--muted); }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(190px, 1fr)); gap: 14px; }
.shot { border: 1px solid var(--line); border-radius: 8px; padding: 10px; background: var(--card); }
.shot .thumb { height: 164px; display: flex; align-items: center; justify-content: center; }
.shot img { max-width: 160px; max-height: 160px; border-radius: 4px; }
.placeholder { width: 160px; height: 160px; display: flex; align-items: center; justify-content: center;
               background: repeating-linear-gradient(45deg, #eef1f4, #eef1f4 8px, #f8fafc 8px, #f8fafc 16px);
               color: var(--muted); font-size: 13px; border-radius: 4px; text-align: center; }
.shot .path { font: 12px/1.35 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; word-break: break-all;
              color: var(--muted); margin: 8px 0 4px; }
.shot .row { font-size: 13.5px; }
.shot .wrong { color: var(--bad); font-weight: 600; }
.empty { color: var(--muted); }
footer { margin-top: 40px; color: var(--muted); font-size: 12px; }
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _percent(value: Any, decimals: int = 1) -> str:
    number = _to_float(value)
    return "n/a" if math.isnan(number) else f"{100.0 * number:.{decimals}f}%"


def _fixed(value: Any, decimals: int = 3) -> str:
    number = _to_float(value)
    return "–" if math.isnan(number) else f"{number:.{decimals}f}"


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


_IMAGE_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}


def _thumbnail_uri(image_path: str) -> str | None:
    """A small embedded copy of the image, or ``None`` when it cannot be read for any reason.

    A report is often produced long after the data moved or on another machine, so an
    unreadable picture must degrade to a placeholder rather than lose the whole report.
    """
    from PIL import Image, ImageOps

    try:
        with Image.open(image_path) as opened:
            opened.draft(None, (_THUMBNAIL_PX * 2, _THUMBNAIL_PX * 2))  # JPEGs decode faster at reduced size
            picture = ImageOps.exif_transpose(opened)  # phone photos otherwise show sideways
            picture = picture.convert("RGBA" if picture.mode in ("RGBA", "LA", "P") else "RGB")
            picture.thumbnail((_THUMBNAIL_PX, _THUMBNAIL_PX))
            buffer = io.BytesIO()
            if picture.mode == "RGBA":
                picture.save(buffer, format="PNG", optimize=True)  # keep transparency
                return _data_uri(buffer.getvalue(), "image/png")
            picture.save(buffer, format="JPEG", quality=85)
            return _data_uri(buffer.getvalue(), "image/jpeg")
    except Exception as error:  # any failure (missing, truncated, not an image) means "placeholder"
        logger.debug("cannot make a thumbnail of %s: %s", image_path, error)
        return None


def _weakest_index(per_class: Sequence[Mapping[str, Any]]) -> int | None:
    """The class with the lowest F1 (ties broken by recall), ignoring classes with no test samples."""
    candidates = []
    for index, row in enumerate(per_class):
        support = _to_float(row.get("support"))
        f1 = _to_float(row.get("f1"))
        if math.isnan(f1) or (not math.isnan(support) and support <= 0):
            continue
        recall = _to_float(row.get("recall"))
        candidates.append((f1, -math.inf if math.isnan(recall) else recall, index))
    if len(candidates) < 2:
        return None  # with a single class "weakest" means nothing
    return min(candidates)[2]


def _summary_html(summary: Mapping[str, str], class_names: Sequence[str]) -> str:
    rows = [f"<tr><td>{_esc(key)}</td><td>{_esc(value)}</td></tr>" for key, value in summary.items()]
    if class_names:
        shown = ", ".join(str(name) for name in class_names[:40])
        more = f" … and {len(class_names) - 40} more" if len(class_names) > 40 else ""
        rows.append(f"<tr><td>classes ({len(class_names)})</td><td>{_esc(shown + more)}</td></tr>")
    return f'<table class="summary">{"".join(rows)}</table>' if rows else ""


def _cards_html(metrics: Mapping[str, Any], class_names: Sequence[str]) -> str:
    num_samples = metrics.get("num_samples")
    cards = [
        (
            "Accuracy",
            _percent(metrics.get("accuracy")),
            f"of {_esc(num_samples)} images" if num_samples else "",
        ),
    ]
    # Chance level gives the balanced accuracy a scale a non-specialist can judge it against.
    chance = f"mean recall per class; chance ≈ {100.0 / len(class_names):.1f}%" if class_names else ""
    cards.append(("Balanced accuracy", _percent(metrics.get("balanced_accuracy")), chance))
    if "macro_f1" in metrics:
        cards.append(("Macro F1", _fixed(metrics.get("macro_f1")), "mean F1 over classes"))
    parts = [
        f'<div class="card"><div class="label">{label}</div><div class="value">{value}</div>'
        f'<div class="hint">{hint}</div></div>'
        for label, value, hint in cards
    ]
    return f'<div class="cards">{"".join(parts)}</div>'


def _per_class_html(per_class: Sequence[Mapping[str, Any]]) -> str:
    if not per_class:
        return '<p class="empty">No per-class measures were given.</p>'
    weakest = _weakest_index(per_class)
    body = []
    for index, row in enumerate(per_class):
        f1 = _to_float(row.get("f1"))
        width = 0.0 if math.isnan(f1) else _clamp(100.0 * f1, 0.0, 100.0)
        badge = '<span class="badge">weakest</span>' if index == weakest else ""
        row_class = ' class="weak"' if index == weakest else ""
        support = row.get("support")
        support_text = "–" if support is None or support == "" else _esc(support)
        body.append(
            f"<tr{row_class}>"
            f"<td>{_esc(row.get('class', ''))}{badge}</td>"
            f"<td>{_fixed(row.get('precision'))}</td>"
            f"<td>{_fixed(row.get('recall'))}</td>"
            f'<td>{_fixed(f1)}<span class="bar"><span style="width:{width:.0f}%"></span></span></td>'
            f"<td>{support_text}</td></tr>"
        )
    head = "<tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>"
    return f'<table class="per-class"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>'


def _images_html(images: Mapping[str, Path]) -> str:
    parts = []
    for caption, image_path in images.items():
        image_path = Path(image_path)
        try:
            data = image_path.read_bytes()
        except OSError as error:
            logger.warning("report: picture %r not embedded, cannot read %s (%s)", caption, image_path, error)
            parts.append(
                f'<figure><div class="missing">picture not available</div><figcaption>{_esc(caption)}</figcaption></figure>'
            )
            continue
        mime = _IMAGE_MIME.get(image_path.suffix.lower(), "image/png")
        parts.append(
            f'<figure><img src="{_data_uri(data, mime)}" alt="{_esc(caption)}">'
            f"<figcaption>{_esc(caption)}</figcaption></figure>"
        )
    return "".join(parts)


def _worst_html(worst: Sequence[WorstPrediction]) -> str:
    if not worst:
        return '<p class="empty">No mistakes to show.</p>'
    cards = []
    for item in worst:
        uri = _thumbnail_uri(item.path)
        thumb = (
            f'<img src="{uri}" alt="{_esc(item.path)}">'
            if uri
            else '<div class="placeholder">image not<br>available</div>'
        )
        wrong = item.predicted_label != item.true_label
        cards.append(
            f'<div class="shot"><div class="thumb">{thumb}</div>'
            f'<div class="path">{_esc(item.path)}</div>'
            f'<div class="row">true: <b>{_esc(item.true_label)}</b> ({_percent(item.true_prob)})</div>'
            f'<div class="row">predicted: <span class="{"wrong" if wrong else ""}">'
            f"{_esc(item.predicted_label)}</span> ({_percent(item.confidence)})</div></div>"
        )
    return f'<div class="gallery">{"".join(cards)}</div>'


def _html_document(title: str, sections: Sequence[str]) -> bytes:
    """One self-contained page: inline styles, no external resources."""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head>"
        f"<body><main>{''.join(sections)}</main></body></html>\n"
    ).encode()


def write_html_report(
    path: Path,
    *,
    title: str,
    summary: dict[str, str],
    metrics: dict[str, Any],
    class_names: list[str],
    images: dict[str, Path],
    worst: list[WorstPrediction],
    notes: Sequence[str] = (),
) -> Path:
    """Write the evaluation report as a single self-contained HTML file and return its path.

    Layout, most important first: summary table, warnings, headline numbers, per-class table
    (weakest class marked), pictures, then a gallery of the worst predictions. All user-provided
    text is escaped, since class names and file paths come from arbitrary folders and files.
    """
    path = Path(path)
    notes_html = (
        '<ul class="notes">' + "".join(f"<li>{_esc(note)}</li>" for note in notes) + "</ul>" if notes else ""
    )
    sections = [
        f"<h1>{_esc(title)}</h1>",
        _summary_html(summary, class_names),
        notes_html,
        _cards_html(metrics, class_names),
        "<h2>Per-class results</h2>",
        _per_class_html(metrics.get("per_class") or []),
    ]
    if images:
        sections += ["<h2>Pictures</h2>", _images_html(images)]
    sections += [
        "<h2>Worst predictions</h2>",
        '<p class="empty">The images the model got most wrong: a good place to look for mislabelled '
        "or unusual data.</p>",
        _worst_html(worst),
        "<footer>Generated by deepfit.</footer>",
    ]
    saved = atomic_write_bytes(path, _html_document(title, sections))
    logger.info("report written to %s", saved)
    return saved


# --------------------------------------------------------------------------------------------------
# Comparison of approaches (`deepfit compare`)
# --------------------------------------------------------------------------------------------------


def plot_learning_curves(rows: Sequence[Mapping[str, Any]], n_test: int, size_path: Path, time_path: Path) -> tuple[Path, Path]:
    """Test accuracy of each approach against training-set size, and against wall time (both log axes).

    Error bars are one binomial standard error of an accuracy measured on ``n_test`` images: they
    show which gaps between curves are larger than the test set can resolve.
    """
    approaches = list(dict.fromkeys(r["approach"] for r in rows))
    paths = []
    for x_key, x_label, path in (
        ("train_images", "training images", size_path),
        ("seconds", "wall time to train (s)", time_path),
    ):
        fig = Figure(figsize=(7.5, 5.0), layout="constrained")
        ax = fig.subplots()
        for i, name in enumerate(approaches):
            points = sorted((r for r in rows if r["approach"] == name), key=lambda r: r[x_key])
            x = [max(float(r[x_key]), 1e-2) for r in points]
            y = [float(r["accuracy"]) for r in points]
            err = [math.sqrt(max(v * (1 - v), 1.0 / n_test) / n_test) for v in y]
            # distinct markers and dash patterns: curves that coincide stay visible
            ax.errorbar(x, y, yerr=err, marker="osD^v"[i % 5], linestyle=("-", "--", "-.", ":")[i % 4], capsize=3,
                        label=name, alpha=0.85)
        ax.set_xscale("log")
        if x_key == "train_images":  # tick the sizes actually used, as plain numbers
            sizes = sorted({int(r["train_images"]) for r in rows})
            ax.set_xticks(sizes, [str(v) for v in sizes])
            ax.minorticks_off()
        ax.set_xlabel(x_label)
        ax.set_ylabel(f"test accuracy ({n_test} images)")
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
        paths.append(_save_figure(fig, Path(path)))
    return paths[0], paths[1]


def write_comparison_report(
    path: Path,
    *,
    title: str,
    verdict: Sequence[str],
    rows: Sequence[Mapping[str, Any]],
    images: Mapping[str, Path],
    notes: Sequence[str] = (),
) -> Path:
    """One self-contained HTML page: the verdict in words first, then the curves and the full table."""
    head = "".join(f"<th>{_esc(h)}</th>" for h in ("approach", "training images", "test accuracy", "balanced accuracy", "wall time"))
    body = "".join(
        f"<tr><td>{_esc(r['approach'])}</td><td>{_esc(r['train_images'])} ({_percent(r['fraction'], 0)})</td>"
        f"<td>{_percent(r['accuracy'])}</td><td>{_percent(r['balanced_accuracy'])}</td><td>{float(r['seconds']):.1f} s</td></tr>"
        for r in rows
    )
    sections = [
        f"<h1>{_esc(title)}</h1>",
        "<h2>Verdict</h2>",
        "<ul>" + "".join(f"<li>{_esc(line)}</li>" for line in verdict) + "</ul>",
        '<ul class="notes">' + "".join(f"<li>{_esc(note)}</li>" for note in notes) + "</ul>" if notes else "",
        "<h2>Learning curves</h2>",
        _images_html(images),
        "<h2>All results</h2>",
        f'<table class="per-class"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>',
        "<footer>Generated by deepfit.</footer>",
    ]
    saved = atomic_write_bytes(Path(path), _html_document(title, sections))
    logger.info("comparison report written to %s", saved)
    return saved
