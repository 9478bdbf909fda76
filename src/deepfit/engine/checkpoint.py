"""Checkpoints: weights as safetensors plus a JSON sidecar, both written atomically.

The sidecar holds everything needed to rebuild and use the model in a fresh process with no user
code: the architecture spec, class names in order, preprocessing, the resolved config and the
library versions that wrote it.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from deepfit.errors import WeightsError
from deepfit.fileio import atomic_write, atomic_write_text


def library_versions() -> dict[str, str]:
    import PIL
    import sklearn
    import timm
    import torchvision

    import deepfit

    return {
        "deepfit": deepfit.__version__,
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
    model = getattr(model, "_orig_mod", model)  # torch.compile wrapper
    meta = {**meta, "versions": library_versions()}
    atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=2) + "\n")
    # A few safetensors header fields let other tools use the file without the sidecar.
    prep = meta.get("preprocessing", {})
    header = {k: json.dumps(prep[k]) for k in ("mean", "std", "image_size", "crop_pct") if k in prep}
    header["classes"] = json.dumps(meta.get("classes", []))
    atomic_write(path, lambda tmp: save_model(model, str(tmp), metadata=header))


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
        raise WeightsError(f"{path} does not match its architecture: missing {missing[:3]}, unexpected {unexpected[:3]}")
