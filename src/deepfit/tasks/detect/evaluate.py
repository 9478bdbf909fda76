"""Scoring a detector (COCO box and mask mAP through pycocotools) with its report, and prediction to files."""

from __future__ import annotations

import heapq
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from deepfit.errors import ConfigError, DataError
from deepfit.explain.result import ExplainSettings
from deepfit.fileio import atomic_write_text
from deepfit.log import logger
from deepfit.modalities.image.store import decode_rgb
from deepfit.report.gallery import EXAMPLES_PER_CLASS, MAX_EXAMPLE_CLASSES, ClassExamples, crop_around
from deepfit.report.trust import one_class_note, worst_first
from deepfit.tasks.balance import imbalance_note, imbalance_ratio
from deepfit.tasks.details import run_details
from deepfit.tasks.detect.data import DetectionSample
from deepfit.tasks.detect.objective import coco_metrics
from deepfit.tasks.detect.outputs import write_coco_results
from deepfit.tasks.detect.predict import DEFAULT_CONF, DEFAULT_IOU, PREDICT_BATCH, DetectionPredictor

GALLERY_SIZE = 16
EVAL_CONF = 0.05  # COCO mAP integrates over the whole score range: keep low-scoring detections (torchvision's default)


@dataclass
class DetectionEvaluation:
    split: str
    box: dict[str, Any]
    mask: dict[str, Any] | None
    report: Path

    @property
    def metrics(self) -> dict[str, Any]:
        return {"box": self.box, "mask": self.mask}


def _truth(s: DetectionSample, masks: bool) -> dict[str, Any]:
    """Ground truth in the image's own pixels; masks as COCO RLE, which keeps full-size masks small in memory."""
    t: dict[str, Any] = {"boxes": s.boxes, "labels": s.labels, "iscrowd": s.iscrowd, "height": s.height, "width": s.width}
    if masks:
        t["masks"] = [rle_of(s.mask(j)) for j in range(len(s))]
    return t


def rle_of(mask: np.ndarray) -> dict[str, Any]:
    from pycocotools import mask as mask_utils

    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


def score_samples(run: Path, predictor: DetectionPredictor, split: str, samples: list[DetectionSample], *,
                  checkpoint: str = "best") -> DetectionEvaluation:
    """COCO box (and mask) mAP of `samples` in each image's own pixels, with 95% intervals over the images; writes
    report.html (the worst images first, examples of every class, training curves and options), evaluation.json,
    per_class_ap.csv and detections.json (COCO results) into the run folder."""
    from deepfit.explain.report import explain_shown
    from deepfit.tasks.detect.explain import explain_objects
    from deepfit.tasks.detect.report import draw_detections, image_score, write_detection_report

    trained = predictor.trained
    masks = trained.masks
    truths, predictions = [], []
    started = time.perf_counter()
    for start in range(0, len(samples), PREDICT_BATCH):
        batch = samples[start:start + PREDICT_BATCH]
        preds = predictor.predict([s.path for s in batch], conf=EVAL_CONF, iou=DEFAULT_IOU)
        for s, p in zip(batch, preds, strict=True):
            truths.append(_truth(s, masks))
            if masks:
                p = {**p, "masks": [rle_of(m) for m in p["masks"]]}
            predictions.append(p)
    seconds = time.perf_counter() - started
    box = coco_metrics(truths, predictions, trained.classes, "bbox", intervals=True)
    mask = coco_metrics(truths, predictions, trained.classes, "segm", intervals=True) if masks else None

    # the gallery: the images with a mistake, worst first (per-image F1 of the confident detections), drawn at full size
    scores = [image_score(t, p, conf=DEFAULT_CONF) for t, p in zip(truths, predictions, strict=True)]
    gallery, worst = [], worst_first(scores, [score < 1.0 for score in scores], GALLERY_SIZE)[0]
    for i in worst:
        s, p, t = samples[i], predictions[i], truths[i]
        shown = {k: v for k, v in p.items() if k != "masks"}
        truth = {"boxes": t["boxes"], "labels": t["labels"]}
        if masks:
            from pycocotools import mask as mask_utils

            shown["masks"] = np.stack([mask_utils.decode(r).astype(bool) for r in p["masks"]]) if p["masks"] else np.zeros((0, s.height, s.width), bool)
        keep = p["scores"] >= DEFAULT_CONF
        shown = {k: (v[keep] if isinstance(v, np.ndarray) else [n for n, k2 in zip(v, keep, strict=True) if k2]) for k, v in shown.items()}
        gallery.append((s.path.name, draw_detections(decode_rgb(str(s.path)), shown, trained.classes, truth), scores[i]))

    # beside each, where the detector looked for its most confident object (its best guess when nothing scored >= conf)
    explanations = explain_shown(explain_objects, predictor, [(samples[i].path.name, samples[i].path,
                                                               ExplainSettings(max_objects=1, conf=EVAL_CONF)) for i in worst])

    files = [str(s.path) for s in samples]
    write_coco_results(run / "detections.json", files, predictions, trained.class_ids)
    summary = {
        "Run": run.name, "Model": trained.spec.name, "Task": trained.meta["task"], "Checkpoint": f"{checkpoint} (epoch {trained.meta.get('epoch')})",
        "Scored on": f"{split} split, {len(samples)} images, {box['num_objects']} objects", "Input": f"{trained.image_size}px letterboxed",
        "Inference": f"{len(samples) / max(seconds, 1e-9):.2f} images/s on {predictor.device}",
        "Weights from": str(trained.meta.get("pretrained_from") or "none (from scratch)"),
    }
    confident = [int(label) for p in predictions for label, score in zip(p["labels"], p["scores"], strict=True) if score >= DEFAULT_CONF]
    collapsed = one_class_note(np.bincount(confident, minlength=len(trained.classes)), [r["objects"] for r in box["per_class"]],
                               trained.classes, what=f"detections scoring at least {DEFAULT_CONF}")
    uneven = imbalance_note(imbalance_ratio([r["objects"] for r in box["per_class"]]), "mAP and per-class AP", "objects")
    details = run_details(run, run, trained.meta, notes=[n for n in (collapsed, uneven) if n], examples=_examples(samples, trained.classes),
                          scores=(("val_map", "validation box mAP"), ("val_map50", "validation box mAP@.50")),
                          score_title="Validation box mAP", as_percent=False, image_size=trained.image_size)
    report = write_detection_report(run, f"{trained.meta['task']} evaluation: {run.name}", box, mask, gallery, summary, details,
                                    explanations=explanations)
    keys = ("map", "map50", "map75", "intervals", "per_class")
    record = {"split": split, "checkpoint": checkpoint, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "box": {k: box[k] for k in keys}, "mask": {k: mask[k] for k in keys} if mask else None}
    atomic_write_text(run / "evaluation.json", json.dumps(record, indent=2) + "\n")
    text = f"box mAP {box['map']:.4f} (mAP50 {box['map50']:.4f})" + (f", mask mAP {mask['map']:.4f} (mAP50 {mask['map50']:.4f})" if mask else "")
    logger.info(f"{split}: {text}; report: {report}")
    return DetectionEvaluation(split, box, mask, report)


