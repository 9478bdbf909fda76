"""Which tool wrote an annotation file, told from the keys at its start: no file is parsed whole.

COCO, VGG Image Annotator (VIA) and LabelMe all write ``.json``, so the suffix alone cannot tell them apart,
and a value in one (a class named "images") may spell a key of another. Keys are told from values by the
``:`` after them, and the formats are asked in an order where the stricter marks come first: VIA (its
``_via_img_metadata`` project key, or per-image ``"filename"`` and ``"regions"``), LabelMe (a ``"shapes"``
list), COCO (an ``"images"``, ``"annotations"`` or ``"categories"`` key). A CVAT export is XML whose root
is ``<annotations>`` (Pascal VOC's is ``<annotation>``, one per image).

Only the start of a file is read: its first 64 kB, and its first MB when they do not tell (a COCO file's
``"images"`` may follow a long ``"licenses"``, a VIA 1 file's ``"regions"`` an embedded image).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

from deepfit.data.sources import natural_key

HEAD_BYTES = (1 << 16, 1 << 20)  # what is read of a file to tell its format: 64 kB, then 1 MB when that did not tell

_VIA_PROJECT = re.compile(rb'"_via_img_metadata"\s*:')
_VIA_REGIONS = re.compile(rb'"regions"\s*:\s*[\[{]')  # a list in VIA 2, a dict keyed "0", "1", ... in VIA 1
_VIA_FILENAME = re.compile(rb'"filename"\s*:')
_LABELME = re.compile(rb'"shapes"\s*:\s*\[')
_COCO = re.compile(rb'"(?:images|annotations|categories)"\s*:')
_CVAT = re.compile(rb"<annotations[\s>]")


def files_below(folder: Path, suffix: str, depth: int | None = None) -> Iterator[Path]:
    """The files named ``*suffix`` in `folder` and below (at most `depth` folders down), folder by folder in
    natural order, hidden ones skipped; a generator, so a caller looking for one stops at the first."""
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        deeper = depth is None or len(Path(dirpath).relative_to(folder).parts) < depth
        dirnames[:] = sorted((d for d in dirnames if not d.startswith(".")), key=natural_key) if deeper else []
        for name in sorted(filenames, key=natural_key):
            if name.lower().endswith(suffix) and not name.startswith("."):
                yield Path(dirpath, name)


def _head(path: Path, size: int) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(size)
    except OSError:  # unreadable: the reader that opens it says why
        return b""


def json_format(path: Path) -> str | None:
    """"via", "labelme" or "coco" for a JSON file laid out as that format, else None."""
    for size in HEAD_BYTES:
        head = _head(path, size)
        if _VIA_PROJECT.search(head) or (_VIA_REGIONS.search(head) and _VIA_FILENAME.search(head)):
            return "via"
        if _LABELME.search(head):
            return "labelme"
        if _COCO.search(head):
            return "coco"
        if len(head) < size:  # the whole file was read
            break
    return None


def first_json_format(folder: Path, depth: int) -> str | None:
    """The format of the first JSON file in `folder` and below (at most `depth` folders down) that has one:
    a folder of LabelMe files or of a VIA export is told by its first file, whatever else lies beside."""
    return next((fmt for fmt in map(json_format, files_below(folder, ".json", depth)) if fmt is not None), None)


def is_cvat_xml(path: Path) -> bool:
    """Whether an XML file's root element is CVAT's ``<annotations>`` (the first few kB hold it)."""
    return bool(_CVAT.search(_head(path, 4096)))
