"""What the annotation-tool readers (`via`, `labelme`, `cvat`) share: shapes turned into boxes and masks,
images found by the name the tool stored, and class names given to the objects once all files are read.

The tools store an object as a shape in the image's pixels:

* a rectangle is a box and no mask (as a COCO annotation with a ``bbox`` only);
* a polygon's box is its extent, and its mask the polygon, its points clipped to the image, kept as a
  flat ``[x1, y1, x2, y2, ...]`` float64 array as COCO polygons are kept (`deepfit.data.formats.coco.
  rasterize` fills it); an object drawn as several polygons keeps them all;
* circles and ellipses (and CVAT's rotated boxes) become polygons of `ELLIPSE_POINTS` points;
* a bitmap (LabelMe's and CVAT's brush masks) is kept as COCO RLE, its box the pixels' extent.

Lines, polylines and points mark no area: they are counted and warned about once per file (`NotAreas`),
not counted as bad objects, which would make a data set of keypoints and boxes an error. Bad shapes (too
few points, not numbers, outside the image) are bad objects, one warning each (`BadAnnotations`).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from deepfit.data.formats.common import image_size, images_under, split_of
from deepfit.data.formats.objects import BadAnnotations, ImageObjects, check_box
from deepfit.data.sources import natural_key
from deepfit.errors import DataError
from deepfit.log import logger

ELLIPSE_POINTS = 64  # a 64-gon's area is within 0.2% of its circle's: finer than any labeller's hand
_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def read_json(path: Path, what: str) -> Any:
    """A JSON file's content; a one-line DataError naming it when it cannot be read or parsed."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read {what} file {path}: {e} — fix or remove the file and read again") from e


# --- shapes ----------------------------------------------------------------------------------------


def points_of(xs: Any, ys: Any) -> np.ndarray | None:
    """(N, 2) float64 points from x and y lists, or None when they are not lists of numbers of one length."""
    try:
        x, y = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if x.ndim != 1 or x.shape != y.shape:
        return None
    return np.stack([x, y], axis=1)


def polygon(polys: list[np.ndarray], w: int, h: int, where: str,
            problems: BadAnnotations) -> tuple[np.ndarray, list[np.ndarray]] | None:
    """(box, mask) of an object drawn as the (N, 2) point arrays `polys`, or None (and a warning)."""
    for p in polys:
        if len(p) < 3:
            problems.bad(where, f"polygon has {len(p)} point(s); a polygon needs at least 3")
            return None
        if not np.isfinite(p).all():
            problems.bad(where, "polygon has coordinates that are not finite numbers")
            return None
    every = np.concatenate(polys)
    box = check_box(np.concatenate([every.min(0), every.max(0)]), w, h, where, problems)
    if box is None:
        return None
    limit = np.array([w, h], dtype=np.float64)
    return box, [np.clip(p, 0, limit).ravel() for p in polys]


def ellipse(cx: float, cy: float, rx: float, ry: float, angle: float = 0.0) -> np.ndarray:
    """(ELLIPSE_POINTS, 2) points on the ellipse of centre (cx, cy) and radii rx, ry turned by `angle` radians
    (clockwise on screen, y pointing down, as the tools turn them)."""
    t = np.linspace(0, 2 * np.pi, ELLIPSE_POINTS, endpoint=False)
    x, y = rx * np.cos(t), ry * np.sin(t)
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)


def bitmap(binary: np.ndarray, where: str, problems: BadAnnotations) -> tuple[np.ndarray, dict[str, Any]] | None:
    """(box, COCO RLE) of an (H, W) bool mask at the image's size, or None (and a warning) when it is empty."""
    rows, cols = np.flatnonzero(binary.any(1)), np.flatnonzero(binary.any(0))
    if not len(rows):
        problems.bad(where, "mask has no pixel inside the image")
        return None
    box = np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float32)
    return box, mask_utils.encode(np.asfortranarray(binary.astype(np.uint8)))


def paste(crop: np.ndarray, left: int, top: int, w: int, h: int) -> np.ndarray:
    """An (h, w) bool mask holding `crop` with its top left corner at (left, top), cut to the image."""
    out = np.zeros((h, w), dtype=bool)
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + crop.shape[1], w), min(top + crop.shape[0], h)
    if x1 > x0 and y1 > y0:
        out[y0:y1, x0:x1] = crop[y0 - top:y1 - top, x0 - left:x1 - left]
    return out


