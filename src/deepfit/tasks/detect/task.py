"""Object detection (boxes) and instance segmentation (boxes and masks) as tasks.

The three workflows of classification, for detectors:
  from scratch        no weights: every layer starts random (slow to learn; for large data)
  fine-tuning         --weights FILE (a backbone's classification weights, e.g. ImageNet, or a whole
                      detector's) or --pretrained (the backbone's official weights by name): the pyramid
                      and heads start random, the backbone learns at `backbone_lr_scale` of the rate
  feature extraction  the same with --freeze-backbone: the pretrained backbone stays fixed

Training runs on the shared engine with DetectionTask (objective.py) and the per-sample augmenting
DetectionStore (store.py). Validation each epoch is box mAP@[.50:.95] in the letterboxed frame (IoU does
not change under the letterbox's uniform scaling); `evaluate` maps predictions back to each image's own
pixels and adds mask mAP, plots and a gallery (evaluate.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.table import Table
from torch import nn
from torchvision.ops import box_area

from deepfit.audit.objects import box_findings, mask_findings
from deepfit.config import TrainConfig
from deepfit.data.formats.layout import holds_object_labels
from deepfit.data.formats.objects import OBJECT_LAYOUTS
from deepfit.data.split import load_image_split, save_image_split, split_images
from deepfit.errors import ConfigError, DataError
from deepfit.modalities.image.augment import to_unit_range
from deepfit.models.weights import read_weights_file
from deepfit.runs.session import workers_for
from deepfit.tasks.balance import loss_weights
from deepfit.tasks.base import Data, Option, Setup, Task, keep_norm_statistics, pretrained_part_groups
from deepfit.tasks.detect.data import FORMATS, NAMED_FORMATS, DetectionDataset, read_detection, summarize
from deepfit.tasks.detect.evaluate import DetectionEvaluation, predict_to_folder, score_samples
from deepfit.tasks.detect.label_quality import judge_boxes
from deepfit.tasks.detect.model import DetectorSpec, build_detector, load_detector_weights
from deepfit.tasks.detect.objective import DetectionTask
from deepfit.tasks.detect.predict import (
    DEFAULT_CONF,
    DEFAULT_IOU,
    DetectionPredictor,
    TrainedDetector,
    load_detector,
)
from deepfit.tasks.detect.store import DetectionStore

# A whole detector's state dict has these prefixes; a classification network's (a backbone's) has not.
DETECTOR_KEYS = ("backbone.", "rpn.", "roi_heads.", "head.", "anchor_generator.")


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
    full = state is not None and any(k.startswith(DETECTOR_KEYS) for k in state)
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


def backbone_body(model: nn.Module) -> nn.Module:
    """The pretrained part of a detector: the backbone's body (without the FPN) where it has one."""
    return model.backbone.body if hasattr(model.backbone, "body") else model.backbone


def split_samples(dataset: DetectionDataset, val_fraction: float, test_fraction: float, seed: int) -> dict[str, list]:
    """The data's own train/val/test folders when it has them; otherwise a seeded random split of the images
    (see data/split.py `split_images`): images, not objects, are split, so no image is in two splits."""
    splits = split_images(dataset.samples, val_fraction, test_fraction, seed, dataset.root)
    if not any(len(s) for s in splits["train"]):
        raise DataError(f"the training images in {dataset.root} have no objects: nothing to learn from; check the labels")
    return splits


