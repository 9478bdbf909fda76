"""Semantic masks as files: image and mask folders, the YAML naming them, how images and masks pair up, and
the record of the files that were skipped.

* folders: ``DATA/<images>/**/NAME.ext`` paired with ``DATA/<masks>/**/NAME.png`` by relative folder and
  stem. ``<images>`` is the first of IMAGE_DIRS and ``<masks>`` the first of MASK_DIRS that holds mask
  files (names match case-insensitively). The same pair may sit in split folders:
  ``DATA/{train,val,test}/{images,masks}``, or be two folders given apart (`folders_layout`).
* yaml: a YAML file (or a folder holding ``config.yaml`` / ``data.yaml`` / ``dataset.yaml``) with
  ``images:`` and ``masks:`` folders per split (``train: {images: ..., masks: ...}``, relative to the
  YAML's folder, or to its ``path:``) and class names under ``classes:`` or ``names:``.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepfit.data.formats.common import (
    WARN_LIMIT,
    check_bad_share,
    child_dir,
    find_dataset_yaml,
    images_under,
    read_yaml,
    split_of,
    warn_rest,
    yaml_class_names,
)
from deepfit.data.formats.masks import MASK_EXTENSIONS
from deepfit.data.sources import natural_key
from deepfit.errors import DataError
from deepfit.log import logger

IMAGE_DIRS = ("images", "image", "imgs", "img", "JPEGImages")
MASK_DIRS = ("masks", "mask", "labels", "label", "annotations", "SegmentationClass", "gt")

MASK_LAYOUTS = """deepfit reads semantic-segmentation masks laid out as one of:
  folders  DATA/images/**/NAME.jpg and DATA/masks/**/NAME.png (or image/imgs/img/JPEGImages and
           mask/labels/label/annotations/SegmentationClass/gt), also DATA/{train,val,test}/{images,masks}/,
           or any two folders with masks=
  yaml     DATA/config.yaml with train: {images: DIR, masks: DIR} (val:, test: alike) and classes: (or
           names:) as a list or as {value: name}
  coco     annotations.json (or DATA/ holding one COCO *.json) with polygon or RLE segmentations
