"""Semantic segmentation: train into a run folder, evaluate per-class IoU and Dice, predict a class for every pixel.

The three workflows of classification, for segmenters (models/segmentation.py):
  from scratch        no weights: encoder and decoder start random
  fine-tuning         --weights FILE (the encoder's classification weights, e.g. ImageNet, or a whole
                      segmenter's from another run) or --pretrained (the encoder's official weights by name):
                      the decoder starts random, the encoder learns at `backbone_lr_scale` of the rate
  feature extraction  the same with --freeze-backbone: the pretrained encoder stays fixed

Training runs on the shared engine with SegmentationTask (tasks/segmentation.py) over random crops of
`image_size` pixels at the images' own resolution (data/segmentation_store.py); validation each epoch scores
non-overlapping tiles. Prediction and `evaluate` run on whole images of any size: in one pass up to
`tile_size` pixels, in overlapping blended tiles beyond (tasks/segmentation.py `predict_image`), so memory
stays bounded for a 4000 x 3000 scan.
"""

from __future__ import annotations

import heapq
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepfit.config import TrainConfig
from deepfit.data.split import load_image_split, save_image_split, split_images
from deepfit.engine.callbacks import SEGMENTATION_METRIC_COLUMNS
from deepfit.engine.checkpoint import load_weights, read_sidecar
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
from deepfit.tasks.segment.data import IGNORE, SegmentationDataset, SegmentationSample, read_segmentation
from deepfit.tasks.segment.model import (
    Segmenter,
    SegmenterSpec,
    build_segmenter,
    is_segmenter_state,
    load_segmenter_weights,
)
from deepfit.tasks.segment.objective import (
    SegmentationTask,
    class_weights,
    confusion_matrix,
    predict_image,
    segmentation_metrics,
)
from deepfit.tasks.segment.store import SegmentationStore, load_pair

GALLERY_SIZE = 12
_GALLERY_HEIGHT = 240  # pixels of each panel (image, truth, prediction) in the report


@dataclass
class SegmentationRun:
    run_dir: Path
    best_miou: float | None
    best_epoch: int
    classes: list[str]


def ignore_value(config: TrainConfig) -> int | None:
    """The mask value read as IGNORE: --ignore-index, with -1 for none."""
    return None if config.ignore_index < 0 else config.ignore_index


def create_segmenter(config: TrainConfig, classes: list[str], *, load: bool = True) -> tuple[Segmenter, SegmenterSpec, str | None]:
    """The segmenter for the config, with the weights it asks for: (model, spec, where the weights came from)."""
    spec = SegmenterSpec(config.model, len(classes))
    if config.freeze_backbone and not config.transfer:
        raise ConfigError("--freeze-backbone needs pretrained encoder weights (--weights FILE or --pretrained)")
    if config.compile:
        raise ConfigError("--compile is not supported for segmentation yet")
    state = read_weights_file(Path(config.weights))[0] if load and config.weights else None
    whole = state is not None and is_segmenter_state(state)
    model = build_segmenter(spec, encoder_weights=config.weights if state is not None and not whole else None,
                            pretrained_encoder=load and config.pretrained, freeze_encoder=config.freeze_backbone)
    if whole:
        load_segmenter_weights(model, state, str(config.weights))
    origin = str(config.weights) if config.weights else ("official encoder weights" if config.pretrained else None)
    return model, spec, origin


def _freeze_pretrained_norms(model: Segmenter) -> None:
    """A pretrained encoder's batch norms keep their ImageNet statistics: a batch of a few crops of one data set
    gives statistics too noisy (and too narrow) to replace them, as for detection."""
    for m in model.encoder.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            setattr(m, FROZEN_STATS, True)


def _param_groups(model: Segmenter, config: TrainConfig) -> list[dict]:
    encoder_ids = {id(p) for p in model.encoder.parameters()}
    encoder = [(n, p) for n, p in model.named_parameters() if id(p) in encoder_ids]
    rest = [(n, p) for n, p in model.named_parameters() if id(p) not in encoder_ids]
    scale = config.backbone_lr_scale if config.transfer else 1.0
    return param_groups(encoder, config.weight_decay, scale) + param_groups(rest, config.weight_decay)