class NotAreas:
    """Shapes that mark no area (points, lines): counted per kind, one warning per file at the end."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def add(self, kind: str) -> None:
        self.counts[kind] += 1

    def warn(self, source: Path) -> None:
        if self.counts:
            kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(self.counts.items()))
            logger.warning("%s: left out %s (shapes that mark no area; deepfit reads polygons, rectangles, circles, "
                           "ellipses and masks)", source, kinds)
        self.counts.clear()


# --- images ----------------------------------------------------------------------------------------


class Images:
    """The images a tool's files name, one `ImageObjects` each (however many files name it), found on disk.

    The tools store the name they were given: relative to the annotation file (``../images/a.jpg``), a bare
    file name, or a path on the labeller's machine (``C:\\data\\a.jpg``). It is looked up in the image folder
    given, beside the annotation file and in ``images/`` there or beside its folder, under the data folder,
    and last by file name alone anywhere under the data folder (the one nearest the annotation file).
    """

    def __init__(self, root: Path, image_dir: Path | None = None) -> None:
        self.root, self.image_dir = root, image_dir
        self.found: dict[Path, ImageObjects] = {}
        self._by_name: dict[str, list[Path]] | None = None

    def find(self, name: str, near: Path) -> Path | None:
        rel = PurePosixPath(name.replace("\\", "/"))
        bases = [d for d in (self.image_dir, near, near / "images", near.parent / "images", self.root,
                             self.root / "images") if d is not None]
        for base in dict.fromkeys(bases):
            for candidate in (base / rel, base / rel.name):
                if candidate.is_file():
                    return candidate
        if self._by_name is None:  # only built when a name was not where the tool said
            self._by_name = {}
            for path in images_under(self.root).values():
                self._by_name.setdefault(path.name, []).append(path)
        same = self._by_name.get(rel.name, [])
        return max(same, key=lambda p: len(os.path.commonpath([p.parent, near]))) if same else None

    def get(self, name: str, annotation: Path, where: str, objects: int, problems: BadAnnotations,
            subset: str | None = None) -> ImageObjects | None:
        """The image `annotation` names `name` (its `objects` count as bad when it is missing or unreadable).
        Its split: `subset` (a split the tool stored), else the folder names of the annotation file and of
        the image below the data folder (``train/``, ``val/``, ...)."""
        path = self.find(name, annotation.parent)  # a web address is found by its file name, when downloaded
        if path is None and name.startswith(("http://", "https://")):
            problems.bad(where, f"image {name} is a web address: download the images into {self.root}",
                         count=max(objects, 1))
            return None
        if path is None:
            looked = ", ".join(str(d) for d in dict.fromkeys((self.image_dir or annotation.parent, self.root)))
            problems.bad(where, f"image file {name} not found (looked in {looked} and below)", count=max(objects, 1))
            return None
        path = path.resolve()
        if path not in self.found:
            try:
                w, h = image_size(path)
            except _IMAGE_ERRORS as e:
                problems.bad(where, f"image {path} cannot be opened ({e})", count=max(objects, 1))
                return None
            parts = [subset or ""]
            for p in (annotation.parent, path.parent):
                if p.is_relative_to(self.root):
                    parts += p.relative_to(self.root).parts
            self.found[path] = ImageObjects(path, w, h, split_of(tuple(parts)))
        return self.found[path]


def files_read(name: str, files: list[Path], root: Path, how: str = "") -> str:
    """What a data check says the labels were read as: the format's name, its files (the first few, below
    `root`), and `how` the classes were named."""
    shown = ", ".join(f.relative_to(root).as_posix() if f.is_relative_to(root) else str(f) for f in files[:3])
    more = f" and {len(files) - 3} more" if len(files) > 3 else ""
    return f"{name}, {len(files)} file{'s' if len(files) > 1 else ''} ({shown}{more})" + (f"; {how}" if how else "")


# --- classes ---------------------------------------------------------------------------------------


@dataclass
class Drawn:
    """One object read from a shape, before the class names are known (they are all the files' names)."""

    image: ImageObjects
    where: str
    name: str
    box: np.ndarray
    mask: Any = None  # None for a rectangle; the tools have no crowd flag, so no object is crowd


def name_objects(drawn: list[Drawn], given: list[str] | None, problems: BadAnnotations) -> list[str]:
    """Adds the objects to their images and returns the classes: `given` (a name not among them makes a bad
    object), else the names found, in natural order."""
    classes = list(given) if given is not None else sorted({d.name for d in drawn}, key=natural_key)
    index_of = {name: i for i, name in enumerate(classes)}
    for d in drawn:
        if d.name not in index_of:
            shown = ", ".join(classes[:10]) + (", ..." if len(classes) > 10 else "")
            problems.bad(d.where, f"class {d.name!r} is not among the classes ({shown})")
            continue
        d.image.add(d.box, index_of[d.name], d.mask)
    return classes
