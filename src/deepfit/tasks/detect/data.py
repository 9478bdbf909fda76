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
  ``DATA/masks/**/NAME.png``; every non-zero value of a mask is one object (0 is background). All
  objects are of one class, ``object``, unless ``DATA/classes.json`` maps them:
  ``{"NAME": {"1": "cat", "2": "dog"}, ...}`` (mask stem -> object value -> class name; classes are the
  names used, in natural order; an object the file does not name is an error). Masks are kept as
  COCO RLE, boxes are the pixels' extent (x2 = last column + 1).

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

import json
import os
import warnings
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from deepfit.data.sources import IMAGE_EXTENSIONS, natural_key
from deepfit.errors import DataError
from deepfit.log import logger

FORMATS = ("coco", "yolo", "voc", "masks")
MAX_BAD_FRACTION = 0.05  # more bad annotations than this, over all, is an error rather than warnings
_WARN_LIMIT = 100  # individual warnings before the rest are only counted (a summary line follows)
_CLIP_TOLERANCE = 1.0  # pixels a box may reach outside the image before clipping it is worth a warning
_YAML_NAMES = ("data.yaml", "dataset.yaml", "config.yaml", "data.yml", "dataset.yml", "config.yml")
_SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}

LAYOUTS = """deepfit reads detection labels laid out as one of:
  COCO        annotations.json (or DATA/ holding one *.json), images beside it or in images/
  YOLO        DATA/data.yaml with names:, DATA/images/**/NAME.jpg and DATA/labels/**/NAME.txt
              ("class cx cy w h" or "class x1 y1 x2 y2 x3 y3 ...", normalised to 0-1)
  Pascal VOC  DATA/Annotations/NAME.xml and DATA/JPEGImages/NAME.jpg
  masks       DATA/images/NAME.jpg and DATA/masks/NAME.png (one value per object, 0 = background),
              optional DATA/classes.json"""



# --- the typed form --------------------------------------------------------------------------------


def rasterize(mask: list[np.ndarray] | dict[str, Any], height: int, width: int) -> np.ndarray:
    """One object's mask (polygons in pixels or a COCO RLE, compressed or not) as an (H, W) bool array."""
    with warnings.catch_warnings():  # pycocotools' numpy-2 DeprecationWarning about __array__(copy=)
        warnings.simplefilter("ignore", DeprecationWarning)
        if isinstance(mask, dict):
            rle = mask
            if isinstance(rle["counts"], list):  # uncompressed
                rle = mask_utils.frPyObjects(rle, *rle["size"])
            return mask_utils.decode(rle).astype(bool)
        rles = mask_utils.frPyObjects([np.asarray(p, dtype=np.float64).tolist() for p in mask], height, width)
        return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


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
    }


# --- bad input -------------------------------------------------------------------------------------


class _Problems:
    """Bad annotations: one warning each (up to a limit), and an error when there are too many."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self.count = 0  # annotations dropped (an image that is missing counts all of its annotations)

    def bad(self, where: str, why: str, count: int = 1) -> None:
        self.count += count
        self.items.append(f"{where}: {why}")
        if len(self.items) <= _WARN_LIMIT:
            logger.warning("dropped %s: %s", where, why)

    def finish(self, good: int, source: Path) -> None:
        if len(self.items) > _WARN_LIMIT:
            logger.warning("... and %d more bad annotations (%d warned above)", len(self.items) - _WARN_LIMIT,
                           _WARN_LIMIT)
        total = good + self.count
        if self.count and self.count > MAX_BAD_FRACTION * total:
            shown = "; ".join(self.items[:20]) + (f"; ... ({len(self.items) - 20} more)" if len(self.items) > 20 else "")
            raise DataError(
                f"{self.count} of {total} annotations in {source} are bad (more than "
                f"{MAX_BAD_FRACTION:.0%}): {shown} — fix the labels (or remove those files) and read again"
            )


def _check_box(box: np.ndarray, w: int, h: int, where: str, problems: _Problems) -> np.ndarray | None:
    """The box clipped to the image, or None (and a warning) when it is not a box."""
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
    if np.abs(clipped - [x1, y1, x2, y2]).max() > _CLIP_TOLERANCE:
        logger.warning("%s: box x1=%g y1=%g x2=%g y2=%g reaches outside the %dx%d image; clipped to it",
                       where, x1, y1, x2, y2, w, h)
    return clipped.astype(np.float32)


def _check_polygons(polys: Any, where: str, problems: _Problems) -> list[np.ndarray] | None:
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


def _image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        return img.size


class _Builder:
    """Collects one image's objects, then makes its sample."""

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

    def sample(self, with_masks: bool) -> DetectionSample:
        return DetectionSample(
            path=self.path, width=self.width, height=self.height,
            boxes=np.array(self.boxes, dtype=np.float32).reshape(-1, 4),
            labels=np.array(self.labels, dtype=np.int64),
            masks=list(self.masks) if with_masks else None,
            iscrowd=np.array(self.crowd, dtype=bool), split=self.split,
        )


