"""Scoring a trained run, written once for every task: its held-out split (or another labelled set) -> report.

The test split is meant to be used once. Without one, the validation split is scored, with a warning: it
chose the best epoch, so its numbers are optimistic. What is scored and how it is reported is the task's
(`Task.evaluate`); which split, and reading it again as it was read for training, is the same for all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deepfit.errors import DataError
from deepfit.log import logger, setup_logging
from deepfit.registry import get_task
from deepfit.runs.folder import read_run_config, resolve_checkpoint, saved_task
from deepfit.runs.session import relocate
from deepfit.tasks.base import option_values


def held_out(splits: dict[str, list], run_name: str) -> tuple[str, list]:
    """The test split; the validation split (with a warning) when there is none."""
    if splits.get("test"):
        return "test", splits["test"]
    if not splits.get("val"):
        raise DataError(f"{run_name} has neither a test nor a validation split to evaluate on: pass --data")
    logger.warning("no test split: scoring the validation split, which picked the best epoch (an optimistic estimate)")
    return "val", splits["val"]


def evaluate(run_dir: str | Path, data: str | Path | None = None, *, checkpoint: str = "best", device: str = "auto",
             data_root: str | Path | None = None, **options: Any) -> Any:
    """Score a run on its test split (its validation split when it has none), or on all of `data`; writes the report.
    `data_root`: where the run's data is now when it moved (its split is kept). `options` are the task's own for
    reading `data` (e.g. masks=, skip_unmasked= for segmentation)."""
    setup_logging()
    run = Path(run_dir).resolve()
    saved = relocate(read_run_config(run), data_root)
    task = get_task(saved_task(saved))  # config.json, read once
    options = option_values(task, {k: v for k, v in options.items() if v is not None and v is not False}, task.evaluate_options,
                           "evaluate")
    trained = task.load(resolve_checkpoint(run, checkpoint))
    if data is None:
        dataset, splits = task.reread(saved, run)
        split, items = held_out(splits, run.name)
    else:
        dataset, items = task.read_other(data, trained, **options)
        split = "external"
    if not items:
        raise DataError(f"nothing to evaluate: the {split} split of {run} is empty" if data is None else f"nothing to evaluate in {data}")
    predictor = task.predictor(trained, device)
    return task.evaluate(run, predictor, split, dataset, items, checkpoint=checkpoint, other=data)
