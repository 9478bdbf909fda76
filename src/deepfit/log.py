"""One logger for the whole library, printed through rich on a terminal and plainly otherwise."""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger("deepfit")


def setup_logging(level: int = logging.INFO) -> None:
    """Attach a handler once; idempotent so the API and the CLI can both call it."""
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
