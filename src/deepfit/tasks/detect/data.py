"""Read object-detection and instance-segmentation labels into one typed form, whatever the format.

`read_detection(source)` recognises the layout by itself and returns a `DetectionDataset`: one
`DetectionSample` per image with its boxes (pixels, x1 y1 x2 y2, float32), class indexes (0-based,
int64, into `dataset.classes`) and, when the source has them, one compact mask per object.

Formats (`format=` forces one; otherwise it is found from what `source` holds):

* ``coco``: a COCO JSON file (or a folder holding exactly one, top level or in ``annotations/``).
  ``bbox`` x, y, w, h becomes x1, y1, x2, y2; categories are mapped to 0-based indexes in the order of
  their ids (``dataset.class_ids`` keeps the ids); polygon and RLE (compressed or not) segmentations are
  kept as given; ``iscrowd`` is kept in ``sample.iscrowd``. Images with no annotation are samples with
  zero objects. ``file_name`` is looked up beside the JSON, in ``images/`` beside it or one level up,
  and in a folder named like the JSON's last ``_`` part (``instances_train2017.json`` -> ``train2017/``),
  unless ``images=`` names the folder.
* ``yolo``: ``DATA/labels/**/NAME.txt`` next to ``DATA/images/**/NAME.jpg`` (or ``../images``, or the
  folders the YAML names), one object a line: ``class cx cy w h`` or, for segmentation,
  ``class x1 y1 x2 y2 x3 y3 ...``, all normalised to 0-1. Class names come from the dataset YAML
  (``data.yaml``, ``dataset.yaml``, ``config.yaml`` or the only ``*.yaml`` in DATA, or the YAML passed
  as `source`): ``names:`` as a list, or as an ``{id: name}`` dict whose ids may have gaps (ids then map
  to indexes in id order and ``class_ids`` keeps them). Without a YAML, ``classes.txt`` (one name a line)
  is used. Images with no label file are samples with zero objects, unless the YAML says
  ``skip_if_label_file_missing: true``. A polygon's box is its extent.
* ``voc``: ``DATA/Annotations/**/*.xml`` (Pascal VOC) with images in ``DATA/JPEGImages`` (or
  ``DATA/images``, or beside the XML). VOC pixel coordinates are 1-based and inclusive, so
  x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax (as detectron2 reads them). ``difficult`` objects
  are kept with ``iscrowd`` set (evaluation ignores both). Classes are the names found, in natural
  order, unless `classes` is given (then other names are errors).
* ``masks``: instance-mask PNGs, ``DATA/images/**/NAME.*`` paired by relative path and stem with
  ``DATA/masks/**/NAME.png`` (or any folder layout semantic masks have: ``train/`` + ``trainannot/``,
  ``masks=`` for the mask folder, ``mask_name="{name}_mask"`` for ``A_mask.png`` beside ``A.jpg``); every
  non-zero value of a mask is one object (0 is background). All objects are of one class, ``object`` or
  the one name in `classes`, unless ``DATA/classes.json`` maps them: ``{"NAME": {"1": "cat", "2": "dog"}, ...}``
  (mask stem -> object value -> class name; classes are the names used, in natural order; an object the
  file does not name is an error). Masks are kept as COCO RLE, boxes are the pixels' extent (x2 = last
  column + 1). See `deepfit.data.formats.instance_masks`.
* ``via``, ``labelme``, ``cvat``: the files of the annotation tools people label with: VGG Image Annotator
  JSON (a project or an export; a folder's files in its split subfolders too), LabelMe JSON (one per
  image) and CVAT's "CVAT for images 1.1" XML. Rectangles are boxes; polygons, circles and ellipses are
  boxes with polygon masks, brush masks are RLE; points and lines are left out with a warning. Classes are
  the names found, in natural order, unless `classes` is given; a VIA region's class is its one region
  attribute, or the one `label_attribute` names. See `deepfit.data.formats.via`, `labelme` and `cvat`.

Masks (``sample.masks``: None when the source has none, else one entry per object, None for an object
with a box only) are kept as COCO gives them: a list of flat float64 polygons ``[x1, y1, x2, y2, ...]``
in pixels, or an RLE dict ``{"size": [h, w], "counts": ...}``. `rasterize` (or ``sample.mask(i)``)
turns one into an (H, W) bool array with pycocotools, the reference COCO evaluation uses.

Bad objects are dropped with one warning each (the file and line, object or annotation id): unknown
class ids, boxes with x2 < x1 or y2 < y1 or zero size, polygons with fewer than 3 points, masks whose
size is not the image's, annotations of images that are missing. Boxes reaching outside the image are
clipped to it (with a warning when they reach out by more than a pixel). More than 5% bad annotations
in all is a DataError that lists them. Like `discover`, this only reads: it never writes into DATA.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepfit.data.formats.coco import coco_file, rasterize, read_coco
from deepfit.data.formats.cvat import read_cvat
from deepfit.data.formats.instance_masks import read_instance_masks
from deepfit.data.formats.labelme import read_labelme
from deepfit.data.formats.layout import object_format
from deepfit.data.formats.objects import OBJECT_LAYOUTS, ImageObjects, ObjectLabels
from deepfit.data.formats.via import read_via
from deepfit.data.formats.voc import read_voc
from deepfit.data.formats.yolo import read_yolo
from deepfit.data.sources import natural_key
from deepfit.errors import DataError
from deepfit.log import logger

__all__ = ["FORMATS", "DetectionDataset", "DetectionSample", "rasterize", "read_detection", "summarize"]

FORMATS = ("coco", "yolo", "voc", "masks", "via", "labelme", "cvat")
NAMED_FORMATS = ("voc", "masks", "via", "labelme", "cvat")  # classes are the names found: a run keeps their order


# --- the typed form --------------------------------------------------------------------------------


@dataclass
class DetectionSample:
    """One image and its objects; every array has one row per object."""

    path: Path  # absolute
    width: int
    height: int
    boxes: np.ndarray  # (N, 4) float32, x1 y1 x2 y2 in pixels, inside the image
    labels: np.ndarray  # (N,) int64, index into DetectionDataset.classes
    masks: list[list[np.ndarray] | dict[str, Any] | None] | None = None  # see the module docstring
    iscrowd: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # (N,) COCO crowd / VOC difficult
    split: str | None = None  # "train" | "val" | "test" when the source says so

    def __post_init__(self) -> None:
        if len(self.iscrowd) != len(self.labels):
            self.iscrowd = np.zeros(len(self.labels), dtype=bool)

    def __len__(self) -> int:
        return len(self.labels)

    def mask(self, index: int) -> np.ndarray:
        """Object `index`'s mask as an (H, W) bool array; a box-only object gives its filled box."""
        m = None if self.masks is None else self.masks[index]
        if m is not None:
            return rasterize(m, self.height, self.width)
        out = np.zeros((self.height, self.width), dtype=bool)
        x1, y1, x2, y2 = self.boxes[index]
        out[int(np.floor(y1)):int(np.ceil(y2)), int(np.floor(x1)):int(np.ceil(x2))] = True
        return out


