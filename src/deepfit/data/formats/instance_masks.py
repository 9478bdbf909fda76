"""Instance-mask PNGs: every non-zero value of a mask is one object (0 is background). An object's mask is kept as
COCO RLE and its box is its pixels' extent (x2 = last column + 1).

Images and masks are found and paired by the code that pairs semantic masks (`mask_folders`), so both read the
same layouts: ``DATA/images/**/NAME.*`` with ``DATA/masks/**/NAME.png`` by relative folder and stem (or the other
image and mask folder names, in split folders or not), a split folder with its masks beside it (``train/`` +
``trainannot/``), a mask folder given apart (`masks`), masks named as their image with more (`mask_name`,
``"{name}_mask"``). An image without a mask is an image with no objects; a mask without an image, or of another
size than its image, is bad (all its objects).

Classes: ``classes.json`` in the layout's root (DATA, or the folder holding the image and mask folders) maps each
mask's objects, ``{"NAME": {"1": "cat", "2": "dog"}, ...}`` (mask stem -> object value -> class name); the classes
are the names used, in natural order, or `given` (in its order; a name not in it makes a bad object); an object the
file does not name is bad. Without the file nothing says what an object is, so all objects are of one class:
`given`'s one name, or ``object``. Several given names without the file are an error.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from deepfit.data.formats.common import image_size
from deepfit.data.formats.mask_folders import (
    INSTANCE_CLASSES,
    folder_pairs,
    folders_layout,
    mask_name_hint,
    match_files,
)
from deepfit.data.formats.objects import OBJECT_LAYOUTS, BadAnnotations, ImageObjects, ObjectLabels
from deepfit.data.sources import natural_key
from deepfit.errors import DataError

DEFAULT_CLASS = "object"  # the one class of objects that nothing names


def read_instance_masks(path: Path, given: list[str] | None, masks: Path | None = None,
                        mask_name: str | None = None) -> ObjectLabels:
    """The objects of the instance-mask PNGs of `path` (the image folder when `masks` names the mask folder); `given`
    are the class names (and their order), `mask_name` the pattern of a mask's name ("{name}_mask")."""
    if masks is None and (not path.is_dir() or not folder_pairs(path)):
        raise DataError(f"no image and mask folders in {path}\n{OBJECT_LAYOUTS}")
    layout = folders_layout(path, masks, mask_name)
    mapping_file = layout.root / INSTANCE_CLASSES
    mapping = _read_mapping(mapping_file) if mapping_file.is_file() else None
    classes, named = _classes(given, mapping, mapping_file)
    index_of = {name: i for i, name in enumerate(classes)}
    matches = match_files(layout)
    if not any(m.image is not None and m.mask is not None for m in matches):
        raise DataError(f"no mask in {layout.root} pairs with an image (images and masks pair by relative folder and "
                        f"name){mask_name_hint(matches)}\n{OBJECT_LAYOUTS}")
    problems = BadAnnotations()
    images = []
    for m in matches:
        if m.mask is None:  # an image with no objects
            images.append(ImageObjects(m.image, *image_size(m.image), m.split))  # type: ignore[arg-type]
            continue
        with Image.open(m.mask) as img:
            values = np.asarray(img if img.mode in ("L", "P", "I", "I;16", "1") else img.convert("L"))
        ids = [int(v) for v in np.unique(values) if v != 0]
        if m.image is None:
            problems.bad(str(m.mask), f"no image {m.wanted}.* for its {len(ids)} objects", count=max(len(ids), 1))
            continue
        w, h = image_size(m.image)
        if values.shape != (h, w):
            problems.bad(str(m.mask), f"mask is {values.shape[1]}x{values.shape[0]} but image {m.image.name} "
                                      f"is {w}x{h}", count=max(len(ids), 1))
            continue
        sample = ImageObjects(m.image, w, h, m.split)
        per = mapping.get(m.mask.stem, {}) if mapping is not None else None
        for obj in ids:
            name = classes[0] if per is None else per.get(str(obj))
            if name not in index_of:
                problems.bad(f"{m.mask} object {obj}", f"class {name!r} is not among the classes" if name is not None
                             else f"{mapping_file.name} names no class for it")
                continue
            binary = values == obj
            rows, cols = np.flatnonzero(binary.any(1)), np.flatnonzero(binary.any(0))
            box = np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float32)
            sample.add(box, index_of[name], mask_utils.encode(np.asfortranarray(binary.astype(np.uint8))))
        images.append(sample)
    source = layout.folders[0][1] if len(layout.folders) == 1 else layout.root
    return ObjectLabels(images, classes, layout.root, source, problems, read_as=f"{layout.describe()}; {named}")


def _read_mapping(mapping_file: Path) -> dict[str, dict[str, str]]:
    try:
        mapping = json.loads(mapping_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read {mapping_file}: {e}") from e
    if not isinstance(mapping, dict) or not all(isinstance(v, dict) for v in mapping.values()):
        raise DataError(f'{mapping_file} must map mask names to {{object value: class}}: {{"img1": {{"1": "cat"}}}}')
    return mapping


def _classes(given: list[str] | None, mapping: dict[str, dict[str, str]] | None, mapping_file: Path) -> tuple[list[str], str]:
    """(the classes, how they were named). Without a mapping a mask holds object ids and nothing else, so its
    objects can only be of one class: a single given name names it, several cannot be told apart."""
    if mapping is not None:
        if given:
            return list(given), f"classes from {mapping_file}, in the given order"
        return sorted({str(c) for per in mapping.values() for c in per.values()}, key=natural_key), f"classes from {mapping_file}"
    if given and len(given) > 1:
        raise DataError(
            f"{len(given)} class names given ({', '.join(given[:5])}{', ...' if len(given) > 5 else ''}) but nothing says "
            f"which object is of which: each mask value is one object. Write {mapping_file} to map each mask's object "
            'values to class names ({"NAME": {"1": "cat", "2": "dog"}}, NAME the mask\'s file name without extension), '
            "or give one class name for all objects"
        )
    if given:
        return [given[0]], f"one class for every object, {given[0]!r}, as given (no {INSTANCE_CLASSES})"
    return [DEFAULT_CLASS], (f"one class for every object, {DEFAULT_CLASS!r}: no {INSTANCE_CLASSES} maps objects to "
                             "classes (--classes NAME names the one class)")


def object_id_like(values: list[set[int]]) -> bool:
    """Whether masks read as semantic (each value a class) look like instance masks (each value an object): every
    mask holds the values 1..n besides 0, without a gap, n is not the same in every mask, and some mask has 3 or more.

    It is a hint for a data check, not a rule: semantic masks whose classes happen to be numbered so match it too.
    Binary masks (n is 0 or 1) never do."""
    counts = []
    for present in values:
        ids = sorted(v for v in present if v != 0)
        if ids != list(range(1, len(ids) + 1)):
            return False
        counts.append(len(ids))
    return len(set(counts)) > 1 and max(counts, default=0) >= 3
