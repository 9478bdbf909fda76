"""Which object-label format a file or folder holds, found from its layout alone (no label is read).

Detection reads the labels in the format found; `deepfit data check` asks it to tell object labels from
class folders (an images/ + masks/ pair of instance masks would otherwise read as two classes). COCO, VIA
and LabelMe all write .json, so a JSON file's format is told from the keys at its start (`sniff`).
"""

from __future__ import annotations

from pathlib import Path

from deepfit.data.formats.coco import coco_candidates
from deepfit.data.formats.common import child_dir
from deepfit.data.formats.cvat import cvat_files
from deepfit.data.formats.mask_folders import folder_pairs
from deepfit.data.formats.objects import OBJECT_LAYOUTS
from deepfit.data.formats.sniff import first_json_format, is_cvat_xml, json_format
from deepfit.errors import DataError

_BY_SUFFIX = {".json": "coco", ".yaml": "yolo", ".yml": "yolo", ".xml": "cvat"}


def holds_object_labels(source: str | Path) -> bool:
    """Whether `source` is laid out as one of the object-label formats (what `read_detection` would find)."""
    path = Path(source).expanduser().resolve()
    try:
        return path.exists() and bool(object_format(path))
    except DataError:
        return False


def object_format(path: Path) -> str:
    """The object-label format a file or folder is laid out in (coco, yolo, voc, masks, via, labelme, cvat); an
    error listing the layouts when it is none of them."""
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix not in _BY_SUFFIX:
            raise DataError(f"{path} is neither a .json (COCO, VIA, LabelMe), a YOLO .yaml nor a CVAT .xml\n{OBJECT_LAYOUTS}")
        if suffix == ".xml" and not is_cvat_xml(path):
            raise DataError(f"{path} is not a CVAT XML export (its root is not <annotations>): for Pascal VOC, pass the "
                            f"folder holding Annotations/\n{OBJECT_LAYOUTS}")
        # a JSON none of the formats' keys begin is read as COCO, whose reader says what it lacks
        return (json_format(path) or "coco") if suffix == ".json" else _BY_SUFFIX[suffix]
    if coco_candidates(path):
        return "coco"
    if cvat_files(path):  # before VOC: CVAT's annotations.xml may sit in an annotations/ folder
        return "cvat"
    annotations = child_dir(path, "Annotations")
    if annotations is not None and next(annotations.rglob("*.xml"), None) is not None:
        return "voc"
    labels = child_dir(path, "labels")
    if labels is not None and next(labels.rglob("*.txt"), None) is not None:
        return "yolo"
    # after the formats that tools convert to (labelme2yolo keeps the JSONs beside the txt it writes)
    tool = first_json_format(path, depth=2)  # DATA/, DATA/train/ or DATA/annotations/train/
    if tool in ("via", "labelme"):
        return tool
    if folder_pairs(path):  # image and mask folders, found as semantic masks are
        return "masks"
    raise DataError(f"no detection labels found in {path}\n{OBJECT_LAYOUTS}")
