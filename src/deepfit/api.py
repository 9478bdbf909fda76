"""The Python API: as short as the CLI, and what the CLI itself calls.

    clf = deepfit.ImageClassifier("resnet18", pretrained=True)
    clf.fit("data/")                 # trains into runs/<name>/
    clf.evaluate()                   # scores the test split, writes report.html
    clf.predict(["a.jpg", pil_image, tensor])

    model = deepfit.load("runs/resnet18-20261121-101500")
    model.predict("new_photos/")

    feats = deepfit.extract_features("data/", model="resnet50", pretrained=True)   # (N, D) + paths, labels, splits
    run = deepfit.fit_features("data/", model="resnet50", pretrained=True, classifier="svm")
    deepfit.load(run.run_dir).predict("new_photos/")

    det = deepfit.ObjectDetector("fasterrcnn:tv/mobilenet_v2", weights="mobilenet_v2.safetensors")
    det.fit("coco128/object_detection")  # COCO JSON, YOLO, VOC or instance-mask PNGs
    det.evaluate()                       # COCO mAP, report.html
    det.predict("street.jpg")            # {"boxes", "labels", "names", "scores"} (+ "masks")

    seg = deepfit.SemanticSegmenter("unet:tv/mobilenet_v2", weights="mobilenet_v2.safetensors")
    seg.fit("membrane/")                 # images/ + masks/ (indexed, palette, RGB or 0/255), a YAML, or COCO JSON
    seg.evaluate()                       # per-class IoU and Dice, mIoU, report.html
    seg.predict("scan.png")              # (H, W) uint8 class indexes at the image's own size
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deepfit.config import FeaturesConfig, TrainConfig, apply_preset
from deepfit.data.sources import discover
from deepfit.errors import DeepfitError
from deepfit.runs.folder import run_folder, run_task
from deepfit.tasks.classify.evaluate import Evaluation, evaluate
from deepfit.tasks.classify.predict import ImageInput, Prediction, Predictor, expand_paths
from deepfit.tasks.classify.train import TrainResult, train
from deepfit.tasks.classify.train import resume as resume_run
from deepfit.tasks.detect.workflow import (
    DetectionEvaluation,
    DetectionPredictor,
    DetectionRun,
    evaluate_detector,
    resume_detector,
    train_detector,
)
from deepfit.tasks.segment.workflow import (
    SegmentationEvaluation,
    SegmentationPredictor,
    SegmentationRun,
    evaluate_segmenter,
    resume_segmenter,
    train_segmenter,
)
from deepfit.workflows.features import FeatureSet, FeaturesResult


class ImageClassifier:
    """An image classifier to train (from scratch or by transfer learning), evaluate and use.

    Every training option of `deepfit train` is a keyword here (see `TrainConfig`); an unknown or
    misspelt one is an error that suggests the right name.
    """

    def __init__(self, model: str | None = None, *, preset: str | None = None, **options: Any) -> None:
        if options.get("task", "classify") != "classify":
            raise DeepfitError(f"task={options['task']!r}: use deepfit.ObjectDetector for detection and instance segmentation, "
                               "deepfit.SemanticSegmenter for semantic segmentation")
        # model=None keeps the preset's (or the default) architecture.
        self.config: TrainConfig = apply_preset(preset, {"model": model, **options} if model else options)
        self.run_dir: Path | None = None
        self.result: TrainResult | None = None
        self._predictor: Predictor | None = None

    def fit(
        self, data: str | Path, *, path_column: str | None = None, label_column: str | None = None, **options: Any
    ) -> ImageClassifier:
        """Train on a folder of class folders, a folder with train/val/test, or a CSV of path,label.

        `options` override the classifier's training options for this fit (and stay set).
        """
        config = self.config.replace(**options) if options else self.config
        catalog = discover(data, path_column=path_column, label_column=label_column)
        self.result = train(data, config, catalog=catalog)
        self.config = config
        self.run_dir = self.result.run_dir
        self._predictor = None
        return self

    def evaluate(self, data: str | Path | None = None, checkpoint: str = "best") -> Evaluation:
        """Score the test split of the training data (or another labelled set); writes report.html."""
        return evaluate(self._require_run(), data, checkpoint=checkpoint, device=self.config.device)

    @property
    def predictor(self) -> Predictor:
        if self._predictor is None:
            self._predictor = Predictor.from_run(self._require_run(), device=self.config.device)
        return self._predictor

    @property
    def classes(self) -> list[str]:
        return self.predictor.classes

    def predict(self, inputs: ImageInput | Sequence[ImageInput], top_k: int = 5) -> list[Prediction]:
        """Paths (files, folders, globs), PIL images, arrays or tensors -> one Prediction each."""
        if isinstance(inputs, str | Path):
            inputs = [inputs]
        if isinstance(inputs, list | tuple) and inputs and all(isinstance(i, str | Path) for i in inputs):
            inputs = expand_paths(inputs)
        return self.predictor.predict(inputs, top_k=top_k)

    def predict_proba(self, inputs: ImageInput | Sequence[ImageInput]) -> np.ndarray:
        """(N, num_classes) probabilities, columns in the order of `classes`."""
        return self.predictor.predict_proba(inputs)

    def _require_run(self) -> Path:
        if self.run_dir is None:
            raise DeepfitError("this classifier has not been trained yet: call fit(data) or deepfit.load(run_dir)")
        return self.run_dir

    def __repr__(self) -> str:
        where = f", run_dir={str(self.run_dir)!r}" if self.run_dir else ""
        return f"ImageClassifier({self.config.model!r}{where})"


class ObjectDetector:
    """A detector (task="detect": boxes) or instance segmenter (task="segment-instances": boxes and masks)
    to train, evaluate and use. Options are those of `deepfit train` (see `TrainConfig`)."""

    def __init__(self, model: str | None = None, *, task: str = "detect", **options: Any) -> None:
        if task not in ("detect", "segment-instances"):
            raise DeepfitError(f"task={task!r}: ObjectDetector is for 'detect' and 'segment-instances'; use deepfit.ImageClassifier "
                               "for 'classify' and deepfit.SemanticSegmenter for 'segment'")
        self.config = TrainConfig.from_dict({"task": task, **({"model": model} if model else {}), **options})
        self.run_dir: Path | None = None
        self.result: DetectionRun | None = None
        self._predictor: DetectionPredictor | None = None

    def fit(self, data: str | Path, *, format: str | None = None, classes: list[str] | None = None, **options: Any) -> ObjectDetector:
        """Train on labels in any supported format (`format` forces one; `classes` names VOC / mask-PNG classes)."""
        config = self.config.replace(**options) if options else self.config
        self.result = train_detector(data, config, format=format, classes=classes)
        self.config, self.run_dir, self._predictor = config, self.result.run_dir, None
        return self

    def evaluate(self, data: str | Path | None = None, checkpoint: str = "best") -> DetectionEvaluation:
        """COCO mAP (boxes, and masks for instance segmentation) on the test split, or on another labelled set."""
        return evaluate_detector(self._require_run(), data, checkpoint=checkpoint, device=self.config.device)

    @property
    def predictor(self) -> DetectionPredictor:
        if self._predictor is None:
            self._predictor = DetectionPredictor.from_run(self._require_run(), device=self.config.device)
        return self._predictor

    @property
    def classes(self) -> list[str]:
        return self.predictor.trained.classes

    def predict(self, inputs: Any, *, conf: float = 0.25, iou: float = 0.5) -> Any:
        """One image (path, PIL image, (H, W, 3) array, (3, H, W) tensor) -> a dict of boxes (xyxy pixels), labels,
        names, scores (and masks (M, H, W) bool); a list, a folder or a glob -> a list of them."""
        if isinstance(inputs, str | Path) and (Path(inputs).is_dir() or any(c in str(inputs) for c in "*?[")):
            inputs = expand_paths([inputs])
        return self.predictor.predict(inputs, conf=conf, iou=iou)

    def _require_run(self) -> Path:
        if self.run_dir is None:
            raise DeepfitError("this detector has not been trained yet: call fit(data) or deepfit.load(run_dir)")
        return self.run_dir

    def __repr__(self) -> str:
        where = f", run_dir={str(self.run_dir)!r}" if self.run_dir else ""
        return f"ObjectDetector({self.config.model!r}, task={self.config.task!r}{where})"


class SemanticSegmenter:
    """A semantic segmenter (a class for every pixel) to train, evaluate and use. Options are those of
    `deepfit train --task segment` (see `TrainConfig`): loss, class_weights, ignore_index, tile_size, ..."""

    def __init__(self, model: str | None = None, **options: Any) -> None:
        if options.get("task", "segment") != "segment":
            raise DeepfitError(f"task={options['task']!r}: SemanticSegmenter is for 'segment'")
        self.config = TrainConfig.from_dict({**options, "task": "segment", **({"model": model} if model else {})})
        self.run_dir: Path | None = None
        self.result: SegmentationRun | None = None
        self._predictor: SegmentationPredictor | None = None

    def fit(self, data: str | Path, *, masks: str | Path | None = None, format: str | None = None, classes: list[str] | None = None,
            colors: dict[str, Any] | str | Path | None = None, skip_unmasked: bool = False, **options: Any) -> SemanticSegmenter:
        """Train on images and masks: `masks` names the mask folder when it is not beside the images; `classes` names
        indexed mask values in order; `colors` maps class names to the RGB colours of colour-coded masks (a dict or JSON);
        `skip_unmasked` leaves images without a mask out on purpose instead of counting them as bad pairs."""
        config = self.config.replace(**options) if options else self.config
        self.result = train_segmenter(data, config, masks=masks, format=format, classes=classes, colors=colors,
                                      skip_unmasked=skip_unmasked)
        self.config, self.run_dir, self._predictor = config, self.result.run_dir, None
        return self

    def evaluate(self, data: str | Path | None = None, *, masks: str | Path | None = None, skip_unmasked: bool = False,
                 checkpoint: str = "best") -> SegmentationEvaluation:
        """Per-class IoU and Dice, mean IoU and pixel accuracy on the test split, or on another set of images and masks
        (`masks`, `skip_unmasked` as for `fit`), as `deepfit evaluate` does."""
        return evaluate_segmenter(self._require_run(), data, checkpoint=checkpoint, device=self.config.device, masks=masks,
                                  skip_unmasked=skip_unmasked)

    @property
    def predictor(self) -> SegmentationPredictor:
        if self._predictor is None:
            self._predictor = SegmentationPredictor.from_run(self._require_run(), device=self.config.device)
        return self._predictor

    @property
    def classes(self) -> list[str]:
        return self.predictor.trained.classes

    def predict(self, inputs: Any) -> Any:
        """One image (path, PIL image, (H, W[, 3]) array, (3, H, W) tensor) -> an (H, W) uint8 array of class indexes
        (into `classes`) at the image's own size; a list, a folder or a glob -> a list of them."""
        if isinstance(inputs, str | Path) and (Path(inputs).is_dir() or any(c in str(inputs) for c in "*?[")):
            inputs = expand_paths([inputs])
        return self.predictor.predict(inputs)

    def _require_run(self) -> Path:
        if self.run_dir is None:
            raise DeepfitError("this segmenter has not been trained yet: call fit(data) or deepfit.load(run_dir)")
        return self.run_dir

    def __repr__(self) -> str:
        where = f", run_dir={str(self.run_dir)!r}" if self.run_dir else ""
        return f"SemanticSegmenter({self.config.model!r}{where})"


