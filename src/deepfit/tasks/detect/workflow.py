"""Object detection and instance segmentation: train into a run folder, evaluate with COCO metrics, predict.

The three workflows of classification, for detectors:
  from scratch        no weights: every layer starts random (slow to learn; for large data)
  fine-tuning         --weights FILE (a backbone's classification weights, e.g. ImageNet, or a whole
                      detector's) or --pretrained (the backbone's official weights by name): the pyramid
                      and heads start random, the backbone learns at `backbone_lr_scale` of the rate
  feature extraction  the same with --freeze-backbone: the pretrained backbone stays fixed

Training runs on the shared engine (engine/trainer.py) with DetectionTask (tasks/detection.py) and the
per-sample augmenting DetectionStore (data/detection_store.py): progress, checkpoints, resume, device
and precision work as for classification. Validation each epoch is box mAP@[.50:.95] in the letterboxed
frame (IoU does not change under the letterbox's uniform scaling); `evaluate` maps predictions back to
each image's own pixels and adds mask mAP, plots and a gallery.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepfit.config import TrainConfig
from deepfit.data.split import load_image_split, save_image_split, split_images
from deepfit.engine.callbacks import (
    DETECTION_METRIC_COLUMNS,
)
from deepfit.engine.checkpoint import (
    load_weights,
    read_sidecar,
)
from deepfit.engine.device import autocast, resolve_device, resolve_precision
from deepfit.engine.optim import param_groups
from deepfit.errors import ConfigError, DataError, DeepfitError
from deepfit.fileio import atomic_write_text
from deepfit.log import logger, setup_logging
from deepfit.modalities.image.store import ImageInput, decode_rgb, image_tensor
from deepfit.models.weights import FROZEN_STATS, read_weights_file
from deepfit.runs import session as runner
from deepfit.runs.folder import (
    CHECKPOINT_FORMAT,
    check_output_outside_data,
    read_run_config,
    resolve_checkpoint,
)
from deepfit.runs.session import to_unit_range, workers_for
from deepfit.tasks.classify.train import seed_everything
from deepfit.tasks.detect.data import DetectionDataset, DetectionSample, read_detection
from deepfit.tasks.detect.model import DetectorSpec, build_detector, load_detector_weights, set_thresholds
from deepfit.tasks.detect.objective import DetectionTask, coco_metrics
from deepfit.tasks.detect.store import DetectionStore
from deepfit.tasks.detect.transforms import detection_transform, make_sample

# A whole detector's state dict has these prefixes; a classification network's (a backbone's) has not.
_DETECTOR_KEYS = ("backbone.", "rpn.", "roi_heads.", "head.", "anchor_generator.")
GALLERY_SIZE = 16
DEFAULT_CONF, DEFAULT_IOU = 0.25, 0.5
PREDICT_BATCH = 8  # images per forward pass when predicting


@dataclass
class DetectionRun:
    run_dir: Path
    best_map: float | None
    best_epoch: int
    classes: list[str]


def split_samples(dataset: DetectionDataset, val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[DetectionSample]]:
    """The data's own train/val/test folders when it has them; otherwise a seeded random split of the images
    (see data/split.py `split_images`): images, not objects, are split, so no image is in two splits."""
    splits = split_images(dataset.samples, val_fraction, test_fraction, seed, dataset.root)
    if not any(len(s) for s in splits["train"]):
        raise DataError(f"the training images in {dataset.root} have no objects: nothing to learn from; check the labels")
    return splits


def _is_detector_state(state: dict[str, torch.Tensor]) -> bool:
    return any(k.startswith(_DETECTOR_KEYS) for k in state)


def create_detector(config: TrainConfig, classes: list[str], *, load: bool = True) -> tuple[nn.Module, DetectorSpec, str | None]:
    """The detector for the config, with the weights it asks for: (model, spec, where the weights came from)."""
    spec = DetectorSpec(config.model, len(classes), config.image_size, config.image_size)
    if config.task == "segment-instances" and not spec.masks:
        raise ConfigError(f"--task segment-instances needs a model with a mask head (maskrcnn_* or maskrcnn:BACKBONE), not {config.model!r}")
    if config.task == "detect" and spec.masks:
        raise ConfigError(f"{config.model!r} predicts masks: use --task segment-instances, or a fasterrcnn/retinanet/fcos model")
    if config.compile:
        raise ConfigError("--compile is not supported for detection: the number of objects changes the graph every step")
    state = None
    if load and config.weights:
        state, _ = read_weights_file(Path(config.weights))
    full = state is not None and _is_detector_state(state)
    if config.freeze_backbone and not config.transfer:
        raise ConfigError("--freeze-backbone needs pretrained backbone weights (--weights FILE or --pretrained)")
    model = build_detector(
        spec, backbone_weights=config.weights if load and state is not None and not full else None,
        pretrained_backbone=load and config.pretrained, freeze_backbone=config.freeze_backbone,
    )
    if full:
        load_detector_weights(model, state, str(config.weights))
    origin = str(config.weights) if config.weights else ("official backbone weights" if config.pretrained else None)
    return model, spec, origin


def _freeze_pretrained_norms(model: nn.Module) -> None:
    """A pretrained backbone's batch norms keep their ImageNet statistics, as torchvision's FrozenBatchNorm2d
    does: a few images per batch give statistics too noisy to replace them."""
    for m in model.backbone.body.modules() if hasattr(model.backbone, "body") else model.backbone.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            setattr(m, FROZEN_STATS, True)


def _detector_param_groups(model: nn.Module, config: TrainConfig) -> list[dict]:
    body = model.backbone.body if hasattr(model.backbone, "body") else model.backbone
    body_ids = {id(p) for p in body.parameters()}
    backbone = [(n, p) for n, p in model.named_parameters() if id(p) in body_ids]
    rest = [(n, p) for n, p in model.named_parameters() if id(p) not in body_ids]
    scale = config.backbone_lr_scale if config.transfer else 1.0
    return param_groups(backbone, config.weight_decay, scale) + param_groups(rest, config.weight_decay)


def train_detector(data: str | Path, config: TrainConfig, *, format: str | None = None, classes: list[str] | None = None) -> DetectionRun:
    """Train a detector (--task detect) or instance segmenter (--task segment-instances) on labelled images."""
    setup_logging()
    generator = seed_everything(config.seed)
    dataset = read_detection(data, format=format, classes=classes)
    if config.task == "segment-instances" and not dataset.has_masks:
        raise DataError(
            f"{dataset.root} has boxes but no masks ({dataset.format} labels): --task segment-instances needs polygons, "
            "RLE or mask PNGs; use --task detect for boxes"
        )
    check_output_outside_data(config.output, dataset.root)
    splits = split_samples(dataset, config.val_fraction, config.test_fraction, config.seed)
    return _run(data, config, dataset, splits, generator)


def resume_detector(run_dir: str | Path, *, epochs: int | None = None, device: str | None = None) -> DetectionRun:
    """Continue a stopped detection run (or extend a finished one to `epochs`), as `train.resume` does."""
    setup_logging()
    run_dir = Path(run_dir).resolve()
    saved, config, state = runner.reopen(run_dir, epochs=epochs, device=device)
    dataset = _read_run_data(saved)
    splits = load_image_split(run_dir / "split.csv", dataset.samples, dataset.root)
    generator = seed_everything(config.seed)
    return _run(saved["data"], config, dataset, splits, generator, resume_dir=run_dir, state=state, command=saved.get("command"))


def _read_run_data(saved: dict[str, Any]) -> DetectionDataset:
    """A run's labels read again as they were for training (VOC and mask-PNG class order comes from the run)."""
    fmt = saved.get("label_format")
    return read_detection(saved["data"], format=fmt, classes=saved["classes"] if fmt in ("voc", "masks") else None)


