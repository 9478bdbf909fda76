"""Pascal VOC object labels: ``DATA/Annotations/**/*.xml`` with images in ``DATA/JPEGImages``.

Images may also sit in ``DATA/images`` or beside the XML. VOC pixel coordinates are 1-based and inclusive,
so x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax (as detectron2 reads them). ``difficult`` objects are
kept with the crowd flag set (evaluation ignores both). Classes are the names found, in natural order,
unless they are given (then other names are bad objects).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from deepfit.data.formats.common import child_dir, image_size, split_of
from deepfit.data.formats.objects import OBJECT_LAYOUTS, BadAnnotations, ImageObjects, ObjectLabels, check_box
from deepfit.data.sources import natural_key
from deepfit.errors import DataError


def _text(node: ET.Element | None, tag: str) -> str | None:
    child = None if node is None else node.find(tag)
    return None if child is None or child.text is None else child.text.strip()


def read_voc(root: Path, given: list[str] | None) -> ObjectLabels:
    """The objects of the VOC data set in `root`; `given` are the class names (and their order)."""
    annotations = child_dir(root, "Annotations")
    if annotations is None:
        raise DataError(f"no Annotations/ folder in {root}\n{OBJECT_LAYOUTS}")
    image_dirs = [d for d in (child_dir(root, "JPEGImages"), child_dir(root, "images"), root) if d is not None]
    problems = BadAnnotations()
    parsed: list[tuple[Path, ImageObjects, list[tuple[str, str | None, np.ndarray | None, bool]]]] = []
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
            w, h = image_size(image)
        b = ImageObjects(image.resolve(), w, h, split_of(xml.parent.relative_to(annotations).parts))
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
    images = []
    for _, b, items in parsed:
        for where, name, coords, difficult in items:
            if name not in index_of:
                problems.bad(where, f"class {name!r} is not among the classes ({', '.join(classes[:10])})")
                continue
            if coords is None or np.isnan(coords).any():
                problems.bad(where, "<bndbox> lacks a number for xmin, ymin, xmax or ymax")
                continue
            box = check_box(coords - [1, 1, 0, 0], b.width, b.height, where, problems)
            if box is not None:
                b.add(box, index_of[name], crowd=difficult)
        images.append(b)
    return ObjectLabels(images, classes, root, annotations, problems)
