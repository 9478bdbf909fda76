"""Train/val/test splits that are stratified, reproducible from a seed, saved next to a run, and leak-checked.

A split is saved as a CSV so a later `evaluate` scores exactly the images the model never trained on,
even if the random generator or deepfit's splitting rule changes.
"""

from __future__ import annotations

import csv
import hashlib
import io
import random
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

from deepfit.data.sources import Catalog, LabeledFile, natural_key
from deepfit.errors import ConfigError, DataError
from deepfit.fileio import atomic_write_text
from deepfit.log import logger

SPLITS = ("train", "val", "test")
_HEADER = ["path", "label", "split"]
_CHUNK = 1 << 20


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not (0 <= value < 1):  # also rejects NaN
            raise ConfigError(f"{name} must be in [0, 1), got {value}: use e.g. 0.15")
    if val_fraction + test_fraction >= 1:
        raise ConfigError(
            f"val_fraction + test_fraction must be below 1 so training keeps some images, "
            f"got {val_fraction} + {test_fraction}"
        )


def _class_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """How many of a class's `n` files go to val and test."""
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    if n >= 3:  # enough images to measure every class in every held-out split
        n_val = max(n_val, 1) if val_fraction > 0 else 0
        n_test = max(n_test, 1) if test_fraction > 0 else 0
    while n_val + n_test > n - 1:  # training needs at least one example of each class
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    return n_val, n_test


def _sorted(files: list[LabeledFile]) -> list[LabeledFile]:
    return sorted(files, key=LabeledFile.sort_key)


def stratified_split(
    files: list[LabeledFile], val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0
) -> dict[str, list[LabeledFile]]:
    """Split every class by the same fractions, so rare classes are present in val and test too.

    Each class is shuffled by its own generator seeded from (seed, class name): adding or removing
    a class leaves the other classes' splits unchanged.
    """
    _check_fractions(val_fraction, test_fraction)
    by_class: dict[str, list[LabeledFile]] = defaultdict(list)
    for f in files:
        by_class[f.label].append(f)
    out: dict[str, list[LabeledFile]] = {s: [] for s in SPLITS}
    for label in sorted(by_class, key=natural_key):
        # Sort first so the result depends on the seed only, not on the order the files were listed in.
        members = sorted(by_class[label], key=lambda f: natural_key(f.path.as_posix()))
        random.Random(f"{seed}:{label}").shuffle(members)  # str seeds hash stably (sha512), not via hash()
        n_val, n_test = _class_counts(len(members), val_fraction, test_fraction)
        out["val"] += members[:n_val]
        out["test"] += members[n_val : n_val + n_test]
        out["train"] += members[n_val + n_test :]
    return {s: _sorted([replace(f, split=s) for f in out[s]]) for s in SPLITS}


def grouped_split(labels: Sequence[str], groups: Sequence[str], val_fraction: float = 0.15, test_fraction: float = 0.15,
                  seed: int = 0) -> list[str]:
    """The split ("train", "val" or "test") of each item, whole groups at a time, so that no speaker or source recording
    is heard in training and again in test; each split's mix of classes is kept as close to the whole's as the groups
    allow (scikit-learn's StratifiedGroupKFold). A held-out split takes about `fraction` of the groups, and at least
    one: with 6 speakers and 0.15, one speaker is the test set and one the validation set."""
    import warnings

    import numpy as np
    from sklearn.model_selection import StratifiedGroupKFold

    _check_fractions(val_fraction, test_fraction)
    if len(labels) != len(groups):
        raise ValueError(f"{len(labels)} labels but {len(groups)} groups")
    out = ["train"] * len(labels)
    # val's share of what test leaves, so that both are shares of the whole
    for name, fraction in (("test", test_fraction), ("val", val_fraction / (1 - test_fraction))):
        pool = [i for i, s in enumerate(out) if s == "train"]
        names = sorted({groups[i] for i in pool}, key=natural_key)
        if fraction <= 0 or not pool:
            continue
        if len(names) < 2:
            logger.warning(f"only one group ({names[0]}) is left for training: no {name} split can be held out by group")
            continue
        folds = min(len(names), max(2, round(1 / fraction)))
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        with warnings.catch_warnings():  # "the least populated class has fewer members than n_splits": expected here
            warnings.simplefilter("ignore", UserWarning)
            _, held = next(splitter.split(np.zeros(len(pool)), [labels[i] for i in pool], [groups[i] for i in pool]))
        for j in held:
            out[pool[j]] = name
    return out


def leaked_groups(splits: Sequence[str | None], groups: Sequence[str | None]) -> dict[str, list[str]]:
    """group -> the splits it is in, for every group found in more than one split (a speaker in train and in test
    makes the test score say how well the model knows that speaker, not how well it hears a new one)."""
    seen: dict[str, set[str]] = defaultdict(set)
    for split, group in zip(splits, groups, strict=True):
        if group is not None and split is not None:
            seen[group].add(split)
    order = {s: i for i, s in enumerate(SPLITS)}
    return {g: sorted(s, key=lambda x: order.get(x, len(order))) for g, s in sorted(seen.items(), key=lambda kv: natural_key(kv[0]))
            if len(s) > 1}