def _run(
    data: str | Path, config: TrainConfig, dataset: DetectionDataset, splits: dict[str, list[DetectionSample]],
    generator: torch.Generator, *, resume_dir: Path | None = None, state: dict[str, Any] | None = None,
    command: list[str] | None = None,
) -> DetectionRun:
    classes = dataset.classes
    objects = sum(len(s) for s in splits["train"])
    logger.info(f"{len(classes)} classes, {', '.join(f'{len(v)} {k}' for k, v in splits.items())} images, "
                f"{objects} training objects ({dataset.format})")
    if not splits["test"]:
        logger.warning("the data has no test split: `deepfit evaluate` will fall back to the validation split")
    machine = runner.start(config)
    model, spec, origin = create_detector(config, classes, load=state is None)
    if config.transfer:
        _freeze_pretrained_norms(model)

    masks = spec.masks
    workers = workers_for(config)
    train_store = DetectionStore(splits["train"], config.image_size, train=True, augment=config.augment != "none", masks=masks,
                                 workers=workers, hflip=config.hflip)
    val_store = DetectionStore(splits["val"], config.image_size, train=False, masks=False, workers=workers) if splits["val"] else None

    record = {"data_root": str(dataset.root), "label_format": dataset.format, "classes": classes, "class_ids": dataset.class_ids}
    run_dir = runner.open_run(config, machine, data=data, record=record, resume_dir=resume_dir, command=command,
                              save_split=lambda d: save_image_split(splits, d / "split.csv", dataset.root, lambda s: f"{len(s)} objects"))
    logger.info(f"run folder: {run_dir}" + (f" (resumed at epoch {state['position']['epoch']}, step {state['position']['step']})" if state else ""))
    logger.info(f"model {spec.name} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
                f"{sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6:.2f}M trained), input {config.image_size}px "
                f"letterboxed, {machine.device} {machine.precision}")

    meta = {
        "format": CHECKPOINT_FORMAT, "task": config.task,
        "model": {"name": spec.name, "num_classes": spec.num_classes, "min_size": spec.min_size, "max_size": spec.max_size},
        "classes": classes, "class_ids": dataset.class_ids, "preprocessing": {"image_size": config.image_size, "resize": "letterbox"},
        "pretrained_from": origin if state is None else read_sidecar(run_dir / "last.safetensors").get("pretrained_from"),
        "config": config.to_dict(),
    }
    best = runner.fit(run_dir, model, DetectionTask(classes, masks), train_store, val_store, config, machine,
                      groups=_detector_param_groups(model, config), meta=meta, columns=DETECTION_METRIC_COLUMNS,
                      generator=generator, transform=to_unit_range, state=state)
    best_map = best.best_score if val_store is not None and machine.dist.main else None
    if best_map is not None:
        logger.info(f"best validation box mAP {best_map:.4f} at epoch {best.best_epoch}; weights in {run_dir / 'best.safetensors'}")
    return DetectionRun(run_dir, best_map, best.best_epoch, classes)


