"""What an explanation is, whatever the task: the class explained, the method and layer, the map or token scores,
and a picture of it; and how a set of them is written (never over a file that exists)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from deepfit.errors import ConfigError
from deepfit.fileio import atomic_write_text


@dataclass(frozen=True)
class ExplainSettings:
    """What `deepfit explain` / `model.explain` was asked: None means the task's default."""

    method: str | None = None
    target: str | None = None  # the class to explain (default: the predicted one)
    layer: str | None = None
    max_objects: int = 5  # detection, segmentation: the most confident objects (largest regions) explained per image
    conf: float = 0.25  # detection: the least score of an object explained


@dataclass
class Explanation:
    source: str  # the file (with ":line" for a text file's line), or "<array 0>" for in-memory inputs
    target: str  # the class explained
    probability: float  # the model's probability (a detector's score) for it
    predicted: str  # the class predicted (the target unless another was asked for)
    method: str
    layer: str  # the layer the map was drawn from ("tokens" for a text's attribution)
    picture: np.ndarray  # (H, W, 3) uint8: the input with the explanation drawn on it
    heat: np.ndarray | None = None  # (h, w) in [0, 1] over the input as the model saw it (image, spectrogram)
    tokens: list[tuple[str, float]] | None = None  # text: every token and its score (+ for the class, - against)
    box: list[float] | None = None  # detection: the object's box, x1 y1 x2 y2 in the image's pixels
    extra: dict[str, Any] = field(default_factory=dict)  # what else a task records (e.g. the region's pixels)

    def record(self) -> dict[str, Any]:
        """The JSON of explanations.json: everything but the arrays."""
        out: dict[str, Any] = {"source": self.source, "target": self.target, "probability": round(self.probability, 6),
                               "predicted": self.predicted, "method": self.method, "layer": self.layer}
        if self.heat is not None:
            peak = np.unravel_index(int(self.heat.argmax()), self.heat.shape)
            out["peak"] = {"row": int(peak[0]), "column": int(peak[1]), "of": list(self.heat.shape)}
        if self.tokens is not None:
            out["tokens"] = [[t, round(s, 6)] for t, s in self.tokens]
        if self.box is not None:
            out["box"] = [round(float(v), 2) for v in self.box]
        return out | self.extra


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:60] or "input"


def picture_names(explanations: list[Explanation]) -> list[str]:
    """A file name per explanation: the input's name, the object number for several of one input, the class."""
    names, seen = [], {}
    for e in explanations:
        stem = _slug(Path(e.source.rsplit(":", 1)[0] if e.tokens is not None else e.source).stem or e.source)
        if e.tokens is not None and ":" in e.source:
            stem += "_line" + _slug(e.source.rsplit(":", 1)[1])
        name = f"{stem}.{_slug(e.target)}"
        seen[name] = seen.get(name, 0) + 1
        names.append(f"{name}.png" if seen[name] == 1 else f"{name}.{seen[name]}.png")
    return names


def output_folder(given: Path | None, run_dir: Path) -> Path:
    """`given` if it holds no explanations yet; by default RUN/explanations, or -2, -3, ... when that exists."""
    if given is not None:
        if (given / "explanations.json").exists():
            raise ConfigError(f"{given} already holds explanations: deepfit does not overwrite; pass another --output")
        return given
    target, n = run_dir / "explanations", 1
    while target.exists():
        n += 1
        target = run_dir / f"explanations-{n}"
    return target


def write_explanations(explanations: list[Explanation], folder: Path) -> Path:
    """A PNG per explanation and explanations.json (each record with its picture's name) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for e, name in zip(explanations, picture_names(explanations), strict=True):
        path = folder / name
        if path.exists():
            raise ConfigError(f"{path} already exists: deepfit does not overwrite; pass another --output")
        Image.fromarray(e.picture).save(path)
        records.append(e.record() | {"picture": name})
    return atomic_write_text(folder / "explanations.json", json.dumps(records, indent=2) + "\n")