def _finish(builders: list[_Builder], classes: list[str], root: Path, fmt: str, problems: _Problems,
            source: Path, class_ids: list[int] | None = None) -> DetectionDataset:
    with_masks = any(m is not None for b in builders for m in b.masks)
    samples = sorted((b.sample(with_masks) for b in builders), key=lambda s: natural_key(s.path.as_posix()))
    dataset = DetectionDataset(samples, classes, root, fmt, class_ids)
    problems.finish(dataset.num_objects, source)
    if dataset.num_objects == 0:
        raise DataError(f"no labelled objects found in {source} (read as {fmt}, {len(samples)} images)\n{LAYOUTS}")
    logger.info("read %d objects of %d classes on %d images (%s) from %s",
                dataset.num_objects, len(classes), len(samples), fmt, source)
    return dataset


# --- entry point -----------------------------------------------------------------------------------


def read_detection(
    source: str | Path, *, format: str | None = None, classes: list[str] | None = None,
    images: str | Path | None = None,
) -> DetectionDataset:
    """Read detection / instance-segmentation labels from `source` (a file or a folder; see the module doc).

    `format` forces one of FORMATS; `classes` gives the class names (and their order) for VOC and mask
    PNGs, or replaces missing YOLO names; `images` is the image folder for COCO when it is elsewhere.
    """
    path = Path(source).expanduser().resolve()
    if not path.exists():
        raise DataError(f"detection data not found: {path} — check the path")
    fmt = format or _detect(path)
    if fmt not in FORMATS:
        raise DataError(f"unknown detection format {fmt!r}: choose one of {', '.join(FORMATS)}")
    image_dir = Path(images).expanduser().resolve() if images is not None else None
    if fmt == "coco":
        return _read_coco(_coco_file(path), image_dir)
    if fmt == "yolo":
        return _read_yolo(path, classes)
    if fmt == "voc":
        return _read_voc(path, classes)
    return _read_masks(path, classes)


def _detect(path: Path) -> str:
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".json":
            return "coco"
        if suffix in (".yaml", ".yml"):
            return "yolo"
        raise DataError(f"{path} is neither a COCO .json nor a YOLO .yaml\n{LAYOUTS}")
    if _coco_candidates(path):
        return "coco"
    annotations = _child(path, "Annotations")
    if annotations is not None and next(annotations.rglob("*.xml"), None) is not None:
        return "voc"
    labels = _child(path, "labels")
    if labels is not None and next(labels.rglob("*.txt"), None) is not None:
        return "yolo"
    if _child(path, "masks") is not None and _child(path, "images") is not None:
        return "masks"
    raise DataError(f"no detection labels found in {path}\n{LAYOUTS}")


def _child(folder: Path, name: str) -> Path | None:
    """`folder/name`, matching the name case-insensitively."""
    exact = folder / name
    if exact.is_dir():
        return exact
    for entry in folder.iterdir():
        if entry.is_dir() and entry.name.lower() == name.lower():
            return entry
    return None


