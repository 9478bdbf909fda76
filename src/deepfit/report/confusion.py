"""The confusion matrix of a classifier or of a segmenter's pixels, as a heat map and as a CSV.

Rows are the true class and columns the predicted one, in both; the picture is drawn with
:mod:`deepfit.report.plots`' conventions (object API, atomic PNG).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from deepfit.report.plots import save_figure
from deepfit.report.text import clamp, shorten, write_csv

__all__ = ["plot_confusion_matrix", "write_confusion_csv"]

# Above this many classes the per-cell numbers become unreadable smudges, so only colours are drawn.
_MAX_ANNOTATED_CLASSES = 30


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
    side = clamp(1.6 + 0.42 * n, 4.5, 18.0)
    fig = Figure(figsize=(side + 1.4, side), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(shown, cmap="Blues", vmin=0.0, vmax=vmax, interpolation="nearest")
    colorbar = fig.colorbar(image, ax=ax, shrink=0.8)
    colorbar.set_label("fraction of the true class" if normalize else "number of images")
    if normalize:
        colorbar.formatter = PercentFormatter(xmax=1.0, decimals=0)
        colorbar.update_ticks()

    tick_size = clamp(12.0 - 0.17 * n, 6.0, 11.0)
    labels = [shorten(str(name)) for name in class_names]
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
        text_size = clamp(13.0 - 0.25 * n, 6.0, 11.0)
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

    return save_figure(fig, path, "confusion matrix picture")


def write_confusion_csv(confusion: np.ndarray, class_names: list[str], path: Path) -> Path:
    """Write the confusion matrix as CSV: one row per true class, one column per predicted class.

    The corner cell names both axes because a bare matrix is easy to read transposed by mistake.
    """
    matrix = _check_confusion(confusion, class_names)
    integral = np.allclose(matrix, np.round(matrix))
    rows = (
        [name, *(str(int(round(float(v)))) if integral else repr(float(v)) for v in row)]
        for name, row in zip(class_names, matrix, strict=True)
    )
    return write_csv(path, ["true \\ predicted", *class_names], rows)
