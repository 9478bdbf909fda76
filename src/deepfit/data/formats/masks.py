"""Mask files: instance-mask PNGs (one value per object), and semantic masks decoded into class values.

Instance masks (`read_instance_masks`): ``DATA/images/**/NAME.*`` paired by relative path and stem with
``DATA/masks/**/NAME.png``; every non-zero value of a mask is one object (0 is background). All objects are
of one class, ``object``, unless ``DATA/classes.json`` maps them: ``{"NAME": {"1": "cat", "2": "dog"}, ...}``
(mask stem -> object value -> class name; classes are the names used, in natural order; an object the file
does not name is a bad object). Masks are kept as COCO RLE, boxes are the pixels' extent (x2 = last column + 1).

Semantic masks (`load_mask`) are read as stored: palette PNGs as their palette indexes (with the palette),
8- or 16-bit grey as their values, RGB as colours packed into one integer each (`pack_colors`).
`to_value_space` puts them in one data set's space of values, and a `ValueMap` maps those to class indexes,
with `IGNORE_INDEX` (255) for the ignored value and for any value the map does not know.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from deepfit.data.formats.common import child_dir, image_size, images_under, split_of
from deepfit.data.formats.objects import OBJECT_LAYOUTS, BadAnnotations, ImageObjects, ObjectLabels
from deepfit.data.sources import natural_key
from deepfit.errors import DataError

# The class index of pixels that are not to be learnt from or scored: what every semantic mask holds where
# a pixel is unlabelled or ambiguous, and what losses and metrics take as their ignore_index.
IGNORE_INDEX = 255
MASK_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff", ".gif")  # lossless only: JPEG would blur class values
_PIL_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)

ClassValue = int | tuple[int, int, int]  # a mask value: a grey or palette value, or an (r, g, b) colour


# --- instance masks --------------------------------------------------------------------------------


def read_instance_masks(root: Path, given: list[str] | None) -> ObjectLabels:
    """The objects of the instance-mask PNGs in `root`; `given` are the class names (and their order)."""
    masks_dir, images_dir = child_dir(root, "masks"), child_dir(root, "images")
    if masks_dir is None or images_dir is None:
        raise DataError(f"instance masks need {root}/images/ and {root}/masks/\n{OBJECT_LAYOUTS}")
    mapping_file = root / "classes.json"
    mapping: dict[str, dict[str, str]] | None = None
    if mapping_file.is_file():
        try:
            mapping = json.loads(mapping_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"cannot read {mapping_file}: {e}") from e
        if not isinstance(mapping, dict) or not all(isinstance(v, dict) for v in mapping.values()):
            raise DataError(f'{mapping_file} must map mask names to {{object value: class}}: {{"img1": {{"1": "cat"}}}}')
    if given is not None:
        classes = list(given)
    elif mapping is not None:
        classes = sorted({str(c) for per in mapping.values() for c in per.values()}, key=natural_key)
    else:
        classes = ["object"]
    index_of = {name: i for i, name in enumerate(classes)}
    image_index = images_under(images_dir)
    mask_index = images_under(masks_dir)
    problems = BadAnnotations()
    images = []
    for key, mask_path in sorted(mask_index.items(), key=lambda kv: natural_key(kv[1].as_posix())):
        with Image.open(mask_path) as img:
            values = np.asarray(img if img.mode in ("L", "P", "I", "I;16", "1") else img.convert("L"))
        ids = [int(v) for v in np.unique(values) if v != 0]
        image = image_index.get(key)
        if image is None:
            problems.bad(str(mask_path), f"no image {images_dir / key[0] / key[1]}.* for its {len(ids)} objects",
                         count=max(len(ids), 1))
            continue
        w, h = image_size(image)
        if values.shape != (h, w):
            problems.bad(str(mask_path), f"mask is {values.shape[1]}x{values.shape[0]} but image {image.name} "
                                         f"is {w}x{h}", count=max(len(ids), 1))
            continue
        b = ImageObjects(image.resolve(), w, h, split_of(Path(key[0]).parts))
        per = mapping.get(key[1], {}) if mapping is not None else None
        for obj in ids:
            where = f"{mask_path} object {obj}"
            name = "object" if per is None else per.get(str(obj))
            if name not in index_of:
                problems.bad(where, f"class {name!r} is not among the classes" if name is not None
                             else f"{mapping_file.name} names no class for it")
                continue
            binary = values == obj
            rows, cols = np.flatnonzero(binary.any(1)), np.flatnonzero(binary.any(0))
            box = np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float32)
            rle = mask_utils.encode(np.asfortranarray(binary.astype(np.uint8)))
            b.add(box, index_of[name], rle)
        images.append(b)
    for key, image in image_index.items():
        if key not in mask_index:
            w, h = image_size(image)
            images.append(ImageObjects(image.resolve(), w, h, split_of(Path(key[0]).parts)))
    return ObjectLabels(images, classes, root, masks_dir, problems)


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
