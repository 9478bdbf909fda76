"""Read semantic-segmentation labels (one class per pixel) into one typed form, whatever the layout.

`read_segmentation(source)` recognises the layout by itself and returns a `SegmentationDataset`: one
`SegmentationSample` per image that has a usable mask, and the mapping from mask values to class
indexes. `dataset.read_mask(sample)` gives an (H, W) uint8 array of class indexes (0..K-1), with
`IGNORE_INDEX` (255) where a pixel is not to be learnt from or scored, so losses use ``ignore_index=255``.

Layouts (`format=` forces one; otherwise it is found from what `source` holds):

* ``folders``: ``DATA/images/**/NAME.ext`` paired with ``DATA/masks/**/NAME.png`` by relative folder and
  stem (also image/imgs/img/JPEGImages and mask/labels/label/annotations/SegmentationClass/gt), at the top
  or in split folders ``DATA/{train,val,test}/{images,masks}``, or side by side per split
  (``DATA/train/`` + ``DATA/trainannot/``, as CamVid's SegNet copy). ``masks=`` names the mask folder
  (``source`` is then the image folder); ``mask_name="{name}_mask"`` pairs ``A.jpg`` with ``A_mask.png``.
  Masks are .png, .bmp, .tif, .tiff or .gif. A sample's split comes from the folder names on its path
  (train, val / valid / validation, test, also train2017...). A folder with ``classes.json`` holds instance
  masks (`deepfit.data.formats.instance_masks`), which `deepfit data check` leaves to detection.
* ``yaml``: a YAML file (or a folder holding ``config.yaml`` / ``data.yaml`` / ``dataset.yaml``) with
  ``images:`` and ``masks:`` folders per split (``train: {images: ..., masks: ...}``) and class names under
  ``classes:`` or ``names:``: a list (value i is class i) or an ``{id: name}`` dict whose ids may have gaps
  (mask value id is that class; classes are in id order).
* ``coco``, ``via``, ``labelme``, ``cvat``: object labels (a COCO JSON, VGG Image Annotator JSON,
  LabelMe JSONs, a CVAT XML; a file or a folder holding them) read as detection reads them and painted
  into class masks (`deepfit.tasks.segment.painted`): the classes are ``background`` and the object
  classes; objects are painted largest first so that smaller ones stay visible on top, crowd objects are
  painted IGNORE_INDEX, and every pixel no object covers is background. `values` are ``[0, *category ids]``
  for COCO, the class indexes for the others. ``label_attribute`` chooses VIA's class attribute.

Mask encodings (``dataset.kind``: index, binary, palette, rgb, or the object format whose objects painted
them, decided over all masks) are described in `deepfit.data.formats.mask_classes`; RGB masks map to
classes through `colors` (name -> (r, g, b)).

Class names for index and palette masks come from `classes` (value i is classes[i]), else the YAML's
names, else ``DATA/classes.txt`` (line i is value i), else the values found, named by their value. The
value `ignore_value` (default 255) reads as IGNORE_INDEX and is never a class, so with ``ignore_value=0``
a class "unlabeled" of value 0 is dropped. Masks are uint8 class indexes with 255 = IGNORE_INDEX, so at
most 255 classes. `class_map=` (what `dataset.class_map()` returns) replaces all of this with a saved mapping,
so that evaluation data is read exactly as the training data was.

Bad pairs are skipped with one warning each (the file, what is wrong and what to do): an image without a
mask, a mask of another size than its image, a mask holding values not in a given class map (classes,
YAML names, classes.txt, colors or class_map), an image or mask Pillow cannot open. A mask with no image
is warned about too. More than `max_bad` (5%) bad pairs (images without a mask included) is a DataError
that lists them. Some data sets label only part of their images on purpose (Pascal VOC labels 2,913 of
its 17,125 JPEGImages, coco128 100 of 128 images per split): `skip_unmasked=True` (`--skip-unmasked`)
then leaves those images out with one summary warning, without counting them as bad. Like `discover`,
this only reads: it never writes into DATA.
"""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepfit.data.formats.common import find_dataset_yaml, read_names_file
from deepfit.data.formats.layout import object_format
from deepfit.data.formats.mask_classes import (
    ClassMap,
    ColorClasses,
    count_classes,
    decide_classes,
    display_colors,
    parse_class_map,
    parse_colors,
)
from deepfit.data.formats.mask_folders import (
    MASK_LAYOUTS,
    SKIP_GROUPS,
    Layout,
    SkippedFiles,
    folder_pairs,
    folders_layout,
    mask_entries,
    pair_up,
    read_mapping,
    yaml_layout,
)
from deepfit.data.formats.masks import (
    IGNORE_INDEX,
    ClassValue,
    MaskScan,
    load_mask,
    scan_pair,
    to_value_space,
    value_map,
)
from deepfit.data.formats.objects import FORMAT_NAMES
from deepfit.errors import DataError
from deepfit.log import logger
from deepfit.tasks.segment.painted import OBJECT_FORMATS, Paint, paint, read_objects

