"""The run folder: what a training run writes, and how a trained model is read back with no user code.

    runs/<name>/
      config.json         fully resolved TrainConfig, plus data source and command line
      split.csv           path,label,split of every image used (relative to the data root)
      duplicates.csv      byte-identical files found in more than one split (only when there are any)
      skipped_files.csv   unreadable images that were left out (only when there are any)
      metrics.csv         one row per epoch
      best.safetensors    weights of the best validation epoch  (+ best.json sidecar)
      last.safetensors    weights of the last epoch             (+ last.json sidecar)
      resume.pt           the whole training state, to continue after a kill (`deepfit train --resume`)
      report.html         evaluation report (after `deepfit evaluate`)
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from deepfit.errors import ConfigError, DeepfitError

CHECKPOINT_FORMAT = "deepfit-checkpoint/1"


def check_output_outside_data(output: str | Path, data_root: Path) -> None:
    """deepfit never writes into the user's data: refuse an output folder inside it."""
    output, data_root = Path(output).resolve(), Path(data_root).resolve()
    if output == data_root or data_root in output.parents:
        raise ConfigError(
            f"the output folder {output} is inside the data folder {data_root}; deepfit never writes into "
            "your data: pass --output somewhere else"
        )


def new_run_dir(output: str | Path, name: str | None, model: str) -> Path:
    """Create a fresh run folder; an existing one is never reused or overwritten."""
    output = Path(output).resolve()
    base = name or f"{model.replace('/', '_').replace(':', '-')}-{time.strftime('%Y%m%d-%H%M%S')}"
    for i in range(1, 1000):
        run_dir = output / (base if i == 1 else f"{base}-{i}")
        try:
            run_dir.mkdir(parents=True, exist_ok=False)
            return run_dir
        except FileExistsError:
            continue
    raise ConfigError(f"too many runs named {base!r} in {output}")


def run_folder(path: str | Path) -> Path:
    """The run folder of a run folder or of a checkpoint file inside one (a path that does not exist is kept, so that
    reading it says it is not found)."""
    path = Path(path)
    return path.parent if path.is_file() else path


def saved_task(saved: dict[str, Any]) -> str:
    """The task of a run's config.json (runs written before deepfit had other tasks are classification runs)."""
    return saved.get("task", "classify")


def run_task(path: str | Path) -> str:
    """The task a run folder (or a checkpoint in one) was trained for: classify, detect, segment-instances or segment."""
    config = run_folder(path) / "config.json"
    return saved_task(json.loads(config.read_text()) if config.is_file() else {})


def resolve_checkpoint(path: str | Path, which: str = "best") -> Path:
    """A run folder -> its best (or last) weights; a .safetensors path is taken as is."""
    path = Path(path)
    if path.is_dir():
        path = path / f"{which}.safetensors"
    if not path.is_file():
        hint = " (is it a deepfit run folder? training writes best.safetensors there)" if path.suffix == ".safetensors" else ""
        raise DeepfitError(f"no checkpoint at {path}{hint}")
    return path


def read_run_config(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "config.json"
    if not Path(run_dir).exists():
        raise DeepfitError(f"run folder {run_dir} not found")
    if not Path(run_dir).is_dir():
        raise DeepfitError(f"{run_dir} is a file, not a deepfit run folder (the folder that `deepfit train` wrote)")
    if not path.is_file():
        raise DeepfitError(f"{run_dir} is not a deepfit run folder: it has no config.json (`deepfit train` writes one)")
    return json.loads(path.read_text())
