"""Which object-label format a file or folder holds, found from its layout alone (no label is read).

Detection reads the labels in the format found; `deepfit data check` asks it to tell object labels from
class folders (an images/ + masks/ pair of instance masks would otherwise read as two classes).
"""

from __future__ import annotations

from pathlib import Path

from deepfit.data.formats.coco import coco_candidates
from deepfit.data.formats.common import child_dir
from deepfit.data.formats.mask_folders import folder_pairs
from deepfit.data.formats.objects import OBJECT_LAYOUTS
from deepfit.errors import DataError

_BY_SUFFIX = {".json": "coco", ".yaml": "yolo", ".yml": "yolo"}


def holds_object_labels(source: str | Path) -> bool:
    """Whether `source` is laid out as one of the object-label formats (what `read_detection` would find)."""
    path = Path(source).expanduser().resolve()
    try:
        return path.exists() and bool(object_format(path))
    except DataError:
        return False


def object_format(path: Path) -> str:
    """The object-label format a file or folder is laid out in (coco, yolo, voc, masks); an error listing the
    layouts when it is none of them."""
    if path.is_file():
        if path.suffix.lower() not in _BY_SUFFIX:
            raise DataError(f"{path} is neither a COCO .json nor a YOLO .yaml\n{OBJECT_LAYOUTS}")
        return _BY_SUFFIX[path.suffix.lower()]
    if coco_candidates(path):
        return "coco"
    annotations = child_dir(path, "Annotations")
    if annotations is not None and next(annotations.rglob("*.xml"), None) is not None:
        return "voc"
    labels = child_dir(path, "labels")
    if labels is not None and next(labels.rglob("*.txt"), None) is not None:
        return "yolo"
    if folder_pairs(path):  # image and mask folders, found as semantic masks are
        return "masks"
    raise DataError(f"no detection labels found in {path}\n{OBJECT_LAYOUTS}")
