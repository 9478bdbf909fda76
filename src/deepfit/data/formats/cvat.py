"""CVAT XML, as CVAT exports a task, job or project "CVAT for images 1.1": one ``annotations.xml``.

``<annotations>`` holds ``<meta>`` (the task or project and its labels) and an ``<image id name width
height [subset]>`` for each image, holding its shapes:

* ``<box label xtl ytl xbr ybr [rotation]>``: a box, no mask; turned by ``rotation`` degrees, a polygon;
* ``<polygon label points="x1,y1;x2,y2;...">``;
* ``<ellipse label cx cy rx ry [rotation]>``: a polygon;
* ``<mask label rle left top width height>``: CVAT's run lengths over the box ``width`` x ``height`` at
  (left, top), row by row, starting with a run of background; kept as COCO RLE;
* ``<polyline>``, ``<points>``, ``<cuboid>`` and ``<skeleton>`` mark no area and are left out with a
  warning; a ``<tag>`` labels the whole image and is no object.

``name`` is looked up beside the XML and in its ``images/`` folder, where CVAT's export puts the images
(`shapes.Images`). A sample's split is the image's ``subset`` (a project export's Train, Validation,
Test), else the task's, else the folder names on the path. "CVAT for video 1.1" exports (``<track>``
elements) are refused: their shapes are keyframes of tracks, not objects of images. Classes are the labels
used, in natural order, unless given.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

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
)
from deepfit.data.formats.sniff import files_below, is_cvat_xml
from deepfit.errors import DataError

NOT_AREAS = ("polyline", "points", "cuboid", "skeleton")
_SNIFFED_PER_FOLDER = 3  # XML files that are not CVAT's before a folder is passed over (Pascal VOC's Annotations/)


def cvat_files(path: Path) -> list[Path]:
    """`path` when it is a file, else the CVAT XML files in the folder and its subfolders (one level down)."""
    if path.is_file():
        return [path]
    found, misses = [], {}
    for p in files_below(path, ".xml", depth=1):
        if misses.get(p.parent, 0) >= _SNIFFED_PER_FOLDER:
            continue
        if is_cvat_xml(p):
            found.append(p)
        else:
            misses[p.parent] = misses.get(p.parent, 0) + 1
    return found


def read_cvat(path: Path, given: list[str] | None, image_dir: Path | None = None) -> ObjectLabels:
    """The objects of the CVAT XML `path` (or of the CVAT files in the folder `path`); `given` are the class
    names (and their order)."""
    files = cvat_files(path)
    if not files:
        raise DataError(f"no CVAT annotations.xml in {path} or its subfolders\n{OBJECT_LAYOUTS}")
    root = path.parent if path.is_file() else path
    problems, images, drawn = BadAnnotations(), Images(root, image_dir), []
    for f in files:
        try:
            tree = ET.parse(f).getroot()
        except (ET.ParseError, OSError) as e:
            raise DataError(f"cannot parse CVAT file {f}: {e} — export it from CVAT again, or remove it") from e
        if tree.tag != "annotations":
            raise DataError(f"{f} is not a CVAT XML export: its root is <{tree.tag}>, not <annotations>")
        if tree.find("track") is not None:
            raise DataError(f"{f} is a 'CVAT for video' export (tracks): export the task as 'CVAT for images 1.1'")
        task_subset = tree.findtext("meta/task/subset") or tree.findtext("meta/job/subset")
        not_areas = NotAreas()
        for element in tree.iter("image"):
            name = element.get("name", "")
            shapes = [s for s in element if s.tag != "tag"]
            where = f"{f} image {name or element.get('id')}"
            image = images.get(name, f, where, len(shapes), problems, element.get("subset") or task_subset)
            if image is None:
                continue
            for n, shape in enumerate(shapes, 1):
                if shape.tag in NOT_AREAS:
                    not_areas.add(shape.tag)
                    continue
                found = _shape(shape, image, f"{where} {shape.tag} {n}", problems)
                if found is not None:
                    drawn.append(found)
        not_areas.warn(f)
    classes = name_objects(drawn, given, problems)
    return ObjectLabels(list(images.found.values()), classes, root, files[0] if len(files) == 1 else root, problems,
                        read_as=files_read(FORMAT_NAMES["cvat"], files, root))


def _shape(shape: ET.Element, image: ImageObjects, where: str, problems: BadAnnotations) -> Drawn | None:
    """The object of one shape element, or None (and a warning)."""
    label = (shape.get("label") or "").strip()
    if not label:
        problems.bad(where, "shape has no label")
        return None
    w, h = image.width, image.height
    a = shape.attrib
    try:
        angle = np.deg2rad(float(a.get("rotation") or 0))
        if shape.tag == "box":
            x1, y1, x2, y2 = (float(a[k]) for k in ("xtl", "ytl", "xbr", "ybr"))
            if angle == 0:
                box = check_box(np.array([x1, y1, x2, y2]), w, h, where, problems)
                return None if box is None else Drawn(image, where, label, box)
            half = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * [(x2 - x1) / 2, (y2 - y1) / 2]
            c, s = np.cos(angle), np.sin(angle)
            corners = half @ np.array([[c, s], [-s, c]]) + [(x1 + x2) / 2, (y1 + y2) / 2]  # turned about the centre
            found = polygon([corners], w, h, where, problems)
        elif shape.tag == "polygon":
            corners = np.array([[float(v) for v in pair.split(",")] for pair in a["points"].split(";")]).reshape(-1, 2)
            found = polygon([corners], w, h, where, problems)
        elif shape.tag == "ellipse":
            cx, cy, rx, ry = (float(a[k]) for k in ("cx", "cy", "rx", "ry"))
            found = polygon([ellipse(cx, cy, rx, ry, angle)], w, h, where, problems)
        elif shape.tag == "mask":
            found = _mask(a, w, h, where, problems)
        else:
            problems.bad(where, f"<{shape.tag}> is not a shape CVAT exports for images")
            return None
    except (KeyError, ValueError) as e:
        problems.bad(where, f"<{shape.tag}> lacks a number or has one that is not ({e})")
        return None
    return None if found is None else Drawn(image, where, label, *found)


def _mask(a: dict[str, str], w: int, h: int, where: str, problems: BadAnnotations) -> tuple[np.ndarray, dict] | None:
    left, top, width, height = (int(float(a[k])) for k in ("left", "top", "width", "height"))
    runs = np.array([int(v) for v in a["rle"].split(",")], dtype=np.int64)
    if (runs < 0).any() or runs.sum() != width * height:
        problems.bad(where, f"mask runs cover {int(runs.sum())} pixels, not its box's {width}x{height}")
        return None
    crop = np.repeat(np.arange(len(runs)) % 2 == 1, runs).reshape(height, width)  # background runs first
    return bitmap(paste(crop, left, top, w, h), where, problems)
