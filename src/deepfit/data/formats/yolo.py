"""YOLO object labels: ``DATA/labels/**/NAME.txt`` beside ``DATA/images/**/NAME.jpg``, named by a YAML.

One object a line: ``class cx cy w h`` or, for segmentation, ``class x1 y1 x2 y2 x3 y3 ...``, all
normalised to 0-1 (a polygon's box is its extent). Images are in ``images/`` beside ``labels/``, under the
YAML's ``path:``, or one level up. Class names come from the dataset YAML (`find_dataset_yaml`): ``names:``
as a list, or as an ``{id: name}`` dict whose ids may have gaps (ids then map to indexes in id order and
`ObjectLabels.class_ids` keeps them); without a YAML, from ``classes.txt`` (one name a line). Images with no
label file have zero objects, unless the YAML says ``skip_if_label_file_missing: true``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deepfit.data.formats.common import (
    child_dir,
    find_dataset_yaml,
    image_size,
    images_under,
    read_names_file,
    read_yaml,
    split_of,
    yaml_class_names,
)
from deepfit.data.formats.objects import OBJECT_LAYOUTS, BadAnnotations, ImageObjects, ObjectLabels, check_box
from deepfit.data.sources import natural_key
from deepfit.errors import DataError


def read_yolo(path: Path, given: list[str] | None) -> ObjectLabels:
    """The objects of YOLO labels in the folder `path` (or the folder of the YAML `path`); `given` replaces
    the class names."""
    root = path.parent if path.is_file() else path
    yaml_path = find_dataset_yaml(path)
    config: dict = {}
    if yaml_path is not None:
        config = read_yaml(yaml_path)
        if not isinstance(config, dict):
            raise DataError(f"{yaml_path} is not a YOLO dataset YAML (a mapping with names:)")
    if given is not None:
        classes, class_ids = list(given), list(range(len(given)))
    elif yaml_path is not None:
        classes, class_ids = yaml_class_names(yaml_path, config.get("names"))
    elif (root / "classes.txt").is_file() or (root / "labels" / "classes.txt").is_file():
        txt = root / "classes.txt" if (root / "classes.txt").is_file() else root / "labels" / "classes.txt"
        classes = read_names_file(txt)
        class_ids = list(range(len(classes)))
    else:
        raise DataError(f"no class names for the YOLO labels in {root}: add a data.yaml with names: "
                        f"(or classes.txt, one name a line)\n{OBJECT_LAYOUTS}")
    index_of = {cid: i for i, cid in enumerate(class_ids)}

    labels_dir = child_dir(root, "labels")
    if labels_dir is None:
        raise DataError(f"no labels/ folder in {root}\n{OBJECT_LAYOUTS}")
    base = (root / str(config.get("path", "."))) if isinstance(config.get("path", "."), str) else root
    split_dirs: dict[str, str] = {}  # image folder name -> split, from the YAML's train/val/test
    for key in ("train", "val", "test"):
        value = config.get(key)
        if isinstance(value, str):
            split_dirs[Path(value).name] = key
    image_root = next((d for d in (base / "images", root / "images", root.parent / "images") if d.is_dir()), None)
    if image_root is None:
        raise DataError(f"no images/ folder for the labels in {labels_dir} (looked in {base}, {root} and "
                        f"{root.parent})\n{OBJECT_LAYOUTS}")
    image_index = images_under(image_root)
    problems = BadAnnotations()
    images: list[ImageObjects] = []
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
        w, h = image_size(image)
        b = ImageObjects(image.resolve(), w, h, split_of(rel.parts, split_dirs))
        for n, tokens in lines:
            _read_line(b, tokens, f"{txt}:{n}", index_of, problems)
        images.append(b)
    if not config.get("skip_if_label_file_missing", False):
        for key, image in image_index.items():
            if key not in labelled:
                w, h = image_size(image)
                images.append(ImageObjects(image.resolve(), w, h, split_of(Path(key[0]).parts, split_dirs)))
    return ObjectLabels(images, classes, root, yaml_path or labels_dir, problems, class_ids)


def _read_line(b: ImageObjects, tokens: list[str], where: str, index_of: dict[int, int],
               problems: BadAnnotations) -> None:
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
    box = check_box(box, b.width, b.height, where, problems)
    if box is not None:
        b.add(box, label, mask)