def _split_of(parts: tuple[str, ...], named: dict[str, str] | None = None) -> str | None:
    for part in parts:
        if named and part in named:
            return named[part]
        low = part.lower()
        for alias, split in _SPLIT_ALIASES.items():
            if low == alias or low.startswith(alias) and low[len(alias):].isdigit():  # train2017
                return split
    return None


def _images_under(folder: Path) -> dict[tuple[str, str], Path]:
    """(relative folder, stem) -> image, for every image below `folder`."""
    found: dict[tuple[str, str], Path] = {}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = Path(dirpath).relative_to(folder).as_posix()
        for name in sorted(filenames):
            stem, ext = os.path.splitext(name)
            if ext.lower() in IMAGE_EXTENSIONS and not name.startswith("."):
                found.setdefault((rel, stem), Path(dirpath, name))
    return found


# --- COCO ------------------------------------------------------------------------------------------


def _coco_candidates(folder: Path) -> list[Path]:
    found = []
    for where in (folder, _child(folder, "annotations")):
        if where is None:
            continue
        for p in sorted(where.glob("*.json"), key=lambda q: natural_key(q.name)):
            with open(p, "rb") as f:
                head = f.read(1 << 20)
            if b'"images"' in head or b'"annotations"' in head or b'"categories"' in head:
                found.append(p)
    return found


def _coco_file(path: Path) -> Path:
    if path.is_file():
        return path
    found = _coco_candidates(path)
    if not found:
        raise DataError(f"no COCO .json found in {path} or {path / 'annotations'}\n{LAYOUTS}")
    if len(found) > 1:
        raise DataError(f"{path} holds {len(found)} COCO files ({', '.join(p.name for p in found)}): pass one of them")
    return found[0]


def _read_coco(json_path: Path, image_dir: Path | None) -> DetectionDataset:
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read COCO file {json_path}: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"{json_path} is not a COCO file: it has no \"images\" list\n{LAYOUTS}")
    categories = sorted(data.get("categories") or [], key=lambda c: c["id"])
    if not categories:
        raise DataError(f"{json_path} has no \"categories\": COCO class names are listed there")
    class_ids = [int(c["id"]) for c in categories]
    index_of = {cid: i for i, cid in enumerate(class_ids)}
    classes = [str(c.get("name", c["id"])) for c in categories]
    problems = _Problems()
    split_name = json_path.stem.rsplit("_", 1)[-1]
    roots = [image_dir] if image_dir is not None else []
    for base in (json_path.parent / "images", json_path.parent, json_path.parent.parent / "images",
                 json_path.parent.parent):
        roots += [base, base / split_name]
    roots = [r for r in dict.fromkeys(roots) if r.is_dir()]

    per_image = Counter(a.get("image_id") for a in data.get("annotations") or [])
    builders: dict[Any, _Builder] = {}
    missing: dict[Any, str] = {}
    for img in data["images"]:
        name = str(img.get("file_name", ""))
        path = next((r / name for r in roots if (r / name).is_file()), None)
        if path is None:
            missing[img.get("id")] = name
            looked = ", ".join(str(r) for r in roots[:4]) or str(json_path.parent)
            problems.bad(f"{json_path} image id {img.get('id')}", f"image file {name} not found (looked in {looked})",
                         count=max(per_image.get(img.get("id"), 0), 1))
            continue
        w, h = (int(img["width"]), int(img["height"])) if img.get("width") and img.get("height") else _image_size(path)
        builders[img.get("id")] = _Builder(path.resolve(), w, h, _split_of((split_name,)))

    for ann in data.get("annotations") or []:
        where = f"{json_path} annotation id {ann.get('id')}"
        b = builders.get(ann.get("image_id"))
        if b is None:
            if ann.get("image_id") not in missing:
                problems.bad(where, f"image_id {ann.get('image_id')} is not among the file's images")
            continue
        label = index_of.get(ann.get("category_id"))
        if label is None:
            problems.bad(where, f"category_id {ann.get('category_id')} is not among the categories "
                                f"({class_ids[0]}..{class_ids[-1]})")
            continue
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4:
            problems.bad(where, f"bbox {bbox!r} is not [x, y, width, height]")
            continue
        x, y, bw, bh = (float(v) for v in bbox)
        box = _check_box(np.array([x, y, x + bw, y + bh]), b.width, b.height, where, problems)
        if box is None:
            continue
        seg = ann.get("segmentation")
        mask: Any = None
        if isinstance(seg, dict):
            size = seg.get("size")
            if not isinstance(size, list) or [int(v) for v in size] != [b.height, b.width]:
                problems.bad(where, f"RLE size {size} differs from the image's {b.height}x{b.width} (height, width)")
                continue
            mask = seg
        elif seg:
            mask = _check_polygons(seg, where, problems)
            if mask is None:
                continue
        b.add(box, label, mask, bool(ann.get("iscrowd", 0)))
    return _finish(list(builders.values()), classes, json_path.parent, "coco", problems, json_path, class_ids)


