"""Using a trained detector: rebuilt from its checkpoint, batched inference, results in each image's own pixels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import torch
from torch import nn

from deepfit.engine.checkpoint import load_weights, read_sidecar
from deepfit.engine.device import autocast
from deepfit.errors import DeepfitError
from deepfit.modalities.image.augment import to_unit_range
from deepfit.modalities.image.store import ImageInput, image_tensor
from deepfit.runs.folder import resolve_checkpoint
from deepfit.tasks.base import ModelPredictor
from deepfit.tasks.detect.model import DetectorSpec, build_detector, set_thresholds
from deepfit.tasks.detect.objective import DetectionTask
from deepfit.tasks.detect.transforms import detection_transform, make_sample

DEFAULT_CONF, DEFAULT_IOU = 0.25, 0.5
PREDICT_BATCH = 8  # images per forward pass when predicting


class _Objects(TypedDict):
    boxes: np.ndarray  # (N, 4) float32, x1 y1 x2 y2 in the image's own pixels
    labels: np.ndarray  # (N,) int64 class indexes
    names: list[str]  # the N class names
    scores: np.ndarray  # (N,) float32, highest first


class Detections(_Objects, total=False):
    """The objects found in one image; `masks` ((N, H, W) bool, at the image's size) only from instance segmenters."""

    masks: np.ndarray


@dataclass
class TrainedDetector:
    model: nn.Module
    spec: DetectorSpec
    classes: list[str]
    class_ids: list[int] | None
    image_size: int
    meta: dict[str, Any]

    @property
    def masks(self) -> bool:
        return self.spec.masks


def load_detector(path: str | Path, which: str = "best") -> TrainedDetector:
    ckpt = resolve_checkpoint(path, which)
    meta = read_sidecar(ckpt)
    if meta.get("task") not in ("detect", "segment-instances"):
        raise DeepfitError(f"{ckpt} is a {meta.get('task')!r} checkpoint, not a detector")
    spec = DetectorSpec(**meta["model"])
    model = build_detector(spec)
    load_weights(model, ckpt)
    model.eval()
    return TrainedDetector(model, spec, list(meta["classes"]), meta.get("class_ids"), int(meta["preprocessing"]["image_size"]), meta)


class DetectionPredictor(ModelPredictor):
    """Batched inference with a trained detector; results are in each image's own pixels."""

    def __init__(self, trained: TrainedDetector, device: str = "auto") -> None:
        super().__init__(trained, device)
        self.transform = detection_transform(trained.image_size, train=False)

    @classmethod
    def from_run(cls, run_dir: str | Path, checkpoint: str = "best", device: str = "auto") -> DetectionPredictor:
        return cls(load_detector(run_dir, checkpoint), device)

    def _prepare(self, image: torch.Tensor) -> tuple[torch.Tensor, tuple[float, float]]:
        h, w = image.shape[-2:]
        out = self.transform(make_sample(image, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64)))
        scale = self.trained.image_size / max(h, w)
        return out["image"].as_subclass(torch.Tensor), (scale, scale)

    @torch.inference_mode()
    def predict(self, images: Sequence[ImageInput] | ImageInput, *, conf: float = DEFAULT_CONF, iou: float = DEFAULT_IOU,
                batch_size: int = PREDICT_BATCH) -> list[Detections] | Detections:
        """Boxes (xyxy pixels), labels (class indexes), class names, scores and, for instance segmenters, masks
        ((M, H, W) bool) of one image or a list of them."""
        single = not isinstance(images, list | tuple)
        items = [images] if single else list(images)
        set_thresholds(self.model, conf, iou)
        results = []
        for start in range(0, len(items), batch_size):
            originals = [image_tensor(item) for item in items[start:start + batch_size]]
            prepared = [self._prepare(t) for t in originals]
            x = to_unit_range(torch.stack([p[0] for p in prepared]).to(self.device))
            with autocast(self.device, self.precision):
                outputs = DetectionTask.predictions(self.model(list(x)))
            for image, (_, scale), p in zip(originals, prepared, outputs, strict=True):
                results.append(to_original(p, scale, tuple(image.shape[-2:]), self.trained.image_size, self.trained.classes))
        return results[0] if single else results


def to_original(p: dict[str, np.ndarray], scale: tuple[float, float], size: tuple[int, int], frame: int,
                classes: list[str]) -> Detections:
    """A prediction in the letterboxed frame -> the image's own pixels (masks cut from the frame and resized)."""
    h, w = size
    sx, sy = scale
    boxes = p["boxes"].copy()
    boxes[:, 0::2] = np.clip(boxes[:, 0::2] / sx, 0, w)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2] / sy, 0, h)
    out: Detections = {"boxes": boxes, "labels": p["labels"], "scores": p["scores"], "names": [classes[i] for i in p["labels"]]}
    if "masks" in p:
        m = torch.from_numpy(p["masks"])[:, :, : min(frame, round(h * sy)), : min(frame, round(w * sx))]  # (M, 1, h', w')
        if len(m):
            m = torch.nn.functional.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
        out["masks"] = (m[:, 0] > 0.5).numpy() if len(m) else np.zeros((0, h, w), dtype=bool)
    return out
