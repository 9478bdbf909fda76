"""LabelMe JSON: one file per image, beside the images or in a folder of its own.

A file has ``imagePath`` (the image, relative to the file, as LabelMe saves it) and ``shapes``:
``{"label", "points": [[x, y], ...], "shape_type", "group_id"}``. Shape types read: ``polygon`` (also the
shapes of old files, which have no shape_type), ``rectangle`` (two corners, in either order: a box, no
mask), ``circle`` (the centre and a point on the circle: a polygon), ``mask`` (a base64 PNG of the box the
two points span: kept as COCO RLE); ``point``, ``points``, ``line`` and ``linestrip`` mark no area and are
left out with a warning. Polygons and circles of one label that share a ``group_id`` are one object (an
object drawn in pieces, as occlusion splits it). The embedded ``imageData`` is not decoded: the image
file is read (and its size taken from it). Classes are the labels found, in natural order, unless given.

The LabelMe files of a folder are the ``*.json`` below it that are laid out as LabelMe's (`json_format`);
a sample's split comes from folder names on the file's or the image's path (``train/``, ``val/``, ...). An
image without a file is not read: LabelMe writes none for an image nobody labelled, which is no proof that
it shows no object.
"""

from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from deepfit.data.formats.objects import (
    FORMAT_NAMES,
    OBJECT_LAYOUTS,
    BadAnnotations,
    ImageObjects,
    ObjectLabels,
    check_box,
)
from deepfit.data.formats.shapes import (
    Drawn,
    Images,
    NotAreas,
    bitmap,
    ellipse,
    files_read,
    name_objects,
    paste,
    polygon,
    read_json,
)
from deepfit.data.formats.sniff import files_below, json_format
from deepfit.errors import DataError

NOT_AREAS = ("point", "points", "line", "linestrip")


def labelme_files(path: Path) -> list[Path]:
    """`path` when it is a file, else the LabelMe files in the folder and below."""
    if path.is_file():
        return [path]
    return [p for p in files_below(path, ".json") if json_format(p) == "labelme"]


def read_labelme(path: Path, given: list[str] | None, image_dir: Path | None = None) -> ObjectLabels:
    """The objects of the LabelMe files in the folder `path` (or of the one file `path`); `given` are the class
    names (and their order)."""
    files = labelme_files(path)
    if not files:
        raise DataError(f"no LabelMe JSON in {path} or below\n{OBJECT_LAYOUTS}")
    root = path.parent if path.is_file() else path
    problems, images, drawn = BadAnnotations(), Images(root, image_dir), []
    for f in files:
        data = read_json(f, "LabelMe")
        if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
            raise DataError(f'{f} is not a LabelMe file: it has no "shapes" list — save it from LabelMe again, '
                            "or remove it")
        shapes = data["shapes"]
        name = data.get("imagePath")
        if not isinstance(name, str) or not name:
            problems.bad(str(f), "no imagePath: the file does not say which image it labels", count=max(len(shapes), 1))
            continue
        image = images.get(name, f, str(f), len(shapes), problems)
        if image is not None:
            drawn += _objects(f, shapes, image, problems)
    classes = name_objects(drawn, given, problems)
    return ObjectLabels(list(images.found.values()), classes, root, files[0] if len(files) == 1 else root, problems,
                        read_as=files_read(FORMAT_NAMES["labelme"], files, root))


def _objects(f: Path, shapes: list[Any], image: ImageObjects, problems: BadAnnotations) -> list[Drawn]:
    """The objects of one file's shapes; polygons of one label and group_id are gathered into one object."""
    w, h = image.width, image.height
    not_areas, out = NotAreas(), []
    groups: dict[tuple[str, Any], tuple[str, list[np.ndarray]]] = {}  # (label, group_id) -> (where, polygons)
    for n, shape in enumerate(shapes, 1):
        where = f"{f} shape {n}"
        if not isinstance(shape, dict):
            problems.bad(where, "shape is not a JSON object with label and points")
            continue
        kind = shape.get("shape_type") or "polygon"
        label = str(shape.get("label") or "").strip()
        if kind in NOT_AREAS:
            not_areas.add(kind)
            continue
        if not label:
            problems.bad(where, "shape has no label")
            continue
        try:
            points = np.asarray(shape.get("points"), dtype=np.float64).reshape(-1, 2)
        except (TypeError, ValueError):
            problems.bad(where, f"points {str(shape.get('points'))[:60]} are not [[x, y], ...] numbers")
            continue
        if kind in ("polygon", "circle"):
            if kind == "circle":
                if len(points) != 2:
                    problems.bad(where, f"circle has {len(points)} points; LabelMe gives the centre and a point on it")
                    continue
                radius = float(np.linalg.norm(points[1] - points[0]))
                points = ellipse(points[0, 0], points[0, 1], radius, radius)
            group = shape.get("group_id")
            key = (label, group) if group is not None else (label, ("shape", n))  # no group: an object alone
            groups.setdefault(key, (where, []))[1].append(points)
        elif kind == "rectangle":
            if len(points) != 2:
                problems.bad(where, f"rectangle has {len(points)} points; LabelMe gives two corners")
                continue
            box = check_box(np.concatenate([points.min(0), points.max(0)]), w, h, where, problems)
            if box is not None:
                out.append(Drawn(image, where, label, box))
        elif kind == "mask":
            shape_mask = _mask(shape, points, w, h, where, problems)
            if shape_mask is not None:
                out.append(Drawn(image, where, label, *shape_mask))
        else:
            problems.bad(where, f"shape_type {kind!r} is not one LabelMe draws")
    for (label, _), (where, polys) in groups.items():
        shape_poly = polygon(polys, w, h, where, problems)
        if shape_poly is not None:
            out.append(Drawn(image, where, label, *shape_poly))
    not_areas.warn(f)
    return out


def _mask(shape: dict[str, Any], points: np.ndarray, w: int, h: int, where: str,
          problems: BadAnnotations) -> tuple[np.ndarray, Any] | None:
    """A ``mask`` shape: the base64 PNG of its box's pixels, placed at the box's top left corner."""
    if len(points) < 1 or not isinstance(shape.get("mask"), str):
        problems.bad(where, "mask shape lacks its base64 PNG (mask) or its corner (points)")
        return None
    try:
        with Image.open(io.BytesIO(base64.b64decode(shape["mask"]))) as img:
            crop = np.asarray(img.convert("L")) > 0
    except (binascii.Error, OSError, ValueError) as e:
        problems.bad(where, f"mask is not a base64 PNG ({e})")
        return None
    left, top = (int(np.floor(v)) for v in points.min(0))
    return bitmap(paste(crop, left, top, w, h), where, problems)
