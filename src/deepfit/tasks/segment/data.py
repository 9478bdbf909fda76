"""Read semantic-segmentation labels (one class per pixel) into one typed form, whatever the layout.

`read_segmentation(source)` recognises the layout by itself and returns a `SegmentationDataset`: one
`SegmentationSample` per image that has a usable mask, and the mapping from mask values to class
indexes. `dataset.read_mask(sample)` gives an (H, W) uint8 array of class indexes (0..K-1), with
`IGNORE` (255) where a pixel is not to be learnt from or scored, so losses use ``ignore_index=255``.

Layouts (`format=` forces one; otherwise it is found from what `source` holds):

* ``folders``: ``DATA/<images>/**/NAME.ext`` paired with ``DATA/<masks>/**/NAME.png`` by relative folder
  and stem. ``<images>`` is the first of images, image, imgs, img, JPEGImages and ``<masks>`` the first
  of masks, mask, labels, label, annotations, SegmentationClass, gt that holds mask files (names match
  case-insensitively). The same pair may sit in split folders: ``DATA/{train,val,test}/{images,masks}``.
  ``masks=`` names the mask folder (``source`` is then the image folder). Masks are .png, .bmp, .tif,
  .tiff or .gif. A sample's split comes from the folder names on its path (train, val / valid /
  validation, test, also train2017...).
* ``yaml``: a YAML file (or a folder holding ``config.yaml`` / ``data.yaml`` / ``dataset.yaml``) with
  ``images:`` and ``masks:`` folders per split (``train: {images: ..., masks: ...}``, relative to the
  YAML's folder, or to its ``path:``) and class names under ``classes:`` or ``names:``: a list (value i
  is class i) or an ``{id: name}`` dict whose ids may have gaps (mask value id is that class; classes
  are in id order).
* ``coco``: a COCO JSON (or a folder holding one), read by `deepfit.tasks.detect.data.read_detection`;
  the classes are ``background`` and the categories. Objects are painted largest first so that smaller
  ones stay visible on top, crowd objects are painted IGNORE, and every pixel no object covers is
  background. `values` are ``[0, *category ids]``.

Mask encodings (``dataset.kind``, decided over all masks):

* ``palette``: "P" PNGs; the palette index is the class value and the palette gives the display colours.
* ``index``: single-channel masks (8 or 16 bit); the grey value is the class value. RGB masks whose
  colours are all grey (r = g = b) are read the same way, as tools often save index masks as RGB.
* ``binary``: no class names given and every value within {0, 255} (or within {0, 1}): classes
  background and foreground; 255 is then foreground, not ignored.
* ``rgb``: 3-channel masks (an alpha channel is dropped), or any masks when `colors` is given. Colours map
  to classes through `colors` (name -> (r, g, b); an entry named ``ignore`` is the ignored colour) or,
  without it, every distinct colour is a class named ``#rrggbb`` (sorted by r, g, b; the map is logged so
  that it can be saved as a colors file and named).
* ``coco``: painted from COCO objects, see above.

Class names for index and palette masks come from `classes` (value i is classes[i]), else the YAML's
names, else ``DATA/classes.txt`` (line i is value i), else the values found, named by their value. The
value `ignore_value` (default 255) reads as IGNORE and is never a class, so with ``ignore_value=0`` a
class "unlabeled" of value 0 is dropped. Masks are uint8 class indexes with 255 = IGNORE, so at most 255
classes. `class_map=` (what `dataset.class_map()` returns) replaces all of this with a saved mapping,
so that evaluation data is read exactly as the training data was.

Bad pairs are skipped with one warning each (the file, what is wrong and what to do): an image without a
mask, a mask of another size than its image, a mask holding values not in a given class map (classes,
YAML names, classes.txt, colors or class_map), an image or mask Pillow cannot open. A mask with no image
is warned about too. More than `max_bad` (5%) bad pairs (images without a mask included) is a DataError
that lists them. Some data sets label only part of their images on purpose (Pascal VOC labels 2,913 of
its 17,125 JPEGImages, coco128 100 of 128 images per split): `skip_unmasked=True` (`--skip-unmasked`)
then leaves those images out with one summary warning, without counting them as bad. Like `discover`,
this only reads: it never writes into DATA.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from deepfit.data.sources import natural_key
from deepfit.errors import DataError
from deepfit.log import logger
from deepfit.tasks.detect.data import (
    _WARN_LIMIT,
    DetectionSample,
    _child,
    _coco_candidates,
    _images_under,
    _split_of,
    _yolo_names,
    _yolo_yaml,
    read_detection,
)

IGNORE = 255  # class index of ignored pixels in every mask `read_mask` returns
FORMATS = ("folders", "yaml", "coco")
KINDS = ("index", "binary", "palette", "rgb", "coco")
MASK_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff", ".gif")  # lossless only: JPEG would blur class values
MAX_CLASSES = 255  # indexes 0..254; 255 is IGNORE
_IMAGE_DIRS = ("images", "image", "imgs", "img", "JPEGImages")
_MASK_DIRS = ("masks", "mask", "labels", "label", "annotations", "SegmentationClass", "gt")
_PIL_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)

# Problem tags: the text before ": " in `dataset.problems`, and the group `summarize` lists it under.
_GROUPS = {
    "no mask": "images without a mask",
    "size": "masks of another size",
    "unknown values": "unknown values",
    "unreadable": "unreadable",
    "no image": "masks without an image",
}
_COUNTED = ("no mask", "size", "unknown values", "unreadable")  # the tags that make a pair bad (max_bad)

LAYOUTS = """deepfit reads semantic-segmentation masks laid out as one of:
  folders  DATA/images/**/NAME.jpg and DATA/masks/**/NAME.png (or image/imgs/img/JPEGImages and
           mask/labels/label/annotations/SegmentationClass/gt), also DATA/{train,val,test}/{images,masks}/,
           or any two folders with masks=
  yaml     DATA/config.yaml with train: {images: DIR, masks: DIR} (val:, test: alike) and classes: (or
           names:) as a list or as {value: name}
  coco     annotations.json (or DATA/ holding one COCO *.json) with polygon or RLE segmentations