Masks are single-channel (the value is the class), palette PNGs (the index is the class) or RGB (one
colour per class; pass colors= to name them)."""

# Problem tags: the text before ": " in a data set's problems, and the group a data check lists it under.
SKIP_GROUPS = {
    "no mask": "images without a mask",
    "size": "masks of another size",
    "unknown values": "unknown values",
    "unreadable": "unreadable",
    "no image": "masks without an image",
}
_COUNTED = ("no mask", "size", "unknown values", "unreadable")  # the tags that make a pair bad (max_bad)


class SkippedFiles:
    """Skipped files: one warning each (up to a limit per kind), and an error when too many pairs are bad."""

    def __init__(self, skip_unmasked: bool = False) -> None:
        self.items: list[tuple[Path, str]] = []
        self.bad: list[str] = []
        self.per_tag: Counter[str] = Counter()
        self.skip_unmasked = skip_unmasked  # images without a mask: left out quietly, not counted as bad

    def add(self, path: Path, tag: str, detail: str, advice: str) -> None:
        self.items.append((path, f"{tag}: {detail}"))
        quiet = tag == "no mask" and self.skip_unmasked
        if tag in _COUNTED and not quiet:
            self.bad.append(f"{path}: {detail}")
        self.per_tag[tag] += 1
        if self.per_tag[tag] <= WARN_LIMIT and not quiet:
            logger.warning("skipped %s: %s — %s", path, detail, advice)

    def finish(self, pairs: int, max_bad: float, where: Path) -> None:
        """`pairs`: the image/mask pairs found; images without a mask are added to them when they count as bad."""
        if self.skip_unmasked and self.per_tag["no mask"]:
            logger.warning("left out %d images without a mask (--skip-unmasked); `deepfit data check` lists them",
                           self.per_tag["no mask"])
        for tag, n in self.per_tag.items():
            if not (tag == "no mask" and self.skip_unmasked):
                warn_rest(n, SKIP_GROUPS[tag])
        if not self.skip_unmasked:
            pairs += self.per_tag["no mask"]
        check_bad_share(len(self.bad), pairs, max_bad, what="image/mask pairs", where=where, bad=self.bad,
                        fix="fix or remove those files and read again (`deepfit data check` lists them all)")


@dataclass
class Layout:
    """Where the images and masks of a data set are."""

    root: Path
    folders: list[tuple[Path, Path, str | None, tuple[str, ...]]]  # images, masks, split or None, path prefix
    names: tuple[list[str], list[int]] | None = None  # class names and their mask values, from a YAML
    named_by: str = ""


def _has_masks(folder: Path) -> bool:
    for _, _, filenames in os.walk(folder, followlinks=True):
        if any(os.path.splitext(n)[1].lower() in MASK_EXTENSIONS for n in filenames):
            return True
    return False


def _first_dir(folder: Path, names: tuple[str, ...], masks: bool = False) -> Path | None:
    for name in names:
        found = child_dir(folder, name)
        # a labels/ of YOLO .txt files or an annotations/ of COCO JSON is not a mask folder
        if found is not None and (not masks or _has_masks(found)):
            return found
    return None


def folder_pairs(root: Path) -> list[tuple[Path, Path, str | None, tuple[str, ...]]]:
    """(images, masks) folders at DATA/ and in DATA/{train,val,test}/."""
    found = []
    for folder in [root] + sorted((d for d in root.iterdir() if d.is_dir() and split_of((d.name,))),
                                  key=lambda d: natural_key(d.name)):
        images, masks = _first_dir(folder, IMAGE_DIRS), _first_dir(folder, MASK_DIRS, masks=True)
        if images is not None and masks is not None:
            found.append((images, masks, None, images.relative_to(root).parts))
    return found


def folders_layout(path: Path, mask_dir: Path | None) -> Layout:
    """The folders layout of `path` (the image folder when `mask_dir` is given)."""
    if mask_dir is not None:
        if not path.is_dir():
            raise DataError(f"with masks=, the source is the image folder; {path} is not a folder")
        common = Path(os.path.commonpath([path, mask_dir]))
        # the split may be the folder both sit in (DATA/train/images + DATA/train/masks)
        return Layout(common, [(path, mask_dir, None, (common.name, *path.relative_to(common).parts))])
    if not path.is_dir():
        raise DataError(f"{path} is not a folder: the folders layout needs DATA/images and DATA/masks\n{MASK_LAYOUTS}")
    folders = folder_pairs(path)
    if not folders:
        images = _first_dir(path, IMAGE_DIRS)
        what = "no image folder" if images is None else f"no mask folder (with .png masks) beside {images.name}/"
        raise DataError(f"{what} in {path}\n{MASK_LAYOUTS}")
    return Layout(path, folders)


def read_mapping(yaml_path: Path) -> dict:
    """A dataset YAML as a dict ({} when it holds anything else)."""
    config = read_yaml(yaml_path)
    return config if isinstance(config, dict) else {}


def mask_entries(config: dict) -> list[tuple[str | None, Any, Any]]:
    """(split key or None, images, masks) for each entry of the YAML that names both folders."""
    entries: list[tuple[str | None, Any, Any]] = []
    if isinstance(config.get("images"), str) and isinstance(config.get("masks"), str):
        entries.append((None, config["images"], config["masks"]))
    for key, value in config.items():
        if isinstance(value, dict) and isinstance(value.get("images"), str) and isinstance(value.get("masks"), str):
            entries.append((str(key), value["images"], value["masks"]))
    return entries


def yaml_layout(path: Path) -> Layout:
    """The layout a dataset YAML (`path`, or the one in the folder `path`) names."""
    yaml_path = find_dataset_yaml(path)
    if yaml_path is None:
        raise DataError(f"no dataset YAML (config.yaml, data.yaml, dataset.yaml) in {path}\n{MASK_LAYOUTS}")
    config = read_mapping(yaml_path)
    entries = mask_entries(config)
    if not entries:
        raise DataError(f"{yaml_path} names no images: and masks: folders (train: {{images: DIR, masks: DIR}})"
                        f"\n{MASK_LAYOUTS}")
    base = yaml_path.parent / str(config.get("path") or ".")
    folders = []
    for key, images, masks in entries:
        image_dir, mask_dir = (base / images).resolve(), (base / masks).resolve()
        for what, folder in (("images", image_dir), ("masks", mask_dir)):
            if not folder.is_dir():
                raise DataError(f"{yaml_path}: the {key or 'top-level'} {what}: folder {folder} does not exist "
                                "— folders are relative to the YAML's folder")
        split = split_of((key,)) if key else None
        folders.append((image_dir, mask_dir, split, Path(images).parts))
    raw = config.get("classes", config.get("names"))
    names = yaml_class_names(yaml_path, raw) if raw else None
    return Layout(yaml_path.parent, folders, names, str(yaml_path))


def pair_up(layout: Layout, skipped: SkippedFiles) -> list[tuple[Path, Path, str | None]]:
    """(image, mask, split) of every image with a mask, naturally sorted by image; the others go to `skipped`."""
    pairs: dict[Path, tuple[Path, Path, str | None]] = {}
    for image_dir, mask_dir, split, prefix in layout.folders:
        images = images_under(image_dir)
        masks = {k: p for k, p in images_under(mask_dir).items() if p.suffix.lower() in MASK_EXTENSIONS}
        for key in sorted(images.keys() | masks.keys(), key=lambda k: natural_key(f"{k[0]}/{k[1]}")):
            image, mask = images.get(key), masks.get(key)
            if image is None and mask is not None:
                skipped.add(mask.resolve(), "no image", f"no image {image_dir / key[0] / key[1]}.* for this mask",
                            "the mask is not used (add the image, or remove the mask)")
            elif image is not None and mask is None:
                skipped.add(image.resolve(), "no mask", f"no mask {mask_dir / key[0] / key[1]}.png",
                            "the image is not used (add its mask if it should be)")
            elif image is not None and mask is not None:
                where = split or split_of((*prefix, *Path(key[0]).parts))
                pairs.setdefault(image.resolve(), (image.resolve(), mask.resolve(), where))
    return sorted(pairs.values(), key=lambda p: natural_key(p[0].as_posix()))