def resume(run_dir: str | Path, *, epochs: int | None = None, device: str | None = None) -> ImageClassifier | ObjectDetector | SemanticSegmenter:
    """Continue a stopped run (or extend a finished one to `epochs`) and return it ready to evaluate and predict."""
    task = run_task(run_dir)
    if task == "segment":
        segmentation = resume_segmenter(run_dir, epochs=epochs, device=device)
        seg = load(segmentation.run_dir, device=device or "auto")
        seg.result = segmentation
        return seg
    if task != "classify":
        detection = resume_detector(run_dir, epochs=epochs, device=device)
        det = load(detection.run_dir, device=device or "auto")
        det.result = detection
        return det
    result = resume_run(run_dir, epochs=epochs, device=device)
    clf = load(result.run_dir, device=device or "auto")
    clf.result = result
    return clf


def load(run_dir: str | Path, checkpoint: str = "best", device: str = "auto") -> ImageClassifier | ObjectDetector | SemanticSegmenter:
    """A trained run, ready to predict and evaluate in a fresh process (no user code needed)."""
    task = run_task(run_dir)
    if task == "segment":
        segmenter = SegmentationPredictor.from_run(run_dir, checkpoint, device)
        seg = SemanticSegmenter.__new__(SemanticSegmenter)
        seg.config = TrainConfig.from_dict({**segmenter.trained.meta["config"], "device": device})
        seg.run_dir, seg.result, seg._predictor = run_folder(run_dir), None, segmenter
        return seg
    if task != "classify":
        detector = DetectionPredictor.from_run(run_dir, checkpoint, device)
        det = ObjectDetector.__new__(ObjectDetector)
        det.config = TrainConfig.from_dict({**detector.trained.meta["config"], "device": device})
        det.run_dir, det.result, det._predictor = run_folder(run_dir), None, detector
        return det
    predictor = Predictor.from_run(run_dir, checkpoint, device)
    clf = ImageClassifier.__new__(ImageClassifier)
    clf.config = predictor.trained.config.replace(device=device)
    clf.run_dir = run_folder(run_dir)
    clf.result = None
    clf._predictor = predictor
    return clf