Masks are single-channel (the value is the class), palette PNGs (the index is the class) or RGB (one
colour per class; pass colors= to name them)."""

ClassValue = int | tuple[int, int, int]


# --- the typed form --------------------------------------------------------------------------------


@dataclass
class SegmentationSample:
    """One image and its mask file (or, for COCO, the objects that paint it)."""

    path: Path  # image, absolute
    mask: Path | None  # mask file, absolute; None for COCO (painted from `objects`)
    width: int
    height: int
    split: str | None = None  # "train" | "val" | "test" when the layout says so
    counts: np.ndarray | None = None  # (K,) int64 pixels of each class (ignored pixels not counted)
    objects: list | None = None  # COCO: the `_Paint`s, in paint order


@dataclass(frozen=True, eq=False)
class _Paint:
    """One COCO object to paint: class index (IGNORE for crowd), and which object of which sample."""

    index: int
    sample: DetectionSample
    object: int


@dataclass
class SegmentationDataset:
    samples: list[SegmentationSample]  # the good pairs, naturally sorted by image path
    classes: list[str]  # K names, class index order
    root: Path
    format: str  # one of FORMATS
    kind: str  # one of KINDS
    values: list[ClassValue]  # per class, the mask value (int, or (r, g, b) for rgb)
    ignore_value: int | tuple[int, int, int] | None  # the mask value read as IGNORE
    colors: np.ndarray  # (K, 3) uint8 display colour per class
    problems: list[tuple[Path, str]]  # skipped files, "tag: detail" (see _GROUPS)

    def __len__(self) -> int:
        return len(self.samples)

    def read_mask(self, sample: SegmentationSample) -> np.ndarray:
        """The (H, W) uint8 class indexes of `sample`, IGNORE where ignored or where a value is unknown."""
        if self.kind == "coco":
            return _paint(sample)
        family, pixels, palette = _load(sample.mask)  # type: ignore[arg-type]
        return _value_map(self.kind, self.values, self.ignore_value).apply(
            _to_space(family, pixels, palette, rgb=self.kind == "rgb"))

    def pixel_counts(self, samples: list[SegmentationSample] | None = None) -> np.ndarray:
        """(K,) int64 pixels of each class over `samples` (all of them by default)."""
        total = np.zeros(len(self.classes), dtype=np.int64)
        for s in self.samples if samples is None else samples:
            if s.counts is not None:
                total += s.counts
            else:  # a sample made elsewhere: count it now
                total += np.bincount(self.read_mask(s).ravel(), minlength=256)[:len(self.classes)]
        return total

    def class_map(self) -> dict[str, Any]:
        """The value -> class mapping as JSON-able data; `read_segmentation(..., class_map=it)` reuses it."""
        def plain(v: ClassValue | None) -> int | list[int] | None:
            return None if v is None else [int(c) for c in v] if isinstance(v, tuple) else int(v)

        return {
            "kind": self.kind,
            "classes": list(self.classes),
            "values": [plain(v) for v in self.values],
            "ignore_value": plain(self.ignore_value),
            "ignore_index": IGNORE,  # what read_mask writes for ignored pixels (the loss's ignore_index)
            "colors": np.asarray(self.colors, dtype=np.uint8).reshape(-1, 3).tolist(),
        }


def summarize(dataset: SegmentationDataset) -> dict[str, Any]:
    """For a data check: format, kind, images, classes, each class's share of the labelled pixels, splits,
    the share of ignored pixels, and the skipped files grouped by what is wrong."""
    counts = dataset.pixel_counts()
    labelled = int(counts.sum())
    area = sum(s.width * s.height for s in dataset.samples)
    problems: dict[str, list[str]] = {group: [] for group in _GROUPS.values()}
    for path, why in dataset.problems:
        tag, _, detail = why.partition(": ")
        group = _GROUPS.get(tag)
        if group is None:
            continue
        # files alone where the group says it all; the measured values where they are the point
        problems[group].append(f"{path}: {detail}" if tag in ("size", "unknown values") else str(path))
    return {
        "format": dataset.format,
        "root": str(dataset.root),
        "kind": dataset.kind,
        "images": len(dataset.samples),
        "classes": len(dataset.classes),
        "pixel_share": {name: (int(c) / labelled if labelled else 0.0)
                        for name, c in zip(dataset.classes, counts, strict=True)},
        "ignored_share": (area - labelled) / area if area else 0.0,
        "splits": dict(Counter(s.split for s in dataset.samples if s.split is not None)),
        "problems": problems,
    }


# --- decoding and value maps -----------------------------------------------------------------------


class _Unsupported(Exception):
    """A mask Pillow opens but whose mode holds no class values (float, CMYK...)."""


def _palette(img: Image.Image) -> np.ndarray:
    raw = np.asarray(img.getpalette() or [], dtype=np.uint8)
    out = np.zeros(768, dtype=np.uint8)  # a short palette leaves the unused indexes black
    out[:min(len(raw), 768)] = raw[:768]
    return out.reshape(256, 3)


def _pack(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) colours as one int64 each, 0xRRGGBB, so sorting them sorts by (r, g, b)."""
    rgb = rgb.astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _unpack(packed: int) -> tuple[int, int, int]:
    return (packed >> 16) & 255, (packed >> 8) & 255, packed & 255


