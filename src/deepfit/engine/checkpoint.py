"""Checkpoints: weights as safetensors plus a JSON sidecar, both written atomically.

The sidecar holds everything needed to rebuild and use the model in a fresh process with no user
code: the architecture spec, class names in order, preprocessing, the resolved config and the
library versions that wrote it.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from deepfit.engine.distributed import unwrap
from deepfit.errors import WeightsError
from deepfit.fileio import atomic_write, atomic_write_text

if TYPE_CHECKING:
    from deepfit.engine.trainer import Trainer

# The resumable state of a run (weights, optimizer, schedule, random states, position in the epoch).
RESUME_FILE = "resume.pt"
RESUME_FORMAT = "deepfit-resume/1"


def library_versions() -> dict[str, str]:
    import PIL
    import sklearn
    import timm
    import torchvision

    from deepfit.version import __version__

    return {
        "deepfit": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "scikit-learn": sklearn.__version__,
        "pillow": PIL.__version__,
        "python": platform.python_version(),
    }


def save_checkpoint(path: Path, model: nn.Module, meta: dict[str, Any]) -> None:
    """Write `path` (.safetensors) and its sidecar `path.with_suffix('.json')`.

    The sidecar is written first and the weights last, so a complete weights file always has a
    matching sidecar next to it.
    """
    model = unwrap(model)  # the user's module inside torch.compile / DDP wrappers
    meta = {**meta, "versions": library_versions()}
    atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=2) + "\n")
    # A few safetensors header fields let other tools use the file without the sidecar.
    prep = meta.get("preprocessing", {})
    header = {k: json.dumps(prep[k]) for k in ("mean", "std", "image_size", "crop_pct") if k in prep}
    header["classes"] = json.dumps(meta.get("classes", []))
    atomic_write(path, lambda tmp: save_model(model, str(tmp), metadata=header))


def link_checkpoint(src: Path, dst: Path) -> None:
    """Make `dst` the same checkpoint as `src` (sidecar and weights) without serialising the weights again:
    a hard link where the file system allows one, else a copy. Atomic like save_checkpoint, and safe to
    overwrite `src` later: that replaces its directory entry, never the shared file's contents."""
    for source, target in ((Path(src).with_suffix(".json"), Path(dst).with_suffix(".json")), (Path(src), Path(dst))):
        def write(tmp: Path, source: Path = source) -> None:
            tmp.unlink()
            try:
                os.link(source, tmp)
            except OSError:
                shutil.copy2(source, tmp)

        atomic_write(target, write)


def read_sidecar(path: Path) -> dict[str, Any]:
    sidecar = Path(path).with_suffix(".json")
    if not sidecar.is_file():
        raise WeightsError(f"checkpoint sidecar missing: {sidecar} (it must sit next to {Path(path).name})")
    return json.loads(sidecar.read_text())


def load_weights(model: nn.Module, path: Path) -> None:
    if not Path(path).is_file():
        raise WeightsError(f"checkpoint not found: {path}")
    missing, unexpected = load_model(model, str(path), strict=False)
    if missing or unexpected:
        # safetensors returns sets: sorted, so the message names the same keys every time
        raise WeightsError(f"{path} does not match its architecture: missing {sorted(missing)[:3]}, "
                           f"unexpected {sorted(unexpected)[:3]}")


def save_training_state(path: Path, trainer: Trainer, config: Any) -> None:
    """The trainer's state, atomically: a kill while saving leaves the previous state file intact."""
    state = {"format": RESUME_FORMAT, "config": config.to_dict(), **trainer.state_dict()}
    atomic_write(Path(path), lambda tmp: torch.save(state, tmp))


def load_training_state(path: Path) -> dict[str, Any]:
    """Read a resumable state with `weights_only=True`: tensors and plain values only, no code is run."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torn, foreign or malicious files all end here
        raise WeightsError(f"cannot read the resumable state {path}: {type(e).__name__}: {str(e)[:200]}") from e
    if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT:
        raise WeightsError(f"{path} is not a deepfit resumable state (format {state.get('format') if isinstance(state, dict) else None!r})")
    return state