@dataclass
class DetectionDataset:
    samples: list[DetectionSample]  # naturally sorted by path
    classes: list[str]
    root: Path  # the data folder, or the folder holding the annotation file
    format: str  # one of FORMATS
    class_ids: list[int] | None = None  # the source's own id for each class index (COCO, YOLO dict names)
    read_as: str = ""  # how the labels were found and named, when the format alone does not say it (mask PNGs)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def num_objects(self) -> int:
        return sum(len(s) for s in self.samples)

    @property
    def has_masks(self) -> bool:
        return any(s.masks is not None and any(m is not None for m in s.masks) for s in self.samples)


def summarize(dataset: DetectionDataset) -> dict[str, Any]:
    """Counts for a data check: images, objects (per class), images with no object, crowd objects, format."""
    per_class = Counter()
    for s in dataset.samples:
        per_class.update(s.labels.tolist())
    return {
        "format": dataset.format,
        "root": str(dataset.root),
        "images": len(dataset.samples),
        "objects": dataset.num_objects,
        "classes": len(dataset.classes),
        "objects_per_class": {name: per_class.get(i, 0) for i, name in enumerate(dataset.classes)},
        "images_without_objects": sum(1 for s in dataset.samples if len(s) == 0),
        "crowd_objects": int(sum(int(s.iscrowd.sum()) for s in dataset.samples)),
        "has_masks": dataset.has_masks,
        "splits": dict(Counter(s.split for s in dataset.samples if s.split is not None)),
        "read_as": dataset.read_as,
    }