def _load(path: Path) -> tuple[str, np.ndarray, np.ndarray | None]:
    """A mask's pixels as stored: ("palette" | "index" | "rgb", (H, W) values, palette or None).

    RGB pixels are packed (see `_pack`); 16-bit masks stay uint16 so a 65,536-entry table maps them."""
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
            return "rgb", _pack(np.asarray(img if mode == "RGB" else img.convert("RGB"))), None
    raise _Unsupported(f"mode {mode} holds no class values (save masks as 8-bit grey, palette or RGB PNG)")


def _to_space(family: str, values: np.ndarray, palette: np.ndarray | None, rgb: bool) -> np.ndarray:
    """Pixels (or distinct values) of one mask in the dataset's value space: packed colours for rgb,
    plain values otherwise. Used on pixels by read_mask and on histograms by the scan, so both agree."""
    if rgb:
        if family == "palette":
            return _pack(palette)[values]  # type: ignore[index]
        if family == "index":
            return values.astype(np.int64) * 0x010101  # grey g is the colour (g, g, g)
        return values
    if family == "rgb":  # a grey RGB mask: any channel is the value
        return (values & 0xFF).astype(np.uint8)
    return values


class _ValueMap:
    """Mask value -> class index (or IGNORE), by table for 8 and 16 bit, by sorted search otherwise."""

    def __init__(self, keys: Sequence[int], targets: Sequence[int]) -> None:
        order = np.argsort(np.asarray(keys, dtype=np.int64), kind="stable")
        self.keys = np.asarray(keys, dtype=np.int64)[order]
        self.targets = np.asarray(targets, dtype=np.int64)[order]

    def lookup(self, values: np.ndarray) -> np.ndarray:
        """Each value's class index, IGNORE for the ignore value, -1 for a value not in the map."""
        values = np.asarray(values, dtype=np.int64)
        if not len(self.keys):
            return np.full(values.shape, -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.keys, values), len(self.keys) - 1)
        return np.where(self.keys[pos] == values, self.targets[pos], -1)

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        if pixels.dtype in (np.uint8, np.uint16):
            table = self.lookup(np.arange(256 if pixels.dtype == np.uint8 else 65536))
            table[table < 0] = IGNORE  # values the scan did not see (it skipped such masks)
            return table.astype(np.uint8)[pixels]
        found = self.lookup(pixels)
        found[found < 0] = IGNORE
        return found.astype(np.uint8)


def _value_map(kind: str, values: Sequence[ClassValue], ignore: ClassValue | None) -> _ValueMap:
    def key(v: ClassValue) -> int:
        return int(_pack(np.asarray(v))) if isinstance(v, tuple) else int(v)

    keys, targets = [key(v) for v in values], list(range(len(values)))
    if ignore is not None and key(ignore) not in keys:
        keys.append(key(ignore))
        targets.append(IGNORE)
    return _ValueMap(keys, targets)


def _fixed_colors(n: int) -> np.ndarray:
    """n distinct colours, black first: the bits of the index spread over r, g, b from the high bit down."""
    out = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, rgb = i, [0, 0, 0]
        for bit in range(7, -1, -1):
            for channel in range(3):
                rgb[channel] |= ((c >> channel) & 1) << bit
            c >>= 3
        out[i] = rgb
    return out


def _check_count(n: int, where: str) -> None:
    if n > MAX_CLASSES:
        raise DataError(
            f"{where} gives {n} classes, more than {MAX_CLASSES}: masks are read as uint8 class indexes "
            f"with {IGNORE} = ignored — merge classes, or set ignore_value / classes= to the ones to learn"
        )


# --- bad input -------------------------------------------------------------------------------------


class _Skipped:
    """Skipped files: one warning each (up to a limit per kind), and an error when too many pairs are bad."""

    def __init__(self, skip_unmasked: bool = False) -> None:
        self.items: list[tuple[Path, str]] = []
        self.bad: list[str] = []
        self.per_tag: Counter[str] = Counter()
        self.skip_unmasked = skip_unmasked  # images without a mask: left out quietly, not counted as bad

    def add(self, path: Path, tag: str, detail: str, advice: str) -> None:
        self.items.append((path, f"{tag}: {detail}"))
        quiet = tag == "no mask" and self.skip_unmasked
        if tag in _COUNTED and not quiet:
            self.bad.append(f"{path}: {detail}")
        self.per_tag[tag] += 1
        if self.per_tag[tag] <= _WARN_LIMIT and not quiet:
            logger.warning("skipped %s: %s — %s", path, detail, advice)

    def finish(self, pairs: int, max_bad: float, where: Path) -> None:
        """`pairs`: the image/mask pairs found; images without a mask are added to them when they count as bad."""
        if self.skip_unmasked and self.per_tag["no mask"]:
            logger.warning("left out %d images without a mask (--skip-unmasked); `deepfit data check` lists them",
                           self.per_tag["no mask"])
        for tag, n in self.per_tag.items():
            if n > _WARN_LIMIT and not (tag == "no mask" and self.skip_unmasked):
                logger.warning("... and %d more %s (%d warned above)", n - _WARN_LIMIT, _GROUPS[tag], _WARN_LIMIT)
        if not self.skip_unmasked:
            pairs += self.per_tag["no mask"]
        if self.bad and len(self.bad) > max_bad * pairs:
            shown = "; ".join(self.bad[:20]) + (f"; ... ({len(self.bad) - 20} more)" if len(self.bad) > 20 else "")
            raise DataError(
                f"{len(self.bad)} of {pairs} image/mask pairs in {where} are bad (more than {max_bad:.0%}): "
                f"{shown} — fix or remove those files and read again (`deepfit data check` lists them all)"
            )


