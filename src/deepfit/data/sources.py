"""Read a data source (a folder of class folders, split folders, labelled file names, or a CSV list) into labelled
files.

`discover` only reads: it never writes into the data folder, so read-only and shared datasets work
and a run can never damage the user's data.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from deepfit.data.catalog import SPLIT_ALIASES, SPLIT_ORDER, Catalog, LabeledFile, make_catalog, natural_key
from deepfit.data.csvlist import CSV_SUFFIXES, read_csv_list
from deepfit.data.media import IMAGES, Media
from deepfit.data.named import label_files
from deepfit.errors import DataError
from deepfit.log import logger

__all__ = ["CSV_SUFFIXES", "Catalog", "LabeledFile", "discover", "natural_key"]


def discover(
    source: str | Path, *, path_column: str | None = None, label_column: str | None = None, media: Media = IMAGES,
    label_pattern: str | None = None,
) -> Catalog:
    """Find every labelled file of `media` (images by default) in `source`: a folder (class folders or train/val/test
    folders, or with `label_pattern` any files whose names say their label, see named.py) or a CSV."""
    source_path = Path(source).expanduser().resolve()
    is_list = source_path.suffix.lower() in CSV_SUFFIXES
    if not source_path.exists():
        what = "CSV file" if is_list else "data folder"
        raise DataError(f"{what} not found: {source_path} — check the path")
    if source_path.is_file():
        if not is_list:
            raise DataError(
                f"data source {source_path} is a file but not a .csv/.tsv/.txt list: "
                "pass a folder of class folders (DATA/<class>/*.jpg) or a CSV with path and label columns"
            )
        catalog = read_csv_list(source_path, path_column, label_column, media)
    else:
        if path_column is not None or label_column is not None:
            logger.warning("path_column/label_column only apply to a CSV source; ignored for folder %s", source_path)
        catalog = _from_names(source_path, label_pattern, media) if label_pattern else _from_folder(source_path, media)
    logger.info(
        "found %d %s in %d classes (%s) in %s",
        len(catalog.files), media.noun, len(catalog.classes), catalog.layout, source_path,
    )
    return catalog


# --- folders -------------------------------------------------------------------------------------


class _Skipped:
    """The media looked for, and a count of other files so one warning can summarise them instead of one line per file."""

    def __init__(self, media: Media = IMAGES) -> None:
        self.media = media
        self.count = 0
        self.example: Path | None = None

    def add(self, path: Path) -> None:
        self.count += 1
        if self.example is None:
            self.example = path

    def warn(self) -> None:
        if self.count:
            logger.warning(
                "ignored %d file(s) that are not %s, e.g. %s (%s are recognised by %s)",
                self.count, self.media.noun, self.example, self.media.noun, self.media.looked_for(),
            )


def _visible_entries(folder: Path) -> tuple[list[Path], list[Path]]:
    """Non-hidden (subfolders, files) of `folder`, naturally sorted."""
    dirs, files = [], []
    for entry in os.scandir(folder):
        if entry.name.startswith("."):
            continue
        (dirs if entry.is_dir() else files).append(folder / entry.name)
    return sorted(dirs, key=_name_key), sorted(files, key=_name_key)


def _name_key(path: Path) -> tuple:
    return natural_key(path.name)


def _walk_images(folder: Path, skipped: _Skipped) -> Iterator[Path]:
    """Every file of the media below `folder` at any depth, skipping hidden entries.

    Symlinked folders are followed (datasets are often assembled from links), with a guard against loops.
    """
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith("."):
                continue
            path = Path(dirpath, name)
            if skipped.media.holds(name):
                yield path
            else:
                skipped.add(path)


def _read_class_folders(folder: Path, split: str | None, skipped: _Skipped) -> list[LabeledFile]:
    """Files of every class folder directly inside `folder` (the data root, or one split folder)."""
    class_dirs, loose = _visible_entries(folder)
    media = skipped.media
    loose_images = [p for p in loose if media.holds(p.name)]
    example = "NAME" + sorted(media.extensions)[0] if media is not IMAGES else "*.jpg"
    expected = f"DATA/<split>/<class>/{example}" if split else f"DATA/<class>/{example}"
    if not class_dirs:
        if loose_images:
            raise DataError(
                f"{folder} holds {len(loose_images)} {media.noun} directly but no class folders: "
                f"put each class's {media.noun} in its own folder, {expected}"
                + ("" if media is IMAGES else ", or name the label in the file names with --label-pattern")
            )
        raise DataError(f"no class folders found in {folder}: expected one folder per class, {expected}")
    if loose_images:
        logger.warning(
            "ignored %d %s directly in %s, e.g. %s: they need a class folder (%s)",
            len(loose_images), media.noun, folder, loose_images[0].name, expected,
        )
    for path in loose:
        if not media.holds(path.name):
            skipped.add(path)
    files: list[LabeledFile] = []
    for class_dir in class_dirs:
        found = [LabeledFile(p, class_dir.name, split) for p in _walk_images(class_dir, skipped)]
        if not found:
            raise DataError(
                f"class folder {class_dir} has no {media.noun} (looked for {media.looked_for()}): remove it or add {media.noun}"
            )
        files.extend(found)
    return files


def _split_folders(root: Path) -> dict[str, Path] | None:
    """Map split -> folder when `root` uses train/val/test folders, else None.

    A `train/` next to other folders is read as a class called "train" (a vehicles dataset, say):
    split layout needs every top-level folder to be a split name.
    """
    dirs, _ = _visible_entries(root)
    if not any(d.name.lower() == "train" for d in dirs):
        return None
    others = [d.name for d in dirs if d.name.lower() not in SPLIT_ALIASES]
    if others:
        logger.warning(
            "%s has train/ next to other folders (%s): reading every folder, train/ included, as a class; "
            "keep only train/, val/ and test/ at the top level to use them as splits",
            root, ", ".join(others[:5]),
        )
        return None
    found: dict[str, Path] = {}
    for folder in dirs:
        split = SPLIT_ALIASES[folder.name.lower()]
        if split in found:
            raise DataError(
                f"{root} has both {found[split].name}/ and {folder.name}/ for the {split} split: keep only one"
            )
        found[split] = folder
    return found


def _from_folder(root: Path, media: Media = IMAGES) -> Catalog:
    skipped = _Skipped(media)
    split_dirs = _split_folders(root)
    if split_dirs is None:
        files = _read_class_folders(root, None, skipped)
        layout = "class-folders"
    else:
        files = []
        per_split: dict[str, set[str]] = {}
        for split in sorted(split_dirs, key=SPLIT_ORDER.__getitem__):
            if split != "train" and not any(_visible_entries(split_dirs[split])):
                logger.warning("split folder %s is empty: ignoring it", split_dirs[split])
                continue
            found = _read_class_folders(split_dirs[split], split, skipped)
            per_split[split] = {f.label for f in found}
            files.extend(found)
        train_classes = per_split["train"]
        for split, labels in per_split.items():
            unknown = sorted(labels - train_classes, key=natural_key)
            if unknown:
                raise DataError(
                    f"{split_dirs[split]} has classes with no training {media.noun} ({', '.join(unknown)}): "
                    f"add them to {split_dirs['train']} or remove them"
                )
            missing = sorted(train_classes - labels, key=natural_key)
            if split != "train" and missing:
                logger.warning("%s has no %s of class(es) %s", split_dirs[split], media.noun, ", ".join(missing))
        layout = "split-folders"
    skipped.warn()
    return make_catalog(files, root, layout, root)


def _from_names(root: Path, pattern: str, media: Media) -> Catalog:
    """Every file of the media below `root`, labelled (and grouped, split) by its name."""
    skipped = _Skipped(media)
    paths = sorted(_walk_images(root, skipped), key=lambda p: natural_key(p.as_posix()))
    skipped.warn()
    files = []
    for named in label_files(paths, pattern, root):
        split = None
        if named.split is not None:
            split = SPLIT_ALIASES.get(named.split.lower())
            if split is None:
                raise DataError(f"{named.path}: --label-pattern reads the split {named.split!r}; use train, val or test")
        files.append(LabeledFile(named.path, named.label, split, named.group, named.fold))
    return make_catalog(files, root, "file-names", root)