# --- using a trained detector ------------------------------------------------------------------------


@dataclass
class TrainedDetector:
    model: nn.Module
    spec: DetectorSpec
    classes: list[str]
    class_ids: list[int] | None
    image_size: int
    meta: dict[str, Any]

    @property
    def masks(self) -> bool:
        return self.spec.masks


def load_detector(path: str | Path, which: str = "best") -> TrainedDetector:
    ckpt = resolve_checkpoint(path, which)
    meta = read_sidecar(ckpt)
    if meta.get("task") not in ("detect", "segment-instances"):
        raise DeepfitError(f"{ckpt} is a {meta.get('task')!r} checkpoint, not a detector")
    spec = DetectorSpec(**meta["model"])
    model = build_detector(spec)
    load_weights(model, ckpt)
    model.eval()
    return TrainedDetector(model, spec, list(meta["classes"]), meta.get("class_ids"), int(meta["preprocessing"]["image_size"]), meta)


class DetectionPredictor:
    """Batched inference with a trained detector; results are in each image's own pixels."""

    def __init__(self, trained: TrainedDetector, device: str = "auto") -> None:
        self.trained = trained
        self.device = resolve_device(device)
        self.precision = resolve_precision("auto", self.device)
        self.model = trained.model.to(self.device).eval()
        self.transform = detection_transform(trained.image_size, train=False)

    @classmethod
    def from_run(cls, run_dir: str | Path, checkpoint: str = "best", device: str = "auto") -> DetectionPredictor:
        return cls(load_detector(run_dir, checkpoint), device)

    def _prepare(self, image: torch.Tensor) -> tuple[torch.Tensor, tuple[float, float]]:
        h, w = image.shape[-2:]
        out = self.transform(make_sample(image, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64)))
        scale = self.trained.image_size / max(h, w)
        return out["image"].as_subclass(torch.Tensor), (scale, scale)

    @torch.inference_mode()
    def predict(self, images: Sequence[ImageInput] | ImageInput, *, conf: float = DEFAULT_CONF, iou: float = DEFAULT_IOU,
                batch_size: int = PREDICT_BATCH) -> list[dict[str, np.ndarray]] | dict[str, np.ndarray]:
        """Boxes (xyxy pixels), labels (class indexes), class names, scores and, for instance segmenters, masks
        ((M, H, W) bool) of one image or a list of them."""
        single = not isinstance(images, list | tuple)
        items = [images] if single else list(images)
        set_thresholds(self.model, conf, iou)
        results = []
        for start in range(0, len(items), batch_size):
            originals = [image_tensor(item) for item in items[start:start + batch_size]]
            prepared = [self._prepare(t) for t in originals]
            x = to_unit_range(torch.stack([p[0] for p in prepared]).to(self.device))
            with autocast(self.device, self.precision):
                outputs = DetectionTask.predictions(self.model(list(x)))
            for image, (_, scale), p in zip(originals, prepared, outputs, strict=True):
                results.append(to_original(p, scale, tuple(image.shape[-2:]), self.trained.image_size, self.trained.classes))
        return results[0] if single else results


