"""VGG Image Annotator (VIA) JSON: VIA 2 project files and exported annotations, and VIA 1's
``via_region_data.json`` (as in Matterport's balloon data set).

An export maps ``"<filename><size>"`` to ``{"filename", "size", "regions": [...], "file_attributes"}``; a
project file keeps the same under ``"_via_img_metadata"``; VIA 1 gives ``regions`` as a dict keyed "0",
"1", ... Each region has ``shape_attributes``, whose ``name`` is the shape: ``polygon``
(``all_points_x``, ``all_points_y``), ``rect`` (``x``, ``y``, ``width``, ``height``: a box, no mask),
``circle`` (``cx``, ``cy``, ``r``) or ``ellipse`` (``cx``, ``cy``, ``rx``, ``ry``, ``theta`` in radians),
both read as polygons; ``point`` and ``polyline`` mark no area and are left out with a warning.

The class is a region attribute (``region_attributes``): the only one the regions fill in, or the one
`label_attribute` names (several without a choice is an error that names them); with none at all (the
balloon data set), every region is of one class, ``object``. A text or dropdown attribute's value is the
class; a checkbox attribute's (``{"cat": true}``) is its one ticked option. Classes are the names found,
in natural order, unless they are given.

The VIA files of a folder are the ``*.json`` in it and two levels below that are laid out as VIA's
(``train/via_region_data.json`` and ``val/via_region_data.json``: a sample's split comes from the folder
names). ``filename`` is looked up beside the file (`shapes.Images`). ``size`` is the file's bytes, not the
image's, so image sizes are read from the images.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from deepfit.data.formats.objects import FORMAT_NAMES, OBJECT_LAYOUTS, BadAnnotations, ObjectLabels, check_box
from deepfit.data.formats.shapes import (
    Drawn,
    Images,
    NotAreas,
    ellipse,
    files_read,
    name_objects,
    points_of,
    polygon,
    read_json,
)
from deepfit.data.formats.sniff import files_below, json_format
from deepfit.errors import DataError

ONE_CLASS = "object"  # the class of every region when the regions have no attribute


def via_files(path: Path) -> list[Path]:
    """`path` when it is a file, else the VIA files in the folder and below (two levels down, as
    ``annotations/train/``)."""
    if path.is_file():
        return [path]
    return [p for p in files_below(path, ".json", depth=2) if json_format(p) == "via"]


def read_via(path: Path, given: list[str] | None, label_attribute: str | None,
             image_dir: Path | None = None) -> ObjectLabels:
    """The objects of the VIA file `path` (or of the VIA files in the folder `path`); `given` are the class
    names (and their order), `label_attribute` the region attribute naming the class."""
    files = via_files(path)
    if not files:
        raise DataError(f"no VIA JSON in {path} or its subfolders\n{OBJECT_LAYOUTS}")
    root = path.parent if path.is_file() else path
    entries = [(f, _image_entries(f)) for f in files]
    attribute = _class_attribute(entries, label_attribute)
    problems, images, drawn = BadAnnotations(), Images(root, image_dir), []
    for f, metas in entries:
        not_areas = NotAreas()
        for meta, regions in metas:
            name = str(meta.get("filename", ""))
            image = images.get(name, f, f"{f} image {name}", len(regions), problems)
            if image is None:
                continue
            for n, region in enumerate(regions, 1):
                where = f"{f} image {name} region {n}"
                if not isinstance(region, dict):
                    problems.bad(where, "region is not a JSON object with shape_attributes")
                    continue
                # the shape first: a point or a line is left out whatever its attributes say
                shape = _region_shape(region.get("shape_attributes"), image.width, image.height, where,
                                      problems, not_areas)
                label = None if shape is None else _region_class(region.get("region_attributes") or {}, attribute,
                                                                 where, problems)
                if shape is not None and label is not None:
                    drawn.append(Drawn(image, where, label, *shape))
        not_areas.warn(f)
    classes = name_objects(drawn, given, problems)
    how = (f"the class is the region attribute {attribute!r}" if attribute is not None
           else f"the regions have no attribute: all are of one class, {ONE_CLASS!r}")
    return ObjectLabels(list(images.found.values()), classes, root, files[0] if len(files) == 1 else root, problems,
                        read_as=files_read(FORMAT_NAMES["via"], files, root, how))


def _image_entries(f: Path) -> list[tuple[dict[str, Any], list[Any]]]:
    """(image entry, its regions) of a VIA file; a DataError when it is not laid out as VIA's."""
    data = read_json(f, "VIA")
    if isinstance(data, dict) and "_via_img_metadata" in data:  # a project file
        data = data["_via_img_metadata"]
    if not isinstance(data, dict) or not all(isinstance(v, dict) and "filename" in v for v in data.values()):
        raise DataError(f"{f} is not a VIA 2 project or export: it should map each image to "
                        '{"filename": ..., "regions": [...]} — save it from VIA again (Annotation > Export '
                        "Annotations (as json), or Project > Save)")
    out = []
    for meta in data.values():
        regions = meta.get("regions") or []
        out.append((meta, list(regions.values()) if isinstance(regions, dict) else list(regions)))  # VIA 1: a dict
    return out


