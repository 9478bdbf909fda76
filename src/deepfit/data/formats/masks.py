"""Mask files: semantic masks decoded into class values (instance masks, an object per value, are read by
`instance_masks`).

Semantic masks (`load_mask`) are read as stored: palette PNGs as their palette indexes (with the palette),
8- or 16-bit grey as their values, RGB as colours packed into one integer each (`pack_colors`).
`to_value_space` puts them in one data set's space of values, and a `ValueMap` maps those to class indexes,
with `IGNORE_INDEX` (255) for the ignored value and for any value the map does not know.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

# The class index of pixels that are not to be learnt from or scored: what every semantic mask holds where
# a pixel is unlabelled or ambiguous, and what losses and metrics take as their ignore_index.
IGNORE_INDEX = 255
MASK_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff", ".gif")  # lossless only: JPEG would blur class values
_PIL_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)

ClassValue = int | tuple[int, int, int]  # a mask value: a grey or palette value, or an (r, g, b) colour


# --- semantic masks: decoding ----------------------------------------------------------------------


class UnsupportedMask(Exception):
    """A mask Pillow opens but whose mode holds no class values (float, CMYK...)."""


def _palette(img: Image.Image) -> np.ndarray:
    raw = np.asarray(img.getpalette() or [], dtype=np.uint8)
    out = np.zeros(768, dtype=np.uint8)  # a short palette leaves the unused indexes black
    out[:min(len(raw), 768)] = raw[:768]
    return out.reshape(256, 3)


def pack_colors(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) colours as one int64 each, 0xRRGGBB, so sorting them sorts by (r, g, b)."""
    rgb = rgb.astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def unpack_color(packed: int) -> tuple[int, int, int]:
    """The (r, g, b) of a colour packed by `pack_colors`."""
    return (packed >> 16) & 255, (packed >> 8) & 255, packed & 255


def load_mask(path: Path) -> tuple[str, np.ndarray, np.ndarray | None]:
    """A mask's pixels as stored: ("palette" | "index" | "rgb", (H, W) values, palette or None).

    RGB pixels are packed (see `pack_colors`); 16-bit masks stay uint16 so a 65,536-entry table maps them."""
    with Image.open(path) as img:
        mode = img.mode
        if mode in ("P", "PA"):
            return "palette", np.asarray(img.getchannel(0) if mode == "PA" else img), _palette(img)
        if mode == "1":
            return "index", np.asarray(img.convert("L")), None  # 0 / 255, as Pillow shows it
        if mode in ("L", "LA"):
            return "index", np.asarray(img.getchannel(0) if mode == "LA" else img), None
        if mode.startswith("I;16"):
            return "index", np.asarray(img).astype(np.uint16), None  # native byte order
        if mode == "I":
            pixels = np.asarray(img)
            if pixels.size and pixels.min() >= 0 and pixels.max() < 65536:
                pixels = pixels.astype(np.uint16)
            return "index", pixels, None
        if mode in ("RGB", "RGBA", "RGBX"):
            return "rgb", pack_colors(np.asarray(img if mode == "RGB" else img.convert("RGB"))), None
    raise UnsupportedMask(f"mode {mode} holds no class values (save masks as 8-bit grey, palette or RGB PNG)")


def to_value_space(family: str, values: np.ndarray, palette: np.ndarray | None, rgb: bool) -> np.ndarray:
    """Pixels (or distinct values) of one mask in the data set's value space: packed colours for rgb,
    plain values otherwise. Used on pixels when reading a mask and on histograms when scanning it, so
    both agree."""
    if rgb:
        if family == "palette":
            return pack_colors(palette)[values]  # type: ignore[index]
        if family == "index":
            return values.astype(np.int64) * 0x010101  # grey g is the colour (g, g, g)
        return values
    if family == "rgb":  # a grey RGB mask: any channel is the value
        return (values & 0xFF).astype(np.uint8)
    return values