def train_segmenter(data: str | Path, config: TrainConfig, *, masks: str | Path | None = None, format: str | None = None,
                    classes: list[str] | None = None, colors: dict[str, Any] | str | Path | None = None,
                    skip_unmasked: bool = False) -> SegmentationRun:
    """Train a semantic segmenter on images and masks (see data/segmentation.py for the layouts and encodings;
    `skip_unmasked`: images without a mask are left out on purpose rather than counted as bad pairs)."""
    setup_logging()
    if config.task != "segment":
        raise ConfigError(f"train_segmenter is for --task segment, not {config.task!r}")
    generator = seed_everything(config.seed)
    dataset = read_segmentation(data, masks=masks, format=format, classes=classes, colors=colors, ignore_value=ignore_value(config),
                                skip_unmasked=skip_unmasked, workers=config.workers)
    check_output_outside_data(config.output, dataset.root)
    splits = split_images(dataset.samples, config.val_fraction, config.test_fraction, config.seed, dataset.root)
    return _run(data, config, dataset, splits, generator, masks=masks, skip_unmasked=skip_unmasked)


def resume_segmenter(run_dir: str | Path, *, epochs: int | None = None, device: str | None = None) -> SegmentationRun:
    """Continue a stopped segmentation run (or extend a finished one to `epochs`)."""
    setup_logging()
    run_dir = Path(run_dir).resolve()
    saved, config, state = runner.reopen(run_dir, epochs=epochs, device=device)
    dataset = _read_run_data(saved)
    splits = load_image_split(run_dir / "split.csv", dataset.samples, dataset.root)
    generator = seed_everything(config.seed)
    return _run(saved["data"], config, dataset, splits, generator, masks=saved.get("masks"), skip_unmasked=saved.get("skip_unmasked", False),
                resume_dir=run_dir, state=state, command=saved.get("command"))


def _read_run_data(saved: dict[str, Any]) -> SegmentationDataset:
    """A run's images and masks read again with the run's own class map (so classes keep their indexes)."""
    return read_segmentation(saved["data"], masks=saved.get("masks"), format=saved.get("label_format"), class_map=saved["class_map"],
                             skip_unmasked=saved.get("skip_unmasked", False))


def _run(
    data: str | Path, config: TrainConfig, dataset: SegmentationDataset, splits: dict[str, list[SegmentationSample]],
    generator: torch.Generator, *, masks: str | Path | None = None, skip_unmasked: bool = False, resume_dir: Path | None = None,
    state: dict[str, Any] | None = None, command: list[str] | None = None,
) -> SegmentationRun:
    classes = dataset.classes
    logger.info(f"{len(classes)} classes ({dataset.kind} masks), {', '.join(f'{len(v)} {k}' for k, v in splits.items())} images")
    if not splits["test"]:
        logger.warning("the data has no test split: `deepfit evaluate` will fall back to the validation split")
    machine = runner.start(config)
    model, spec, origin = create_segmenter(config, classes, load=state is None)
    if config.transfer:
        _freeze_pretrained_norms(model)
    weight = None
    if config.class_weights != "none":
        weights = class_weights(dataset.pixel_counts(splits["train"]), config.class_weights)
        logger.info("class weights: " + ", ".join(f"{c} {w:.2f}" for c, w in zip(classes, weights, strict=True)))
        weight = torch.as_tensor(weights, dtype=torch.float32, device=machine.device)
    task = SegmentationTask(len(classes), config.loss, weight)

    workers = workers_for(config)
    train_store = SegmentationStore(dataset, splits["train"], config.image_size, train=True, augment=config.augment,
                                    hflip=config.hflip, workers=workers)
    # validation tiles twice the crop's side: more context per tile, fewer tile borders, still a fixed batch shape
    val_store = SegmentationStore(dataset, splits["val"], 2 * config.image_size, train=False, workers=workers) if splits["val"] else None

    record = {"data_root": str(dataset.root), "masks": str(Path(masks).resolve()) if masks else None, "label_format": dataset.format,
              "skip_unmasked": skip_unmasked, "classes": classes, "class_map": dataset.class_map()}
    run_dir = runner.open_run(config, machine, data=data, record=record, resume_dir=resume_dir, command=command,
                              save_split=lambda d: save_image_split(splits, d / "split.csv", dataset.root, lambda s: "mask"))
    logger.info(f"run folder: {run_dir}" + (f" (resumed at epoch {state['position']['epoch']}, step {state['position']['step']})" if state else ""))
    logger.info(f"model {spec.name} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
                f"{sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6:.2f}M trained), {config.image_size}px crops, "
                f"loss {config.loss}, {machine.device} {machine.precision}")
    meta = {
        "format": CHECKPOINT_FORMAT, "task": "segment", "model": asdict(spec), "classes": classes, "class_map": dataset.class_map(),
        "preprocessing": {"input": "RGB in [0, 1], normalised inside the model", "crop": config.image_size, "tile_size": config.tile_size},
        "pretrained_from": origin if state is None else read_sidecar(run_dir / "last.safetensors").get("pretrained_from"),
        "config": config.to_dict(),
    }
    best = runner.fit(run_dir, model, task, train_store, val_store, config, machine, groups=_param_groups(model, config), meta=meta,
                      columns=SEGMENTATION_METRIC_COLUMNS, generator=generator, transform=to_unit_range, state=state)
    best_miou = best.best_score if val_store is not None and machine.dist.main else None
    if best_miou is not None:
        logger.info(f"best validation mIoU {best_miou:.4f} at epoch {best.best_epoch}; weights in {run_dir / 'best.safetensors'}")
    return SegmentationRun(run_dir, best_miou, best.best_epoch, classes)