def _filled(value: Any) -> bool:
    """Whether an attribute value says something: text, a number, or a checkbox with an option ticked."""
    if isinstance(value, dict):
        return any(value.values())
    return value is not None and str(value).strip() != ""


def _class_attribute(entries: list[tuple[Path, list]], chosen: str | None) -> str | None:
    """The region attribute that names the classes: `chosen`, else the only one filled in; None when the
    regions have none (one class)."""
    filled: Counter[str] = Counter()
    for _, metas in entries:
        for _, regions in metas:
            for region in regions:
                attrs = region.get("region_attributes") if isinstance(region, dict) else None
                if isinstance(attrs, dict):
                    filled.update(k for k, v in attrs.items() if _filled(v))
    names = ", ".join(sorted(filled))
    files = entries[0][0] if len(entries) == 1 else f"{len(entries)} VIA files ({entries[0][0].parent})"
    if chosen is not None:
        if chosen not in filled:
            raise DataError(f"no region in {files} has the attribute {chosen!r} (label_attribute): the regions' "
                            f"attributes are {names or 'none'}")
        return chosen
    if len(filled) > 1:
        raise DataError(f"the regions in {files} have the attributes {names}: choose the one that names the class "
                        f"with --label-attribute NAME (label_attribute= in Python)")
    return next(iter(filled), None)


def _region_class(attrs: Any, attribute: str | None, where: str, problems: BadAnnotations) -> str | None:
    if attribute is None:
        return ONE_CLASS
    value = attrs.get(attribute) if isinstance(attrs, dict) else None
    if isinstance(value, dict):  # a checkbox: {option: ticked}
        ticked = [str(k) for k, v in value.items() if v]
        if len(ticked) == 1:
            return ticked[0]
        problems.bad(where, f"attribute {attribute!r} has {len(ticked)} options ticked ({', '.join(ticked)}); "
                            "one names the class")
        return None
    if not _filled(value):
        problems.bad(where, f"region has no value for the attribute {attribute!r}, which names the class")
        return None
    return str(value).strip()


def _region_shape(shape: Any, w: int, h: int, where: str, problems: BadAnnotations,
                  not_areas: NotAreas) -> tuple[np.ndarray, Any] | None:
    """(box, mask or None) of a region's shape_attributes, or None (and a warning)."""
    kind = shape.get("name") if isinstance(shape, dict) else None
    if kind in ("point", "polyline"):
        not_areas.add(kind)
        return None
    try:
        if kind == "rect":
            x, y, bw, bh = (float(shape[k]) for k in ("x", "y", "width", "height"))
            box = check_box(np.array([x, y, x + bw, y + bh]), w, h, where, problems)
            return None if box is None else (box, None)
        if kind == "polygon":
            points = points_of(shape["all_points_x"], shape["all_points_y"])
            if points is None:
                problems.bad(where, "all_points_x and all_points_y are not lists of numbers of one length")
                return None
            return polygon([points], w, h, where, problems)
        if kind == "circle":
            cx, cy, r = (float(shape[k]) for k in ("cx", "cy", "r"))
            return polygon([ellipse(cx, cy, r, r)], w, h, where, problems)
        if kind == "ellipse":
            cx, cy, rx, ry = (float(shape[k]) for k in ("cx", "cy", "rx", "ry"))
            return polygon([ellipse(cx, cy, rx, ry, float(shape.get("theta") or 0))], w, h, where, problems)
    except (KeyError, TypeError, ValueError) as e:
        problems.bad(where, f"{kind} lacks a number ({e})")
        return None
    problems.bad(where, f"shape {kind!r} is not one VIA draws (polygon, rect, circle, ellipse, point, polyline)")
    return None