class ValueMap:
    """Mask value -> class index (or IGNORE_INDEX), by table for 8 and 16 bit, by sorted search otherwise."""

    def __init__(self, keys: Sequence[int], targets: Sequence[int]) -> None:
        order = np.argsort(np.asarray(keys, dtype=np.int64), kind="stable")
        self.keys = np.asarray(keys, dtype=np.int64)[order]
        self.targets = np.asarray(targets, dtype=np.int64)[order]

    def lookup(self, values: np.ndarray) -> np.ndarray:
        """Each value's class index, IGNORE_INDEX for the ignore value, -1 for a value not in the map."""
        values = np.asarray(values, dtype=np.int64)
        if not len(self.keys):
            return np.full(values.shape, -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.keys, values), len(self.keys) - 1)
        return np.where(self.keys[pos] == values, self.targets[pos], -1)

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """(H, W) uint8 class indexes of a mask's pixels, IGNORE_INDEX where a value is not in the map."""
        if pixels.dtype in (np.uint8, np.uint16):
            table = self.lookup(np.arange(256 if pixels.dtype == np.uint8 else 65536))
            table[table < 0] = IGNORE_INDEX  # values the scan did not see (it skipped such masks)
            return table.astype(np.uint8)[pixels]
        found = self.lookup(pixels)
        found[found < 0] = IGNORE_INDEX
        return found.astype(np.uint8)


def value_map(values: Sequence[ClassValue], ignore: ClassValue | None) -> ValueMap:
    """The map from class `values` (class i has values[i]) and the `ignore` value (to IGNORE_INDEX)."""
    def key(v: ClassValue) -> int:
        return int(pack_colors(np.asarray(v))) if isinstance(v, tuple) else int(v)

    keys, targets = [key(v) for v in values], list(range(len(values)))
    if ignore is not None and key(ignore) not in keys:
        keys.append(key(ignore))
        targets.append(IGNORE_INDEX)
    return ValueMap(keys, targets)


# --- semantic masks: scanning an image/mask pair ---------------------------------------------------


@dataclass
class MaskScan:
    """What one pass over an image header and its mask found."""

    image_size: tuple[int, int] | None = None
    mask_size: tuple[int, int] | None = None
    family: str = ""  # "palette" | "index" | "rgb" | "grey" (an RGB mask whose colours are all grey)
    values: np.ndarray | None = None  # distinct values (packed colours for rgb), int64
    counts: np.ndarray | None = None  # pixels of each, int64
    palette: np.ndarray | None = None
    error: str | None = None  # "image: ..." or "mask: ..." when Pillow cannot read one

    @property
    def stored(self) -> str:
        """The family as `load_mask` reports it at read time (grey RGB masks are RGB files)."""
        return "rgb" if self.family == "grey" else self.family


def _histogram(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if pixels.dtype in (np.uint8, np.uint16):  # counting beats sorting when the range is small
        counts = np.bincount(pixels.ravel(), minlength=256 if pixels.dtype == np.uint8 else 65536)
        nonzero = np.flatnonzero(counts)
        return nonzero.astype(np.int64), counts[nonzero].astype(np.int64)
    values, counts = np.unique(pixels, return_counts=True)
    return values.astype(np.int64), counts.astype(np.int64)


def scan_pair(pair: tuple[Path, Path, str | None]) -> MaskScan:
    """The image's size and the mask's size, encoding and histogram of one (image, mask, split) pair."""
    image, mask, _ = pair
    scan = MaskScan()
    try:
        with Image.open(image) as img:  # the header is enough for the size
            scan.image_size = img.size
    except _PIL_ERRORS as e:
        scan.error = f"image: {type(e).__name__}: {e}"
        return scan
    try:
        family, pixels, scan.palette = load_mask(mask)
    except (*_PIL_ERRORS, UnsupportedMask) as e:
        scan.error = f"mask: {e}"
        return scan
    scan.mask_size = (pixels.shape[1], pixels.shape[0])
    scan.values, scan.counts = _histogram(pixels)
    v = scan.values
    grey = ((v >> 16) & 255 == v & 255).all() and ((v >> 8) & 255 == v & 255).all()
    scan.family = "grey" if family == "rgb" and grey else family
    return scan
