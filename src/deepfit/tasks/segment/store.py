"""Batches for semantic segmentation: random crops to train on, tiles to validate on, image and mask together.

Training happens at the images' own resolution on square crops of `size` pixels, so an image of any size
(a 4000 x 3000 scan as well as a 640 x 480 photo) costs the same per step, and the network learns objects
at the scale it will see them when predicting on whole images. Each training crop is drawn as:

    scale s in [lo, hi] (augmentation)  ->  a window of size/s pixels at a random place (the image padded
    when it is smaller: image 0, mask IGNORE)  ->  resized to size x size (image bilinear with antialias,
    mask nearest-neighbour so no class is invented between two others)  ->  horizontal flip, colour jitter

Cropping before resizing keeps the cost of a crop independent of the image's size. Validation cuts each
image into non-overlapping tiles of `size` pixels (the last ones padded with IGNORE), so every pixel is
scored exactly once; `deepfit evaluate` predicts whole images (blending overlapping tiles) instead.

A batch is (images (B, 3, S, S) uint8, masks (B, S, S) uint8 class indexes with IGNORE, indices (B,)).
Augmentation is seeded per crop from the epoch's seed and the item's index, as detection's is, so it does
not depend on the worker that loads it and a resumed epoch repeats it exactly.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as TF

from deepfit.data.formats.masks import IGNORE_INDEX as IGNORE
from deepfit.data.loader import PerSampleStore
from deepfit.errors import DataError
from deepfit.modalities.image.store import decode_rgb
from deepfit.tasks.segment.data import SegmentationDataset, SegmentationSample

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]

# (lowest, highest) zoom factor of a training crop, per augmentation policy; "none" still crops at scale 1.
SCALES = {"none": (1.0, 1.0), "light": (0.75, 1.33), "strong": (0.5, 2.0)}
_JITTER = {"none": None, "light": 0.2, "strong": 0.4}


def load_pair(dataset: SegmentationDataset, sample: SegmentationSample) -> tuple[torch.Tensor, torch.Tensor]:
    """(image (3, H, W) uint8, mask (H, W) uint8 class indexes); a mask of another size is an error naming both files."""
    image = decode_rgb(str(sample.path))
    mask = torch.from_numpy(np.ascontiguousarray(dataset.read_mask(sample)))
    if tuple(mask.shape) != tuple(image.shape[-2:]):
        raise DataError(f"{sample.mask or sample.path}: mask {mask.shape[1]}x{mask.shape[0]} but image {sample.path} is "
                        f"{image.shape[2]}x{image.shape[1]}: check that the mask belongs to this image")
    return image, mask


def _pad_to(image: torch.Tensor, mask: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad bottom and right up to (height, width): image with 0, mask with IGNORE (padding is not a class)."""
    h, w = mask.shape
    if h >= height and w >= width:
        return image, mask
    pad = (0, max(0, width - w), 0, max(0, height - h))
    return F.pad(image, pad, value=0), F.pad(mask, pad, value=IGNORE)


class _Crops(Dataset):
    """Training items: one random crop of image i per item."""

    def __init__(self, dataset: SegmentationDataset, samples: list[SegmentationSample], size: int, augment: str, hflip: bool) -> None:
        self.dataset, self.samples, self.size = dataset, samples, size
        self.scales = SCALES[augment]
        self.hflip = hflip and augment != "none"
        strength = _JITTER[augment]
        self.jitter = v2.ColorJitter(brightness=strength, contrast=strength, saturation=strength) if strength else None
        self.seed = 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, torch.Tensor]:
        image, mask = load_pair(self.dataset, self.samples[i])
        # a generator of this item's own, seeded by (epoch, item): the same crop in any worker and after a resume
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + i) % 2**63)
        lo, hi = self.scales
        # log-uniform zoom: zooming in x2 and out x2 equally likely
        scale = math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * float(torch.rand(1, generator=g)))
        window = max(1, round(self.size / scale))
        image, mask = _pad_to(image, mask, window, window)
        h, w = mask.shape
        y = int(torch.randint(h - window + 1, (1,), generator=g))
        x = int(torch.randint(w - window + 1, (1,), generator=g))
        image, mask = image[:, y:y + window, x:x + window], mask[y:y + window, x:x + window]
        if window != self.size:
            image = TF.resize(image, [self.size, self.size], interpolation=InterpolationMode.BILINEAR, antialias=True)
            mask = TF.resize(mask[None], [self.size, self.size], interpolation=InterpolationMode.NEAREST)[0]
        if self.hflip and float(torch.rand(1, generator=g)) < 0.5:
            image, mask = image.flip(-1), mask.flip(-1)
        if self.jitter is not None:
            # ColorJitter draws from torch's global generator: fork it so the training's random numbers stay as they were
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(torch.randint(2**62, (1,), generator=g)))
                image = self.jitter(image)
        return i, image.contiguous(), mask.contiguous()


class _Tiles(Dataset):
    """Validation items: the non-overlapping size x size tiles of every image, image by image."""

    def __init__(self, dataset: SegmentationDataset, samples: list[SegmentationSample], size: int) -> None:
        self.dataset, self.samples, self.size = dataset, samples, size
        self.tiles = [(k, y, x) for k, s in enumerate(samples)
                      for y in range(0, s.height, size) for x in range(0, s.width, size)]
        self._cached: tuple[int, torch.Tensor, torch.Tensor] | None = None  # the last image: its tiles come in a row

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, torch.Tensor]:
        k, y, x = self.tiles[i]
        if self._cached is None or self._cached[0] != k:
            self._cached = (k, *load_pair(self.dataset, self.samples[k]))
        _, image, mask = self._cached
        s = self.size
        image, mask = _pad_to(image[:, y:y + s, x:x + s], mask[y:y + s, x:x + s], s, s)
        return i, image.contiguous(), mask.contiguous()


def _collate(items: list[tuple[int, torch.Tensor, torch.Tensor]]) -> Batch:
    indices, images, masks = zip(*items, strict=True)
    return torch.stack(images), torch.stack(masks), torch.tensor(indices)


class SegmentationStore(PerSampleStore):
    """A BatchSource (see engine/trainer.py) of crops (train) or tiles (validation); images are read from disk each epoch.

    `batches` yields (images (B, 3, S, S) uint8, masks (B, S, S) uint8, indices (B,))."""

    def __init__(self, dataset: SegmentationDataset, samples: list[SegmentationSample], size: int, *, train: bool,
                 augment: str = "light", hflip: bool = True, workers: int = 0) -> None:
        self.samples, self.size = samples, size
        super().__init__(_Crops(dataset, samples, size, augment, hflip) if train else _Tiles(dataset, samples, size), _collate, workers)