def to_original(p: dict[str, np.ndarray], scale: tuple[float, float], size: tuple[int, int], frame: int,
                classes: list[str]) -> dict[str, Any]:
    """A prediction in the letterboxed frame -> the image's own pixels (masks cut from the frame and resized)."""
    h, w = size
    sx, sy = scale
    boxes = p["boxes"].copy()
    boxes[:, 0::2] = np.clip(boxes[:, 0::2] / sx, 0, w)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2] / sy, 0, h)
    out: dict[str, Any] = {"boxes": boxes, "labels": p["labels"], "scores": p["scores"],
                           "names": [classes[i] for i in p["labels"]]}
    if "masks" in p:
        m = torch.from_numpy(p["masks"])[:, :, : min(frame, round(h * sy)), : min(frame, round(w * sx))]  # (M, 1, h', w')
        if len(m):
            m = torch.nn.functional.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
        out["masks"] = (m[:, 0] > 0.5).numpy() if len(m) else np.zeros((0, h, w), dtype=bool)
    return out


# --- evaluation and prediction to files ----------------------------------------------------------------

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


def evaluate_detector(run_dir: str | Path, data: str | Path | None = None, *, checkpoint: str = "best", device: str = "auto",
                      format: str | None = None) -> DetectionEvaluation:
    """COCO box (and mask) mAP on the run's test split (its val split when it has none), or on all of `data`;
    writes report.html, evaluation.json, per_class_ap.csv and detections.json (COCO results) into the run folder."""
    from deepfit.tasks.detect.report import (
        draw_detections,
        image_score,
        write_coco_results,
        write_detection_report,
    )

    setup_logging()
    run = Path(run_dir).resolve()
    trained = load_detector(run, checkpoint)
    saved = read_run_config(run)
    if data is None:
        dataset = _read_run_data(saved)
        splits = load_image_split(run / "split.csv", dataset.samples, dataset.root)
        split = "test" if splits.get("test") else "val"
        if not splits.get(split):
            raise DataError(f"{run.name} has neither a test nor a validation split to evaluate on: pass --data")
        if split == "val":
            logger.warning("no test split: scoring the validation split, which picked the best epoch (an optimistic estimate)")
        samples = splits[split]
    else:
        dataset = read_detection(data, format=format, classes=trained.classes)
        if dataset.classes != trained.classes:
            raise DataError(f"{data} has classes {dataset.classes[:5]}... but the model was trained on {trained.classes[:5]}...: "
                            "the class lists must be the same, in the same order")
        split, samples = str(data), dataset.samples
    predictor = DetectionPredictor(trained, device)
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


def predict_to_folder(run_dir: str | Path, paths: list[Path], output: str | Path | None = None, *, conf: float = DEFAULT_CONF,
                      iou: float = DEFAULT_IOU, checkpoint: str = "best", device: str = "auto") -> tuple[Path, list[dict[str, Any]], list[Path]]:
    """Predict on image files: drawn images, detections.json (COCO results) and detections.csv in `output`
    (default RUN_DIR/predictions); an existing file there is never overwritten. Returns (folder, predictions, failed)."""
    from deepfit.tasks.detect.report import draw_detections, write_coco_results, write_detections_csv

    predictor = DetectionPredictor.from_run(run_dir, checkpoint, device)
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
    write_coco_results(out / "detections.json", [str(p) for p in done], results, predictor.trained.class_ids)
    write_detections_csv(out / "detections.csv", [str(p) for p in done], results, predictor.trained.classes)
    return out, results, failed
