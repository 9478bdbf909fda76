"""Numbers and text as every report shows them, and CSV files written the same way by every task.

Metric values reach a report from JSON, CSV cells or numpy, and some are missing; these helpers turn any
of them into the one spelling the reports use (``87.5%``, ``0.857``, ``–`` for "not measured"), so the
same number never reads differently on two pages.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from deepfit.fileio import atomic_write_bytes

__all__ = ["MAX_LABEL_CHARS", "clamp", "fixed", "percent", "shorten", "to_float", "write_csv"]

# Long class names would squeeze a chart itself; the full names are still in the CSVs and the HTML.
MAX_LABEL_CHARS = 24


def to_float(value: Any) -> float:
    """Parse a CSV cell or metric value; anything empty or unparseable becomes NaN (drawn as a gap)."""
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def clamp(value: float, low: float, high: float) -> float:
    """``value`` limited to [low, high]."""
    return max(low, min(high, value))


def shorten(text: str, limit: int = MAX_LABEL_CHARS) -> str:
    """``text`` cut to ``limit`` characters, the last one an ellipsis when anything was cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def percent(value: Any, decimals: int = 1) -> str:
    """A fraction as a percentage (``0.875`` -> ``87.5%``); ``n/a`` when it is missing."""
    number = to_float(value)
    return "n/a" if math.isnan(number) else f"{100.0 * number:.{decimals}f}%"


def fixed(value: Any, decimals: int = 3) -> str:
    """A number with ``decimals`` decimals; a dash when it is missing (not measured is not zero)."""
    number = to_float(value)
    return "–" if math.isnan(number) else f"{number:.{decimals}f}"


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    """Write a header and rows as UTF-8 CSV with ``\\n`` line ends, atomically; return the path.

    The whole file is built in memory first so a reader never sees half of it, and the bytes are the
    same on every platform (no ``\\r\\n`` on Windows), so files from two machines compare equal.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return atomic_write_bytes(Path(path), buffer.getvalue().encode("utf-8"))