# --- entry point -----------------------------------------------------------------------------------


def read_detection(
    source: str | Path, *, format: str | None = None, classes: list[str] | None = None,
    images: str | Path | None = None, masks: str | Path | None = None, mask_name: str | None = None,
    label_attribute: str | None = None,
) -> DetectionDataset:
    """Read detection / instance-segmentation labels from `source` (a file or a folder; see the module doc).

    `format` forces one of FORMATS; `classes` gives the class names (and their order) for VOC, mask PNGs and
    the tools' files (NAMED_FORMATS), or replaces missing YOLO names; `images` is the image folder for COCO
    (and the tools' files) when it is elsewhere; `masks`
    (the mask folder, `source` then being the image folder) and `mask_name` (the pattern of a mask's name,
    "{name}_mask") are for mask PNGs; `label_attribute` is the VIA region attribute that names the class.
    """
    path = Path(source).expanduser().resolve()
    if not path.exists():
        raise DataError(f"detection data not found: {path} — check the path")
    mask_dir = Path(masks).expanduser().resolve() if masks is not None else None
    if mask_dir is not None and not mask_dir.is_dir():
        raise DataError(f"mask folder not found: {mask_dir} — check masks=")
    fmt = format or ("masks" if mask_dir is not None or mask_name else object_format(path))
    if fmt != "masks" and (mask_dir is not None or mask_name):
        raise DataError(f"masks= and mask_name= are for mask PNGs, not {fmt} labels")
    if fmt not in FORMATS:
        raise DataError(f"unknown detection format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if label_attribute is not None and fmt != "via":
        raise DataError(f"label_attribute is for VIA JSON, not {fmt} labels ({path})")
    image_dir = Path(images).expanduser().resolve() if images is not None else None
    if fmt == "coco":
        labels = read_coco(coco_file(path), image_dir)
    elif fmt == "yolo":
        labels = read_yolo(path, classes)
    elif fmt == "voc":
        labels = read_voc(path, classes)
    elif fmt == "via":
        labels = read_via(path, classes, label_attribute, image_dir)
    elif fmt == "labelme":
        labels = read_labelme(path, classes, image_dir)
    elif fmt == "cvat":
        labels = read_cvat(path, classes, image_dir)
    else:
        labels = read_instance_masks(path, classes, mask_dir, mask_name)
    return _assemble(labels, fmt)




def _sample(image: ImageObjects, with_masks: bool) -> DetectionSample:
    return DetectionSample(
        path=image.path, width=image.width, height=image.height,
        boxes=np.array(image.boxes, dtype=np.float32).reshape(-1, 4),
        labels=np.array(image.labels, dtype=np.int64),
        masks=list(image.masks) if with_masks else None,
        iscrowd=np.array(image.crowd, dtype=bool), split=image.split,
    )


def _assemble(labels: ObjectLabels, fmt: str) -> DetectionDataset:
    """The data set of what a reader found; a DataError when too many objects were bad, or none is left."""
    with_masks = any(m is not None for b in labels.images for m in b.masks)
    samples = sorted((_sample(b, with_masks) for b in labels.images), key=lambda s: natural_key(s.path.as_posix()))
    dataset = DetectionDataset(samples, labels.classes, labels.root, fmt, labels.class_ids, labels.read_as)
    labels.problems.finish(dataset.num_objects, labels.source)
    if dataset.num_objects == 0:
        raise DataError(f"no labelled objects found in {labels.source} (read as {fmt}, {len(samples)} images)"
                        f"\n{OBJECT_LAYOUTS}")
    logger.info("read %d objects of %d classes on %d images (%s) from %s",
                dataset.num_objects, len(labels.classes), len(samples), fmt, labels.source)
    return dataset