def _examples(samples: list[DetectionSample], classes: list[str]) -> list[ClassExamples]:
    """Per class, its largest true objects (one an image, up to EXAMPLES_PER_CLASS; crowd regions are no example),
    cropped with some context around them; each image decoded once, whatever the number of classes it shows."""
    shown = min(len(classes), MAX_EXAMPLE_CLASSES)
    largest: list[list[tuple[float, int, int]]] = [[] for _ in range(shown)]  # per class: (area, -image, object)
    for i, s in enumerate(samples):
        boxes = np.asarray(s.boxes, dtype=np.float64).reshape(-1, 4)
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        for k in set(np.asarray(s.labels)[~np.asarray(s.iscrowd, dtype=bool)].tolist()) & set(range(shown)):
            j = max(np.flatnonzero((np.asarray(s.labels) == k) & ~np.asarray(s.iscrowd, dtype=bool)), key=lambda j: areas[j])
            largest[k].append((float(areas[j]), -i, int(j)))
    picks: dict[int, list[tuple[int, int]]] = {}  # image -> (class, object) examples it gives
    for k, objects in enumerate(largest):
        for _, minus_i, j in heapq.nlargest(EXAMPLES_PER_CLASS, objects):
            picks.setdefault(-minus_i, []).append((k, j))
    found: list[list[tuple[float, str, Any]]] = [[] for _ in range(shown)]
    for i, wanted in picks.items():
        image = Image.fromarray(decode_rgb(str(samples[i].path)).permute(1, 2, 0).numpy())
        for k, j in wanted:
            box = samples[i].boxes[j]
            found[k].append((-float((box[2] - box[0]) * (box[3] - box[1])), samples[i].path.name, crop_around(image, box)))
    return [(classes[k], [(caption, picture) for _, caption, picture in sorted(found[k], key=lambda f: f[0])])
            for k in range(shown)]


def predict_to_folder(predictor: DetectionPredictor, run_dir: str | Path, paths: list[Path], output: str | Path | None = None, *,
                      conf: float = DEFAULT_CONF, iou: float = DEFAULT_IOU) -> tuple[Path, list[dict[str, Any]], list[Path]]:
    """Predict on image files: drawn images, detections.json (COCO results) and detections.csv in `output`
    (default RUN_DIR/predictions); an existing file there is never overwritten. Returns (folder, predictions, failed)."""
    from deepfit.tasks.detect.outputs import write_coco_results, write_detections_csv
    from deepfit.tasks.detect.report import draw_detections

    out = Path(output) if output else Path(run_dir) / "predictions"
    out.mkdir(parents=True, exist_ok=True)
    targets = [out / "detections.json", out / "detections.csv"] + [out / f"{p.stem}.jpg" for p in paths]
    clash = [t for t in targets if t.exists()]
    if clash:
        raise ConfigError(f"{clash[0]} already exists (and {len(clash) - 1} more): deepfit does not overwrite; pass another --output")
    done, results, failed = [], [], []
    for start in range(0, len(paths), PREDICT_BATCH):
        images = []
        for path in paths[start:start + PREDICT_BATCH]:
            try:
                images.append((path, decode_rgb(str(path))))
            except DataError as e:
                logger.warning(str(e))
                failed.append(path)
        predictions = predictor.predict([image for _, image in images], conf=conf, iou=iou) if images else []
        for (path, image), p in zip(images, predictions, strict=True):
            draw_detections(image, p, predictor.trained.classes).save(out / f"{path.stem}.jpg", quality=90)
            done.append(path)
            results.append(p)
    if failed and not done:
        shown = ", ".join(str(p) for p in failed[:3]) + (f" and {len(failed) - 3} more" if len(failed) > 3 else "")
        raise DataError(f"none of the {len(failed)} inputs could be read as an image: {shown}")
    write_coco_results(out / "detections.json", [str(p) for p in done], results, predictor.trained.class_ids)
    write_detections_csv(out / "detections.csv", [str(p) for p in done], results, predictor.trained.classes)
    return out, results, failed