class DetectTask(Task):
    name = "detect"
    title = "object detection"
    masks = False
    defaults = {"model": "fasterrcnn:tv/mobilenet_v2", "batch_size": 4, "image_size": 512}
    score = "box mAP"
    loader, predictor_type = staticmethod(load_detector), DetectionPredictor
    sgd_lr = 0.01
    data_options = (
        Option("format", f"label format (default: found from DATA): {', '.join(FORMATS)}"),
        Option("classes", "class names in order (VOC, VIA, LabelMe, CVAT; mask PNGs: one name for all objects, or the order of classes.json's)", list),
        Option("masks", "the folder of instance-mask PNGs, when DATA is the folder of images"),
        Option("mask_name", "how a mask PNG is named after its image, e.g. '{name}_mask' for A_mask.png beside A.jpg"),
        Option("label_attribute", "VIA JSON: the region attribute that names the class, when the regions have several"),
    )
    evaluate_options = ("masks", "mask_name", "label_attribute")
    predict_options = (
        Option("conf", "lowest score kept (default: 0.25)", float, DEFAULT_CONF),
        Option("iou", "IoU above which overlapping boxes are merged by NMS (default: 0.5)", float, DEFAULT_IOU),
    )

    # --- data ------------------------------------------------------------------------------------------
    def read(self, data: str | Path, config: TrainConfig, *, format: str | None = None, classes: list[str] | None = None,
             masks: str | Path | None = None, mask_name: str | None = None, label_attribute: str | None = None) -> Data:
        if format is not None and format not in FORMATS:
            raise ConfigError(f"--format {format} is not a {self.name} format; use one of {', '.join(FORMATS)}")
        dataset = read_detection(data, format=format, classes=classes, masks=masks, mask_name=mask_name,
                                 label_attribute=label_attribute)
        if self.masks and not dataset.has_masks:
            raise DataError(
                f"{dataset.root} has boxes but no masks ({dataset.format} labels): --task segment-instances needs polygons, "
                "RLE or mask PNGs; use --task detect for boxes"
            )
        return self._data(dataset, masks, mask_name, label_attribute)

    @staticmethod
    def _data(dataset: DetectionDataset, masks: str | Path | None = None, mask_name: str | None = None,
              label_attribute: str | None = None) -> Data:
        record = {"label_format": dataset.format, "class_ids": dataset.class_ids,
                  "masks": str(Path(masks).resolve()) if masks else None, "mask_name": mask_name,
                  "label_attribute": label_attribute}
        return Data(dataset.root, dataset.classes, dataset, record, layout=dataset.format)

    def split(self, data: Data, config: TrainConfig) -> dict[str, list]:
        return split_samples(data.source, config.val_fraction, config.test_fraction, config.seed)

    def save_split(self, data: Data, splits: dict[str, list], path: Path) -> None:
        save_image_split(splits, path, data.root, lambda s: f"{len(s)} objects")

    def reread(self, saved: dict[str, Any], run_dir: Path) -> tuple[Data, dict[str, list]]:
        """A run's labels read again as they were for training (the class order of formats that name classes by the
        names found, VOC's, mask PNGs' and the annotation tools', comes from the run)."""
        fmt = saved.get("label_format")
        dataset = read_detection(saved["data"], format=fmt, classes=saved["classes"] if fmt in NAMED_FORMATS else None,
                                 masks=saved.get("masks"), mask_name=saved.get("mask_name"),
                                 label_attribute=saved.get("label_attribute"))
        data = self._data(dataset, saved.get("masks"), saved.get("mask_name"), saved.get("label_attribute"))
        return data, load_image_split(run_dir / "split.csv", dataset.samples, dataset.root)

    def read_other(self, data: str | Path, trained: TrainedDetector, *, format: str | None = None,
                   masks: str | Path | None = None, mask_name: str | None = None,
                   label_attribute: str | None = None) -> tuple[Data, list]:
        dataset = read_detection(data, format=format, classes=trained.classes, masks=masks, mask_name=mask_name,
                                 label_attribute=label_attribute)
        if dataset.classes != trained.classes:
            raise DataError(f"{data} has classes {dataset.classes[:5]}... but the model was trained on {trained.classes[:5]}...: "
                            "the class lists must be the same, in the same order")
        return self._data(dataset, masks, mask_name, label_attribute), dataset.samples

    def describe(self, data: Data, splits: dict[str, list]) -> str:
        objects = sum(len(s) for s in splits["train"])
        return (f"{len(data.classes)} classes, {', '.join(f'{len(v)} {k}' for k, v in splits.items())} images, "
                f"{objects} training objects ({data.layout})")

    def class_counts(self, data: Data, items: list) -> np.ndarray:
        """The objects of each class in each image."""
        return np.stack([np.bincount(s.labels, minlength=len(data.classes)) for s in items]) if items else \
            np.zeros((0, len(data.classes)), dtype=np.int64)

    def audit_objects(self, data: Data, items: list) -> list[Any]:
        findings = box_findings([s.boxes for s in items], [s.labels for s in items], data.classes)
        shares = []  # (image, object, class, share of its box the mask covers)
        for i, s in enumerate(items):
            if s.masks is not None:
                areas = box_area(torch.as_tensor(s.boxes, dtype=torch.float64).reshape(-1, 4)).clamp(min=1.0)  # (N,) px
                shares += [(i, j, data.classes[int(s.labels[j])], float(s.mask(j).sum()) / float(areas[j]))
                           for j in range(len(s)) if s.masks[j] is not None]
        return findings + mask_findings(shares)

    def judge_labels(self, run: str | Path, data: Data, items: list) -> tuple[list[int], Any, set[int]]:
        return judge_boxes(self, run, data.classes, items)

    def check_config(self, config: TrainConfig) -> None:
        kind = DetectorSpec(config.model or "", 0).kind
        if config.class_weights != "none" and kind not in ("fasterrcnn", "maskrcnn"):
            raise ConfigError(f"--class-weights weights the box classifier of fasterrcnn and maskrcnn detectors; {config.model} "
                              "learns its classes with a focal loss, which already weighs down the easy, frequent ones: "
                              "use --sampler balanced instead")

    # --- training --------------------------------------------------------------------------------------
    def prepare(self, config: TrainConfig, data: Data, splits: dict[str, list], device: Any, *,
                resumed: dict[str, Any] | None) -> Setup:
        model, spec, origin = create_detector(config, data.classes, load=resumed is None)
        weight = loss_weights(self, config, data, splits["train"], device)
        if config.transfer:
            keep_norm_statistics(backbone_body(model))
        workers = workers_for(config)
        train = DetectionStore(splits["train"], config.image_size, train=True, augment=config.augment != "none", masks=spec.masks,
                               workers=workers, hflip=config.hflip)
        val = DetectionStore(splits["val"], config.image_size, train=False, masks=False, workers=workers) if splits["val"] else None
        total = sum(p.numel() for p in model.parameters()) / 1e6
        trained = sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6
        return Setup(
            model=model, objective=DetectionTask(data.classes, spec.masks, weight), train=train, val=val, transform=to_unit_range,
            meta={"model": {"name": spec.name, "num_classes": spec.num_classes, "min_size": spec.min_size, "max_size": spec.max_size},
                  "class_ids": data.source.class_ids, "preprocessing": {"image_size": config.image_size, "resize": "letterbox"}},
            summary=f"model {spec.name} ({total:.2f}M parameters, {trained:.2f}M trained), input {config.image_size}px letterboxed",
            pretrained_from=origin,
        )

    def param_groups(self, model: nn.Module, phase: str, config: TrainConfig) -> list[dict]:
        return pretrained_part_groups(model, backbone_body(model), config)

    # --- using a trained model -------------------------------------------------------------------------
    def evaluate(self, run_dir: Path, predictor: DetectionPredictor, split: str, data: Data, items: list, *,
                 checkpoint: str, other: str | Path | None) -> DetectionEvaluation:
        return score_samples(run_dir, predictor, str(other) if other else split, items, checkpoint=checkpoint)

    def headline(self, evaluation: DetectionEvaluation) -> str:
        text = f"box mAP {evaluation.box['map']:.4f} (mAP50 {evaluation.box['map50']:.4f})"
        if evaluation.mask:
            text += f", mask mAP {evaluation.mask['map']:.4f} (mAP50 {evaluation.mask['map50']:.4f})"
        return f"{evaluation.split}: {text}; report: {evaluation.report}"

    def frame(self, predictor: DetectionPredictor, image: Any, *, conf: float = DEFAULT_CONF, iou: float = DEFAULT_IOU) -> Any:
        return predictor.predict(image, conf=conf, iou=iou)

    def draw_frame(self, predictor: DetectionPredictor, image: Any, result: Any) -> Any:
        from deepfit.tasks.detect.report import draw_detections

        return np.asarray(draw_detections(image, result, predictor.trained.classes))

    def frame_record(self, predictor: DetectionPredictor, result: Any) -> dict[str, Any]:
        return {"objects": len(result["boxes"]),
                "detections": [{"class": name, "score": round(float(score), 4), "box": [round(float(v), 1) for v in box]}
                               for name, score, box in zip(result["names"], result["scores"], result["boxes"], strict=True)]}

    def explain(self, predictor: DetectionPredictor, items: list[Any], settings: Any) -> list[Any]:
        from deepfit.tasks.detect.explain import explain_objects

        return explain_objects(predictor, items, settings)

    def predict_files(self, predictor: DetectionPredictor, paths: list[Path], output: Path | None, run_dir: Path, *,
                      conf: float = DEFAULT_CONF, iou: float = DEFAULT_IOU) -> list[Any]:
        out, results, failed = predict_to_folder(predictor, run_dir, paths, output, conf=conf, iou=iou)
        objects = sum(len(r["boxes"]) for r in results)
        return [f"{objects} objects in {len(results)} images (score >= {conf}); drawn images, detections.json and detections.csv "
                f"in {out}" + (f"; {len(failed)} unreadable files skipped" if failed else "")]

    def model_names(self, pattern: str) -> dict[str, list[str]]:
        """torchvision's detectors, then KIND:tv/BACKBONE for each torchvision backbone and KIND:<timm model>; the
        kind with masks (maskrcnn) for segment-instances, the others for detect."""
        import torchvision

        from deepfit.models.backbones import TV_ENCODERS
        from deepfit.tasks.detect.model import KINDS

        kinds = [k for k in KINDS if (k == "maskrcnn") == self.masks]
        detectors = [n for n in torchvision.models.list_models(module=torchvision.models.detection)
                     if n.startswith((*kinds, *(() if self.masks else ("ssd",))))]
        backbones = [n for n in torchvision.models.list_models(module=torchvision.models) if n.startswith(TV_ENCODERS)]
        names = [*detectors, *(f"{k}:tv/{b}" for k in kinds for b in backbones), *(f"{k}:<timm model>" for k in kinds)]
        names = [n for n in names if pattern in n]
        return {f"{self.title}, --task {self.name}": names} if names else {}

    # --- deepfit data check ----------------------------------------------------------------------------
    claim_order = 2  # asked after semantic masks and class folders: object labels, and instance masks with classes.json
    layouts = OBJECT_LAYOUTS

    def claims(self, data: str | Path, options: dict[str, Any]) -> bool:
        # a format or mask option names this task's labels; semantic masks were asked for first
        return bool(options.get("format") or options.get("masks") or options.get("mask_name")) or holds_object_labels(data)

    def check_data(self, data: str | Path, *, format: str | None = None, classes: list[str] | None = None,
                   masks: str | Path | None = None, mask_name: str | None = None,
                   label_attribute: str | None = None) -> list[Any]:
        if format is not None and format not in FORMATS:
            raise ConfigError(f"--format {format} is not a {self.name} format; use one of {', '.join(FORMATS)}")
        summary = summarize(read_detection(data, format=format, classes=classes, masks=masks, mask_name=mask_name,
                                           label_attribute=label_attribute))
        lines: list[Any] = [
            f"{summary['format']} labels in {summary['root']}: {summary['images']} images, {summary['objects']} objects in "
            f"{summary['classes']} classes" + (" (with masks)" if summary["has_masks"] else "")
        ]
        if summary["read_as"]:
            lines.append(f"read as: {summary['read_as']}")
        if summary["splits"]:
            lines.append("splits: " + ", ".join(f"{k} {v}" for k, v in summary["splits"].items()))
        table = Table(title="objects per class")
        table.add_column("class")
        table.add_column("objects", justify="right")
        for name, count in summary["objects_per_class"].items():
            table.add_row(name, str(count))
        lines += [table, f"images with no objects: {summary['images_without_objects']}; crowd objects: {summary['crowd_objects']}"]
        return lines


class SegmentInstancesTask(DetectTask):
    """Detection with a mask per object: the same data, training and scoring, a model with a mask head."""

    name, title, masks = "segment-instances", "instance segmentation", True
    defaults = {**DetectTask.defaults, "model": "maskrcnn:tv/mobilenet_v2"}

    claim_order = 3

    def claims(self, data: str | Path, options: dict[str, Any]) -> bool:
        return False  # `deepfit data check` reads instance labels as detection labels (with masks)


DETECT = DetectTask()
SEGMENT_INSTANCES = SegmentInstancesTask()