def group_key(f: LabeledFile) -> str:
    """The group a file is split with: its own, or, with none, a group of its own."""
    return f.group if f.group is not None else f"\0{f.path}"


def split_files_by_group(files: list[LabeledFile], val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[LabeledFile]]:
    """`grouped_split` of labelled files, as split -> its files (each marked with its split)."""
    names = grouped_split([f.label for f in files], [group_key(f) for f in files], val_fraction, test_fraction, seed)
    return {s: _sorted([replace(f, split=n) for f, n in zip(files, names, strict=True) if n == s]) for s in SPLITS}


def warn_leaked_groups(splits: Sequence[str | None], groups: Sequence[str | None]) -> dict[str, list[str]]:
    """Warn, naming them, about groups heard in more than one of the splits the data gave; returns them."""
    leaked = leaked_groups(splits, groups)
    if leaked:
        shown = "; ".join(f"{g} in {' and '.join(s)}" for g, s in list(leaked.items())[:5])
        more = f" and {len(leaked) - 5} more" if len(leaked) > 5 else ""
        logger.warning(f"{len(leaked)} groups are in more than one split ({shown}{more}): the test score then measures "
                       "groups the model has heard; give each group one split, or drop the split and let deepfit split by group")
    return leaked


def resolve_splits(
    catalog: Catalog, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[LabeledFile]]:
    """The splits to train with: the source's own when it has them, else a stratified split.

    A source with train but no val gets val carved out of train; one with no test keeps "test"
    empty, and the caller decides how to warn.
    """
    grouped = any(f.group is not None for f in catalog.files)
    if not catalog.has_splits:
        if not grouped:
            return stratified_split(catalog.files, val_fraction, test_fraction, seed)
        return split_files_by_group(catalog.files, val_fraction, test_fraction, seed)
    if grouped:
        warn_leaked_groups([f.split or "train" for f in catalog.files], [f.group for f in catalog.files])
    out: dict[str, list[LabeledFile]] = {s: [] for s in SPLITS}
    for f in catalog.files:
        out[f.split or "train"].append(f)
    if not out["val"] and out["train"] and val_fraction > 0:
        carve = split_files_by_group if grouped else stratified_split  # grouped: whole groups of the training split
        carved = carve(out["train"], val_fraction, 0.0, seed)
        out["train"], out["val"] = carved["train"], carved["val"]
        logger.info(
            "the data defines no validation split: holding out %d of %d training files (val_fraction=%s)",
            len(out["val"]), len(out["train"]) + len(out["val"]), val_fraction,
        )
    return {s: _sorted(out[s]) for s in SPLITS}


def save_split(splits: dict[str, list[LabeledFile]], csv_path: Path, root: Path) -> None:
    """Write `path,label,split` rows; paths relative to `root` when inside it, so the data can move.

    Written to a temporary file and renamed, so an interrupted run never leaves half a split.
    """
    csv_path = Path(csv_path)
    root = Path(root).resolve()
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(_HEADER)
    for split in sorted(splits, key=lambda s: SPLITS.index(s) if s in SPLITS else len(SPLITS)):
        for f in splits[split]:
            try:
                shown = f.path.relative_to(root).as_posix()
            except ValueError:
                shown = f.path.as_posix()
            writer.writerow([shown, f.label, split])
    atomic_write_text(csv_path, buffer.getvalue())


def load_split(csv_path: Path, root: Path) -> dict[str, list[LabeledFile]]:
    """Read a split written by `save_split`; relative paths are taken from `root`."""
    csv_path = Path(csv_path)
    root = Path(root).resolve()
    if not csv_path.is_file():
        raise DataError(f"split file not found: {csv_path} — check the run folder")
    out: dict[str, list[LabeledFile]] = {s: [] for s in SPLITS}
    with csv_path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header != _HEADER:
            raise DataError(
                f"{csv_path} is not a deepfit split file (header {header}, expected {','.join(_HEADER)}): "
                "restore it from a copy of the run folder (a new split would change the test set)"
            )
        for row in reader:
            if not row:
                continue
            line = reader.line_num
            if len(row) != 3 or row[2] not in SPLITS:
                raise DataError(
                    f"{csv_path} line {line}: expected path,label,split with split one of "
                    f"{', '.join(SPLITS)}, got {row}: restore the file from a copy of the run folder"
                )
            raw, label, split = row
            path = Path(raw) if Path(raw).is_absolute() else root / raw
            if not path.is_file():
                raise DataError(
                    f"{csv_path} line {line}: file not found: {path} — the data changed since the split "
                    f"was saved: restore the file, or if the data folder moved, pass --data-root NEW_PLACE "
                    "(the run keeps its split and test set)"
                )
            out[split].append(LabeledFile(path, label, split))
    return {s: _sorted(out[s]) for s in SPLITS}


