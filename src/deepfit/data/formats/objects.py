"""Object labels as a reader finds them, whatever the format: per image, boxes, class indexes and masks.

Every object reader (`coco`, `yolo`, `voc`, `masks`, `via`, `labelme`, `cvat`) gives `ObjectLabels`: one
`ImageObjects` per image with its objects, the class names, and `BadAnnotations`, the objects it dropped. Bad objects are dropped
with one warning each (`check_box`, `check_polygons`); boxes reaching outside the image are clipped to it
(with a warning when they reach out by more than a pixel). The detection task turns all this into its data
set, and decides whether the dropped objects are too many (`BadAnnotations.finish`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepfit.data.formats.common import WARN_LIMIT, check_bad_share, warn_rest
from deepfit.log import logger

MAX_BAD_FRACTION = 0.05  # more bad annotations than this, over all, is an error rather than warnings
CLIP_TOLERANCE = 1.0  # pixels a box may reach outside the image before clipping it is worth a warning

OBJECT_LAYOUTS = """deepfit reads detection labels laid out as one of:
  COCO        annotations.json (or DATA/ holding one *.json), images beside it or in images/
  YOLO        DATA/data.yaml with names:, DATA/images/**/NAME.jpg and DATA/labels/**/NAME.txt
              ("class cx cy w h" or "class x1 y1 x2 y2 x3 y3 ...", normalised to 0-1)
  Pascal VOC  DATA/Annotations/NAME.xml and DATA/JPEGImages/NAME.jpg
  masks       DATA/images/NAME.jpg and DATA/masks/NAME.png (one value per object, 0 = background),
              optional DATA/classes.json; the other folder layouts of semantic masks too (train/ +
              trainannot/, masks=DIR, mask_name="{name}_mask" for NAME_mask.png)
  VIA         VGG Image Annotator JSON (project or export) in DATA/ or DATA/train/..., images beside
              it; the class is a region attribute (--label-attribute when the regions have several)
  LabelMe     DATA/**/NAME.json, one per image, beside the images or in a folder of their own
  CVAT        DATA/annotations.xml ("CVAT for images 1.1" export), images in DATA/images/"""

# What `deepfit data check` calls each format (the keys are the formats `object_format` finds).
FORMAT_NAMES = {
    "coco": "COCO JSON", "yolo": "YOLO txt", "voc": "Pascal VOC XML", "masks": "instance-mask PNGs",
    "via": "VGG Image Annotator (VIA) JSON", "labelme": "LabelMe JSON", "cvat": "CVAT for images XML",
}


class BadAnnotations:
    """Bad annotations: one warning each (up to a limit), and an error when there are too many."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self.count = 0  # annotations dropped (an image that is missing counts all of its annotations)

    def bad(self, where: str, why: str, count: int = 1) -> None:
        self.count += count
        self.items.append(f"{where}: {why}")
        if len(self.items) <= WARN_LIMIT:
            logger.warning("dropped %s: %s", where, why)

    def finish(self, good: int, source: Path) -> None:
        """The summary warning, and a DataError when more than MAX_BAD_FRACTION of all annotations are bad."""
        warn_rest(len(self.items), "bad annotations")
        check_bad_share(self.count, good + self.count, MAX_BAD_FRACTION, what="annotations", where=source,
                        bad=self.items, fix="fix the labels (or remove those files) and read again")


def check_box(box: np.ndarray, w: int, h: int, where: str, problems: BadAnnotations) -> np.ndarray | None:
    """The box (x1 y1 x2 y2, pixels) clipped to the image, or None (and a warning) when it is not a box."""
    x1, y1, x2, y2 = (float(v) for v in box)
    if not np.isfinite(box).all():
        problems.bad(where, f"box {x1:g} {y1:g} {x2:g} {y2:g} is not finite")
        return None
    if x2 < x1 or y2 < y1:
        which = "x2 < x1" if x2 < x1 else "y2 < y1"
        problems.bad(where, f"box x1={x1:g} y1={y1:g} x2={x2:g} y2={y2:g} has {which}")
        return None
    if x2 == x1 or y2 == y1:
        problems.bad(where, f"box x1={x1:g} y1={y1:g} x2={x2:g} y2={y2:g} has zero size")
        return None
    clipped = np.clip(np.array([x1, y1, x2, y2]), 0, [w, h, w, h])
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        problems.bad(where, f"box x1={x1:g} y1={y1:g} x2={x2:g} y2={y2:g} lies outside the {w}x{h} image")
        return None
    if np.abs(clipped - [x1, y1, x2, y2]).max() > CLIP_TOLERANCE:
        logger.warning("%s: box x1=%g y1=%g x2=%g y2=%g reaches outside the %dx%d image; clipped to it",
                       where, x1, y1, x2, y2, w, h)
    return clipped.astype(np.float32)


def check_polygons(polys: Any, where: str, problems: BadAnnotations) -> list[np.ndarray] | None:
    """A COCO polygon segmentation as flat float64 arrays, or None (and a warning) when one is no polygon."""
    if not isinstance(polys, list) or not polys:
        problems.bad(where, "segmentation is neither a list of polygons nor an RLE")
        return None
    out = []
    for p in polys:
        arr = np.asarray(p, dtype=np.float64).ravel() if isinstance(p, list) else np.zeros(0)
        if len(arr) < 6 or len(arr) % 2:
            problems.bad(where, f"polygon has {len(arr) // 2} point(s); a polygon needs at least 3")
            return None
        out.append(arr)
    return out


class ImageObjects:
    """One image and the objects read for it so far: a box, a class index, a mask or None and a crowd flag each."""

    def __init__(self, path: Path, width: int, height: int, split: str | None = None) -> None:
        self.path, self.width, self.height, self.split = path, width, height, split
        self.boxes: list[np.ndarray] = []
        self.labels: list[int] = []
        self.masks: list[Any] = []
        self.crowd: list[bool] = []

    def add(self, box: np.ndarray, label: int, mask: Any = None, crowd: bool = False) -> None:
        self.boxes.append(box)
        self.labels.append(label)
        self.masks.append(mask)
        self.crowd.append(crowd)


@dataclass
class ObjectLabels:
    """What an object reader found: the images with their objects, the classes, and what it dropped."""

    images: list[ImageObjects]  # in the order read; the data set sorts them
    classes: list[str]
    root: Path  # the data folder, or the folder holding the annotation file
    source: Path  # what messages name: the annotation file or the labels folder
    problems: BadAnnotations
    class_ids: list[int] | None = None  # the source's own id for each class index (COCO, YOLO dict names)
    read_as: str = ""  # how the labels were found and named, when the format alone does not say it (a data check)
