"""COCO JSON object labels: boxes, polygon and RLE masks, crowd flags; and COCO masks turned into pixels.

``bbox`` x, y, w, h becomes x1, y1, x2, y2; categories are mapped to 0-based indexes in the order of their
ids (`ObjectLabels.class_ids` keeps the ids); polygon and RLE (compressed or not) segmentations are kept as
given; ``iscrowd`` is kept. Images with no annotation have zero objects. ``file_name`` is looked up beside
the JSON, in ``images/`` beside it or one level up, and in a folder named like the JSON's last ``_`` part
(``instances_train2017.json`` -> ``train2017/``), unless an image folder is given.
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from deepfit.data.formats.common import child_dir, image_size, split_of
from deepfit.data.formats.objects import (
    OBJECT_LAYOUTS,
    BadAnnotations,
    ImageObjects,
    ObjectLabels,
    check_box,
    check_polygons,
)
from deepfit.data.formats.sniff import json_format
from deepfit.data.sources import natural_key
from deepfit.errors import DataError


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


def coco_candidates(folder: Path) -> list[Path]:
    """The COCO files in `folder` or its ``annotations/``: JSON files whose start names a COCO key (and is not
    a VIA or LabelMe file, whose values may spell one: `json_format`)."""
    found = []
    for where in (folder, child_dir(folder, "annotations")):
        if where is None:
            continue
        found += [p for p in sorted(where.glob("*.json"), key=lambda q: natural_key(q.name)) if json_format(p) == "coco"]
    return found


def coco_file(path: Path) -> Path:
    """`path` when it is a file, else the one COCO file in the folder (a DataError for none or several)."""
    if path.is_file():
        return path
    found = coco_candidates(path)
    if not found:
        raise DataError(f"no COCO .json found in {path} or {path / 'annotations'}\n{OBJECT_LAYOUTS}")
    if len(found) > 1:
        raise DataError(f"{path} holds {len(found)} COCO files ({', '.join(p.name for p in found)}): pass one of them")
    return found[0]


def read_coco(json_path: Path, image_dir: Path | None) -> ObjectLabels:
    """The objects of a COCO file; `image_dir` is the image folder when it is not found by itself."""
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read COCO file {json_path}: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"{json_path} is not a COCO file: it has no \"images\" list\n{OBJECT_LAYOUTS}")
    categories = sorted(data.get("categories") or [], key=lambda c: c["id"])
    if not categories:
        raise DataError(f"{json_path} has no \"categories\": COCO class names are listed there")
    class_ids = [int(c["id"]) for c in categories]
    index_of = {cid: i for i, cid in enumerate(class_ids)}
    classes = [str(c.get("name", c["id"])) for c in categories]
    problems = BadAnnotations()
    split_name = json_path.stem.rsplit("_", 1)[-1]
    roots = [image_dir] if image_dir is not None else []
    for base in (json_path.parent / "images", json_path.parent, json_path.parent.parent / "images",
                 json_path.parent.parent):
        roots += [base, base / split_name]
    roots = [r for r in dict.fromkeys(roots) if r.is_dir()]

    per_image = Counter(a.get("image_id") for a in data.get("annotations") or [])
    images: dict[Any, ImageObjects] = {}
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
        w, h = (int(img["width"]), int(img["height"])) if img.get("width") and img.get("height") else image_size(path)
        images[img.get("id")] = ImageObjects(path.resolve(), w, h, split_of((split_name,)))

    for ann in data.get("annotations") or []:
        where = f"{json_path} annotation id {ann.get('id')}"
        b = images.get(ann.get("image_id"))
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
        box = check_box(np.array([x, y, x + bw, y + bh]), b.width, b.height, where, problems)
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
            mask = check_polygons(seg, where, problems)
            if mask is None:
                continue
        b.add(box, label, mask, bool(ann.get("iscrowd", 0)))
    return ObjectLabels(list(images.values()), classes, json_path.parent, json_path, problems, class_ids)
