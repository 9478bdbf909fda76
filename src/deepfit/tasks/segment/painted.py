"""Semantic masks painted from object labels: COCO JSON and the annotation tools' files (VIA, LabelMe, CVAT).

The objects are read as detection reads them (`deepfit.tasks.detect.data.read_detection`), and the classes
are ``background`` and the object classes. Each image's objects are painted largest first, so that smaller
ones stay visible on top; crowd objects are painted IGNORE_INDEX; a box-only object (a rectangle, a COCO
``bbox`` without a segmentation) paints its box; every pixel no object covers is background. Nothing is
written: `paint` paints an image again whenever its mask is read, from the `Paint`s kept, so memory holds
polygons, not pixels.

Mask values (``values``, what a saved class map keeps): COCO's are ``[0, *category ids]``, so that a run's
class map matches categories by id; the tools name classes by name only, so their values are the class
indexes ``[0, 1, ..., K]`` and a saved class map matches them by name.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deepfit.data.formats.mask_classes import PAINTED_KINDS, ClassMap, check_class_count, fixed_colors
from deepfit.data.formats.mask_folders import SkippedFiles
from deepfit.data.formats.masks import IGNORE_INDEX
from deepfit.data.formats.objects import FORMAT_NAMES
from deepfit.errors import DataError
from deepfit.log import logger
from deepfit.tasks.detect.data import DetectionSample, read_detection

OBJECT_FORMATS = PAINTED_KINDS  # the object formats whose objects paint semantic masks (the data set's kind too)


@dataclass(frozen=True, eq=False)
class Paint:
    """One object to paint: class index (IGNORE_INDEX for crowd), and which object of which sample."""

    index: int
    sample: DetectionSample
    object: int


def paint(objects: list[Paint], height: int, width: int) -> np.ndarray:
    """The (H, W) uint8 class indexes of one image: its objects painted in their order on background."""
    out = np.zeros((height, width), dtype=np.uint8)  # class 0 is background
    for p in objects:
        out[p.sample.mask(p.object)] = p.index
    return out


@dataclass
class PaintedImage:
    """One image whose objects paint its mask: the detection sample, its pixels per class, its paint order."""

    sample: DetectionSample
    counts: np.ndarray  # (K,) int64 pixels of each class (crowd pixels not counted)
    objects: list[Paint]


@dataclass
class PaintedObjects:
    """What `read_objects` found: the images to paint and the class map they are painted with."""

    images: list[PaintedImage]
    classes: list[str]  # "background" first
    values: list[int]  # per class, its value (a COCO category id, or the class index)
    colors: np.ndarray  # (K, 3) uint8
    root: Path
    problems: list[tuple[Path, str]]  # skipped images, "tag: detail"
    read_as: str


def read_objects(path: Path, fmt: str, saved: ClassMap | None, max_bad: float, workers: int,
                 label_attribute: str | None = None) -> PaintedObjects:
    """The objects of `path` (in format `fmt`, one of OBJECT_FORMATS) planned as class masks; `saved` is a run's
    class map, which names the classes instead of the objects found; `max_bad` the share of images that may
    hold classes the class map does not have."""
    if fmt not in OBJECT_FORMATS:
        raise DataError(f"{fmt} labels carry no objects to paint: choose one of {', '.join(OBJECT_FORMATS)}")
    det = read_detection(path, format=fmt, label_attribute=label_attribute)
    by_id = det.class_ids is not None  # COCO: categories keep their ids; the tools' classes are names only
    keys: list = det.class_ids if by_id else det.classes  # the source's own key of each class index
    if saved is not None:
        classes, values, colours = saved.classes, saved.values, saved.colors
    else:
        classes = ["background", *det.classes]
        values = [0, *keys] if by_id else list(range(len(classes)))
        check_class_count(len(classes), f"{path}'s classes with background")
        colours = fixed_colors(len(classes))
    # class 0 is background whatever its value or name, so an object class cannot take its place
    index_of = ({int(v): i for i, v in enumerate(values) if i > 0} if by_id  # the source's key -> class index
                else {name: i for i, name in enumerate(classes) if i > 0})
    what = "category ids" if by_id else "classes"

    def plan(s: DetectionSample) -> PaintedImage | str:
        unknown = sorted({keys[int(label)] for label in s.labels if keys[int(label)] not in index_of})
        if unknown:
            return f"{what} {', '.join(map(str, unknown))} not in the class map ({len(classes)} classes)"
        shapes = [s.mask(i) for i in range(len(s))]
        areas = [int(m.sum()) for m in shapes]
        order = sorted(range(len(s)), key=lambda i: -areas[i])  # largest first: small objects end on top
        painted = np.zeros((s.height, s.width), dtype=np.uint8)
        objects = []
        for i in order:
            index = IGNORE_INDEX if s.iscrowd[i] else index_of[keys[int(s.labels[i])]]
            painted[shapes[i]] = index
            objects.append(Paint(index, s, i))
        counts = np.bincount(painted.ravel(), minlength=256)[:len(classes)].astype(np.int64)
        return PaintedImage(s, counts, objects)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        planned = list(pool.map(plan, det.samples))
    skipped = SkippedFiles()
    images = []
    for s, found in zip(det.samples, planned, strict=True):
        if isinstance(found, str):
            skipped.add(s.path, "unknown values", found, f"read it with the class map of data that has these {what}, "
                        "or remove their annotations")
        else:
            images.append(found)
    skipped.finish(len(det.samples), max_bad, det.root)
    if not images:
        raise DataError(f"none of the {len(det.samples)} images in {path} could be used (see the warnings above)")
    read_as = (det.read_as or f"{FORMAT_NAMES[fmt]}, {path}") + "; objects painted largest first, crowd ignored"
    logger.info("read %d images (%s objects painted, %d classes) from %s", len(images), fmt, len(classes), path)
    return PaintedObjects(images, list(classes), list(values), colours, det.root, skipped.items, read_as)
