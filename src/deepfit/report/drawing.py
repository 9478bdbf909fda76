"""What the pictures and charts of every task draw with: class colours, the label font, plain arrays.

One palette for all tasks means a class has the same colour in a detection drawing, a mask without a
colour map of its own, and a precision-recall chart. Arrays are accepted from numpy, torch (any device)
or lists alike; torch itself is imported only where a tensor is made.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from matplotlib import colormaps
from PIL import Image

from deepfit.log import logger

__all__ = ["PALETTE", "as_numpy", "caption", "class_color", "hex_color", "image_tensor", "label_font", "label_font_path", "rgb_array",
           "text_color"]

# tab10's strong colours first, then tab20's light ones: neighbouring class indices differ clearly.
_TAB20 = colormaps["tab20"].colors
PALETTE: list[tuple[int, int, int]] = [
    (int(round(255 * r)), int(round(255 * g)), int(round(255 * b))) for r, g, b in [*_TAB20[0::2], *_TAB20[1::2]]
]


def as_numpy(value: Any) -> np.ndarray:
    """numpy view of a numpy array, torch tensor (any device) or list."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def class_color(index: int) -> tuple[int, int, int]:
    """The RGB colour of class ``index`` (0-255 each); the palette repeats past its 20 colours."""
    return PALETTE[index % len(PALETTE)]


def hex_color(color: tuple[int, int, int]) -> str:
    """``#rrggbb`` of an RGB colour, as HTML swatches and legends write it."""
    return "#{:02x}{:02x}{:02x}".format(*(int(v) for v in color))


def rgb_array(image: Any) -> np.ndarray:
    """(H, W, 3) uint8 from a PIL image or an (H, W[, 1|3|4]) array (numpy or torch); floats are taken to be in [0, 1].

    The numpy sibling of :func:`image_tensor`, for pictures drawn with numpy and PIL.
    """
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    array = as_numpy(image)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an (H, W, 3) image, got shape {array.shape}")
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    array = array[:, :, :3]  # alpha is dropped: the picture is for looking at
    if np.issubdtype(array.dtype, np.floating):
        array = np.rint(np.clip(array, 0.0, 1.0) * 255.0)
    return np.ascontiguousarray(array.astype(np.uint8))


def text_color(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black on light label backgrounds, white on dark ones, so every label stays readable."""
    r, g, b = background
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 150 else (255, 255, 255)


@functools.lru_cache(maxsize=1)
def label_font_path() -> str | None:
    """Path of a TrueType font for labels and captions, or ``None`` (then PIL's default font is used).

    matplotlib ships DejaVu Sans; with a TrueType font the label size can follow the image size.
    """
    from matplotlib import font_manager

    try:
        return font_manager.findfont("DejaVu Sans", fallback_to_default=True)
    except Exception as error:  # a broken font cache must not stop the pictures
        logger.debug("no TrueType font for labels (%s); using PIL's default", error)
        return None


def image_tensor(image: Any) -> Any:
    """(3, H, W) uint8 torch tensor, what torchvision's drawing functions take, from any usual image.

    Accepted: a PIL image, an (H, W[, C]) numpy array, or a ([C,] H, W) tensor; float images are taken
    to be in [0, 1]. torch is imported only here, so the rest of the kit works without it.
    """
    import torch

    if isinstance(image, Image.Image):
        return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).contiguous()
    if isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        if tensor.ndim == 2:
            tensor = tensor[None]
    else:
        array = np.asarray(image)
        if array.ndim == 2:
            array = array[:, :, None]
        tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)
    if tensor.ndim != 3:
        raise ValueError(f"expected one image, got an array of shape {tuple(tensor.shape)}")
    if tensor.shape[0] == 1:
        tensor = tensor.expand(3, -1, -1)
    elif tensor.shape[0] == 4:
        tensor = tensor[:3]  # alpha is dropped: the picture is for looking at
    elif tensor.shape[0] != 3:
        raise ValueError(f"expected 1, 3 or 4 channels, got an image of shape {tuple(tensor.shape)}")
    if tensor.is_floating_point():
        tensor = (tensor.clamp(0, 1) * 255).round()  # float images are taken to be in [0, 1]
    return tensor.to(torch.uint8).contiguous()


def caption(image: np.ndarray, text: str, color: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    """(H, W, 3) uint8 image with `text` on a band of `color` across its top (a classified video frame's label)."""
    from PIL import ImageDraw

    picture = Image.fromarray(np.ascontiguousarray(image))
    size = max(10, round(min(picture.size) / 18))
    font = label_font(size)
    draw = ImageDraw.Draw(picture)
    draw.rectangle((0, 0, picture.width, round(size * 1.5)), fill=color)
    draw.text((round(size / 3), round(size / 5)), text, fill=text_color(color), font=font)
    return np.asarray(picture)


@functools.lru_cache(maxsize=8)
def label_font(size: int) -> Any:
    """The label font at `size` pixels, loaded once per size (a video draws thousands of frames with it)."""
    from PIL import ImageFont

    path = label_font_path()
    return ImageFont.truetype(path, size) if path else ImageFont.load_default()
