"""Augmentation for detection and instance segmentation: boxes and masks move with the image.

Built on torchvision's v2 transforms and tv_tensors, which transform an image, its `BoundingBoxes`
and its `Mask` together (a flip mirrors the boxes, a crop shifts and clips them, a resize scales
them; masks are resampled with nearest-neighbour so object ids never blend). After the random
geometry, boxes are clipped to the image and degenerate ones (under `min_size` pixels wide or high,
or fully cropped away) are removed together with their labels and masks.

    sample = {"image": tv_tensors.Image(...), "boxes": tv_tensors.BoundingBoxes(..., format="XYXY",
              canvas_size=(H, W)), "labels": tensor, "masks": tv_tensors.Mask(...)}   # masks optional
    out = detection_transform(640, train=True)(sample)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

Sample = dict[str, Any]


class Letterbox:
    """Scale the longer side to `size` keeping the aspect ratio, then pad right and bottom to a
    `size` x `size` square (fill 114, the grey of YOLO-style letterboxing), boxes and masks alike.

    A plain callable over the functional API rather than a v2.Transform subclass: the subclassing
    hooks were renamed across torchvision releases, while the functional kernels dispatch on
    tv_tensor types in every supported version.
    """

    def __init__(self, size: int, fill: int = 114) -> None:
        self.size, self.fill = size, fill

    def __call__(self, sample: Sample) -> Sample:
        h, w = sample["image"].shape[-2:]
        scale = self.size / max(h, w)
        new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
        padding = [0, 0, self.size - new_w, self.size - new_h]  # left, top, right, bottom
        out = dict(sample)
        for key in ("image", "boxes", "masks"):
            if key not in sample:
                continue
            value = F.resize(sample[key], [new_h, new_w], antialias=True)  # masks: nearest, by their type
            out[key] = F.pad(value, padding, fill=self.fill if key == "image" else 0)
        return out


def detection_transform(
    size: int,
    *,
    train: bool,
    resize: str = "letterbox",
    hflip: bool = True,
    scale: tuple[float, float] = (0.5, 1.5),
    colour: float = 0.2,
    min_size: float = 2.0,
) -> Callable[[Sample], Sample]:
    """The pipeline for one sample dict: random scale/crop, flip and colour when training; then letterbox
    (or a plain resize that may change the aspect ratio) to `size`; then clean-up of degenerate boxes."""
    if resize not in ("letterbox", "resize"):
        raise ValueError(f"resize must be 'letterbox' or 'resize', not {resize!r}")
    steps: list[Callable[[Sample], Sample]] = []
    if train:
        steps += [
            v2.RandomAffine(degrees=0.0, scale=scale, translate=(0.1, 0.1)),  # scale + shift: boxes follow, clipped later
            v2.ColorJitter(brightness=colour, contrast=colour, saturation=colour),
        ]
        if hflip:
            steps.append(v2.RandomHorizontalFlip(0.5))
    steps.append(Letterbox(size) if resize == "letterbox" else v2.Resize((size, size), antialias=True))
    steps += [v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(min_size=min_size, labels_getter=_labels)]
    return v2.Compose(steps)


def _labels(sample: Any) -> tuple[torch.Tensor, ...]:
    """What SanitizeBoundingBoxes drops together with a removed box: its label and crowd flag (and its mask,
    which it handles by type)."""
    return tuple(sample[k] for k in ("labels", "iscrowd") if k in sample)


def make_sample(image: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor | None = None) -> Sample:
    """(3, H, W) uint8 image, (N, 4) xyxy pixel boxes, (N,) labels, optional (N, H, W) masks -> a sample dict."""
    h, w = image.shape[-2:]
    sample: Sample = {
        "image": tv_tensors.Image(image),
        "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w)),
        "labels": labels,
    }
    if masks is not None:
        sample["masks"] = tv_tensors.Mask(masks)
    return sample