FORMATS = ("folders", "yaml", *OBJECT_FORMATS)


# --- the typed form --------------------------------------------------------------------------------


@dataclass
class SegmentationSample:
    """One image and its mask file (or, for object labels, the objects that paint it)."""

    path: Path  # image, absolute
    mask: Path | None  # mask file, absolute; None for object labels (painted from `objects`)
    width: int
    height: int
    split: str | None = None  # "train" | "val" | "test" when the layout says so
    counts: np.ndarray | None = None  # (K,) int64 pixels of each class (ignored pixels not counted)
    objects: list[Paint] | None = None  # object labels: what paints the mask, in paint order


@dataclass
class SegmentationDataset:
    samples: list[SegmentationSample]  # the good pairs, naturally sorted by image path
    classes: list[str]  # K names, class index order
    root: Path
    format: str  # one of FORMATS
    kind: str  # one of deepfit.data.formats.mask_classes.KINDS
    values: list[ClassValue]  # per class, the mask value (int, or (r, g, b) for rgb)
    ignore_value: int | tuple[int, int, int] | None  # the mask value read as IGNORE_INDEX
    colors: np.ndarray  # (K, 3) uint8 display colour per class
    problems: list[tuple[Path, str]]  # skipped files, "tag: detail" (see SKIP_GROUPS)
    read_as: str = ""  # how the files were found, for a data check (`Layout.describe`)

    def __len__(self) -> int:
        return len(self.samples)

    def read_mask(self, sample: SegmentationSample) -> np.ndarray:
        """The (H, W) uint8 class indexes of `sample`, IGNORE_INDEX where ignored or where a value is unknown."""
        if sample.mask is None:
            return paint(sample.objects or [], sample.height, sample.width)
        family, pixels, palette = load_mask(sample.mask)  # type: ignore[arg-type]
        return value_map(self.values, self.ignore_value).apply(
            to_value_space(family, pixels, palette, rgb=self.kind == "rgb"))

    def pixel_counts(self, samples: list[SegmentationSample] | None = None) -> np.ndarray:
        """(K,) int64 pixels of each class over `samples` (all of them by default)."""
        total = np.zeros(len(self.classes), dtype=np.int64)
        for s in self.samples if samples is None else samples:
            if s.counts is not None:
                total += s.counts
            else:  # a sample made elsewhere: count it now
                total += np.bincount(self.read_mask(s).ravel(), minlength=256)[:len(self.classes)]
        return total

    def class_map(self) -> dict[str, Any]:
        """The value -> class mapping as JSON-able data; `read_segmentation(..., class_map=it)` reuses it."""
        def plain(v: ClassValue | None) -> int | list[int] | None:
            return None if v is None else [int(c) for c in v] if isinstance(v, tuple) else int(v)

        return {
            "kind": self.kind,
            "classes": list(self.classes),
            "values": [plain(v) for v in self.values],
            "ignore_value": plain(self.ignore_value),
            "ignore_index": IGNORE_INDEX,  # what read_mask writes for ignored pixels (the loss's ignore_index)
            "colors": np.asarray(self.colors, dtype=np.uint8).reshape(-1, 3).tolist(),
        }