# --- entry point -----------------------------------------------------------------------------------


def read_segmentation(
    source: str | Path, *, masks: str | Path | None = None, format: str | None = None,
    classes: list[str] | None = None, colors: dict[str, tuple[int, int, int]] | str | Path | None = None,
    ignore_value: int | None = 255, class_map: dict | None = None, max_bad: float = 0.05,
    skip_unmasked: bool = False, workers: int | None = None,
) -> SegmentationDataset:
    """Read semantic-segmentation masks from `source` (a folder, a YAML or a COCO JSON; see the module doc).

    `masks` names the mask folder (`source` is then the image folder); `format` forces one of FORMATS;
    `classes` names the mask values 0, 1, ...; `colors` maps class names to RGB mask colours (a dict or a
    JSON file of one); `ignore_value` is the mask value read as IGNORE; `class_map` (from
    `SegmentationDataset.class_map`) replaces all inference; `max_bad` is the share of bad pairs that is
    still only warned about; `skip_unmasked` leaves images without a mask out without counting them as
    bad; `workers` threads decode the masks.
    """
    path = Path(source).expanduser().resolve()
    if not path.exists():
        raise DataError(f"segmentation data not found: {path} — check the path")
    if format is not None and format not in FORMATS:
        raise DataError(f"unknown segmentation format {format!r}: choose one of {', '.join(FORMATS)}")
    mask_dir = Path(masks).expanduser().resolve() if masks is not None else None
    if mask_dir is not None and not mask_dir.is_dir():
        raise DataError(f"mask folder not found: {mask_dir} — check masks=")
    saved = _parse_class_map(class_map) if class_map is not None else None
    fmt = format or _detect(path, mask_dir)
    if saved is not None and (saved.kind == "coco") != (fmt == "coco"):
        raise DataError(f"the class map is for {saved.kind} masks but {path} is read as {fmt}: "
                        "pass the class map of a run trained on this kind of data")
    n_workers = max(1, workers if workers is not None else min(8, os.cpu_count() or 1))
    if fmt == "coco":
        if colors is not None or classes is not None:
            raise DataError("COCO categories name the classes: classes= and colors= are for mask files")
        return _read_coco(path, saved, max_bad, n_workers)
    layout = _yaml_layout(path) if fmt == "yaml" else _folders_layout(path, mask_dir)
    names: tuple[list[str], list[int]] | None = None
    named_by = ""
    if classes is not None:
        names, named_by = (list(classes), list(range(len(classes)))), "classes="
    elif layout.names is not None:
        names, named_by = layout.names, layout.named_by
    elif (layout.root / "classes.txt").is_file():
        txt = layout.root / "classes.txt"
        lines = [line.strip() for line in txt.read_text(encoding="utf-8").splitlines() if line.strip()]
        names, named_by = (lines, list(range(len(lines)))), str(txt)
    rgb_colors = _parse_colors(colors, classes) if colors is not None else None
    return _read_pairs(layout, fmt, names, named_by, rgb_colors, ignore_value, saved, max_bad, skip_unmasked, n_workers)


@dataclass
class _Saved:
    """A parsed class map."""

    kind: str
    classes: list[str]
    values: list[ClassValue]
    ignore: ClassValue | None
    colors: np.ndarray


def _parse_class_map(data: dict) -> _Saved:
    def value(v: Any, rgb: bool) -> ClassValue:
        if rgb:
            if not (isinstance(v, (list, tuple)) and len(v) == 3):
                raise ValueError(f"{v!r} is not an [r, g, b] colour")
            return tuple(int(c) for c in v)  # type: ignore[return-value]
        return int(v)

    try:
        kind = str(data["kind"])
        if kind not in KINDS:
            raise ValueError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
        classes = [str(c) for c in data["classes"]]
        values = [value(v, kind == "rgb") for v in data["values"]]
        ignore = data.get("ignore_value")
        ignore = None if ignore is None else value(ignore, kind == "rgb")
        given = data.get("colors")
        colors = (_fixed_colors(len(classes)) if given is None or len(given) == 0
                  else np.asarray(given, dtype=np.uint8).reshape(-1, 3))
        if not (len(classes) == len(values) == len(colors)):
            raise ValueError(f"{len(classes)} classes, {len(values)} values and {len(colors)} colours")
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"class_map is not one that SegmentationDataset.class_map() wrote: {e}") from e
    _check_count(len(classes), "the class map")
    return _Saved(kind, classes, values, ignore, colors)


