"""Using a trained classifier: files, folders, globs, PIL images, arrays or tensors in; classes out."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from deepfit.deploy.agreement import logit_accepted, logit_agreement
from deepfit.deploy.graph import Graph
from deepfit.engine.device import autocast
from deepfit.fileio import atomic_write_text
from deepfit.log import logger
from deepfit.modalities.image.augment import SMALL_IMAGE, BatchTransform
from deepfit.modalities.image.store import ImageInput, to_storage
from deepfit.tasks.base import ModelPredictor
from deepfit.tasks.classify.model import TrainedModel, load_trained


@dataclass
class Prediction:
    source: str  # the file path, or "<PIL image 0>" / "<tensor 1>" for in-memory inputs
    label: str  # the most probable class
    probability: float
    top: list[tuple[str, float]]  # the top-k classes with their probabilities, most probable first


class Predictor(ModelPredictor):
    """A trained model ready for inference on the best available device."""

    modality = "image"  # the files `predict` and `deepfit predict` look for in folders

    def __init__(self, trained: TrainedModel, device: str = "auto", tta: bool | None = None) -> None:
        super().__init__(trained, device)
        self.classes = trained.classes
        prep = trained.preprocessing
        self.tta = bool(trained.meta.get("config", {}).get("tta", False)) if tta is None else tta
        self.transform = BatchTransform(prep.image_size, prep.mean, prep.std, "none")

    @classmethod
    def from_run(cls, run: str | Path, checkpoint: str = "best", device: str = "auto") -> Predictor:
        return cls(load_trained(run, checkpoint), device)

    @torch.inference_mode()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) uint8 storage batch -> (B, C) float32 logits on CPU."""
        if self.runner is not None:
            return self.runner(images)[0].float()
        x = self.transform(images.to(self.device), None)
        with autocast(self.device, self.precision):
            views = tta_views(x) if self.tta else [x]
            out = torch.stack([self.model(v).float() for v in views]).mean(0)
        return out.cpu()

    def export_graph(self) -> Graph:
        """uint8 images of any size -> logits: resized to the storage size, centre-cropped, normalised inside."""
        prep, size = self.trained.preprocessing, self.trained.preprocessing.resize_size
        return Graph(ImageClassifierGraph(self.model, self.transform, size, self.tta),
                     {"images": f"(B, 3, H, W) uint8 RGB; stretched to {size}x{size} inside (deepfit first resizes the "
                                f"shorter side to {size} and centre-crops {size}x{size})"},
                     ["logits"], {"images": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch"}},
                     logit_agreement, logit_accepted,
                     info={"preprocessing": {**prep.to_dict(), "resize_size": size}, "tta": self.tta})

    def graph_inputs(self, sources: Sequence[ImageInput]) -> list[tuple[torch.Tensor, ...]]:
        """Each source as the export's input: a (1, 3, S, S) uint8 image as deepfit decodes it."""
        return [(to_storage(s, self.trained.preprocessing.resize_size)[None],) for s in sources]

    def predict_proba(self, inputs: ImageInput | Sequence[ImageInput], batch_size: int = 64) -> np.ndarray:
        """(N, C) class probabilities, columns in the order of `self.classes`."""
        items = _as_list(inputs)
        size = self.trained.preprocessing.resize_size
        chunks = []
        for start in range(0, len(items), batch_size):
            batch = torch.stack([to_storage(it, size) for it in items[start : start + batch_size]])
            chunks.append(self.logits(batch).softmax(1))
        return torch.cat(chunks).numpy() if chunks else np.zeros((0, len(self.classes)), dtype=np.float32)

    def predict(self, inputs: ImageInput | Sequence[ImageInput], top_k: int = 3, batch_size: int = 64) -> list[Prediction]:
        items = _as_list(inputs)
        probs = self.predict_proba(items, batch_size)
        return [self._prediction(_describe(item, i), p, top_k) for i, (item, p) in enumerate(zip(items, probs, strict=True))]

    def predict_files(self, paths: Sequence[Path], top_k: int = 3, batch_size: int = 64) -> tuple[list[Prediction], list[tuple[Path, str]]]:
        """Like predict, but an unreadable file is skipped with a warning and returned, not raised."""
        results, failed = [], []
        for start in range(0, len(paths), batch_size):
            tensors, kept = [], []
            for path in paths[start : start + batch_size]:
                try:
                    tensors.append(to_storage(path, self.trained.preprocessing.resize_size))
                    kept.append(path)
                except Exception as e:  # noqa: BLE001 - any decoder error: report the file, go on
                    logger.warning(f"skipped unreadable image {path}: {type(e).__name__}: {e}")
                    failed.append((path, f"{type(e).__name__}: {e}"))
            if tensors:
                probs = self.logits(torch.stack(tensors)).softmax(1).numpy()
                results += [self._prediction(str(p), pr, top_k) for p, pr in zip(kept, probs, strict=True)]
        return results, failed

    def _prediction(self, source: str, probs: np.ndarray, top_k: int) -> Prediction:
        return to_prediction(self.classes, source, probs, top_k)


class ImageClassifierGraph(torch.nn.Module):
    """What `Predictor.logits` computes, as one module for export: uint8 (B, 3, H, W) -> (B, C) logits."""

    def __init__(self, model: torch.nn.Module, transform: BatchTransform, size: int, tta: bool) -> None:
        super().__init__()
        self.model, self.transform, self.size, self.tta = model, transform, size, tta

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # bilinear at the same size is the identity, so deepfit's own S x S storage passes through unchanged
        x = torch.nn.functional.interpolate(images.float(), size=(self.size, self.size), mode="bilinear", align_corners=False)
        x = self.transform(x, None)  # centre crop, normalise
        views = tta_views(x) if self.tta else [x]
        return torch.stack([self.model(v).float() for v in views]).mean(0)


def to_prediction(classes: Sequence[str], source: str, probs: np.ndarray, top_k: int) -> Prediction:
    """The Prediction of one input from its (classes,) probabilities: the top `top_k` classes, most probable first."""
    order = np.argsort(-probs)[: max(1, top_k)]
    top = [(classes[i], float(probs[i])) for i in order]
    return Prediction(source, top[0][0], top[0][1], top)


def tta_views(x: torch.Tensor) -> list[torch.Tensor]:
    """Test-time augmentation: the batch and its mirror image; small images also shifted by one pixel
    diagonally each way (zero, the mean after normalising, fills the border)."""
    views = [x, x.flip(3)]
    if x.shape[-1] <= SMALL_IMAGE:
        padded = torch.nn.functional.pad(torch.cat(views), (1, 1, 1, 1))
        h, w = x.shape[-2:]
        for dy, dx in ((0, 0), (2, 2)):
            views += list(padded[..., dy : dy + h, dx : dx + w].chunk(2))
    return views


def _as_list(inputs: Any) -> list:
    if isinstance(inputs, str | Path | Image.Image | np.ndarray):
        return [inputs]
    if isinstance(inputs, torch.Tensor):
        return list(inputs) if inputs.ndim == 4 else [inputs]  # a (B, C, H, W) batch is B images
    return list(inputs)


def _describe(item: Any, i: int) -> str:
    if isinstance(item, str | Path):
        return str(item)
    return f"<{type(item).__name__} {i}>"


def write_predictions(predictions: Sequence[Prediction], path: Path) -> Path:
    """CSV (source, label, probability, then top-k columns) or JSON, chosen by the file suffix."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        return atomic_write_text(path, json.dumps([asdict(p) for p in predictions], indent=2) + "\n")
    k = max((len(p.top) for p in predictions), default=1)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["source", "label", "probability"] + [f"{c}{i}" for i in range(1, k + 1) for c in ("top", "prob")])
    for p in predictions:
        row: list[Any] = [p.source, p.label, f"{p.probability:.6f}"]
        for label, prob in p.top:
            row += [label, f"{prob:.6f}"]
        writer.writerow(row)
    return atomic_write_text(path, out.getvalue())
