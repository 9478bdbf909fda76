"""Scoring a semantic segmenter (per-class IoU and Dice, mIoU, pixel accuracy) with its report, and prediction
to files (class-index PNGs with the class colours as palette, colour overlays)."""

from __future__ import annotations

import heapq
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from deepfit.data.formats.masks import IGNORE_INDEX as IGNORE
from deepfit.errors import ConfigError, DataError
from deepfit.explain.result import ExplainSettings, Explanation
from deepfit.fileio import atomic_write_text
from deepfit.log import logger
from deepfit.modalities.image.store import decode_rgb
from deepfit.report.gallery import EXAMPLES_PER_CLASS, MAX_EXAMPLE_CLASSES, ClassExamples, crop_around
from deepfit.report.trust import one_class_note, worst_first
from deepfit.tasks.balance import imbalance_note, imbalance_ratio
from deepfit.tasks.details import run_details
from deepfit.tasks.segment.data import SegmentationDataset, SegmentationSample
from deepfit.tasks.segment.objective import (
    confusion_matrix,
    per_image_counts,
    segmentation_intervals,
    segmentation_metrics,
)
from deepfit.tasks.segment.predict import SegmentationPredictor
from deepfit.tasks.segment.store import load_pair

GALLERY_SIZE = 12
GALLERY_HEIGHT = 240  # pixels of each panel (image, truth, prediction) in the report


@dataclass
class SegmentationEvaluation:
    split: str
    metrics: dict[str, Any]
    report: Path


def score_samples(run: Path, predictor: SegmentationPredictor, split: str, dataset: SegmentationDataset,
                  samples: list[SegmentationSample], *, checkpoint: str = "best") -> SegmentationEvaluation:
    """Per-class IoU and Dice, mean IoU, pixel accuracy (with 95% intervals over the images) and the confusion matrix
    of `samples`; writes report.html (the worst images first: image, true mask, predicted mask, errors; examples of
    every class; training curves and options), evaluation.json, per_class.csv and confusion.csv."""
    from deepfit.tasks.segment.pictures import side_by_side
    from deepfit.tasks.segment.report import image_score, write_segmentation_report

    trained = predictor.trained
    k = len(trained.classes)
    total = torch.zeros(k, k, dtype=torch.int64)
    counts = []  # per image: (3, K) true-positive, true and predicted pixels, for the confidence intervals
    best: list[list[tuple[int, int]]] = [[] for _ in range(k)]  # per class, a heap of (correct pixels, -image)
    worst: list[tuple[float, int, Any]] = []  # a heap of the GALLERY_SIZE lowest scores: (-score, index, picture)
    focus = []  # per image: the class with the most pixels wrongly painted as it (-1: none), whose map the report shows
    started = time.perf_counter()
    for i, s in enumerate(samples):
        image, truth = load_pair(dataset, s)
        prediction = predictor.predict_one(image)
        confusion = confusion_matrix(torch.from_numpy(prediction), truth, k, IGNORE)
        total += confusion
        counts.append(per_image_counts(confusion.numpy()))
        for c in np.flatnonzero(counts[-1][0]):
            _keep_largest(best[c], (int(counts[-1][0][c]), -i), EXAMPLES_PER_CLASS)
        wrong = (confusion.sum(0) - confusion.diagonal()).numpy()  # (K,) pixels predicted as each class but not it
        focus.append(int(wrong.argmax()) if wrong.max() > 0 else -1)
        score = image_score(confusion.numpy())
        if len(worst) < GALLERY_SIZE or -score > worst[0][0]:
            picture = side_by_side(image.permute(1, 2, 0).numpy(), truth.numpy(), prediction, trained.colors, height=GALLERY_HEIGHT)
            _keep_largest(worst, (-score, i, (s.path.name, picture, score)), GALLERY_SIZE)
    seconds = time.perf_counter() - started
    metrics = segmentation_metrics(total.numpy(), trained.classes)
    metrics["intervals"] = segmentation_intervals(np.stack(counts) if counts else np.zeros((0, 3, k)))
    ranked = sorted(worst, key=lambda e: (-e[0], e[1]))  # lowest score first, then image order
    shown = [entry[2] for entry in ranked]
    order, _ = worst_first([g[2] for g in shown], [g[2] < 1.0 for g in shown], GALLERY_SIZE)
    explanations = _explain_worst(predictor, dataset, samples, [ranked[j][1] for j in order], focus)
    summary = {
        "Run": run.name, "Model": trained.spec.name, "Checkpoint": f"{checkpoint} (epoch {trained.meta.get('epoch')})",
        "Scored on": f"{split} split, {len(samples)} images, {int(total.sum()):,} labelled pixels",
        "Prediction": f"whole images up to {predictor.tile}px, overlapping tiles beyond",
        "Inference": f"{len(samples) / max(seconds, 1e-9):.2f} images/s on {predictor.device}",
        "Weights from": str(trained.meta.get("pretrained_from") or "none (from scratch)"),
    }
    collapsed = one_class_note(total.sum(0).numpy(), total.sum(1).numpy(), trained.classes, what="labelled pixels")
    uneven = imbalance_note(imbalance_ratio(total.sum(1).numpy()), "mIoU and per-class IoU", "pixels")
    details = run_details(run, run, trained.meta, notes=[n for n in (collapsed, uneven) if n],
                          examples=_examples(dataset, samples, best, trained.classes, trained.colors),
                          scores=(("val_miou", "validation mIoU"), ("val_pixel_acc", "validation pixel accuracy")),
                          score_title="Validation score", as_percent=False)
    report = write_segmentation_report(run, f"segmentation evaluation: {run.name}", metrics, [shown[j] for j in order],
                                       summary, trained.colors, details, explanations=explanations)
    record = {"split": split, "checkpoint": checkpoint, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
              **{key: metrics[key] for key in ("miou", "mean_dice", "pixel_accuracy", "intervals", "per_class")}}
    atomic_write_text(run / "evaluation.json", json.dumps(record, indent=2) + "\n")
    logger.info(f"{split}: mIoU {metrics['miou']:.4f}, mean Dice {metrics['mean_dice']:.4f}, pixel accuracy "
                f"{metrics['pixel_accuracy']:.2%}; report: {report}")
    return SegmentationEvaluation(split, metrics, report)


