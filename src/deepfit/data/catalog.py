"""What data discovery finds: labelled files (`LabeledFile`), the set of them with its classes (`Catalog`), and the
natural order both are sorted in."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from deepfit.errors import DataError

# Split names as written on disk or in a CSV, mapped to the names deepfit uses.
SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}
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
    fold: str | None = None  # the data's own cross-validation fold (see workflows/crossval.py)

    def sort_key(self) -> tuple:
        """(split, label, path) in natural order; unsplit files first."""
        return (
            -1 if self.split is None else SPLIT_ORDER.get(self.split, len(SPLIT_ORDER)),
            natural_key(self.label),
            natural_key(self.path.as_posix()),
        )


@dataclass(frozen=True)
class LabeledText(LabeledFile):
    """One labelled text: `path` names where it came from ("news.csv:17", a file and its line, or a .txt file), so
    splits, duplicates and reports treat it as they treat a file; the text itself travels with it."""

    text: str = ""


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


def make_catalog(files: list[LabeledFile], root: Path, layout: str, source: Path) -> Catalog:
    classes = sorted({f.label for f in files}, key=natural_key)
    if len(classes) < 2:
        found = ", ".join(classes) if classes else "none"
        raise DataError(
            f"need at least 2 classes to train a classifier, found {len(classes)} in {source} ({found}): "
            "add a folder (or CSV label) per class"
        )
    return Catalog(sorted(files, key=LabeledFile.sort_key), classes, root, layout)