def _parse_colors(colors: dict | str | Path, classes: list[str] | None
                  ) -> tuple[list[str], list[tuple[int, int, int]], tuple[int, int, int] | None]:
    """(class names, their colours, the ignored colour or None) from a dict or a JSON file of one."""
    where = "colors="
    if isinstance(colors, (str, Path)):
        where = str(Path(colors).expanduser())
        try:
            colors = json.loads(Path(where).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"cannot read the colors file {where}: {e}") from e
    if not isinstance(colors, dict) or not colors:
        raise DataError(f'{where} must map class names to mask colours: {{"road": [128, 64, 128], ...}}')
    parsed: dict[str, tuple[int, int, int]] = {}
    for name, c in colors.items():
        try:
            if isinstance(c, str) and c.startswith("#") and len(c) == 7:
                rgb = _unpack(int(c[1:], 16))
            else:
                rgb = tuple(int(v) for v in c)  # type: ignore[assignment]
            if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
                raise ValueError
        except (TypeError, ValueError):
            raise DataError(f"{where}: the colour of {name!r} is {c!r}, not [r, g, b] in 0-255 or #rrggbb") from None
        parsed[str(name)] = rgb  # type: ignore[assignment]
    ignore = next((rgb for name, rgb in parsed.items() if name.lower() == "ignore"), None)
    named = {name: rgb for name, rgb in parsed.items() if name.lower() != "ignore"}
    if classes is not None:
        missing = [c for c in classes if c not in named]
        extra = [n for n in named if n not in classes]
        if missing or extra:
            raise DataError(f"{where} and classes= disagree: no colour for {missing}, no class for {extra}")
        named = {c: named[c] for c in classes}
    seen: dict[tuple[int, int, int], str] = {}
    for name, rgb in [*named.items(), *([("ignore", ignore)] if ignore is not None else [])]:
        if rgb in seen:
            raise DataError(f"{where}: {seen[rgb]!r} and {name!r} have the same colour {list(rgb)}")
        seen[rgb] = name  # type: ignore[index]
    return list(named), list(named.values()), ignore


# --- layouts ---------------------------------------------------------------------------------------


@dataclass
class _Layout:
    root: Path
    folders: list[tuple[Path, Path, str | None, tuple[str, ...]]]  # images, masks, split or None, path prefix
    names: tuple[list[str], list[int]] | None = None  # class names and their mask values, from a YAML
    named_by: str = ""


def _detect(path: Path, mask_dir: Path | None) -> str:
    if mask_dir is not None:
        return "folders"
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".json":
            return "coco"
        if suffix in (".yaml", ".yml"):
            return "yaml"
        raise DataError(f"{path} is neither a dataset .yaml nor a COCO .json\n{LAYOUTS}")
    yaml_path = _yolo_yaml(path)
    if yaml_path is not None and _seg_entries(_load_yaml(yaml_path)):
        return "yaml"
    if _folder_pairs(path):
        return "folders"
    if _coco_candidates(path):
        return "coco"
    raise DataError(f"no segmentation masks found in {path}\n{LAYOUTS}")


def holds_semantic_masks(path: str | Path) -> bool:
    """Whether `path` is laid out as semantic masks: a YAML naming `masks:` folders, or image and mask folders
    (`deepfit data check` reads such data as segmentation). COCO JSON is left to detection, and so is a folder
    with ``classes.json``: detection's instance-mask PNGs, which sit in the same images/ + masks/ layout."""
    path = Path(path)
    try:
        if path.is_file():
            return path.suffix.lower() in (".yaml", ".yml") and bool(_seg_entries(_load_yaml(path)))
        if not path.is_dir() or (path / "classes.json").is_file():
            return False
        yaml_path = _yolo_yaml(path)
        return (yaml_path is not None and bool(_seg_entries(_load_yaml(yaml_path)))) or bool(_folder_pairs(path))
    except DataError:  # an unreadable YAML: the reader that is asked next says what is wrong with it
        return False


def _has_masks(folder: Path) -> bool:
    for _, _, filenames in os.walk(folder, followlinks=True):
        if any(os.path.splitext(n)[1].lower() in MASK_EXTENSIONS for n in filenames):
            return True
    return False


def _first_dir(folder: Path, names: tuple[str, ...], masks: bool = False) -> Path | None:
    for name in names:
        found = _child(folder, name)
        # a labels/ of YOLO .txt files or an annotations/ of COCO JSON is not a mask folder
        if found is not None and (not masks or _has_masks(found)):
            return found
    return None


def _folder_pairs(root: Path) -> list[tuple[Path, Path, str | None, tuple[str, ...]]]:
    """(images, masks) folders at DATA/ and in DATA/{train,val,test}/."""
    found = []
    for folder in [root] + sorted((d for d in root.iterdir() if d.is_dir() and _split_of((d.name,))),
                                  key=lambda d: natural_key(d.name)):
        images, masks = _first_dir(folder, _IMAGE_DIRS), _first_dir(folder, _MASK_DIRS, masks=True)
        if images is not None and masks is not None:
            found.append((images, masks, None, images.relative_to(root).parts))
    return found


