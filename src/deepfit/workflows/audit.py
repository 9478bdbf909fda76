"""`deepfit data audit DATA`: what in a labelled data set would make results wrong or optimistic, written once over the
task interface for every task and modality. Nothing in DATA is changed.

    read + split      as `deepfit train` would, with the same seed (the split the audit speaks of is the one training
                      gets); problems the reader warns of are collected
    classes           every split's count per class (Task.class_counts): imbalance and tiny classes
    duplicates        exact copies (content digests), near copies (image pHash; cosine similarity of embeddings),
                      each pair marked as inside one split or across two (a leak)
    labels           (single-label tasks) likely label errors by confident learning and outliers, from embeddings of
                      the network given (--model/--weights, or a run's folder) or hand-made features
    objects           Task.audit_objects: degenerate, doubled or oddly sized boxes and masks
    keep list         --write-clean FILE: the examples to keep (copies leaking into val/test, likely label errors and
                      items with bad objects left out), as a CSV `deepfit train` reads for classification
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepfit.audit.duplicates import (
    NEAR_BITS,
    NEAR_COSINE,
    Pair,
    exact_pairs,
    image_hashes,
    merge_pairs,
    near_embedding_pairs,
    near_hash_pairs,
)
from deepfit.audit.labels import LabelIssues, label_issues, outlier_scores
from deepfit.audit.objects import Finding
from deepfit.config import FeaturesConfig, TrainConfig
from deepfit.data.split import file_digest
from deepfit.errors import ConfigError
from deepfit.log import logger, setup_logging
from deepfit.registry import get_task
from deepfit.runs.folder import check_output_outside_data, new_run_dir
from deepfit.tasks.balance import IMBALANCED, imbalance_ratio
from deepfit.tasks.base import Task, option_values, task_for_data
from deepfit.tasks.classify.text import normalised

TINY_CLASS = 10  # training examples (or images holding it) below which a class is too small to learn or to score
OUTLIER_SHOWN = 0.01  # the most atypical 1% (at least 5) are listed as outliers


@dataclass
class Item:
    """One example as the audit sees it: where it is, its split and label (single-label tasks) and, for text, the text."""

    path: Path
    split: str
    label: str | None = None
    text: str | None = None


@dataclass
class Audit:
    """Everything the audit found; `folder` holds audit.html and the CSVs."""

    task: str
    modality: str
    classes: list[str]
    items: list[Item]
    counts: dict[str, np.ndarray]  # split -> (K,) examples (objects, pixels) of each class
    holding: dict[str, np.ndarray]  # split -> (K,) items holding each class
    pairs: list[Pair] = field(default_factory=list)
    issues: LabelIssues | None = None
    outliers: np.ndarray | None = None  # (N,) low = atypical; None without embeddings
    embedded: np.ndarray | None = None  # item indexes the embeddings (and issues, outliers) are of
    findings: list[Finding] = field(default_factory=list)
    judged: list[int] = field(default_factory=list)  # --run: the items whose object labels a trained run judged
    judged_quality: np.ndarray | None = None  # their label quality in [0, 1] (cleanlab's; low: likely wrong)
    judged_flagged: set[int] = field(default_factory=set)  # the items it flags
    read_warnings: list[str] = field(default_factory=list)
    features: str = ""
    folder: Path | None = None
    clean: Path | None = None

    def cross_split(self) -> list[Pair]:
        return [p for p in self.pairs if self.items[p.first].split != self.items[p.second].split]

    def flagged_labels(self) -> list[int]:
        """Item indexes of the likely label errors, most likely first (examples' labels, or objects' with --run)."""
        if self.judged_quality is not None:
            return sorted(self.judged_flagged, key=lambda i: self.judged_quality[self.judged.index(i)])
        if self.issues is None or self.embedded is None:
            return []
        return [int(self.embedded[i]) for i in self.issues.ranked]

    def outlier_items(self) -> list[tuple[int, float]]:
        """(item, score) of the most atypical items, most atypical first."""
        if self.outliers is None or self.embedded is None:
            return []
        shown = max(5, round(OUTLIER_SHOWN * len(self.outliers)))
        order = np.argsort(self.outliers, kind="stable")[:shown]
        return [(int(self.embedded[i]), float(self.outliers[i])) for i in order]

    def tiny_classes(self) -> list[str]:
        train = self.holding.get("train", np.zeros(len(self.classes)))
        return [c for c, n in zip(self.classes, train, strict=True) if n < TINY_CLASS]

    def imbalance(self) -> float:
        return imbalance_ratio(sum(self.counts.values()))

    def headline(self) -> str:
        leaks = len(self.cross_split())
        parts = [f"{len(self.items)} items", f"{len(self.pairs)} duplicate pairs ({leaks} across splits)"]
        if self.issues is not None or self.judged_quality is not None:
            parts.append(f"{len(self.flagged_labels())} likely label errors")
        if self.findings:
            parts.append(f"{len(self.findings)} object findings")
        ratio = self.imbalance()
        if ratio >= IMBALANCED:
            parts.append(f"classes imbalanced {ratio:.1f}:1")
        if self.tiny_classes():
            parts.append(f"{len(self.tiny_classes())} tiny classes")
        return "audit: " + ", ".join(parts) + (f"; page: {self.folder / 'audit.html'}" if self.folder else "")


def audit_data(data: str | Path, *, task: str | None = None, model: str | None = None, weights: str | None = None,
               pretrained: bool = False, layer: str | None = None, run: str | Path | None = None,
               near_bits: int = NEAR_BITS, near_cosine: float = NEAR_COSINE, write_clean: str | Path | None = None, output: str | Path = "runs",
               name: str | None = None, seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.15,
               modality: str = "auto", device: str = "auto", data_options: dict[str, Any] | None = None) -> Audit:
    """Audit `data` (read as `task`, found from the data when None) and write the page; see the module doc."""
    from deepfit.audit.page import write_audit

    setup_logging()
    given = {k: v for k, v in (data_options or {}).items() if v is not None}
    chosen = get_task(task) if task else task_for_data(data, given)
    options = option_values(chosen, given, chosen.data_options, "data audit")
    clean = Path(write_clean).expanduser().resolve() if write_clean else None
    if clean is not None and clean.exists():
        raise ConfigError(f"--write-clean {write_clean}: the file exists; deepfit never overwrites a file: choose a new name")
    config = TrainConfig(task=chosen.name, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction,
                         modality=modality if chosen.name == "classify" else "auto")
    with _collect_warnings() as read_warnings:
        dataset = chosen.read(data, config, **options)
        splits = chosen.split(dataset, config)
    check_output_outside_data(output, dataset.root)
    if clean is not None:
        check_output_outside_data(clean.parent, dataset.root)
    found = _gather(chosen, dataset, splits, read_warnings)
    logger.info(f"auditing {len(found.items)} {found.modality} items in {len(found.classes)} classes")
    digests = [_digest(item) for item in found.items]
    groups = [exact_pairs(digests)]
    if found.modality == "image":
        groups.append([p for p in near_hash_pairs(image_hashes([i.path for i in found.items]), near_bits) if p.score > 0 or
                       digests[p.first] != digests[p.second]])
    embedding = FeaturesConfig(model=model or "handmade", weights=weights, pretrained=pretrained, layer=layer, modality=found.modality, seed=seed,
                               val_fraction=val_fraction, test_fraction=test_fraction, device=device)
    if all(item.label is not None for item in found.items) and len(found.classes) >= 2:
        _embed_examples(found, dataset, config, embedding, groups, near_cosine)
    elif found.modality == "image":  # detection, segmentation: the images themselves (near copies, outliers)
        _embed_images(found, embedding, groups, near_cosine)
    found.pairs = merge_pairs(*groups)
    ordered = [s for name in ("train", "val", "test") for s in splits.get(name, [])]  # the order of found.items
    found.findings = chosen.audit_objects(dataset, ordered)
    if run is not None:
        found.judged, found.judged_quality, found.judged_flagged = chosen.judge_labels(run, dataset, ordered)
    found.folder = new_run_dir(output, name, "audit")
    write_audit(found, found.folder)
    if clean is not None:
        found.clean = _write_keep_list(found, clean)
    logger.info(found.headline())
    return found


def _gather(task: Task, dataset: Any, splits: dict[str, list], read_warnings: list[str]) -> Audit:
    items, counts, holding = [], {}, {}
    modality = dataset.record.get("modality") or task.modality
    for split in ("train", "val", "test"):
        members = splits.get(split) or []
        held = task.class_counts(dataset, members) if members else np.zeros((0, len(dataset.classes)))
        counts[split], holding[split] = held.sum(0), (held > 0).sum(0)
        for s in members:
            items.append(Item(Path(s.path), split, getattr(s, "label", None), getattr(s, "text", None)))
    return Audit(task.name, modality, list(dataset.classes), items, counts, holding, read_warnings=read_warnings)


def _digest(item: Item) -> str | None:
    """What makes two items exact copies: the same text once case and spaces are folded (as training's own duplicate
    check compares texts), or the same file bytes; None for a file that cannot be read."""
    if item.text is not None:
        return normalised(item.text)
    try:
        return file_digest(item.path)
    except OSError:
        return None


def _embed_examples(found: Audit, dataset: Any, config: TrainConfig, features_config: FeaturesConfig,
                    groups: list[list[Pair]], near_cosine: float) -> None:
    """Embeddings of every labelled example (any modality, cached as `deepfit features` caches them): near copies,
    outliers and label errors."""
    from deepfit.workflows.features import extract_features

    features = extract_features(dataset.root, features_config, catalog=dataset.source)
    where = {str(item.path): i for i, item in enumerate(found.items)}
    rows = [where.get(str(p)) for p in features.paths]
    keep = [k for k, r in enumerate(rows) if r is not None]
    x = features.features[keep] if len(keep) < len(rows) else features.features
    name = f"{features.model} ({features.layer})" if features.layer else features.model
    _use_embeddings(found, x, np.array([rows[k] for k in keep], dtype=np.int64), name, groups, near_cosine)
    index = {c: k for k, c in enumerate(found.classes)}
    labels = np.array([index[found.items[i].label] for i in found.embedded], dtype=np.int64)
    found.issues = label_issues(x, labels, len(found.classes), config.seed)


def _embed_images(found: Audit, features_config: FeaturesConfig, groups: list[list[Pair]], near_cosine: float) -> None:
    """Embeddings of the images of a detection or segmentation data set: near copies and outliers (their labels are
    objects, judged by Task.audit_objects)."""
    from deepfit.engine.device import resolve_device
    from deepfit.workflows.extraction import extract_cached, load_backbone

    backbone = load_backbone(features_config, 1)
    result = extract_cached(backbone, [item.path for item in found.items], features_config, resolve_device(features_config.device))
    name = f"{backbone.name} ({backbone.layer})" if backbone.layer else backbone.name
    _use_embeddings(found, result.features, np.array(result.kept, dtype=np.int64), name, groups, near_cosine)


def _use_embeddings(found: Audit, x: Any, rows: np.ndarray, name: str, groups: list[list[Pair]], near_cosine: float) -> None:
    """(N, D) embeddings of the items `rows`: their near copies and outlier scores."""
    found.embedded, found.features = rows, name
    groups.append(near_embedding_pairs(x, list(rows), near_cosine))
    found.outliers = outlier_scores(x)


def _write_keep_list(found: Audit, path: Path) -> Path:
    """The examples to keep: all but the later copy of a pair across splits (val/test copies of training items go),
    the likely label errors and the items with object findings."""
    order = {"train": 0, "val": 1, "test": 2}
    drop = {max((p.first, p.second), key=lambda i: (order[found.items[i].split], i)) for p in found.cross_split()}
    drop |= set(found.flagged_labels()) | {f.item for f in found.findings}
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("x", newline="", encoding="utf-8") as f:  # "x": never overwrite
        writer = csv.writer(f)
        text = found.modality == "text"
        writer.writerow(["text" if text else "path", "label", "split"])
        for i, item in enumerate(found.items):
            if i not in drop:
                writer.writerow([item.text if text else item.path, item.label or "", item.split])
    logger.info(f"kept {len(found.items) - len(drop)} of {len(found.items)} examples in {path}")
    return path


class _Collector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


class _collect_warnings:  # noqa: N801 - a context manager, used like a function
    """The warnings deepfit logs while reading the data (unreadable files, boxes clipped, ...), for the page."""

    def __enter__(self) -> list[str]:
        self.handler = _Collector()
        logger.addHandler(self.handler)
        return self.handler.messages

    def __exit__(self, *exc: object) -> None:
        logger.removeHandler(self.handler)
