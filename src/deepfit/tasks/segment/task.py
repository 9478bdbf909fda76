"""Semantic segmentation as a task: a class for every pixel, from images and masks.

The three workflows of classification, for segmenters (model.py):
  from scratch        no weights: encoder and decoder start random
  fine-tuning         --weights FILE (the encoder's classification weights, e.g. ImageNet, or a whole
                      segmenter's from another run) or --pretrained (the encoder's official weights by name):
                      the decoder starts random, the encoder learns at `backbone_lr_scale` of the rate
  feature extraction  the same with --freeze-backbone: the pretrained encoder stays fixed

Training runs on the shared engine with SegmentationTask (objective.py) over random crops of `image_size`
pixels at the images' own resolution (store.py); validation each epoch scores non-overlapping tiles.
Prediction and `evaluate` run on whole images of any size: in one pass up to `tile_size` pixels, in
overlapping blended tiles beyond (tiling), so memory stays bounded for a 4000 x 3000 scan.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table
from torch import nn

from deepfit.audit.objects import region_findings
from deepfit.config import TrainConfig
from deepfit.data.formats.instance_masks import object_id_like
from deepfit.data.formats.mask_folders import MASK_LAYOUTS, holds_semantic_masks
from deepfit.data.formats.masks import IGNORE_INDEX
from deepfit.data.split import load_image_split, save_image_split, split_images
from deepfit.errors import ConfigError
from deepfit.modalities.image.augment import to_unit_range
from deepfit.models.weights import read_weights_file
from deepfit.runs.session import workers_for
from deepfit.tasks.balance import loss_weights
from deepfit.tasks.base import Data, Option, Setup, Task, keep_norm_statistics, pretrained_part_groups
from deepfit.tasks.segment.data import FORMATS, SegmentationDataset, read_segmentation, summarize
from deepfit.tasks.segment.evaluate import SegmentationEvaluation, predict_to_folder, score_samples
from deepfit.tasks.segment.model import (
    Segmenter,
    SegmenterSpec,
    build_segmenter,
    is_segmenter_state,
    list_segmenters,
    load_segmenter_weights,
)
from deepfit.tasks.segment.objective import SegmentationTask, parse_loss
from deepfit.tasks.segment.painted import OBJECT_FORMATS
from deepfit.tasks.segment.predict import SegmentationPredictor, TrainedSegmenter, load_segmenter
from deepfit.tasks.segment.store import SegmentationStore


def ignore_value(config: TrainConfig) -> int | None:
    """The mask value read as ignored: --ignore-index, with -1 for none."""
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


class SegmentTask(Task):
    name = "segment"
    title = "semantic segmentation"
    # semantic segmentation trains on random crops of image_size pixels at the images' own resolution
    defaults = {"model": "unet:tv/mobilenet_v2", "batch_size": 8, "image_size": 256}
    score = "mIoU"
    loader, predictor_type = staticmethod(load_segmenter), SegmentationPredictor
    data_options = (
        Option("masks", "the folder of mask images, when DATA is the folder of images"),
        Option("mask_name", "how a mask is named after its image, e.g. '{name}_mask' for A_mask.png beside A.jpg"),
        Option("format", f"label layout (default: found from DATA): {', '.join(FORMATS)}"),
        Option("classes", "the names of the mask values 0, 1, 2, ... in order", list),
        Option("colors", "JSON file (or, in Python, a dict) mapping class names to the [r, g, b] colours of colour-coded masks"),
        Option("skip_unmasked", "leave images without a mask out on purpose instead of counting them as bad pairs", bool, False),
        Option("label_attribute", "VIA JSON: the region attribute that names the class, when the regions have several"),
    )
    evaluate_options = ("masks", "mask_name", "skip_unmasked", "label_attribute")
    check_options = (Option("ignore_index", f"mask value that is not a class, -1 for none (default: {IGNORE_INDEX})", int, IGNORE_INDEX),)

    def check_config(self, config: TrainConfig) -> None:
        parse_loss(config.loss)

    # --- data ------------------------------------------------------------------------------------------
    def read(self, data: str | Path, config: TrainConfig, *, masks: str | Path | None = None, mask_name: str | None = None,
             format: str | None = None, classes: list[str] | None = None, colors: Any = None, skip_unmasked: bool = False,
             label_attribute: str | None = None) -> Data:
        self._check_format(format)
        dataset = read_segmentation(data, masks=masks, mask_name=mask_name, format=format, classes=classes, colors=colors,
                                    ignore_value=ignore_value(config), skip_unmasked=skip_unmasked, workers=config.workers,
                                    label_attribute=label_attribute)
        return self._data(dataset, masks, mask_name, skip_unmasked, label_attribute)

    def _check_format(self, fmt: str | None) -> None:
        if fmt is not None and fmt not in FORMATS:
            raise ConfigError(f"--format {fmt} is not a {self.name} format; use one of {', '.join(FORMATS)}")

    @staticmethod
    def _data(dataset: SegmentationDataset, masks: str | Path | None, mask_name: str | None, skip_unmasked: bool,
              label_attribute: str | None = None) -> Data:
        record = {"masks": str(Path(masks).resolve()) if masks else None, "mask_name": mask_name, "label_format": dataset.format,
                  "skip_unmasked": skip_unmasked, "class_map": dataset.class_map(), "label_attribute": label_attribute}
        return Data(dataset.root, dataset.classes, dataset, record, layout=f"{dataset.kind} masks")

    def split(self, data: Data, config: TrainConfig) -> dict[str, list]:
        return split_images(data.source.samples, config.val_fraction, config.test_fraction, config.seed, data.root)

    def save_split(self, data: Data, splits: dict[str, list], path: Path) -> None:
        save_image_split(splits, path, data.root, lambda s: "mask")

    def reread(self, saved: dict[str, Any], run_dir: Path) -> tuple[Data, dict[str, list]]:
        """A run's images and masks read again with the run's own class map (so classes keep their indexes)."""
        dataset = read_segmentation(saved["data"], masks=saved.get("masks"), mask_name=saved.get("mask_name"),
                                    format=saved.get("label_format"), class_map=saved["class_map"],
                                    skip_unmasked=saved.get("skip_unmasked", False), label_attribute=saved.get("label_attribute"))
        data = self._data(dataset, saved.get("masks"), saved.get("mask_name"), saved.get("skip_unmasked", False),
                          saved.get("label_attribute"))
        return data, load_image_split(run_dir / "split.csv", dataset.samples, dataset.root)

    def read_other(self, data: str | Path, trained: TrainedSegmenter, *, masks: str | Path | None = None,
                   mask_name: str | None = None, skip_unmasked: bool = False,
                   label_attribute: str | None = None) -> tuple[Data, list]:
        dataset = read_segmentation(data, masks=masks, mask_name=mask_name, class_map=trained.class_map, skip_unmasked=skip_unmasked,
                                    label_attribute=label_attribute)
        return self._data(dataset, masks, mask_name, skip_unmasked, label_attribute), dataset.samples

    def describe(self, data: Data, splits: dict[str, list]) -> str:
        return f"{len(data.classes)} classes ({data.layout}), {', '.join(f'{len(v)} {k}' for k, v in splits.items())} images"

    def audit_objects(self, data: Data, items: list) -> list[Any]:
        counts = self.class_counts(data, items)
        return region_findings(counts, data.classes, [i for i, row in enumerate(counts) if row.sum() == 0])

    def class_counts(self, data: Data, items: list) -> np.ndarray:
        """The pixels of each class in each mask (counted when the data was read)."""
        return np.stack([data.source.pixel_counts([s]) for s in items]) if items else np.zeros((0, len(data.classes)))

    # --- training --------------------------------------------------------------------------------------
    def prepare(self, config: TrainConfig, data: Data, splits: dict[str, list], device: Any, *,
                resumed: dict[str, Any] | None) -> Setup:
        dataset, classes = data.source, data.classes
        model, spec, origin = create_segmenter(config, classes, load=resumed is None)
        if config.transfer:
            keep_norm_statistics(model.encoder)
        weight = loss_weights(self, config, data, splits["train"], device)
        workers = workers_for(config)
        train = SegmentationStore(dataset, splits["train"], config.image_size, train=True, augment=config.augment,
                                  hflip=config.hflip, workers=workers)
        # validation tiles twice the crop's side: more context per tile, fewer tile borders, still a fixed batch shape
        val = SegmentationStore(dataset, splits["val"], 2 * config.image_size, train=False, workers=workers) if splits["val"] else None
        total = sum(p.numel() for p in model.parameters()) / 1e6
        trained = sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6
        return Setup(
            model=model, objective=SegmentationTask(len(classes), config.loss, weight), train=train, val=val, transform=to_unit_range,
            meta={"model": asdict(spec), "class_map": dataset.class_map(),
                  "preprocessing": {"input": "RGB in [0, 1], normalised inside the model", "crop": config.image_size,
                                    "tile_size": config.tile_size}},
            summary=(f"model {spec.name} ({total:.2f}M parameters, {trained:.2f}M trained), {config.image_size}px crops, "
                     f"loss {config.loss}"),
            pretrained_from=origin,
        )

    def param_groups(self, model: nn.Module, phase: str, config: TrainConfig) -> list[dict]:
        return pretrained_part_groups(model, model.encoder, config)

    # --- using a trained model -------------------------------------------------------------------------
    def evaluate(self, run_dir: Path, predictor: SegmentationPredictor, split: str, data: Data, items: list, *,
                 checkpoint: str, other: str | Path | None) -> SegmentationEvaluation:
        return score_samples(run_dir, predictor, str(other) if other else split, data.source, items, checkpoint=checkpoint)

    def headline(self, evaluation: SegmentationEvaluation) -> str:
        m = evaluation.metrics
        return (f"{evaluation.split}: mIoU {m['miou']:.4f}, mean Dice {m['mean_dice']:.4f}, pixel accuracy {m['pixel_accuracy']:.2%}; "
                f"report: {evaluation.report}")

    def frame(self, predictor: SegmentationPredictor, image: Any) -> Any:
        return predictor.predict(image)

    def draw_frame(self, predictor: SegmentationPredictor, image: Any, result: Any) -> Any:
        from deepfit.tasks.segment.pictures import overlay

        return overlay(image, result, predictor.trained.colors)

    def frame_record(self, predictor: SegmentationPredictor, result: Any) -> dict[str, Any]:
        shares = np.bincount(result.ravel(), minlength=len(predictor.trained.classes)) / max(1, result.size)
        return {"pixels": {name: round(float(share), 5) for name, share in zip(predictor.trained.classes, shares, strict=False)}}

    def explain(self, predictor: SegmentationPredictor, items: list[Any], settings: Any) -> list[Any]:
        from deepfit.tasks.segment.explain import explain_regions

        return explain_regions(predictor, items, settings)

    def predict_files(self, predictor: SegmentationPredictor, paths: list[Path], output: Path | None, run_dir: Path) -> list[Any]:
        out, done, failed = predict_to_folder(predictor, run_dir, paths, output)
        return [f"{len(done)} images segmented: mask PNGs (class indexes, class colours as palette) and colour overlays in {out}"
                + (f"; {len(failed)} unreadable files skipped" if failed else "")]

    def model_names(self, pattern: str) -> dict[str, list[str]]:
        names = [n for n in list_segmenters() if pattern in n]
        return {f"segmentation, --task {self.name}": names} if names else {}

    # --- deepfit data check ----------------------------------------------------------------------------
    layouts = MASK_LAYOUTS

    def claims(self, data: str | Path, options: dict[str, Any]) -> bool:
        fmt = options.get("format")
        if fmt:
            # object labels (COCO, VIA, LabelMe, CVAT) are read as objects unless --task segment says otherwise
            return fmt in FORMATS and fmt not in OBJECT_FORMATS
        # image and mask folders are semantic masks unless a classes.json names their objects (holds_semantic_masks)
        return bool(options.get("colors")) or holds_semantic_masks(data, options.get("masks"))

    def check_data(self, data: str | Path, *, masks: str | Path | None = None, mask_name: str | None = None,
                   format: str | None = None, classes: list[str] | None = None, colors: Any = None, skip_unmasked: bool = False,
                   ignore_index: int = IGNORE_INDEX, label_attribute: str | None = None) -> list[Any]:
        self._check_format(format)
        dataset = read_segmentation(data, masks=masks, mask_name=mask_name, format=format, classes=classes, colors=colors,
                                    ignore_value=None if ignore_index < 0 else ignore_index, max_bad=1.0, skip_unmasked=skip_unmasked,
                                    label_attribute=label_attribute)
        summary = summarize(dataset)
        ignored = f"; ignored value {dataset.ignore_value}" if dataset.ignore_value is not None else ""
        painted = dataset.kind in OBJECT_FORMATS
        what = "objects painted into class masks" if painted else f"segmentation masks ({summary['kind']})"
        lines: list[Any] = [f"{summary['format']} {what} in {summary['root']}: {summary['images']} "
                            f"images with a usable mask, {len(dataset.classes)} classes{ignored}"]
        if dataset.read_as:
            lines.append(f"read as: {dataset.read_as}" + ("" if painted else "; each mask value a class"))
        if summary.get("splits"):
            lines.append("splits: " + ", ".join(f"{k} {v}" for k, v in summary["splits"].items()))
        table = Table(title="pixels per class")
        table.add_column("class")
        table.add_column("mask value", justify="right")
        table.add_column("share of pixels", justify="right")
        for (name, share), value in zip(summary["pixel_share"].items(), dataset.values, strict=True):
            table.add_row(name, str(value), f"{share:.2%}")
        lines.append(table)
        present = [{int(v) for v, n in zip(dataset.values, s.counts, strict=True) if n} for s in dataset.samples if s.counts is not None]
        if dataset.kind == "index" and object_id_like(present):
            lines.append("these masks look like object ids (1..n in each, n varying): if each value is one object, read "
                         "them with --task segment-instances (or --task detect) and name the classes in classes.json")
        for kind, files in summary["problems"].items():
            lines.append(f"{kind}: {len(files)}")
            lines += [f"  {f}" for f in files[:50]]
            if len(files) > 50:
                lines.append(f"  ... and {len(files) - 50} more")
        return lines


TASK = SegmentTask()
