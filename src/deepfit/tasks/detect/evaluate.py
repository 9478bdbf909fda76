"""Scoring a detector (COCO box and mask mAP through pycocotools) with its report, and prediction to files."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepfit.errors import ConfigError, DataError
from deepfit.fileio import atomic_write_text
from deepfit.log import logger
from deepfit.modalities.image.store import decode_rgb
from deepfit.tasks.detect.data import DetectionSample
from deepfit.tasks.detect.objective import coco_metrics
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
    """COCO box (and mask) mAP of `samples` in each image's own pixels; writes report.html, evaluation.json,
    per_class_ap.csv and detections.json (COCO results) into the run folder."""
    from deepfit.tasks.detect.report import (
        draw_detections,
        image_score,
        write_coco_results,
        write_detection_report,
    )

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
    box = coco_metrics(truths, predictions, trained.classes, "bbox")
    mask = coco_metrics(truths, predictions, trained.classes, "segm") if masks else None

    # the gallery: the worst images first (per-image F1 of the confident detections), drawn at full size
    scores = [image_score(t, p, conf=DEFAULT_CONF) for t, p in zip(truths, predictions, strict=True)]
    gallery = []
    for i in sorted(range(len(samples)), key=lambda i: scores[i])[:GALLERY_SIZE]:
        s, p, t = samples[i], predictions[i], truths[i]
        shown = {k: v for k, v in p.items() if k != "masks"}
        truth = {"boxes": t["boxes"], "labels": t["labels"]}
        if masks:
            from pycocotools import mask as mask_utils

            shown["masks"] = np.stack([mask_utils.decode(r).astype(bool) for r in p["masks"]]) if p["masks"] else np.zeros((0, s.height, s.width), bool)
        keep = p["scores"] >= DEFAULT_CONF
        shown = {k: (v[keep] if isinstance(v, np.ndarray) else [n for n, k2 in zip(v, keep, strict=True) if k2]) for k, v in shown.items()}
        gallery.append((s.path.name, draw_detections(decode_rgb(str(s.path)), shown, trained.classes, truth), scores[i]))

    files = [str(s.path) for s in samples]
    write_coco_results(run / "detections.json", files, predictions, trained.class_ids)
    summary = {
        "Run": run.name, "Model": trained.spec.name, "Task": trained.meta["task"], "Checkpoint": f"{checkpoint} (epoch {trained.meta.get('epoch')})",
        "Scored on": f"{split} split, {len(samples)} images, {box['num_objects']} objects", "Input": f"{trained.image_size}px letterboxed",
        "Inference": f"{len(samples) / max(seconds, 1e-9):.2f} images/s on {predictor.device}",
        "Weights from": str(trained.meta.get("pretrained_from") or "none (from scratch)"),
    }
    report = write_detection_report(run, f"{trained.meta['task']} evaluation: {run.name}", box, mask, gallery, summary)
    record = {"split": split, "checkpoint": checkpoint, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "box": {k: box[k] for k in ("map", "map50", "map75", "per_class")},
              "mask": {k: mask[k] for k in ("map", "map50", "map75", "per_class")} if mask else None}
    atomic_write_text(run / "evaluation.json", json.dumps(record, indent=2) + "\n")
    text = f"box mAP {box['map']:.4f} (mAP50 {box['map50']:.4f})" + (f", mask mAP {mask['map']:.4f} (mAP50 {mask['map50']:.4f})" if mask else "")
    logger.info(f"{split}: {text}; report: {report}")
    return DetectionEvaluation(split, box, mask, report)


def predict_to_folder(predictor: DetectionPredictor, run_dir: str | Path, paths: list[Path], output: str | Path | None = None, *,
                      conf: float = DEFAULT_CONF, iou: float = DEFAULT_IOU) -> tuple[Path, list[dict[str, Any]], list[Path]]:
    """Predict on image files: drawn images, detections.json (COCO results) and detections.csv in `output`
    (default RUN_DIR/predictions); an existing file there is never overwritten. Returns (folder, predictions, failed)."""
    from deepfit.tasks.detect.report import draw_detections, write_coco_results, write_detections_csv

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