def summarize(dataset: SegmentationDataset) -> dict[str, Any]:
    """For a data check: format, kind, images, classes, each class's share of the labelled pixels, splits,
    the share of ignored pixels, and the skipped files grouped by what is wrong."""
    counts = dataset.pixel_counts()
    labelled = int(counts.sum())
    area = sum(s.width * s.height for s in dataset.samples)
    problems: dict[str, list[str]] = {group: [] for group in SKIP_GROUPS.values()}
    for path, why in dataset.problems:
        tag, _, detail = why.partition(": ")
        group = SKIP_GROUPS.get(tag)
        if group is None:
            continue
        # files alone where the group says it all; the measured values where they are the point
        problems[group].append(f"{path}: {detail}" if tag in ("size", "unknown values") else str(path))
    return {
        "format": dataset.format,
        "root": str(dataset.root),
        "kind": dataset.kind,
        "images": len(dataset.samples),
        "classes": len(dataset.classes),
        "pixel_share": {name: (int(c) / labelled if labelled else 0.0)
                        for name, c in zip(dataset.classes, counts, strict=True)},
        "ignored_share": (area - labelled) / area if area else 0.0,
        "splits": dict(Counter(s.split for s in dataset.samples if s.split is not None)),
        "problems": problems,
    }


# --- entry point -----------------------------------------------------------------------------------


def read_segmentation(
    source: str | Path, *, masks: str | Path | None = None, mask_name: str | None = None, format: str | None = None,
    classes: list[str] | None = None, colors: dict[str, tuple[int, int, int]] | str | Path | None = None,
    ignore_value: int | None = 255, class_map: dict | None = None, max_bad: float = 0.05,
    skip_unmasked: bool = False, workers: int | None = None, label_attribute: str | None = None,
) -> SegmentationDataset:
    """Read semantic-segmentation masks from `source` (a folder, a YAML, or object labels; see the module doc).

    `masks` names the mask folder (`source` is then the image folder); `mask_name` is the pattern of a mask's
    name, "{name}_mask" for A_mask.png beside A.jpg; `format` forces one of FORMATS;
    `classes` names the mask values 0, 1, ...; `colors` maps class names to RGB mask colours (a dict or a
    JSON file of one); `ignore_value` is the mask value read as IGNORE_INDEX; `class_map` (from
    `SegmentationDataset.class_map`) replaces all inference; `max_bad` is the share of bad pairs that is
    still only warned about; `skip_unmasked` leaves images without a mask out without counting them as
    bad; `workers` threads decode the masks; `label_attribute` is the VIA region attribute naming the class.
    """
    path = Path(source).expanduser().resolve()
    if not path.exists():
        raise DataError(f"segmentation data not found: {path} — check the path")
    if format is not None and format not in FORMATS:
        raise DataError(f"unknown segmentation format {format!r}: choose one of {', '.join(FORMATS)}")
    mask_dir = Path(masks).expanduser().resolve() if masks is not None else None
    if mask_dir is not None and not mask_dir.is_dir():
        raise DataError(f"mask folder not found: {mask_dir} — check masks=")
    saved = parse_class_map(class_map) if class_map is not None else None
    fmt = format or _detect(path, mask_dir)
    if saved is not None and (saved.kind in OBJECT_FORMATS) != (fmt in OBJECT_FORMATS):
        raise DataError(f"the class map is for {saved.kind} masks but {path} is read as {fmt}: "
                        "pass the class map of a run trained on this kind of data")
    n_workers = max(1, workers if workers is not None else min(8, os.cpu_count() or 1))
    if fmt in OBJECT_FORMATS:
        if colors is not None or classes is not None:
            raise DataError(f"{FORMAT_NAMES[fmt]} names the classes: classes= and colors= are for mask files")
        return _read_objects(path, fmt, saved, max_bad, n_workers, label_attribute)
    if label_attribute is not None:
        raise DataError(f"label_attribute is for VIA JSON, not {fmt} masks ({path})")
    layout = yaml_layout(path, mask_name) if fmt == "yaml" else folders_layout(path, mask_dir, mask_name)
    names: tuple[list[str], list[int]] | None = None
    named_by = ""
    if classes is not None:
        names, named_by = (list(classes), list(range(len(classes)))), "classes="
    elif layout.names is not None:
        names, named_by = layout.names, layout.named_by
    elif (layout.root / "classes.txt").is_file():
        txt = layout.root / "classes.txt"
        lines = read_names_file(txt)
        names, named_by = (lines, list(range(len(lines)))), str(txt)
    rgb_colors = parse_colors(colors, classes) if colors is not None else None
    return _read_pairs(layout, fmt, names, named_by, rgb_colors, ignore_value, saved, max_bad, skip_unmasked, n_workers)


