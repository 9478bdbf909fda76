"""Classification data on the image modality: every split decoded into uint8 stores, the training images'
channel statistics (for normalising from scratch), and the files a run lists beside its split (byte-identical
images found in two splits, images that could not be read)."""

from __future__ import annotations

import csv
import io
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from deepfit.config import TrainConfig
from deepfit.data.sources import Catalog, LabeledFile
from deepfit.data.split import cross_split_duplicates, label_conflicts, leaked_groups
from deepfit.fileio import atomic_write_text
from deepfit.log import logger
from deepfit.modalities.base import BadFile, check_unreadable
from deepfit.modalities.image.store import ImageStore


def load_split_stores(
    splits: dict[str, list[LabeledFile]], classes: list[str], size: int, config: TrainConfig
) -> tuple[dict[str, ImageStore], list[BadFile]]:
    """Decode every split; unreadable files are dropped, and too many of them overall is an error."""
    index = {c: i for i, c in enumerate(classes)}
    stores, bad = {}, []
    for name, files in splits.items():
        store, bad_here = ImageStore.load(
            [f.path for f in files], [index[f.label] for f in files], size,
            cache=config.cache, workers=config.workers, what=f"{name} images", max_bad_fraction=1.0,
        )
        stores[name] = store
        bad += bad_here
    check_unreadable(bad, sum(len(f) for f in splits.values()), "images", "image")
    warn_tiny_images([f.path for files in splits.values() for f in files])
    return stores, bad


TINY_SIDE = 8  # pixels: an image with a side below this holds next to nothing to learn from


def warn_tiny_images(paths: list[Path], max_bytes: int = 16384) -> list[Path]:
    """Warn once, with a count and the first few names, about images with a side under TINY_SIDE pixels.

    Only small files are opened (a header read each): a tiny image is a small file."""
    tiny = []
    for path in paths:
        try:
            if path.stat().st_size <= max_bytes:
                with Image.open(path) as img:
                    if min(img.size) < TINY_SIDE:
                        tiny.append(path)
        except (OSError, ValueError, SyntaxError):
            continue  # unreadable files are reported elsewhere
    if tiny:
        names = ", ".join(str(p) for p in tiny[:3]) + (", ..." if len(tiny) > 3 else "")
        logger.warning(f"{len(tiny)} image(s) have a side under {TINY_SIDE} pixels and are upscaled to train: {names}")
    return tiny