# --- YOLO ------------------------------------------------------------------------------------------


def _yolo_yaml(path: Path) -> Path | None:
    if path.is_file():
        return path
    for name in _YAML_NAMES:
        if (path / name).is_file():
            return path / name
    found = sorted(path.glob("*.yaml")) + sorted(path.glob("*.yml"))
    return found[0] if len(found) == 1 else None


def _yolo_names(yaml_path: Path, config: dict) -> tuple[list[str], list[int]]:
    names = config.get("names")
    if isinstance(names, list) and names:
        return [str(n) for n in names], list(range(len(names)))
    if isinstance(names, dict) and names:
        try:
            ids = sorted(int(k) for k in names)
        except (TypeError, ValueError) as e:
            raise DataError(f"{yaml_path}: names: keys must be integer class ids ({e})") from e
        by_id = {int(k): str(v) for k, v in names.items()}
        return [by_id[i] for i in ids], ids
    raise DataError(
        f"{yaml_path} has no class names: add `names:` as a list (names: [cat, dog]) or as a dict "
        "of class id to name (names: {0: cat, 1: dog})"
    )


def _read_yolo(path: Path, given: list[str] | None) -> DetectionDataset:
    root = path.parent if path.is_file() else path
    yaml_path = _yolo_yaml(path)
    config: dict = {}
    if yaml_path is not None:
        import yaml

        try:
            config = yaml.safe_load(yaml_path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as e:
            raise DataError(f"cannot read dataset YAML {yaml_path}: {e}") from e
        if not isinstance(config, dict):
            raise DataError(f"{yaml_path} is not a YOLO dataset YAML (a mapping with names:)")
    if given is not None:
        classes, class_ids = list(given), list(range(len(given)))
    elif yaml_path is not None:
        classes, class_ids = _yolo_names(yaml_path, config)
    elif (root / "classes.txt").is_file() or (root / "labels" / "classes.txt").is_file():
        txt = root / "classes.txt" if (root / "classes.txt").is_file() else root / "labels" / "classes.txt"
        classes = [line.strip() for line in txt.read_text(encoding="utf-8").splitlines() if line.strip()]
        class_ids = list(range(len(classes)))
    else:
        raise DataError(f"no class names for the YOLO labels in {root}: add a data.yaml with names: "
                        f"(or classes.txt, one name a line)\n{LAYOUTS}")
    index_of = {cid: i for i, cid in enumerate(class_ids)}

    labels_dir = _child(root, "labels")
    if labels_dir is None:
        raise DataError(f"no labels/ folder in {root}\n{LAYOUTS}")
    base = (root / str(config.get("path", "."))) if isinstance(config.get("path", "."), str) else root
    split_dirs: dict[str, str] = {}  # image folder name -> split, from the YAML's train/val/test
    for key in ("train", "val", "test"):
        value = config.get(key)
        if isinstance(value, str):
            split_dirs[Path(value).name] = key
    image_root = next((d for d in (base / "images", root / "images", root.parent / "images") if d.is_dir()), None)
    if image_root is None:
        raise DataError(f"no images/ folder for the labels in {labels_dir} (looked in {base}, {root} and "
                        f"{root.parent})\n{LAYOUTS}")
    image_index = _images_under(image_root)
    problems = _Problems()
    builders: list[_Builder] = []
    labelled: set[tuple[str, str]] = set()
    for txt in sorted(labels_dir.rglob("*.txt"), key=lambda p: natural_key(p.as_posix())):
        if txt.name == "classes.txt":
            continue
        rel = txt.parent.relative_to(labels_dir)
        key = (rel.as_posix(), txt.stem)
        lines = [(n, line.split()) for n, line in enumerate(txt.read_text(encoding="utf-8").splitlines(), 1)]
        lines = [(n, tokens) for n, tokens in lines if tokens]
        image = image_index.get(key)
        if image is None:
            if lines:
                problems.bad(str(txt), f"no image {image_root / rel / txt.stem}.* for these {len(lines)} labels",
                             count=len(lines))
            continue
        labelled.add(key)
        w, h = _image_size(image)
        b = _Builder(image.resolve(), w, h, _split_of(rel.parts, split_dirs))
        for n, tokens in lines:
            _yolo_line(b, tokens, f"{txt}:{n}", index_of, problems)
        builders.append(b)
    if not config.get("skip_if_label_file_missing", False):
        for key, image in image_index.items():
            if key not in labelled:
                w, h = _image_size(image)
                builders.append(_Builder(image.resolve(), w, h, _split_of(Path(key[0]).parts, split_dirs)))
    return _finish(builders, classes, root, "yolo", problems, yaml_path or labels_dir, class_ids)


def _yolo_line(b: _Builder, tokens: list[str], where: str, index_of: dict[int, int], problems: _Problems) -> None:
    try:
        raw_class = float(tokens[0])
        values = np.array([float(t) for t in tokens[1:]], dtype=np.float64)
    except ValueError:
        problems.bad(where, f"not numbers: {' '.join(tokens)[:80]}")
        return
    label = index_of.get(int(raw_class)) if raw_class.is_integer() else None
    if label is None:
        problems.bad(where, f"class id {tokens[0]} is not in the class names ({len(index_of)} classes, ids "
                            f"{min(index_of)}..{max(index_of)})")
        return
    scale = np.array([b.width, b.height], dtype=np.float64)
    mask = None
    if len(values) == 4:
        cx, cy, bw, bh = values
        box = np.array([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2]) * np.tile(scale, 2)
    elif len(values) % 2:
        problems.bad(where, f"{len(values)} coordinates: expected 4 (cx cy w h) or an even number (a polygon)")
        return
    elif len(values) < 6:
        problems.bad(where, f"polygon has {len(values) // 2} point(s); a polygon needs at least 3")
        return
    else:
        points = values.reshape(-1, 2) * scale
        box = np.concatenate([points.min(0), points.max(0)])
        points = np.clip(points, 0, scale)
        mask = [points.ravel()]
    box = _check_box(box, b.width, b.height, where, problems)
    if box is not None:
        b.add(box, label, mask)


# --- Pascal VOC ------------------------------------------------------------------------------------


def _text(node: ET.Element | None, tag: str) -> str | None:
    child = None if node is None else node.find(tag)
    return None if child is None or child.text is None else child.text.strip()


def _read_voc(root: Path, given: list[str] | None) -> DetectionDataset:
    annotations = _child(root, "Annotations")
    if annotations is None:
        raise DataError(f"no Annotations/ folder in {root}\n{LAYOUTS}")
    image_dirs = [d for d in (_child(root, "JPEGImages"), _child(root, "images"), root) if d is not None]
    problems = _Problems()
    parsed: list[tuple[Path, _Builder, list[tuple[str, str | None, np.ndarray | None, bool]]]] = []
    for xml in sorted(annotations.rglob("*.xml"), key=lambda p: natural_key(p.as_posix())):
        try:
            tree = ET.parse(xml).getroot()
        except ET.ParseError as e:
            raise DataError(f"cannot parse {xml}: {e}") from e
        filename = _text(tree, "filename")
        candidates = [d / filename for d in image_dirs + [xml.parent]] if filename else []
        candidates += [d / (xml.stem + ext) for d in image_dirs + [xml.parent] for ext in (".jpg", ".jpeg", ".png")]
        image = next((c for c in candidates if c.is_file()), None)
        objects = tree.findall("object")
        if image is None:
            problems.bad(str(xml), f"image {filename or xml.stem + '.jpg'} not found in "
                                   f"{', '.join(str(d) for d in image_dirs)}", count=max(len(objects), 1))
            continue
        size = tree.find("size")
        try:
            w, h = int(float(_text(size, "width") or 0)), int(float(_text(size, "height") or 0))
        except ValueError:
            w = h = 0
        if w <= 0 or h <= 0:
            w, h = _image_size(image)
        b = _Builder(image.resolve(), w, h, _split_of(xml.parent.relative_to(annotations).parts))
        items = []
        for n, obj in enumerate(objects, 1):
            where = f"{xml} object {n}"
            name = _text(obj, "name")
            bnd = obj.find("bndbox")
            try:
                coords = np.array([float(_text(bnd, t) or "nan") for t in ("xmin", "ymin", "xmax", "ymax")])
            except ValueError:
                coords = None
            items.append((where, name, coords, (_text(obj, "difficult") or "0") == "1"))
        parsed.append((xml, b, items))
    if given is not None:
        classes = list(given)
    else:
        classes = sorted({name for _, _, items in parsed for _, name, _, _ in items if name},
                         key=natural_key)
    index_of = {name: i for i, name in enumerate(classes)}
    builders = []
    for _, b, items in parsed:
        for where, name, coords, difficult in items:
            if name not in index_of:
                problems.bad(where, f"class {name!r} is not among the classes ({', '.join(classes[:10])})")
                continue
            if coords is None or np.isnan(coords).any():
                problems.bad(where, "<bndbox> lacks a number for xmin, ymin, xmax or ymax")
                continue
            box = _check_box(coords - [1, 1, 0, 0], b.width, b.height, where, problems)
            if box is not None:
                b.add(box, index_of[name], crowd=difficult)
        builders.append(b)
    return _finish(builders, classes, root, "voc", problems, annotations)


# --- instance-mask PNGs ----------------------------------------------------------------------------


def _read_masks(root: Path, given: list[str] | None) -> DetectionDataset:
    masks_dir, images_dir = _child(root, "masks"), _child(root, "images")
    if masks_dir is None or images_dir is None:
        raise DataError(f"instance masks need {root}/images/ and {root}/masks/\n{LAYOUTS}")
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
    image_index = _images_under(images_dir)
    mask_index = _images_under(masks_dir)
    problems = _Problems()
    builders = []
    for key, mask_path in sorted(mask_index.items(), key=lambda kv: natural_key(kv[1].as_posix())):
        with Image.open(mask_path) as img:
            values = np.asarray(img if img.mode in ("L", "P", "I", "I;16", "1") else img.convert("L"))
        ids = [int(v) for v in np.unique(values) if v != 0]
        image = image_index.get(key)
        if image is None:
            problems.bad(str(mask_path), f"no image {images_dir / key[0] / key[1]}.* for its {len(ids)} objects",
                         count=max(len(ids), 1))
            continue
        w, h = _image_size(image)
        if values.shape != (h, w):
            problems.bad(str(mask_path), f"mask is {values.shape[1]}x{values.shape[0]} but image {image.name} "
                                         f"is {w}x{h}", count=max(len(ids), 1))
            continue
        b = _Builder(image.resolve(), w, h, _split_of(Path(key[0]).parts))
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
        builders.append(b)
    for key, image in image_index.items():
        if key not in mask_index:
            w, h = _image_size(image)
            builders.append(_Builder(image.resolve(), w, h, _split_of(Path(key[0]).parts)))
    return _finish(builders, classes, root, "masks", problems, masks_dir)
