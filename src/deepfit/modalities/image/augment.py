"""Augmentation and normalisation of whole uint8 batches, on the training device.

Why not per-image torchvision transforms in DataLoader workers? On a 2-core CPU the workers compete
with the training step, and per-image Python calls dominate for small images. Here every random
choice is still made per image, but applied with a few batched tensor ops: random resized crops
(and, for small images, translations) are one `torchvision.ops.roi_align` call, flips one
`torch.where`, colour jitter a few broadcasts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torchvision.ops import roi_align

# Images at or below this size get padded translations instead of scale crops: cropping away
# half of a 32-pixel image destroys it, while shifting it by a few pixels is a cheap, safe variation.
SMALL_IMAGE = 64


@dataclass
class BatchTransform:
    """uint8 (B, 3, S, S) -> normalised float (B, 3, s, s), where S is the storage size and s the input size."""

    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    policy: str = "none"  # "none" | "light" | "strong"
    hflip: bool = True
    channels_last: bool = False

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = images.float()  # (B, 3, S, S) in [0, 255]
        if self.policy == "none":
            x = center_crop(x, self.image_size)
        else:
            x = self._random_crop(x, generator)
            if self.hflip:
                flip = torch.rand(x.shape[0], generator=generator, device="cpu").to(x.device) < 0.5
                x = torch.where(flip[:, None, None, None], x.flip(3), x)
            if self.policy == "strong":
                x = colour_jitter(x, 0.4, generator)
        x = self.normalize(x)
        if self.policy == "strong":
            x = random_erase(x, generator)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """(x / 255 - mean) / std as one multiply-add."""
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        return torch.addcmul(-mean / std, x, 1.0 / (255.0 * std))

    def _random_crop(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        b, _, h, w = x.shape
        s = self.image_size
        rand = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731  (always CPU: reproducible)
        if s <= SMALL_IMAGE:
            pad = max(1, s // (8 if self.policy == "light" else 4))
            # a window of the input size around the centre, shifted by up to `pad` pixels each way.
            shift = torch.randint(-pad, pad + 1, (b, 2), generator=generator).float()
            # zero padding, so the window never leaves the tensor: roi_align would repeat the edge pixel
            # for samples up to one pixel outside it, and read zeros only beyond that.
            border = pad + 1
            x = torch.nn.functional.pad(x, (border, border, border, border))
            x0 = (w - s) / 2 + shift[:, 0] + border
            y0 = (h - s) / 2 + shift[:, 1] + border
            boxes = torch.stack([x0, y0, x0 + s, y0 + s], 1)
        else:
            lo = 0.35 if self.policy == "light" else 0.08
            area = (lo + (1 - lo) * rand(b)) * h * w
            log_ratio = (2 * rand(b) - 1) * math.log(4 / 3)
            ratio = torch.exp(log_ratio)
            cw = torch.sqrt(area * ratio).clamp(max=w)
            ch = torch.sqrt(area / ratio).clamp(max=h)
            x0 = rand(b) * (w - cw)
            y0 = rand(b) * (h - ch)
            boxes = torch.stack([x0, y0, x0 + cw, y0 + ch], 1)
        rois = torch.cat([torch.arange(b, dtype=torch.float).unsqueeze(1), boxes], 1).to(x.device)
        # aligned=True puts samples on pixel centres, and sampling_ratio=0 takes ceil(crop / output) points
        # per output pixel and axis: an unscaled window is an exact pixel shift, a downscaled crop is averaged
        # (antialiased), an upscaled one bilinear.
        return roi_align(x, rois, output_size=(s, s), spatial_scale=1.0, sampling_ratio=0, aligned=True)


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """Centre (size x size) window of a (B, C, S, S) batch; resizes when S < size."""
    h, w = x.shape[-2:]
    if h < size or w < size:
        return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=False, align_corners=False)
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size]


def colour_jitter(x: torch.Tensor, strength: float, generator: torch.Generator | None) -> torch.Tensor:
    """Per-image brightness, contrast and saturation factors in [1 - strength, 1 + strength]."""
    b = x.shape[0]
    f = (1 + strength * (2 * torch.rand(3, b, 1, 1, 1, generator=generator) - 1)).to(x.device)
    x = x * f[0]
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * f[1] + mean
    grey = x.mean(dim=1, keepdim=True)
    x = (x - grey) * f[2] + grey
    return x.clamp(0, 255)


def random_erase(x: torch.Tensor, generator: torch.Generator | None, p: float = 0.25) -> torch.Tensor:
    """With probability p per image, set a random rectangle (2-25% of the area) to the mean (0 after normalising)."""
    b, _, h, w = x.shape
    r = torch.rand(5, b, generator=generator)
    area = (0.02 + 0.23 * r[0]) * h * w
    aspect = torch.exp((2 * r[1] - 1) * math.log(3))
    eh = torch.sqrt(area * aspect).clamp(max=h)
    ew = torch.sqrt(area / aspect).clamp(max=w)
    y0 = r[2] * (h - eh)
    x0 = r[3] * (w - ew)
    ys = torch.arange(h).view(1, h, 1)
    xs = torch.arange(w).view(1, 1, w)
    inside = (ys >= y0.view(b, 1, 1)) & (ys < (y0 + eh).view(b, 1, 1)) & (xs >= x0.view(b, 1, 1)) & (xs < (x0 + ew).view(b, 1, 1))
    mask = (inside & (r[4] < p).view(b, 1, 1)).unsqueeze(1).to(x.device)  # (B, 1, H, W)
    return x.masked_fill(mask, 0.0)


def to_unit_range(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, 3, S, S) uint8 -> float in [0, 1]: the batch transform of models that normalise inside (torchvision's
    detectors in GeneralizedRCNNTransform, segmenters with their encoder's mean and std)."""
    return images.float().div_(255)