def extract_features(
    data: str | Path, model: str | None = None, *, path_column: str | None = None, label_column: str | None = None,
    **options: Any,
) -> FeatureSet:
    """The feature matrix of a labelled data set, as `deepfit features --export` writes it.

    `result.features` is the (N, D) float32 array (`np.asarray(result)` too); `paths`, `labels`
    (indices into `classes`) and `splits` describe its rows; `result.split("train")` gives (X, y).
    Options are those of `deepfit features` (see `FeaturesConfig`): weights, pretrained, layer, ...
    """
    from deepfit.workflows.features import extract_features as extract

    return _with_features_config(extract, data, model, path_column, label_column, options)


def fit_features(
    data: str | Path, model: str | None = None, *, path_column: str | None = None, label_column: str | None = None,
    **options: Any,
) -> FeaturesResult:
    """Features + a classical model (svm, logreg, knn, ridge), scored on the test split: a run folder that
    `deepfit.load()` and `deepfit predict` use like any other."""
    from deepfit.workflows.features import fit_features as fit

    return _with_features_config(fit, data, model, path_column, label_column, options)


def _with_features_config(
    workflow: Any, data: str | Path, model: str | None, path_column: str | None, label_column: str | None, options: dict[str, Any]
) -> Any:
    """Validate the options as a FeaturesConfig (a typo suggests the right name) and run the workflow."""
    config = FeaturesConfig.from_dict({"model": model, **options} if model else options)
    return workflow(data, config, catalog=discover(data, path_column=path_column, label_column=label_column))
