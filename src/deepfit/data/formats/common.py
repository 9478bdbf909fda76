"""What every label-format reader needs: folders, images and splits found by name, the dataset YAML and its
class names, and the bookkeeping of bad labels.

Images pair with their labels by relative folder and stem (`images_under` gives that key), and a
sample's split comes from the folder names on its path (`split_of`). Bad labels are warned about one by
one up to `WARN_LIMIT` of a kind (then only counted, with a summary line from `warn_rest`), and more
than a share of them is a DataError that lists the first ones (`check_bad_share`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from PIL import Image

from deepfit.data.media import IMAGE_EXTENSIONS
from deepfit.errors import DataError
from deepfit.log import logger

WARN_LIMIT = 100  # individual warnings of one kind before the rest are only counted (a summary line follows)
YAML_NAMES = ("data.yaml", "dataset.yaml", "config.yaml", "data.yml", "dataset.yml", "config.yml")
SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
_SHOWN = 20  # bad labels a DataError lists before it only counts the rest


# --- folders, images and splits --------------------------------------------------------------------


def child_dir(folder: Path, name: str) -> Path | None:
    """`folder/name`, matching the name case-insensitively."""
    exact = folder / name
    if exact.is_dir():
        return exact
    for entry in folder.iterdir():
        if entry.is_dir() and entry.name.lower() == name.lower():
            return entry
    return None


def split_of(parts: tuple[str, ...], named: dict[str, str] | None = None) -> str | None:
    """The split ("train", "val" or "test") of the first folder name in `parts` that names one (or that
    `named` maps to one), or None."""
    for part in parts:
        if named and part in named:
            return named[part]
        low = part.lower()
        for alias, split in SPLIT_ALIASES.items():
            if low == alias or low.startswith(alias) and low[len(alias):].isdigit():  # train2017
                return split
    return None


def images_under(folder: Path) -> dict[tuple[str, str], Path]:
    """(relative folder, stem) -> image, for every image below `folder`."""
    found: dict[tuple[str, str], Path] = {}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = Path(dirpath).relative_to(folder).as_posix()
        for name in sorted(filenames):
            stem, ext = os.path.splitext(name)
            if ext.lower() in IMAGE_EXTENSIONS and not name.startswith("."):
                found.setdefault((rel, stem), Path(dirpath, name))
    return found


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the image's header, as viewers show it (EXIF orientations 5-8 swap the sides)."""
    with Image.open(path) as img:
        return img.size[::-1] if img.getexif().get(0x0112, 1) in (5, 6, 7, 8) else img.size


# --- the dataset YAML and class names --------------------------------------------------------------


def find_dataset_yaml(path: Path) -> Path | None:
    """`path` itself when it is a file, else the dataset YAML in the folder: the first of YAML_NAMES, or
    the only *.yaml / *.yml there."""
    if path.is_file():
        return path
    for name in YAML_NAMES:
        if (path / name).is_file():
            return path / name
    found = sorted(path.glob("*.yaml")) + sorted(path.glob("*.yml"))
    return found[0] if len(found) == 1 else None


def read_yaml(yaml_path: Path) -> Any:
    """A dataset YAML's content ({} for an empty file); a DataError when it cannot be read or parsed."""
    import yaml  # only data with a YAML needs it

    try:
        return yaml.safe_load(yaml_path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise DataError(f"cannot read dataset YAML {yaml_path}: {e}") from e


def yaml_class_names(yaml_path: Path, names: Any) -> tuple[list[str], list[int]]:
    """(class names, their ids) from a YAML's ``names:``: a list (ids 0, 1, ...) or an ``{id: name}`` dict
    whose ids may have gaps (names then in id order)."""
    if isinstance(names, list) and names:
        return [str(n) for n in names], list(range(len(names)))
    if isinstance(names, dict) and names:
        try:
            ids = sorted(int(k) for k in names)
        except (TypeError, ValueError) as e:
            raise DataError(f"{yaml_path}: names: keys must be integer class ids ({e})") from e
        by_id = {int(k): str(v) for k, v in names.items()}
        return [by_id[i] for i in ids], ids
    raise DataError(
        f"{yaml_path} has no class names: add `names:` as a list (names: [cat, dog]) or as a dict "
        "of class id to name (names: {0: cat, 1: dog})"
    )


def read_names_file(path: Path) -> list[str]:
    """The class names of a ``classes.txt``: one a line, blank lines skipped."""
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# --- bad labels ------------------------------------------------------------------------------------


def warn_rest(count: int, what: str) -> None:
    """The summary line for the `count` - WARN_LIMIT problems of one kind that were not warned about."""
    if count > WARN_LIMIT:
        logger.warning("... and %d more %s (%d warned above)", count - WARN_LIMIT, what, WARN_LIMIT)


def check_bad_share(count: int, total: int, max_share: float, *, what: str, where: Path, bad: list[str],
                    fix: str) -> None:
    """A DataError listing the first of `bad` when `count` of `total` `what` are bad, more than `max_share`."""
    if count and count > max_share * total:
        shown = "; ".join(bad[:_SHOWN]) + (f"; ... ({len(bad) - _SHOWN} more)" if len(bad) > _SHOWN else "")
        raise DataError(f"{count} of {total} {what} in {where} are bad (more than {max_share:.0%}): {shown} — {fix}")
