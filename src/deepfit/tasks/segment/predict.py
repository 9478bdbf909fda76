"""Using a trained semantic segmenter: rebuilt from its checkpoint, a class for every pixel of an image of any size."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepfit.deploy.agreement import pixel_accepted, pixel_agreement
from deepfit.deploy.graph import Graph
from deepfit.engine.checkpoint import load_weights, read_sidecar
from deepfit.engine.device import autocast
from deepfit.errors import DeepfitError
from deepfit.modalities.image.augment import to_unit_range
from deepfit.modalities.image.store import ImageInput, image_tensor
from deepfit.runs.folder import resolve_checkpoint
from deepfit.tasks.base import ModelPredictor
from deepfit.tasks.segment.model import Segmenter, SegmenterSpec, build_segmenter
from deepfit.tasks.segment.tiling import predict_image


@dataclass
class TrainedSegmenter:
    model: Segmenter
    spec: SegmenterSpec
    classes: list[str]
    class_map: dict[str, Any]
    tile_size: int
    meta: dict[str, Any]

    @property
    def colors(self) -> np.ndarray:
        """(K, 3) uint8 display colour per class."""
        return np.asarray(self.class_map["colors"], dtype=np.uint8).reshape(-1, 3)


def load_segmenter(path: str | Path, which: str = "best") -> TrainedSegmenter:
    ckpt = resolve_checkpoint(path, which)
    meta = read_sidecar(ckpt)
    if meta.get("task") != "segment":
        raise DeepfitError(f"{ckpt} is a {meta.get('task')!r} checkpoint, not a semantic segmenter")
    spec = SegmenterSpec(**meta["model"])
    model = build_segmenter(spec)
    load_weights(model, ckpt)
    model.eval()
    return TrainedSegmenter(model, spec, list(meta["classes"]), meta["class_map"], int(meta["preprocessing"]["tile_size"]), meta)


def _tile_batch(num_classes: int, tile: int) -> int:
    """Tiles a forward pass: their logits and softmax (about 3 copies of K x tile x tile floats) within ~256 MB."""
    return max(1, min(4, 2**28 // (12 * num_classes * tile * tile)))


class SegmentationPredictor(ModelPredictor):
    """Whole-image inference: a class index for every pixel, at the image's own size."""

    def __init__(self, trained: TrainedSegmenter, device: str = "auto", tile_size: int | None = None) -> None:
        super().__init__(trained, device)
        self.tile = tile_size or trained.tile_size

    @classmethod
    def from_run(cls, run_dir: str | Path, checkpoint: str = "best", device: str = "auto") -> SegmentationPredictor:
        return cls(load_segmenter(run_dir, checkpoint), device)

    def export_graph(self) -> Graph:
        """uint8 images of any size -> per-pixel class probabilities at that size (padded to a multiple of 32 inside,
        as `predict` pads each image or tile)."""
        return Graph(SegmenterGraph(self.model), {"images": "(B, 3, H, W) uint8 RGB, any size"}, ["probabilities"],
                     {"images": {0: "batch", 2: "height", 3: "width"}, "probabilities": {0: "batch", 2: "height", 3: "width"}},
                     pixel_agreement, pixel_accepted, info={"tile_size": self.tile, "probabilities": "(B, K, H, W)"})

    def graph_inputs(self, sources: Sequence[ImageInput]) -> list[tuple[torch.Tensor, ...]]:
        return [(image_tensor(s)[None],) for s in sources]

    @torch.inference_mode()
    def predict_one(self, image: ImageInput) -> np.ndarray:
        """(H, W) uint8 class indexes of one image (a path, PIL image, (H, W[, 3]) array or (3, H, W) tensor)."""
        x = to_unit_range(image_tensor(image).to(self.device))  # (3, H, W) float in [0, 1]
        k = len(self.trained.classes)
        model = self.model if self.runner is None else OnnxLogits(self.runner)
        with autocast(self.device, self.precision):
            classes = predict_image(model, x, num_classes=k, tile=self.tile, overlap=self.tile // 8, batch_size=_tile_batch(k, self.tile))
        return classes.numpy().astype(np.uint8)

    def predict(self, images: Sequence[ImageInput] | ImageInput) -> np.ndarray | list[np.ndarray]:
        """One image -> its (H, W) uint8 class-index array; a list -> a list of them."""
        if isinstance(images, list | tuple):
            return [self.predict_one(image) for image in images]
        return self.predict_one(images)


class SegmenterGraph(torch.nn.Module):
    """What `predict` computes for an image (or a tile), as one module for export: uint8 (B, 3, H, W) -> (B, K, H, W)
    softmax probabilities, the input zero-padded at the bottom and right to a multiple of 32 and cropped back."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[-2:]
        x = torch.nn.functional.pad(images.float() / 255, (0, (32 - w % 32) % 32, 0, (32 - h % 32) % 32))
        return self.model(x).float().softmax(1)[..., :h, :w]


class OnnxLogits(torch.nn.Module):
    """The exported graph in place of the model inside the tiling code, which feeds [0, 1] floats and takes the
    softmax of what it gets: the log of the graph's probabilities has that very softmax."""

    def __init__(self, runner: Any) -> None:
        super().__init__()
        self.runner = runner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        images = (x.float() * 255).round().to(torch.uint8).cpu()  # exactly the uint8 pixels the floats came from
        return self.runner(images)[0].clamp_min(1e-30).log()