def file_digest(path: Path) -> str:
    """blake2b of the file's bytes, read in chunks so large files do not fill memory."""
    digest = hashlib.blake2b()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def cross_split_duplicates(splits: dict[str, list[LabeledFile]]) -> list[list[LabeledFile]]:
    """Groups of byte-identical files found in more than one split: each is a train/test leak.

    Files are grouped by size first and only sizes shared across splits are hashed, so a clean
    dataset costs one stat per file.
    """
    groups = _identical_groups(splits, lambda f: f.split, missing_ok=False)
    if groups:
        logger.debug("found %d groups of identical files across splits", len(groups))
    return groups


def _identical_groups(splits: dict[str, list[LabeledFile]], key: Callable[[LabeledFile], Any], *,
                      missing_ok: bool) -> list[list[LabeledFile]]:
    """Groups of byte-identical files whose `key` (their split, their label) differs within the group. Files are
    grouped by size first and only sizes shared by files of different keys are hashed; a path listed twice is
    hashed once. A file that cannot be read is skipped with `missing_ok`, an error otherwise."""
    by_size: dict[int, list[LabeledFile]] = defaultdict(list)
    for split, files in splits.items():
        for f in files:
            f = f if f.split == split else replace(f, split=split)
            try:
                by_size[f.path.stat().st_size].append(f)
            except OSError as exc:
                if missing_ok:
                    continue
                raise DataError(f"cannot read {f.path} ({exc.strerror}): check the file still exists") from exc
    digests: dict[Path, str] = {}
    groups: list[list[LabeledFile]] = []
    for same_size in by_size.values():
        if len({key(f) for f in same_size}) < 2:
            continue
        by_digest: dict[str, list[LabeledFile]] = defaultdict(list)
        for f in same_size:
            if f.path not in digests:
                digests[f.path] = file_digest(f.path)
            by_digest[digests[f.path]].append(f)
        groups += [_sorted(g) for g in by_digest.values() if len({key(f) for f in g}) > 1]
    groups.sort(key=lambda g: [f.sort_key() for f in g])
    return groups


# --- image-level splits for detection and segmentation --------------------------------------------------
# Their samples are images with labels inside (objects, a mask), not class-labelled files: there is no class
# to stratify by, so images are drawn at random (seeded), each image in exactly one split.


class _ImageSample(Protocol):
    path: Path  # absolute
    split: str | None  # the split the data's own layout gives it, if any


S = TypeVar("S", bound=_ImageSample)


def split_images(samples: Sequence[S], val_fraction: float, test_fraction: float, seed: int, root: Path) -> dict[str, list[S]]:
    """The data's own train/val/test folders when it has them; otherwise a seeded random split of the images.

    Images without a split of their own (beside a train/ and val/ folder) are training images; a test
    split without val has val carved from train. No training image at all (`root`'s data is all val or
    test) is a DataError."""
    splits: dict[str, list[S]] = {"train": [], "val": [], "test": []}
    for s in samples:
        splits[s.split if s.split in splits else "train"].append(s)
    if not splits["test"] and not splits["val"]:
        n = len(splits["train"])
        splits["test"], splits["train"] = _carve(splits["train"], round(n * test_fraction), seed)
        splits["val"], splits["train"] = _carve(splits["train"], round(n * val_fraction), seed + 1)
    elif not splits["val"]:
        splits["val"], splits["train"] = _carve(splits["train"], round(len(splits["train"]) * val_fraction), seed)
    if not splits["train"]:
        raise DataError(f"no training images in {root}: every image is in a val or test folder")
    return splits


def _carve(pool: list[S], n: int, seed: int) -> tuple[list[S], list[S]]:
    """(n images drawn at random, the rest), each in the pool's order."""
    order = list(range(len(pool)))
    random.Random(seed).shuffle(order)
    taken = set(order[:n])
    return [s for i, s in enumerate(pool) if i in taken], [s for i, s in enumerate(pool) if i not in taken]


def save_image_split(splits: Mapping[str, Sequence[S]], csv_path: Path, root: Path, describe: Callable[[S], str]) -> None:
    """`save_split` for image samples; `describe` fills the label column (e.g. "3 objects")."""
    save_split({k: [LabeledFile(s.path, describe(s), k) for s in v] for k, v in splits.items()}, csv_path, root)


def load_image_split(csv_path: Path, samples: Sequence[S], root: Path) -> dict[str, list[S]]:
    """A split saved by `save_image_split`, matched to a fresh read of the labels by image path."""
    by_path = {s.path: s for s in samples}
    splits = {}
    for name, files in load_split(csv_path, root).items():
        missing = [f.path for f in files if f.path not in by_path]
        if missing:
            raise DataError(f"{len(missing)} images of the run's {name} split are no longer in the labels (e.g. {missing[0]})")
        splits[name] = [by_path[f.path] for f in files]
    return splits


def label_conflicts(splits: dict[str, list[LabeledFile]]) -> list[list[LabeledFile]]:
    """Groups of byte-identical files filed under more than one label, in any split or within one.

    Only files whose size is shared by files of another label are hashed; unreadable files are reported elsewhere."""
    return _identical_groups(splits, lambda f: f.label, missing_ok=True)