# --- using a trained segmenter -----------------------------------------------------------------------


@dataclass
class TrainedSegmenter:
    model: Segmenter
    spec: SegmenterSpec
    classes: list[str]
    class_map: dict[str, Any]
    tile_size: int
    meta: dict[str, Any]

    @property
    def colors(self) -> np.ndarray:
        """(K, 3) uint8 display colour per class."""
        return np.asarray(self.class_map["colors"], dtype=np.uint8).reshape(-1, 3)


def load_segmenter(path: str | Path, which: str = "best") -> TrainedSegmenter:
    ckpt = resolve_checkpoint(path, which)
    meta = read_sidecar(ckpt)
    if meta.get("task") != "segment":
        raise DeepfitError(f"{ckpt} is a {meta.get('task')!r} checkpoint, not a semantic segmenter")
    spec = SegmenterSpec(**meta["model"])
    model = build_segmenter(spec)
    load_weights(model, ckpt)
    model.eval()
    return TrainedSegmenter(model, spec, list(meta["classes"]), meta["class_map"], int(meta["preprocessing"]["tile_size"]), meta)


def _tile_batch(num_classes: int, tile: int) -> int:
    """Tiles a forward pass: their logits and softmax (about 3 copies of K x tile x tile floats) within ~256 MB."""
    return max(1, min(4, 2**28 // (12 * num_classes * tile * tile)))


class SegmentationPredictor:
    """Whole-image inference: a class index for every pixel, at the image's own size."""

    def __init__(self, trained: TrainedSegmenter, device: str = "auto", tile_size: int | None = None) -> None:
        self.trained = trained
        self.device = resolve_device(device)
        self.precision = resolve_precision("auto", self.device)
        self.model = trained.model.to(self.device).eval()
        self.tile = tile_size or trained.tile_size

    @classmethod
    def from_run(cls, run_dir: str | Path, checkpoint: str = "best", device: str = "auto") -> SegmentationPredictor:
        return cls(load_segmenter(run_dir, checkpoint), device)

    @torch.inference_mode()
    def predict_one(self, image: ImageInput) -> np.ndarray:
        """(H, W) uint8 class indexes of one image (a path, PIL image, (H, W[, 3]) array or (3, H, W) tensor)."""
        x = to_unit_range(image_tensor(image).to(self.device))  # (3, H, W) float in [0, 1]
        k = len(self.trained.classes)
        with autocast(self.device, self.precision):
            classes = predict_image(self.model, x, num_classes=k, tile=self.tile, overlap=self.tile // 8, batch_size=_tile_batch(k, self.tile))
        return classes.numpy().astype(np.uint8)

    def predict(self, images: Sequence[ImageInput] | ImageInput) -> np.ndarray | list[np.ndarray]:
        """One image -> its (H, W) uint8 class-index array; a list -> a list of them."""
        if isinstance(images, list | tuple):
            return [self.predict_one(image) for image in images]
        return self.predict_one(images)


# --- evaluation and prediction to files ----------------------------------------------------------------


@dataclass
class SegmentationEvaluation:
    split: str
    metrics: dict[str, Any]
    report: Path


def evaluate_segmenter(run_dir: str | Path, data: str | Path | None = None, *, checkpoint: str = "best", device: str = "auto",
                       masks: str | Path | None = None, skip_unmasked: bool = False) -> SegmentationEvaluation:
    """Per-class IoU and Dice, mean IoU, pixel accuracy and the confusion matrix on the run's test split (its val split
    when it has none), or on all of `data` read with the run's class map; writes report.html (the worst images first:
    image, true mask, predicted mask), evaluation.json, per_class.csv and confusion.csv into the run folder."""
    from deepfit.tasks.segment.report import image_score, side_by_side, write_segmentation_report

    setup_logging()
    run = Path(run_dir).resolve()
    trained = load_segmenter(run, checkpoint)
    if data is None:
        dataset = _read_run_data(read_run_config(run))
        splits = load_image_split(run / "split.csv", dataset.samples, dataset.root)
        split = "test" if splits.get("test") else "val"
        if not splits.get(split):
            raise DataError(f"{run.name} has neither a test nor a validation split to evaluate on: pass --data")
        if split == "val":
            logger.warning("no test split: scoring the validation split, which picked the best epoch (an optimistic estimate)")
        samples = splits[split]
    else:
        dataset = read_segmentation(data, masks=masks, class_map=trained.class_map, skip_unmasked=skip_unmasked)
        split, samples = str(data), dataset.samples
    if not samples:
        raise DataError(f"no image with a usable mask to evaluate on in {data or run}")
    predictor = SegmentationPredictor(trained, device)
    k = len(trained.classes)
    total = torch.zeros(k, k, dtype=torch.int64)
    worst: list[tuple[float, int, Any]] = []  # a heap of the GALLERY_SIZE lowest scores: (-score, index, picture)
    started = time.perf_counter()
    for i, s in enumerate(samples):
        image, truth = load_pair(dataset, s)
        prediction = predictor.predict_one(image)
        confusion = confusion_matrix(torch.from_numpy(prediction), truth, k, IGNORE)
        total += confusion
        score = image_score(confusion.numpy())
        if len(worst) < GALLERY_SIZE or -score > worst[0][0]:
            picture = side_by_side(image.permute(1, 2, 0).numpy(), truth.numpy(), prediction, trained.colors, height=_GALLERY_HEIGHT)
            entry = (-score, i, (s.path.name, picture, score))
            heapq.heappush(worst, entry) if len(worst) < GALLERY_SIZE else heapq.heapreplace(worst, entry)
    seconds = time.perf_counter() - started
    metrics = segmentation_metrics(total.numpy(), trained.classes)
    gallery = [entry[2] for entry in sorted(worst, key=lambda e: (-e[0], e[1]))]  # worst first
    summary = {
        "Run": run.name, "Model": trained.spec.name, "Checkpoint": f"{checkpoint} (epoch {trained.meta.get('epoch')})",
        "Scored on": f"{split} split, {len(samples)} images, {int(total.sum()):,} labelled pixels",
        "Prediction": f"whole images up to {predictor.tile}px, overlapping tiles beyond",
        "Inference": f"{len(samples) / max(seconds, 1e-9):.2f} images/s on {predictor.device}",
        "Weights from": str(trained.meta.get("pretrained_from") or "none (from scratch)"),
    }
    report = write_segmentation_report(run, f"segmentation evaluation: {run.name}", metrics, gallery, summary, trained.colors)
    record = {"split": split, "checkpoint": checkpoint, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
              **{key: metrics[key] for key in ("miou", "mean_dice", "pixel_accuracy", "per_class")}}
    atomic_write_text(run / "evaluation.json", json.dumps(record, indent=2) + "\n")
    logger.info(f"{split}: mIoU {metrics['miou']:.4f}, mean Dice {metrics['mean_dice']:.4f}, pixel accuracy "
                f"{metrics['pixel_accuracy']:.2%}; report: {report}")
    return SegmentationEvaluation(split, metrics, report)


def predict_to_folder(run_dir: str | Path, paths: list[Path], output: str | Path | None = None, *, checkpoint: str = "best",
                      device: str = "auto") -> tuple[Path, list[Path], list[Path]]:
    """For each image NAME: NAME.png (class indexes, with the class colours as its palette) and NAME_overlay.jpg in
    `output` (default RUN_DIR/predictions); an existing file there is never overwritten. Returns (folder, done, failed)."""
    from deepfit.tasks.segment.report import overlay, save_mask_png

    predictor = SegmentationPredictor.from_run(run_dir, checkpoint, device)
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
    from PIL import Image

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
    return out, done, failed