def _folders_layout(path: Path, mask_dir: Path | None) -> _Layout:
    if mask_dir is not None:
        if not path.is_dir():
            raise DataError(f"with masks=, the source is the image folder; {path} is not a folder")
        common = Path(os.path.commonpath([path, mask_dir]))
        # the split may be the folder both sit in (DATA/train/images + DATA/train/masks)
        return _Layout(common, [(path, mask_dir, None, (common.name, *path.relative_to(common).parts))])
    if not path.is_dir():
        raise DataError(f"{path} is not a folder: the folders layout needs DATA/images and DATA/masks\n{LAYOUTS}")
    folders = _folder_pairs(path)
    if not folders:
        images = _first_dir(path, _IMAGE_DIRS)
        what = "no image folder" if images is None else f"no mask folder (with .png masks) beside {images.name}/"
        raise DataError(f"{what} in {path}\n{LAYOUTS}")
    return _Layout(path, folders)


def _load_yaml(yaml_path: Path) -> dict:
    import yaml

    try:
        config = yaml.safe_load(yaml_path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise DataError(f"cannot read dataset YAML {yaml_path}: {e}") from e
    return config if isinstance(config, dict) else {}


def _seg_entries(config: dict) -> list[tuple[str | None, Any, Any]]:
    """(split key or None, images, masks) for each entry of the YAML that names both folders."""
    entries: list[tuple[str | None, Any, Any]] = []
    if isinstance(config.get("images"), str) and isinstance(config.get("masks"), str):
        entries.append((None, config["images"], config["masks"]))
    for key, value in config.items():
        if isinstance(value, dict) and isinstance(value.get("images"), str) and isinstance(value.get("masks"), str):
            entries.append((str(key), value["images"], value["masks"]))
    return entries


def _yaml_layout(path: Path) -> _Layout:
    yaml_path = _yolo_yaml(path)
    if yaml_path is None:
        raise DataError(f"no dataset YAML (config.yaml, data.yaml, dataset.yaml) in {path}\n{LAYOUTS}")
    config = _load_yaml(yaml_path)
    entries = _seg_entries(config)
    if not entries:
        raise DataError(f"{yaml_path} names no images: and masks: folders (train: {{images: DIR, masks: DIR}})"
                        f"\n{LAYOUTS}")
    base = yaml_path.parent / str(config.get("path") or ".")
    folders = []
    for key, images, masks in entries:
        image_dir, mask_dir = (base / images).resolve(), (base / masks).resolve()
        for what, folder in (("images", image_dir), ("masks", mask_dir)):
            if not folder.is_dir():
                raise DataError(f"{yaml_path}: the {key or 'top-level'} {what}: folder {folder} does not exist "
                                "— folders are relative to the YAML's folder")
        split = _split_of((key,)) if key else None
        folders.append((image_dir, mask_dir, split, Path(images).parts))
    raw = config.get("classes", config.get("names"))
    names = _yolo_names(yaml_path, {"names": raw}) if raw else None
    return _Layout(yaml_path.parent, folders, names, str(yaml_path))


# --- mask files ------------------------------------------------------------------------------------


@dataclass
class _Scan:
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
        """The family as `_load` reports it at read time (grey RGB masks are RGB files)."""
        return "rgb" if self.family == "grey" else self.family


def _histogram(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if pixels.dtype in (np.uint8, np.uint16):  # counting beats sorting when the range is small
        counts = np.bincount(pixels.ravel(), minlength=256 if pixels.dtype == np.uint8 else 65536)
        nonzero = np.flatnonzero(counts)
        return nonzero.astype(np.int64), counts[nonzero].astype(np.int64)
    values, counts = np.unique(pixels, return_counts=True)
    return values.astype(np.int64), counts.astype(np.int64)


def _scan(pair: tuple[Path, Path, str | None]) -> _Scan:
    image, mask, _ = pair
    scan = _Scan()
    try:
        with Image.open(image) as img:  # the header is enough for the size
            scan.image_size = img.size
    except _PIL_ERRORS as e:
        scan.error = f"image: {type(e).__name__}: {e}"
        return scan
    try:
        family, pixels, scan.palette = _load(mask)
    except (*_PIL_ERRORS, _Unsupported) as e:
        scan.error = f"mask: {e}"
        return scan
    scan.mask_size = (pixels.shape[1], pixels.shape[0])
    scan.values, scan.counts = _histogram(pixels)
    v = scan.values
    grey = ((v >> 16) & 255 == v & 255).all() and ((v >> 8) & 255 == v & 255).all()
    scan.family = "grey" if family == "rgb" and grey else family
    return scan


def _pair_up(layout: _Layout, skipped: _Skipped) -> list[tuple[Path, Path, str | None]]:
    pairs: dict[Path, tuple[Path, Path, str | None]] = {}
    for image_dir, mask_dir, split, prefix in layout.folders:
        images = _images_under(image_dir)
        masks = {k: p for k, p in _images_under(mask_dir).items() if p.suffix.lower() in MASK_EXTENSIONS}
        for key in sorted(images.keys() | masks.keys(), key=lambda k: natural_key(f"{k[0]}/{k[1]}")):
            image, mask = images.get(key), masks.get(key)
            if image is None and mask is not None:
                skipped.add(mask.resolve(), "no image", f"no image {image_dir / key[0] / key[1]}.* for this mask",
                            "the mask is not used (add the image, or remove the mask)")
            elif image is not None and mask is None:
                skipped.add(image.resolve(), "no mask", f"no mask {mask_dir / key[0] / key[1]}.png",
                            "the image is not used (add its mask if it should be)")
            elif image is not None and mask is not None:
                where = split or _split_of((*prefix, *Path(key[0]).parts))
                pairs.setdefault(image.resolve(), (image.resolve(), mask.resolve(), where))
    return sorted(pairs.values(), key=lambda p: natural_key(p[0].as_posix()))


def _read_pairs(
    layout: _Layout, fmt: str, names: tuple[list[str], list[int]] | None, named_by: str,
    colors: tuple[list[str], list[tuple[int, int, int]], tuple[int, int, int] | None] | None,
    ignore_value: int | None, saved: _Saved | None, max_bad: float, skip_unmasked: bool, workers: int,
) -> SegmentationDataset:
    skipped = _Skipped(skip_unmasked)
    pairs = _pair_up(layout, skipped)
    if not pairs:
        raise DataError(f"no image/mask pairs in {layout.root}: {len(skipped.items)} files have no partner "
                        f"(images and masks pair by relative folder and name)\n{LAYOUTS}")
    # Decoding dominates and Pillow releases the GIL while it inflates PNGs, so threads scale here.
    if workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            scans = list(pool.map(_scan, pairs))
    else:
        scans = [_scan(p) for p in pairs]

    good: list[tuple[tuple[Path, Path, str | None], _Scan]] = []
    for pair, scan in zip(pairs, scans, strict=True):
        image, mask, _ = pair
        if scan.error is not None:
            which, _, why = scan.error.partition(": ")
            path = image if which == "image" else mask
            skipped.add(path, "unreadable", f"Pillow cannot open this {which} ({why})",
                        "replace the file, or remove the pair")
        elif scan.mask_size != scan.image_size:
            (mw, mh), (iw, ih) = scan.mask_size, scan.image_size  # type: ignore[misc]
            skipped.add(mask, "size", f"mask {mw}x{mh}, image {iw}x{ih} ({image.name})",
                        "save the mask at its image's size (nearest-neighbour resizing keeps class values)")
        else:
            good.append((pair, scan))

    scans_ok = [s for _, s in good]
    kind, classes, values, ignore, palette = _decide(scans_ok, names, named_by, colors, ignore_value, saved)
    explicit = saved is not None or colors is not None or names is not None
    vmap = _value_map(kind, values, ignore)
    samples = []
    for (image, mask, split), scan in good:
        counts, problem = _count(scan, kind, vmap, len(classes), explicit)
        if problem is not None:
            skipped.add(mask, "unknown values", problem,
                        "fix the mask, or add the missing classes (classes=, the YAML's names, classes.txt or colors=)")
            continue
        w, h = scan.image_size  # type: ignore[misc]
        samples.append(SegmentationSample(image, mask, w, h, split, counts))

    skipped.finish(len(pairs), max_bad, layout.root)
    if not samples:
        raise DataError(f"none of the {len(pairs)} image/mask pairs in {layout.root} could be used "
                        "(see the warnings above)")
    if saved is not None:
        colours = saved.colors
    elif kind == "rgb":
        colours = np.asarray(values, dtype=np.uint8).reshape(-1, 3)
    elif palette is not None:  # the masks' own palette shows classes as their authors chose
        colours = np.array([palette[v] if 0 <= v < 256 else _fixed_colors(i + 1)[i]
                            for i, v in enumerate(values)], dtype=np.uint8).reshape(-1, 3)
    else:
        colours = _fixed_colors(len(classes))
    logger.info("read %d image/mask pairs (%s masks, %d classes) from %s", len(samples), kind, len(classes),
                layout.root)
    return SegmentationDataset(samples, classes, layout.root, fmt, kind, values, ignore, colours, skipped.items)


def _decide(
    scans: list[_Scan], names: tuple[list[str], list[int]] | None, named_by: str,
    colors: tuple[list[str], list[tuple[int, int, int]], tuple[int, int, int] | None] | None,
    ignore_value: int | None, saved: _Saved | None,
) -> tuple[str, list[str], list[ClassValue], ClassValue | None, np.ndarray | None]:
    """(kind, classes, values, ignore value, first palette or None) over all readable masks."""
    palette = next((s.palette for s in scans if s.palette is not None), None)
    if saved is not None:
        return saved.kind, saved.classes, saved.values, saved.ignore, palette
    if colors is not None:
        names_, rgbs, ignore_rgb = colors
        _check_count(len(names_), "colors=")
        return "rgb", names_, list(rgbs), ignore_rgb, palette
    colourful = sum(s.family == "rgb" for s in scans)
    if colourful > len(scans) - colourful:  # most masks are colour masks: read every mask as colours
        if names is not None:
            raise DataError(f"the masks are RGB colours, and {named_by} names class values: pass colors= "
                            "(class name -> [r, g, b]) to say which colour is which class")
        # every colour of every mask (grey and palette masks too, as colours); 16-bit masks cannot be
        found = np.unique(np.concatenate([
            _to_space(s.stored, s.values, s.palette, rgb=True)  # type: ignore[arg-type]
            for s in scans if s.family != "index" or s.values.max() < 256]))  # type: ignore[union-attr]
        _check_count(len(found), "the RGB masks' distinct colours (anti-aliased or JPEG-saved masks?)")
        rgbs = [_unpack(int(p)) for p in found]
        classes = ["#{:02x}{:02x}{:02x}".format(*c) for c in rgbs]
        logger.info("inferred %d classes from the masks' colours; to name them, save this as a JSON file, "
                    "rename the classes and pass it as --colors FILE (colors= in Python):", len(rgbs))
        for i, (name, c) in enumerate(zip(classes, rgbs, strict=True)):
            logger.info('%s"%s": [%d, %d, %d]%s', "{" if i == 0 else " ", name, *c,
                        "}" if i == len(rgbs) - 1 else ",")
        return "rgb", classes, list(rgbs), None, palette

    single = [s for s in scans if s.family != "rgb"]
    kind = "palette" if single and all(s.family == "palette" for s in single) else "index"
    present = (np.unique(np.concatenate([_to_space(s.stored, s.values, s.palette, rgb=False)  # type: ignore[arg-type]
                                         for s in single])) if single else np.zeros(0, dtype=np.int64))
    present_set = {int(v) for v in present}
    if names is None and present_set and (present_set <= {0, 255} or present_set <= {0, 1}):
        top = 1 if 1 in present_set else 255  # all-zero masks read as the common 0 / 255 convention
        return "binary", ["background", "foreground"], [0, top], None, palette
    if names is not None:
        class_names, class_values = names
        where = named_by
    else:
        class_values = sorted(v for v in present_set if v != ignore_value)
        class_names = [str(v) for v in class_values]
        where = "the mask values found"
    kept = [(n, v) for n, v in zip(class_names, class_values, strict=True) if v != ignore_value]
    _check_count(len(kept), where)
    return kind, [n for n, _ in kept], [v for _, v in kept], ignore_value, palette


def _count(scan: _Scan, kind: str, vmap: _ValueMap, k: int, explicit: bool) -> tuple[np.ndarray | None, str | None]:
    """(counts per class, None), or (None, why the mask's values do not fit the class map)."""
    rgb = kind == "rgb"
    family = scan.stored
    if rgb and family == "index" and scan.values.max() > 255:  # type: ignore[union-attr]
        return None, "16-bit grey values in a dataset of RGB colour masks"
    if not rgb and scan.family == "rgb":
        return None, "RGB colours in a dataset of single-channel masks (save it as 8-bit grey or palette)"
    values = _to_space(family, scan.values, scan.palette, rgb)  # type: ignore[arg-type]
    index = vmap.lookup(values)
    unknown = index < 0
    if unknown.any() and explicit:
        shown = values[unknown][:10]
        text = ", ".join("#{:02x}{:02x}{:02x}".format(*_unpack(int(v))) if rgb else str(int(v)) for v in shown)
        more = f" and {int(unknown.sum()) - len(shown)} more" if unknown.sum() > len(shown) else ""
        return None, f"{text}{more} not in the class map ({k} classes)"
    counts = np.zeros(k, dtype=np.int64)
    use = (index >= 0) & (index != IGNORE)
    np.add.at(counts, index[use], scan.counts[use])  # type: ignore[index]
    return counts, None


# --- COCO ------------------------------------------------------------------------------------------


def _paint(sample: SegmentationSample) -> np.ndarray:
    out = np.zeros((sample.height, sample.width), dtype=np.uint8)  # class 0 is background
    for p in sample.objects or []:
        out[p.sample.mask(p.object)] = p.index
    return out


def _read_coco(path: Path, saved: _Saved | None, max_bad: float, workers: int) -> SegmentationDataset:
    det = read_detection(path, format="coco")
    ids = det.class_ids if det.class_ids is not None else list(range(len(det.classes)))
    if saved is not None:
        classes, values, colours = saved.classes, saved.values, saved.colors
    else:
        classes, values = ["background", *det.classes], [0, *ids]
        _check_count(len(classes), f"{path}'s categories with background")
        colours = _fixed_colors(len(classes))
    # class 0 is background whatever its value, so a category with id 0 cannot take its place
    index_of = {int(v): i for i, v in enumerate(values) if i > 0}  # category id -> class index
    skipped = _Skipped()

    def plan(s: DetectionSample) -> tuple[SegmentationSample | None, str | None]:
        unknown = sorted({ids[int(label)] for label in s.labels if ids[int(label)] not in index_of})
        if unknown:
            return None, f"category ids {', '.join(map(str, unknown))} not in the class map ({len(classes)} classes)"
        shapes = [s.mask(i) for i in range(len(s))]
        areas = [int(m.sum()) for m in shapes]
        order = sorted(range(len(s)), key=lambda i: -areas[i])  # largest first: small objects end on top
        painted = np.zeros((s.height, s.width), dtype=np.uint8)
        objects = []
        for i in order:
            index = IGNORE if s.iscrowd[i] else index_of[ids[int(s.labels[i])]]
            painted[shapes[i]] = index
            objects.append(_Paint(index, s, i))
        counts = np.bincount(painted.ravel(), minlength=256)[:len(classes)].astype(np.int64)
        return SegmentationSample(s.path, None, s.width, s.height, s.split, counts, objects), None

    with ThreadPoolExecutor(max_workers=workers) as pool:
        planned = list(pool.map(plan, det.samples))
    samples = []
    for s, (sample, problem) in zip(det.samples, planned, strict=True):
        if sample is None:
            skipped.add(s.path, "unknown values", problem or "", "read it with the class map of data that has "
                        "these categories, or remove their annotations")
        else:
            samples.append(sample)
    skipped.finish(len(det.samples), max_bad, det.root)
    if not samples:
        raise DataError(f"none of the {len(det.samples)} images in {path} could be used (see the warnings above)")
    logger.info("read %d images (COCO objects painted, %d classes) from %s", len(samples), len(classes), path)
    return SegmentationDataset(samples, classes, det.root, "coco", "coco", list(values), None, colours, skipped.items)
