"""Explanations to files, written once for every task: a run, inputs -> a picture per explanation and
explanations.json (the class explained, method, layer, the map's peak or the token scores) in a new folder.

The task says how its model is explained (tasks/*/explain.py); this verb finds the inputs (the modality's files in
folders and globs, or texts given as strings), skips an unreadable input with a warning, and never overwrites.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deepfit.errors import ConfigError, DataError
from deepfit.explain.result import ExplainSettings, Explanation, output_folder, write_explanations
from deepfit.log import logger, setup_logging
from deepfit.registry import get_modality
from deepfit.runs.folder import run_folder
from deepfit.workflows.predict import load_predictor


def explain_items(task: Any, predictor: Any, items: list[Any], settings: ExplainSettings) -> list[Explanation]:
    """The task's explanations of each input in turn; an input that cannot be read is skipped with a warning, and
    none readable is an error."""
    out, failed = [], []
    for item in items:
        try:
            out += task.explain(predictor, [item], settings)
        except (DataError, OSError, ValueError) as e:
            if isinstance(e, ConfigError):
                raise
            logger.warning(f"skipped {item}: {e}")
            failed.append(item)
    if failed and not out:
        raise DataError(f"none of the {len(failed)} inputs could be explained; the first: {failed[0]}")
    return out


def explain(run: str | Path, inputs: list[str | Path] | None = None, *, texts: list[str] | None = None,
            output: str | Path | None = None, method: str | None = None, target: str | None = None,
            layer: str | None = None, max_objects: int = 5, conf: float = 0.25, checkpoint: str = "best",
            device: str = "auto") -> tuple[list[Explanation], Path]:
    """Explain the run's predictions on files, folders or globs (and texts given as strings) into `output` (default
    RUN/explanations, or -2, -3, ...): (the explanations, the folder)."""
    setup_logging()
    task, predictor = load_predictor(run, checkpoint, device)
    modality = getattr(predictor, "modality", task.modality)
    if texts and modality != "text":
        raise ConfigError(f"--text is for text classifiers; {run} takes {get_modality(modality).noun}")
    paths = get_modality(modality).expand(inputs) if inputs else []
    if not paths and not texts:
        raise ConfigError("nothing to explain: give input files or folders" + (" or --text" if modality == "text" else ""))
    if max_objects < 1:
        raise ConfigError(f"--max-objects must be at least 1, not {max_objects}")
    settings = ExplainSettings(method, target, layer, max_objects, conf)
    folder = output_folder(Path(output) if output else None, run_folder(run))
    explanations = explain_items(task, predictor, [*paths, *(texts or [])], settings)
    write_explanations(explanations, folder)
    return explanations, folder
