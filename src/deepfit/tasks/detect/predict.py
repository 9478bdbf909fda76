"""Using a trained detector: rebuilt from its checkpoint, batched inference, results in each image's own pixels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import torch
from torch import nn

from deepfit.deploy.graph import Graph, Outputs
from deepfit.engine.checkpoint import load_weights, read_sidecar
from deepfit.engine.device import autocast
from deepfit.errors import ConfigError, DeepfitError
from deepfit.modalities.image.augment import to_unit_range
from deepfit.modalities.image.store import ImageInput, image_tensor
from deepfit.runs.folder import resolve_checkpoint
from deepfit.tasks.base import ModelPredictor
from deepfit.tasks.detect.model import DetectorSpec, build_detector, set_thresholds
from deepfit.tasks.detect.objective import DetectionTask
from deepfit.tasks.detect.transforms import detection_transform, make_sample

DEFAULT_CONF, DEFAULT_IOU = 0.25, 0.5
EXPORT_CONF = 0.05  # an exported detector keeps boxes down to this score; `predict --conf` filters above it
MIN_BOX_AGREEMENT = 0.95  # box mAP of the export's boxes against PyTorch's: NMS may order near-equal boxes apart
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

    def export_graph(self) -> Graph:
        """One uint8 image of any size -> its boxes, 0-based labels and scores (and mask probabilities): torchvision's
        detectors normalise and resize inside, to the run's image size."""
        set_thresholds(self.model, EXPORT_CONF, DEFAULT_IOU)
        outputs = ["boxes", "labels", "scores", *(["masks"] if self.trained.masks else [])]
        axes = {"image": {1: "height", 2: "width"}, **{o: {0: "objects"} for o in outputs}}
        return Graph(DetectorGraph(self.model), {"image": "(3, H, W) uint8 RGB, one image a call"}, outputs, axes,
                     box_agreement, box_accepted, batch_axis=False,
                     info={"score_threshold": EXPORT_CONF, "iou_threshold": DEFAULT_IOU, "image_size": self.trained.image_size,
                           "boxes": "x1 y1 x2 y2 in the input's pixels; labels index the classes"})

    def graph_inputs(self, sources: Sequence[ImageInput]) -> list[tuple[torch.Tensor, ...]]:
        """Each source letterboxed to the run's image size, as `predict` feeds the model."""
        return [(self._prepare(image_tensor(s))[0],) for s in sources]

    def _run_graph(self, x: torch.Tensor, conf: float, iou: float) -> list[dict[str, np.ndarray]]:
        """predictions (as DetectionTask.predictions gives them) of a uint8 batch through the exported graph."""
        exported = self.runner.meta
        if conf < exported["score_threshold"] or iou != exported["iou_threshold"]:
            raise ConfigError(f"{self.runner.path.name} keeps boxes scored >= {exported['score_threshold']} after NMS at IoU "
                              f"{exported['iou_threshold']}: use --conf >= {exported['score_threshold']} and --iou "
                              f"{exported['iou_threshold']}, or the torch backend")
        out = []
        for image in x:
            parts = [t.numpy() for t in self.runner(image)]
            keep = parts[2] >= conf
            p = dict(zip(("boxes", "labels", "scores", "masks"), (a[keep] for a in parts), strict=False))
            out.append(p)
        return out

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
            batch = torch.stack([p[0] for p in prepared])
            if self.runner is not None:
                outputs = self._run_graph(batch, conf, iou)
            else:
                with autocast(self.device, self.precision):
                    outputs = DetectionTask.predictions(self.model(list(to_unit_range(batch.to(self.device)))))
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


class DetectorGraph(nn.Module):
    """What the detector computes for one image, as one module for export: uint8 (3, H, W) -> boxes (N, 4),
    0-based labels (N,), scores (N,)[, mask probabilities (N, 1, H, W)]."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model([image.float() / 255])[0]
        found = (out["boxes"], out["labels"] - 1, out["scores"])
        return (*found, out["masks"]) if "masks" in out else found


def box_agreement(ref: list[Outputs], other: list[Outputs]) -> dict[str, float]:
    """Box mAP of the other boxes scored against the reference's as if they were the truth (1.0: the same boxes,
    labels and order of scores), and the largest difference of box corners where both found as many."""
    from deepfit.tasks.detect.objective import coco_metrics

    boxes = sum(len(r[0]) for r in ref)
    if boxes == 0 and sum(len(o[0]) for o in other) == 0:
        return {"samples": len(ref), "reference_boxes": 0, "box_map": 1.0, "max_abs_diff": 0.0}
    truth = [{"boxes": r[0].numpy(), "labels": r[1].numpy(), "height": 1, "width": 1} for r in ref]
    found = [{"boxes": o[0].numpy(), "labels": o[1].numpy(), "scores": o[2].numpy()} for o in other]
    classes = [str(k) for k in range(int(max([*(r[1].max() for r in ref if len(r[1])), *(o[1].max() for o in other if len(o[1])), 0])) + 1)]
    diffs = [float((r[0] - o[0]).abs().max()) for r, o in zip(ref, other, strict=True) if len(r[0]) == len(o[0]) and len(r[0])]
    return {"samples": len(ref), "reference_boxes": boxes, "box_map": coco_metrics(truth, found, classes)["map"],
            "max_abs_diff": max(diffs, default=0.0)}


def box_accepted(figures: dict[str, float]) -> str | None:
    if figures["box_map"] < MIN_BOX_AGREEMENT:
        return f"the exported boxes reach only {figures['box_map']:.3f} box mAP against PyTorch's"
    return None