def _explain_worst(predictor: SegmentationPredictor, dataset: SegmentationDataset, samples: list[SegmentationSample],
                   shown: list[int], focus: list[int]) -> list[Explanation | None]:
    """Beside each image shown, where the segmenter looked to paint the class it painted most wrongly there (its
    largest region where no pixel is wrong): one map an image, of the image as it was scored."""
    from deepfit.explain.report import explain_shown
    from deepfit.tasks.segment.explain import explain_regions

    classes = predictor.trained.classes
    asked = [(samples[i].path.name, load_pair(dataset, samples[i])[0],
              ExplainSettings(target=classes[focus[i]] if focus[i] >= 0 else None, max_objects=1)) for i in shown]
    return explain_shown(explain_regions, predictor, asked)


def _keep_largest(heap: list, entry: tuple, most: int) -> None:
    """Keep in `heap` the `most` largest entries seen (a min-heap: its smallest is the first to go)."""
    if len(heap) < most:
        heapq.heappush(heap, entry)
    elif entry > heap[0]:
        heapq.heapreplace(heap, entry)


def _examples(dataset: SegmentationDataset, samples: list[SegmentationSample], best: list[list[tuple[int, int]]],
              classes: list[str], colors: Any) -> list[ClassExamples]:
    """Per class, the images where most of its pixels were predicted right, cropped around the class and tinted in
    its colour (each image decoded once, whatever the number of classes it shows)."""
    from deepfit.tasks.segment.pictures import overlay

    shown = classes[:MAX_EXAMPLE_CLASSES]
    wanted: dict[int, list[int]] = {}
    for c in range(len(shown)):
        for _, minus_i in sorted(best[c], reverse=True):
            wanted.setdefault(-minus_i, []).append(c)
    pictures: dict[int, list[tuple[int, str, Any]]] = {c: [] for c in range(len(shown))}
    for i, wanted_classes in wanted.items():
        image, truth = load_pair(dataset, samples[i])
        image, truth = image.permute(1, 2, 0).numpy(), truth.numpy()
        for c in wanted_classes:
            rows, columns = np.nonzero(truth == c)
            tinted = Image.fromarray(overlay(image, np.where(truth == c, c, IGNORE), colors, alpha=0.45))
            box = (columns.min(), rows.min(), columns.max() + 1, rows.max() + 1)
            pictures[c].append((int((truth == c).sum()), f"{samples[i].path.name}: {classes[c]}", crop_around(tinted, box)))
    return [(classes[c], [(caption, picture) for _, caption, picture in sorted(found, key=lambda f: -f[0])])
            for c, found in pictures.items()]


def predict_to_folder(predictor: SegmentationPredictor, run_dir: str | Path, paths: list[Path], output: str | Path | None = None) -> tuple[Path, list[Path], list[Path]]:
    """For each image NAME: NAME.png (class indexes, with the class colours as its palette) and NAME_overlay.jpg in
    `output` (default RUN_DIR/predictions); an existing file there is never overwritten. Returns (folder, done, failed)."""
    from deepfit.tasks.segment.pictures import overlay
    from deepfit.tasks.segment.report import save_mask_png

    out = Path(output) if output else Path(run_dir) / "predictions"
    stems = [p.stem for p in paths]
    repeated = sorted({s for s in stems if stems.count(s) > 1})
    if repeated:
        raise ConfigError(f"several images are named {repeated[0]!r} (in different folders): their masks would overwrite each other; "
                          "predict them in separate calls with separate --output folders")
    out.mkdir(parents=True, exist_ok=True)
    targets = [t for s in stems for t in (out / f"{s}.png", out / f"{s}_overlay.jpg")]
    clash = [t for t in targets if t.exists()]
    if clash:
        raise ConfigError(f"{clash[0]} already exists (and {len(clash) - 1} more): deepfit does not overwrite; pass another --output")
    colors = predictor.trained.colors
    done, failed = [], []
    for path in paths:
        try:
            image = decode_rgb(str(path))
        except DataError as e:
            logger.warning(str(e))
            failed.append(path)
            continue
        mask = predictor.predict_one(image)
        save_mask_png(out / f"{path.stem}.png", mask, colors)
        Image.fromarray(overlay(image.permute(1, 2, 0).numpy(), mask, colors)).save(out / f"{path.stem}_overlay.jpg", quality=90)
        done.append(path)
    if failed and not done:
        shown = ", ".join(str(p) for p in failed[:3]) + (f" and {len(failed) - 3} more" if len(failed) > 3 else "")
        raise DataError(f"none of the {len(failed)} inputs could be read as an image: {shown}")
    return out, done, failed
