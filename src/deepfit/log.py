"""One logger for the whole library, printed through rich on a terminal and plainly otherwise."""

from __future__ import annotations

import logging
import sys
from typing import Any

logger = logging.getLogger("deepfit")
_chosen: list[int] = []  # the level the user chose (deepfit --quiet / --verbose), kept by every later setup_logging()


def setup_logging(level: int | None = None, *, choose: bool = False) -> None:
    """Attach a handler once; idempotent so the API and the CLI can both call it. `level` defaults to INFO, or to the
    level chosen before with `choose=True` (the CLI's --quiet: WARNING, --verbose: DEBUG), which workflows keep."""
    if choose:
        _chosen[:] = [level or logging.INFO]
    level = _chosen[0] if _chosen else (level or logging.INFO)
    if logger.handlers:
        logger.setLevel(level)
        return
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(show_path=False, show_time=False, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


def output_console() -> Any:
    """A rich Console for standard output. On a terminal it fits the window; written to a file or a pipe, lines are
    never wrapped (rich would otherwise cut them at 80 columns, mid-word and mid-path)."""
    from rich.console import Console

    if sys.stdout.isatty():
        return Console()
    return Console(width=100_000, soft_wrap=True, no_color=True)


def table_lines(table: Any) -> list[str]:
    """A rich Table as plain tab-separated lines: "# title" (when it has one), the header, then one line a row.
    A tab or a line break inside a cell becomes a space, so that every row stays one line of as many fields."""
    def field(cell: Any) -> str:
        return " ".join(str(cell).split()) if isinstance(cell, str) else str(cell)

    columns = table.columns
    lines = [f"# {table.title}"] if table.title else []
    lines.append("\t".join(field(c.header) for c in columns))
    cells = [list(c.cells) for c in columns]
    lines += ["\t".join(field(col[i]) for col in cells) for i in range(table.row_count)]
    return lines
