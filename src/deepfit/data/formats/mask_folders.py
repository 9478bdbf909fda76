"""Masks as files: image and mask folders, the YAML naming them, how images and masks pair up, and the record
of the files that were skipped. Semantic masks (a class per value) and instance masks (an object per value,
`instance_masks`) are found and paired by this same code.

* folders: ``DATA/<images>/**/NAME.ext`` paired with ``DATA/<masks>/**/NAME.png`` by relative folder and
  stem. ``<images>`` is the first of IMAGE_DIRS and ``<masks>`` the first of MASK_DIRS that holds mask
  files (names match case-insensitively). The same pair may sit in split folders:
  ``DATA/{train,val,test}/{images,masks}``, or side by side per split as CamVid's SegNet copy has them
  (``DATA/train/`` + ``DATA/trainannot/``, also ``train_labels/``...: SIDE_BY_SIDE), or be two folders given
  apart (`folders_layout`).
* yaml: a YAML file (or a folder holding ``config.yaml`` / ``data.yaml`` / ``dataset.yaml``) with
  ``images:`` and ``masks:`` folders per split (``train: {images: ..., masks: ...}``, relative to the
  YAML's folder, or to its ``path:``) and class names under ``classes:`` or ``names:``.

A mask's name is its image's unless a mask-name pattern says more: ``"{name}_mask"`` pairs ``A.jpg`` with
``A_mask.png``; with a pattern, only the files whose names fit it are masks, so images and masks may even
share one folder. A folder holding ``classes.json`` (INSTANCE_CLASSES) is instance masks, not semantic ones.
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
from deepfit.errors import ConfigError, DataError
from deepfit.log import logger

IMAGE_DIRS = ("images", "image", "imgs", "img", "JPEGImages")
MASK_DIRS = ("masks", "mask", "labels", "label", "annotations", "SegmentationClass", "gt")
# What a split folder's name is followed by in the name of its mask folder beside it: train/ + trainannot/ as
# CamVid's SegNet copy (and other sets published with it) has them, train/ + train_labels/ as its Kaggle copy.
SIDE_BY_SIDE = ("annot", "_annot", "annotations", "_annotations", "_labels", "_label", "_masks", "_mask", "_gt")
# The file that maps each mask's object values to class names: a folder that holds it holds instance masks.
INSTANCE_CLASSES = "classes.json"

MASK_LAYOUTS = """deepfit reads semantic-segmentation masks laid out as one of:
  folders  DATA/images/**/NAME.jpg and DATA/masks/**/NAME.png (or image/imgs/img/JPEGImages and
           mask/labels/label/annotations/SegmentationClass/gt), also DATA/{train,val,test}/{images,masks}/,
           DATA/{train,val,test}/ beside DATA/{train,val,test}annot/ (or _labels/, _masks/, _gt/),
           or any two folders with masks=; masks named NAME_mask.png with mask_name="{name}_mask"
  yaml     DATA/config.yaml with train: {images: DIR, masks: DIR} (val:, test: alike) and classes: (or
           names:) as a list or as {value: name}
  coco     annotations.json (or DATA/ holding one COCO *.json) with polygon or RLE segmentations
  via, labelme, cvat  VGG Image Annotator JSON, LabelMe JSONs (one per image) or a CVAT annotations.xml
           with polygons, as detection reads them (label_attribute= picks VIA's class attribute)
Masks are single-channel (the value is the class), palette PNGs (the index is the class) or RGB (one
colour per class; pass colors= to name them). Beside a classes.json they are instance masks (an object a value)."""

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
    mask_name: str | None = None  # the pattern of a mask's name, "{name}_mask"; None: the image's own name

    def describe(self) -> str:
        """How the images and masks were found, for a data check: each image folder with its mask folder."""
        def shown(folder: Path) -> str:
            return f"{folder.relative_to(self.root).as_posix() if folder.is_relative_to(self.root) else folder}/"

        pairs = "; ".join(f"{shown(images)} + {shown(masks)}" + (f" ({split})" if split else "")
                          for images, masks, split, _ in self.folders)
        return f"images + masks: {pairs}" + (f"; masks named {self.mask_name}" if self.mask_name else "")


@dataclass
class Match:
    """An image and its mask as `match_files` found them; one of the two is None when it has no partner."""

    image: Path | None  # absolute
    mask: Path | None  # absolute
    split: str | None
    wanted: Path  # where the missing partner was looked for (folder / stem, no extension); for a pair, the mask


def mask_name_parts(pattern: str | None) -> tuple[str, str]:
    """What a mask's stem adds before and after its image's stem: "{name}_mask" gives ("", "_mask")."""
    if pattern is None:
        return "", ""
    stem, ext = os.path.splitext(pattern)
    if ext.lower() in MASK_EXTENSIONS:
        pattern = stem  # "{name}_mask.png": the extension is any mask's
    if pattern.count("{name}") != 1:
        raise ConfigError(f"mask name {pattern!r} must hold {{name}} once, where the image's name goes: "
                          "'{name}_mask' pairs photos/A.jpg with A_mask.png")
    before, _, after = pattern.partition("{name}")
    return before, after


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
    """(images, masks) folders at DATA/ and in DATA/{train,val,test}/, or a split folder and its masks beside it."""
    found = []
    for folder in [root] + sorted((d for d in root.iterdir() if d.is_dir() and split_of((d.name,))),
                                  key=lambda d: natural_key(d.name)):
        images, masks = _first_dir(folder, IMAGE_DIRS), _first_dir(folder, MASK_DIRS, masks=True)
        if images is not None and masks is not None:
            found.append((images, masks, None, images.relative_to(root).parts))
        elif folder != root:  # DATA/train/ + DATA/trainannot/: the split comes from the image folder's name
            beside = _first_dir(root, tuple(folder.name + suffix for suffix in SIDE_BY_SIDE), masks=True)
            if beside is not None:
                found.append((folder, beside, None, (folder.name,)))
    return found


def layout_root(path: Path, mask_dir: Path | None) -> Path:
    """The folder a layout's paths are relative to: DATA, or the folder holding both the image and mask folders."""
    return Path(os.path.commonpath([path, mask_dir])) if mask_dir is not None else path


def folders_layout(path: Path, mask_dir: Path | None, mask_name: str | None = None) -> Layout:
    """The folders layout of `path` (the image folder when `mask_dir` is given); `mask_name`: see `Layout`."""
    if mask_dir is not None:
        if not path.is_dir():
            raise DataError(f"with masks=, the source is the image folder; {path} is not a folder")
        common = layout_root(path, mask_dir)
        # the split may be the folder both sit in (DATA/train/images + DATA/train/masks)
        return Layout(common, [(path, mask_dir, None, (common.name, *path.relative_to(common).parts))],
                      mask_name=mask_name)
    if not path.is_dir():
        raise DataError(f"{path} is not a folder: the folders layout needs DATA/images and DATA/masks\n{MASK_LAYOUTS}")
    folders = folder_pairs(path)
    if not folders:
        images = _first_dir(path, IMAGE_DIRS)
        what = "no image folder" if images is None else f"no mask folder (with .png masks) beside {images.name}/"
        raise DataError(f"{what} in {path}\n{MASK_LAYOUTS}")
    return Layout(path, folders, mask_name=mask_name)


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


def yaml_layout(path: Path, mask_name: str | None = None) -> Layout:
    """The layout a dataset YAML (`path`, or the one in the folder `path`) names; `mask_name`: see `Layout`."""
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
    return Layout(yaml_path.parent, folders, names, str(yaml_path), mask_name)


def match_files(layout: Layout) -> list[Match]:
    """Every image and mask of `layout`, paired by relative folder and name (see `Layout.mask_name`), in natural
    order within each pair of folders; an image without a mask and a mask without an image come alone."""
    before, after = mask_name_parts(layout.mask_name)
    found = []
    for image_dir, mask_dir, split, prefix in layout.folders:
        masks = {}
        for (rel, stem), path in images_under(mask_dir).items():
            fits = stem.startswith(before) and stem.endswith(after) and len(stem) > len(before) + len(after)
            if fits and path.suffix.lower() in MASK_EXTENSIONS:
                masks[(rel, stem[len(before):len(stem) - len(after)])] = path
        taken = set(masks.values())  # with a pattern, images and masks may share a folder
        images = {key: path for key, path in images_under(image_dir).items() if path not in taken}
        for key in sorted(images.keys() | masks.keys(), key=lambda k: natural_key(f"{k[0]}/{k[1]}")):
            image, mask = images.get(key), masks.get(key)
            wanted = image_dir / key[0] / key[1] if image is None else mask_dir / key[0] / f"{before}{key[1]}{after}"
            found.append(Match(image.resolve() if image else None, mask.resolve() if mask else None,
                               split or split_of((*prefix, *Path(key[0]).parts)), wanted))
    return found


def mask_name_hint(matches: list[Match]) -> str:
    """When masks are named as their images plus a suffix (A.jpg, A_mask.png), the option that pairs them."""
    stems = {m.image.stem for m in matches if m.image is not None and m.mask is None}
    suffixes: Counter[str] = Counter()
    for m in matches:
        if m.mask is not None and m.image is None:
            stem = m.mask.stem
            # the longest image stem that starts this mask's stem
            cut = next((i for i in range(len(stem) - 1, 0, -1) if stem[:i] in stems), None)
            if cut is not None:
                suffixes[stem[cut:]] += 1
    if not suffixes:
        return ""
    suffix, _ = suffixes.most_common(1)[0]
    return f"; the masks look named as their images plus {suffix!r}: pass mask_name='{{name}}{suffix}' (--mask-name)"


def holds_semantic_masks(path: str | Path, mask_dir: str | Path | None = None) -> bool:
    """Whether `path` is laid out as semantic masks: a YAML naming `masks:` folders, or image and mask folders
    (`deepfit data check` reads such data as segmentation). COCO JSON is left to detection, and so is a layout whose
    root holds INSTANCE_CLASSES: instance-mask PNGs, which sit in the same image and mask folders."""
    path = Path(path).expanduser().resolve()
    try:
        if path.is_file():
            return path.suffix.lower() in (".yaml", ".yml") and bool(mask_entries(read_mapping(path)))
        if not path.is_dir():
            return False
        masks = Path(mask_dir).expanduser().resolve() if mask_dir is not None else None
        if (layout_root(path, masks) / INSTANCE_CLASSES).is_file():
            return False
        yaml_path = find_dataset_yaml(path)
        return (masks is not None or (yaml_path is not None and bool(mask_entries(read_mapping(yaml_path))))
                or bool(folder_pairs(path)))
    except DataError:  # an unreadable YAML: the reader that is asked next says what is wrong with it
        return False


def pair_up(layout: Layout, skipped: SkippedFiles) -> list[tuple[Path, Path, str | None]]:
    """(image, mask, split) of every image with a mask, naturally sorted by image; the others go to `skipped`, and
    no pair at all is an error."""
    pairs: dict[Path, tuple[Path, Path, str | None]] = {}
    matches = match_files(layout)
    for m in matches:
        if m.image is None:
            skipped.add(m.mask, "no image", f"no image {m.wanted}.* for this mask",  # type: ignore[arg-type]
                        "the mask is not used (add the image, or remove the mask)")
        elif m.mask is None:
            skipped.add(m.image, "no mask", f"no mask {m.wanted}.png", "the image is not used (add its mask if it should be)")
        else:
            pairs.setdefault(m.image, (m.image, m.mask, m.split))
    if not pairs:
        raise DataError(f"no image/mask pairs in {layout.root}: {len(skipped.items)} files have no partner "
                        f"(images and masks pair by relative folder and name){mask_name_hint(matches)}\n{MASK_LAYOUTS}")
    return sorted(pairs.values(), key=lambda p: natural_key(p[0].as_posix()))