def channel_stats(store: ImageStore, limit: int = 2048) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of (up to `limit`) training images, in [0, 1] units, for scratch training."""
    total = torch.zeros(3, dtype=torch.float64)
    total_sq = torch.zeros(3, dtype=torch.float64)
    count = 0
    for images, _, _ in store.batches(256, shuffle=False):
        x = images.double() / 255.0
        total += x.sum(dim=(0, 2, 3))
        total_sq += (x * x).sum(dim=(0, 2, 3))
        count += x.shape[0] * x.shape[2] * x.shape[3]
        if count >= limit * x.shape[2] * x.shape[3]:
            break
    mean = total / count
    std = (total_sq / count - mean**2).clamp(min=1e-6).sqrt()
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


def report_duplicates(splits: dict[str, list[LabeledFile]], run_dir: Path) -> int:
    for group in label_conflicts(splits):  # the same image under two classes: one of the labels is wrong
        a, b = group[0], next(f for f in group if f.label != group[0].label)
        logger.warning(f"the same image is labelled {a.label!r} ({a.path}) and {b.label!r} ({b.path}): fix one of the labels")
    groups = cross_split_duplicates(splits)
    if not groups:
        return 0
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["group", "split", "path"])
    for g, group in enumerate(groups, 1):
        for f in group:
            writer.writerow([g, f.split, f.path])
    atomic_write_text(run_dir / "duplicates.csv", out.getvalue())
    example = " = ".join(f"{f.split}:{f.path}" for f in groups[0][:2])
    logger.warning(
        f"{len(groups)} images occur byte-identical in more than one split (e.g. {example}); test scores are "
        f"optimistic while they stay. All listed in {run_dir / 'duplicates.csv'}"
    )
    return len(groups)


def write_skipped(bad: list[BadFile], run_dir: Path) -> None:
    if not bad:
        return
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["path", "reason"])
    writer.writerows([b.path, b.reason] for b in bad)
    atomic_write_text(run_dir / "skipped_files.csv", out.getvalue())
    logger.warning(f"{len(bad)} unreadable images were skipped; listed in {run_dir / 'skipped_files.csv'}")


def summarize_catalog(catalog: Catalog, size_sample: int = 2000, sound: bool = False, text: bool = False) -> list[Any]:
    """`deepfit data check` for class folders, a CSV or labelled file names: the classes with their files per split,
    image sizes (or, for sound, durations, sample rates and channels), read from the headers of up to `size_sample`
    files, unreadable files, and files that would make scores optimistic (byte-identical in two splits, or under two
    labels; for sound, groups in two splits)."""
    from rich.table import Table

    noun = "clips" if sound else "texts" if text else "images"

    splits = sorted({f.split or "unsplit" for f in catalog.files}, key=["train", "val", "test", "unsplit"].index)
    counts = Counter((f.label, f.split or "unsplit") for f in catalog.files)
    lines: list[Any] = [f"{catalog.layout} in {catalog.root}: {len(catalog.files)} {noun} in {len(catalog.classes)} classes"
                        + ("" if catalog.has_splits else " (no split given: deepfit train makes a stratified, seeded one)")]
    table = Table(title=f"{noun} per class")
    table.add_column("class")
    for split in splits:
        table.add_column(split, justify="right")
    for label in catalog.classes:
        table.add_row(label, *(str(counts[label, split]) for split in splits))
    lines.append(table)
    unreadable: list[str] = []
    if text:  # lengths in tokens, and what would make scores optimistic: the same text in two splits, labels that differ
        from deepfit.tasks.classify.text_check import describe_texts  # only by case or spaces

        return lines + describe_texts(catalog)
    if sound:
        from deepfit.tasks.classify.sound import describe_clips

        info, unreadable = describe_clips([f.path for f in catalog.files], size_sample)
        lines += info
    sizes = []
    for i, f in enumerate([] if sound else catalog.files):
        try:
            with Image.open(f.path) as img:  # the header only: no pixels are decoded
                if i < size_sample:
                    sizes.append(img.size)
        except Exception as e:  # noqa: BLE001 - any decoder error: report the file
            unreadable.append(f"{f.path} ({type(e).__name__})")
    if sizes:
        widths, heights = sorted(w for w, _ in sizes), sorted(h for _, h in sizes)
        lines.append(f"image sizes (width x height, {len(sizes)} images): smallest {widths[0]}x{heights[0]}, median "
                     f"{widths[len(widths) // 2]}x{heights[len(heights) // 2]}, largest {widths[-1]}x{heights[-1]}")
    by_split: dict[str, list[LabeledFile]] = {}
    for f in catalog.files:
        by_split.setdefault(f.split or "unsplit", []).append(f)
    problems = {
        f"unreadable {noun}": unreadable,
        f"byte-identical {noun} in two splits": [" = ".join(str(f.path) for f in g) for g in cross_split_duplicates(by_split)],
        f"byte-identical {noun} under two labels": [" = ".join(f"{f.label}:{f.path}" for f in g) for g in label_conflicts(by_split)],
    }
    if any(f.group is not None for f in catalog.files):
        leaked = leaked_groups([f.split or "unsplit" for f in catalog.files], [f.group for f in catalog.files])
        problems["groups in two splits"] = [f"{g}: {', '.join(s)}" for g, s in leaked.items()]
        lines.append(f"groups: {len({f.group for f in catalog.files})} (a group is kept in one split)")
    for kind, found in problems.items():
        lines.append(f"{kind}: {len(found)}")
        lines += [f"  {entry}" for entry in found[:50]] + ([f"  ... and {len(found) - 50} more"] if len(found) > 50 else [])
    return lines