def _detect(path: Path, mask_dir: Path | None) -> str:
    if mask_dir is not None:
        return "folders"
    if path.is_file() and path.suffix.lower() in (".yaml", ".yml"):
        return "yaml"
    if path.is_dir():
        yaml_path = find_dataset_yaml(path)
        if yaml_path is not None and mask_entries(read_mapping(yaml_path)):
            return "yaml"
        if folder_pairs(path):
            return "folders"
    try:  # object labels with polygons: the layouts detection finds them in
        fmt = object_format(path)
    except DataError:
        fmt = None
    if fmt in OBJECT_FORMATS:
        return fmt
    painted = f" (it holds {fmt} labels; objects painted into masks are read from {', '.join(OBJECT_FORMATS)})" if fmt else ""
    raise DataError(f"no segmentation masks found in {path}{painted}\n{MASK_LAYOUTS}")


# --- assembling the data set -----------------------------------------------------------------------


def _read_pairs(
    layout: Layout, fmt: str, names: tuple[list[str], list[int]] | None, named_by: str,
    colors: ColorClasses | None, ignore_value: int | None, saved: ClassMap | None, max_bad: float, skip_unmasked: bool, workers: int,
) -> SegmentationDataset:
    skipped = SkippedFiles(skip_unmasked)
    pairs = pair_up(layout, skipped)
    # Decoding dominates and Pillow releases the GIL while it inflates PNGs, so threads scale here.
    if workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            scans = list(pool.map(scan_pair, pairs))
    else:
        scans = [scan_pair(p) for p in pairs]

    good: list[tuple[tuple[Path, Path, str | None], MaskScan]] = []
    for pair, scan in zip(pairs, scans, strict=True):
        image, mask, _ = pair
        if scan.error is not None:
            which, _, why = scan.error.partition(": ")
            path = image if which == "image" else mask
            skipped.add(path, "unreadable", f"Pillow cannot open this {which} ({why})",
                        "replace the file, or remove the pair")
        elif scan.mask_size != scan.image_size:
            (mw, mh), (iw, ih) = scan.mask_size, scan.image_size  # type: ignore[misc]
            skipped.add(mask, "size", f"mask {mw}x{mh}, image {iw}x{ih} ({image.name})",
                        "save the mask at its image's size (nearest-neighbour resizing keeps class values)")
        else:
            good.append((pair, scan))

    scans_ok = [s for _, s in good]
    kind, classes, values, ignore, palette = decide_classes(scans_ok, names, named_by, colors, ignore_value, saved)
    explicit = saved is not None or colors is not None or names is not None
    vmap = value_map(values, ignore)
    samples = []
    for (image, mask, split), scan in good:
        counts, problem = count_classes(scan, kind, vmap, len(classes), explicit)
        if problem is not None:
            skipped.add(mask, "unknown values", problem,
                        "fix the mask, or add the missing classes (classes=, the YAML's names, classes.txt or colors=)")
            continue
        w, h = scan.image_size  # type: ignore[misc]
        samples.append(SegmentationSample(image, mask, w, h, split, counts))

    skipped.finish(len(pairs), max_bad, layout.root)
    if not samples:
        raise DataError(f"none of the {len(pairs)} image/mask pairs in {layout.root} could be used "
                        "(see the warnings above)")
    colours = saved.colors if saved is not None else display_colors(kind, values, palette)
    logger.info("read %d image/mask pairs (%s masks, %d classes) from %s", len(samples), kind, len(classes),
                layout.root)
    return SegmentationDataset(samples, classes, layout.root, fmt, kind, values, ignore, colours, skipped.items,
                               layout.describe())


def _read_objects(path: Path, fmt: str, saved: ClassMap | None, max_bad: float, workers: int,
                  label_attribute: str | None) -> SegmentationDataset:
    """The data set of object labels painted into class masks (`deepfit.tasks.segment.painted`)."""
    found = read_objects(path, fmt, saved, max_bad, workers, label_attribute)
    samples = [SegmentationSample(p.sample.path, None, p.sample.width, p.sample.height, p.sample.split, p.counts, p.objects)
               for p in found.images]
    return SegmentationDataset(samples, found.classes, found.root, fmt, fmt, list(found.values), None, found.colors,
                               found.problems, found.read_as)
