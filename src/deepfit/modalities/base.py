"""The modality interface: what a task needs to know of one kind of input (image, sound, text).

A task is "classify" x "image": the task says what to learn and how to score it, the modality how its inputs
are found on disk, decoded and turned from whatever a user holds (a path, a PIL image, an array, a tensor)
into the tensor the task's store and predictor take. Stores and batch augmentation are the modality's own
modules (e.g. `deepfit.modalities.image.store`, `.augment`), which its tasks import directly.
"""

from __future__ import annotations

import glob
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from deepfit.data.media import Media
from deepfit.data.sources import natural_key
from deepfit.errors import DataError
from deepfit.log import logger

MAX_BAD_FRACTION = 0.05  # more unreadable files than this stops a run, for every modality


class Modality(Protocol):
    name: str  # "image"
    noun: str  # "images": what a folder holds, for messages
    extensions: frozenset[str]  # lower-case suffixes of the files it reads

    def load(self, item: Any) -> torch.Tensor:
        """Any input a user may hold (a path or an in-memory object) -> its decoded tensor."""
        ...

    def expand(self, items: Iterable[str | Path]) -> list[Path]:
        """Files as given, folders searched recursively for this modality's files, globs expanded."""
        ...

    @property
    def media(self) -> Media:
        """The files data discovery looks for, and the words its messages use."""
        ...


def expand_paths(items: Iterable[str | Path], extensions: frozenset[str], noun: str = "files") -> list[Path]:
    """Files as given, folders searched recursively for files with `extensions`, glob patterns expanded; each part
    in natural order (img2 before img10). A missing file, an empty folder or a pattern matching nothing is an error."""
    out: list[Path] = []
    for item in items:
        text = str(item)
        path = Path(text)
        if path.is_dir():
            found = [p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in extensions]
            if not found:
                raise DataError(f"no {noun} found in folder {path}")
            out += sorted(found, key=lambda p: natural_key(p.as_posix()))
        elif path.is_file():
            out.append(path)
        elif any(ch in text for ch in "*?["):
            matches = sorted((Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file()),
                             key=lambda p: natural_key(p.as_posix()))
            if not matches:
                raise DataError(f"the pattern {text!r} matches no files")
            out += matches
        else:
            raise DataError(f"file not found: {text}")
    return out


def is_path_list(inputs: Any) -> bool:
    """A path, a pattern, or a list of them (rather than in-memory inputs such as arrays)."""
    if isinstance(inputs, str | Path):
        return True
    return isinstance(inputs, list | tuple) and bool(inputs) and all(isinstance(i, str | Path) for i in inputs)


def names_many(inputs: Any) -> bool:
    """Whether a single path stands for several inputs: a folder or a glob pattern."""
    return isinstance(inputs, str | Path) and (Path(inputs).is_dir() or any(c in str(inputs) for c in "*?["))


@dataclass(frozen=True)
class BadFile:
    """A file that could not be decoded, and why (for the warning and the run's skipped.csv)."""

    path: Path
    reason: str


def check_unreadable(bad: list[BadFile], total: int, what: str, one: str = "file",
                     max_fraction: float = MAX_BAD_FRACTION) -> None:
    """Warn about each unreadable file (`one`: "image", "sound file"); more than `max_fraction` of the `total` files
    (`what`: "images", "train clips") is an error that lists them."""
    if not bad:
        return
    if len(bad) > max_fraction * total:
        listing = "; ".join(f"{b.path} ({b.reason})" for b in bad[:20])
        more = f" and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise DataError(
            f"{len(bad)} of {total} {what} ({len(bad) / total:.0%}) cannot be read, more than {max_fraction:.0%}: "
            f"{listing}{more}. Fix or remove them and run again"
        )
    for b in bad:
        logger.warning(f"skipped unreadable {one} {b.path}: {b.reason}")
