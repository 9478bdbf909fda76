"""A trained classifier read back from its checkpoint: the network rebuilt from the sidecar's spec, its weights
loaded from safetensors (no code runs), with its classes, preprocessing and provenance."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from deepfit.config import TrainConfig
from deepfit.engine.checkpoint import load_weights, read_sidecar
from deepfit.errors import DeepfitError
from deepfit.models.factory import ModelSpec, Preprocessing, build_model
from deepfit.runs.folder import CHECKPOINT_FORMAT, resolve_checkpoint


@dataclass
class TrainedModel:
    """A network with everything needed to use it: classes, preprocessing and provenance."""

    model: nn.Module
    spec: ModelSpec
    classes: list[str]
    preprocessing: Preprocessing | None  # images: resize, crop, normalisation; None for sound (see `meta["sound"]`)
    meta: dict[str, Any]

    @property
    def config(self) -> TrainConfig:
        return TrainConfig.from_dict(self.meta["config"])



def load_trained(path: str | Path, which: str = "best") -> TrainedModel:
    """Rebuild the model from the sidecar and load its weights (safetensors: no code is executed)."""
    ckpt = resolve_checkpoint(path, which)
    meta = read_sidecar(ckpt)
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise DeepfitError(f"{ckpt.with_suffix('.json')} is not a deepfit checkpoint sidecar (format {meta.get('format')!r})")
    spec = ModelSpec(**meta["model"])
    if "sound" in meta:  # a sound classifier: its front end and network from the sidecar's `sound`
        from deepfit.tasks.classify.sound import rebuild

        model = rebuild(meta)
    elif "text" in meta:  # a text classifier: its network from the sidecar's `text`
        from deepfit.tasks.classify.text import rebuild as rebuild_text

        model = rebuild_text(meta)
    else:
        model = build_model(spec)
    load_weights(model, ckpt)
    model.eval()
    prep = Preprocessing.from_dict(meta["preprocessing"]) if "preprocessing" in meta else None
    return TrainedModel(model, spec, list(meta["classes"]), prep, meta)
