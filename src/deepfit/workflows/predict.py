"""Prediction to files, written once for every task: a run, input files (folders, globs) -> result files.

The modality finds the inputs (image files in folders, ...); the task predicts and writes what it writes
(a CSV of classes, drawn boxes, mask PNGs), never overwriting a file that exists.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deepfit.errors import ConfigError
from deepfit.log import setup_logging
from deepfit.registry import get_modality, get_task
from deepfit.runs.folder import resolve_checkpoint, run_folder, run_task
from deepfit.tasks.base import option_values


def load_predictor(run: str | Path, checkpoint: str = "best", device: str = "auto") -> tuple[Any, Any]:
    """(task, predictor) of a run folder or of a checkpoint file inside one."""
    task = get_task(run_task(run))
    return task, task.predictor(task.load(resolve_checkpoint(run, checkpoint)), device)


def predict_files(run_dir: str | Path, inputs: list[str | Path], output: str | Path | None = None, *, checkpoint: str = "best",
                  device: str = "auto", texts: list[str] | None = None, **options: Any) -> list[Any]:
    """Predict on files, folders or glob patterns (and, for a text classifier, `texts` given as strings) and write the
    task's result files (into `output`, default inside the run folder). Returns what to show: lines and rich tables."""
    setup_logging()
    task, predictor = load_predictor(run_dir, checkpoint, device)
    options = option_values(task, {k: v for k, v in options.items() if v is not None}, task.predict_options, "predict")
    modality = getattr(predictor, "modality", task.modality)
    if texts and modality != "text":
        raise ConfigError(f"--text is for text classifiers; {run_dir} takes {get_modality(modality).noun}")
    paths = get_modality(modality).expand(inputs) if inputs else []  # a classifier of sound takes sound files
    return task.predict_files(predictor, [*paths, *(texts or [])], Path(output) if output else None, run_folder(run_dir),
                              **options)
