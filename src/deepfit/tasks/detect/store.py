"""Batches for detection and instance segmentation: decoded, augmented per sample, letterboxed, collated.

Classification augments whole uint8 batches on the device (data/augment.py); here each image has its
own boxes and masks that must move with it, so augmentation runs per sample while loading, in
DataLoader workers (data/detection_transforms.py). Every image is letterboxed (or resized) to one
size, so a batch is still one (B, 3, S, S) uint8 tensor; its targets are a list of B dicts:

    {"boxes": (N, 4) float32 xyxy in the S x S frame, "labels": (N,) int64 0-based,
     "masks": (N, S, S) uint8 (instance segmentation only), "iscrowd": (N,) bool,
     "size": (2,) original (H, W), "scale": (2,) x and y factors from the original to the S x S frame}

Augmentation is seeded per image from the epoch's seed and the image's index, so it does not depend on
which worker loads the image, and a resumed epoch repeats it exactly.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from deepfit.data.loader import PerSampleStore
from deepfit.errors import DataError
from deepfit.modalities.image.store import decode_rgb
from deepfit.tasks.detect.data import DetectionSample
from deepfit.tasks.detect.transforms import detection_transform, make_sample

Batch = tuple[torch.Tensor, list[dict[str, torch.Tensor]], torch.Tensor]


class _Samples(Dataset):
    def __init__(self, samples: list[DetectionSample], size: int, train: bool, augment: bool, masks: bool, resize: str,
                 hflip: bool) -> None:
        self.samples, self.size, self.train, self.augment, self.masks = samples, size, train, augment, masks
        self.transform = detection_transform(size, train=augment, resize=resize, hflip=hflip)
        self.resize = resize
        self.seed = 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, dict[str, torch.Tensor]]:
        s = self.samples[i]
        image = decode_rgb(str(s.path))
        h, w = image.shape[-2:]
        if (h, w) != (s.height, s.width):
            raise DataError(f"{s.path} is {w}x{h} pixels but its labels were made for {s.width}x{s.height}: "
                            "check that the labels belong to this image")
        keep = torch.ones(len(s), dtype=torch.bool)
        if self.train:  # crowd regions are for evaluation (COCOeval ignores detections on them), not targets
            keep = ~torch.as_tensor(s.iscrowd, dtype=torch.bool)
        index = keep.nonzero().flatten().tolist()
        masks = torch.from_numpy(_stack_masks(s, index)) if self.masks else None
        sample = make_sample(image, torch.from_numpy(s.boxes[index]).reshape(-1, 4), torch.from_numpy(s.labels[index]), masks)
        sample["iscrowd"] = torch.as_tensor(s.iscrowd, dtype=torch.bool)[index]
        if self.augment:
            # v2 transforms draw from torch's global generator: fork it so loading in the main process leaves
            # the training's random numbers alone, and seed it by (epoch, image) so any worker gives the same result
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed((self.seed * 1_000_003 + i) % 2**63)
                out = self.transform(sample)
        else:
            out = self.transform(sample)
        if self.resize == "letterbox":
            scale = torch.tensor([self.size / max(h, w)] * 2)
        else:
            scale = torch.tensor([self.size / w, self.size / h])
        target = {
            "boxes": out["boxes"].as_subclass(torch.Tensor).float().reshape(-1, 4),
            "labels": out["labels"].long(),
            "iscrowd": out["iscrowd"],
            "size": torch.tensor([h, w]),
            "scale": scale,
        }
        if self.masks:
            target["masks"] = out["masks"].as_subclass(torch.Tensor).to(torch.uint8)
        return i, out["image"].as_subclass(torch.Tensor), target


def _stack_masks(s: DetectionSample, index: list[int]) -> np.ndarray:
    """(N, H, W) bool masks of the kept objects (a box-only object gives its filled box)."""
    if not index:
        return np.zeros((0, s.height, s.width), dtype=bool)
    return np.stack([s.mask(j) for j in index])


def _collate(items: list[tuple[int, torch.Tensor, dict[str, torch.Tensor]]]) -> Batch:
    indices, images, targets = zip(*items, strict=True)
    return torch.stack(images), list(targets), torch.tensor(indices)


class DetectionStore(PerSampleStore):
    """A BatchSource (see engine/trainer.py) over detection samples; images are read from disk each epoch.

    `batches` yields (images (B, 3, S, S) uint8, B target dicts, indices (B,))."""

    def __init__(self, samples: list[DetectionSample], size: int, *, train: bool, masks: bool, workers: int = 0,
                 augment: bool | None = None, resize: str = "letterbox", hflip: bool = True) -> None:
        """`train`: training targets (crowd regions left out) with augmentation (unless `augment` is False)."""
        self.samples, self.size = samples, size
        super().__init__(_Samples(samples, size, train, train if augment is None else augment, masks, resize, hflip), _collate, workers)
