"""Read a data source (a folder of class folders, split folders, or a CSV list) into labelled files.

`discover` only reads: it never writes into the data folder, so read-only and shared datasets work
and a run can never damage the user's data.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from deepfit.data.media import IMAGES, Media
from deepfit.data.named import label_files
from deepfit.errors import DataError
from deepfit.log import logger

CSV_SUFFIXES = (".csv", ".tsv", ".txt")

# Split names as written on disk or in a CSV, mapped to the names deepfit uses.
_SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
_SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}
_PATH_COLUMNS = ("path", "file", "filename", "image", "filepath")
_LABEL_COLUMNS = ("label", "class", "category", "target")
_DIGITS = re.compile(r"(\d+)")


def natural_key(text: str) -> tuple:
    """Sort key in human order: "img2" < "img10", case-insensitive.

    The original text is the tie-breaker so "a" and "A" (or "02" and "2") still sort deterministically.
    """
    parts = _DIGITS.split(text.casefold())
    # re.split puts text at even indexes and digit runs at odd ones, so positions never mix types.
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), text


@dataclass(frozen=True)
class LabeledFile:
    path: Path  # absolute
    label: str
    split: str | None = None  # "train" | "val" | "test" when the source defines it
    group: str | None = None  # a speaker, a source recording: kept in one split (see split.grouped_split)

    def sort_key(self) -> tuple:
        """(split, label, path) in natural order; unsplit files first."""
        return (
            -1 if self.split is None else _SPLIT_ORDER.get(self.split, len(_SPLIT_ORDER)),
            natural_key(self.label),
            natural_key(self.path.as_posix()),
        )


@dataclass
class Catalog:
    files: list[LabeledFile]  # sorted by LabeledFile.sort_key
    classes: list[str]  # naturally sorted
    root: Path  # the data folder, or the folder holding the CSV
    layout: str  # "class-folders" | "split-folders" | "csv"

    @property
    def has_splits(self) -> bool:
        """True when the source itself said which file belongs to train, val or test."""
        return any(f.split is not None for f in self.files)


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
        catalog = _from_csv(source_path, path_column, label_column, media)
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
    others = [d.name for d in dirs if d.name.lower() not in _SPLIT_ALIASES]
    if others:
        logger.warning(
            "%s has train/ next to other folders (%s): reading every folder, train/ included, as a class; "
            "keep only train/, val/ and test/ at the top level to use them as splits",
            root, ", ".join(others[:5]),
        )
        return None
    found: dict[str, Path] = {}
    for folder in dirs:
        split = _SPLIT_ALIASES[folder.name.lower()]
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
        for split in sorted(split_dirs, key=_SPLIT_ORDER.__getitem__):
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
    return _catalog(files, root, layout, root)


def _from_names(root: Path, pattern: str, media: Media) -> Catalog:
    """Every file of the media below `root`, labelled (and grouped, split) by its name."""
    skipped = _Skipped(media)
    paths = sorted(_walk_images(root, skipped), key=lambda p: natural_key(p.as_posix()))
    skipped.warn()
    files = []
    for named in label_files(paths, pattern, root):
        split = None
        if named.split is not None:
            split = _SPLIT_ALIASES.get(named.split.lower())
            if split is None:
                raise DataError(f"{named.path}: --label-pattern reads the split {named.split!r}; use train, val or test")
        files.append(LabeledFile(named.path, named.label, split, named.group))
    return _catalog(files, root, "file-names", root)


def _catalog(files: list[LabeledFile], root: Path, layout: str, source: Path) -> Catalog:
    classes = sorted({f.label for f in files}, key=natural_key)
    if len(classes) < 2:
        found = ", ".join(classes) if classes else "none"
        raise DataError(
            f"need at least 2 classes to train a classifier, found {len(classes)} in {source} ({found}): "
            "add a folder (or CSV label) per class"
        )
    return Catalog(sorted(files, key=LabeledFile.sort_key), classes, root, layout)


# --- CSV lists -----------------------------------------------------------------------------------


def _delimiter(csv_path: Path, header_line: str) -> str:
    """Tab or comma: .tsv is tab, otherwise whichever the header uses more."""
    if csv_path.suffix.lower() == ".tsv":
        return "\t"
    return "\t" if header_line.count("\t") > header_line.count(",") else ","


def _pick_column(
    header: list[str], wanted: str | None, defaults: tuple[str, ...], fallback: int, what: str, csv_path: Path
) -> int:
    """Index of the requested column, else the first default name present, else position `fallback`."""
    lowered = [h.strip().lower() for h in header]
    if wanted is not None:
        if wanted in header:
            return header.index(wanted)
        if wanted.strip().lower() in lowered:
            return lowered.index(wanted.strip().lower())
        raise DataError(
            f"{what} column {wanted!r} not found in {csv_path}; columns are: {', '.join(header)} — "
            f"pass one of those as the {what} column"
        )
    for name in defaults:
        if name in lowered:
            return lowered.index(name)
    if fallback >= len(header):
        raise DataError(
            f"{csv_path} needs a {what} column but has only {len(header)} column(s) ({', '.join(header)}): "
            "add a header like 'path,label'"
        )
    return fallback


def _from_csv(csv_path: Path, path_column: str | None, label_column: str | None, media: Media = IMAGES) -> Catalog:
    base = csv_path.parent
    try:
        text = csv_path.read_text(encoding="utf-8-sig")  # -sig: Excel writes a byte-order mark
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {csv_path} ({exc}): save it as UTF-8 text") from exc
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise DataError(f"{csv_path} is empty or starts with a blank line: expected a header like 'path,label'")
    reader = csv.reader(lines, delimiter=_delimiter(csv_path, lines[0]))
    header = [h.strip() for h in next(reader)]
    lowered = [h.lower() for h in header]
    known = set(_PATH_COLUMNS) | set(_LABEL_COLUMNS) | {"split"}
    if path_column is None and label_column is None and not known & set(lowered):
        first = (base / header[0]).expanduser() if header[0] else None
        if media.holds(header[0]) or (first is not None and first.is_file()):
            raise DataError(f"{csv_path} has no header row: add a first line like 'path,label'")
    path_i = _pick_column(header, path_column, _PATH_COLUMNS, 0, "path", csv_path)
    label_i = _pick_column(header, label_column, _LABEL_COLUMNS, 1, "label", csv_path)
    if path_i == label_i:
        raise DataError(f"{csv_path}: path and label are the same column ({header[path_i]!r}): name two columns")
    for what, i, wanted, usual in (("paths", path_i, path_column, "path"), ("labels", label_i, label_column, "label")):
        if wanted is None and lowered[i] != usual:  # found by guessing: say which one, so a wrong guess shows
            logger.info("%s: taking column %r for the %s (name another with the %s column option)", csv_path.name, header[i], what, usual)
    split_i = lowered.index("split") if "split" in lowered else None
    if split_i in (path_i, label_i):
        split_i = None

    rows: list[tuple[int, Path, str, str | None]] = []
    missing: list[tuple[int, Path]] = []
    first_line: dict[Path, int] = {}
    for row in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        raw_path, label = _cell(row, path_i), _cell(row, label_i)
        if not raw_path:
            raise DataError(f"{csv_path} line {line}: empty path in column {header[path_i]!r}: fill it or delete the row")
        if not label:
            raise DataError(f"{csv_path} line {line}: empty label in column {header[label_i]!r}: fill it or delete the row")
        split = None
        if split_i is not None:
            value = _cell(row, split_i).lower()
            split = _SPLIT_ALIASES.get(value)
            if split is None and value:
                raise DataError(
                    f"{csv_path} line {line}: unknown split {_cell(row, split_i)!r}: use train, val or test"
                )
        path = (base / Path(raw_path).expanduser()).resolve()  # absolute paths survive the join
        if not path.is_file():
            missing.append((line, path))
            continue
        if path in first_line:
            raise DataError(
                f"{csv_path} line {line}: {raw_path} is already listed on line {first_line[path]}: "
                "list each file once"
            )
        first_line[path] = line
        rows.append((line, path, label, split))
    if missing:
        line, path = missing[0]
        more = f" (and {len(missing) - 1} more missing)" if len(missing) > 1 else ""
        raise DataError(
            f"{csv_path} line {line}: file not found: {path}{more} — fix the path "
            f"(relative paths are read from {base})"
        )

    if split_i is not None:
        given = [r for r in rows if r[3] is not None]
        if not given:
            logger.warning("%s has a split column with no values: ignoring it", csv_path)
            rows = [(line, p, label, None) for line, p, label, _ in rows]
        elif len(given) < len(rows):
            line = next(r[0] for r in rows if r[3] is None)
            raise DataError(f"{csv_path} line {line}: empty split: give every row train, val or test, or none")
        else:
            _check_csv_splits(csv_path, rows)
    files = [LabeledFile(p, label, split) for _, p, label, split in rows]
    return _catalog(files, base, "csv", csv_path)


def _cell(row: list[str], index: int) -> str:
    """A stripped cell; short rows read as empty so the error names the empty value, not an IndexError."""
    return row[index].strip() if index < len(row) else ""


def _check_csv_splits(csv_path: Path, rows: list[tuple[int, Path, str, str | None]]) -> None:
    """The same rule as split folders: every class must have training images."""
    train_classes = {label for _, _, label, split in rows if split == "train"}
    if not train_classes:
        raise DataError(f"{csv_path} has a split column but no train rows: mark some rows as train")
    for line, _, label, split in rows:
        if label not in train_classes:
            raise DataError(
                f"{csv_path} line {line}: class {label!r} appears in {split} but has no train rows: "
                "add training images for it or remove it"
            )
