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
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from deepfit.config import TrainConfig
from deepfit.errors import ConfigError, DeepfitError
from deepfit.modalities.base import is_path_list, names_many
from deepfit.options import TrainOptions, with_options
from deepfit.presets import apply_preset
from deepfit.registry import all_tasks, get_modality, get_task
from deepfit.runs.folder import read_run_config, run_folder, run_task
from deepfit.tasks.base import Task, option_values
from deepfit.tasks.classify.predict import ImageInput, Prediction
from deepfit.tasks.detect.predict import DEFAULT_CONF, DEFAULT_IOU, Detections
from deepfit.workflows.crossval import CVResult, cross_validate
from deepfit.workflows.evaluate import evaluate as evaluate_run
from deepfit.workflows.predict import load_predictor
from deepfit.workflows.train import TrainResult, train
from deepfit.workflows.train import rerun as rerun_run
from deepfit.workflows.train import resume as resume_run

if TYPE_CHECKING:  # PEP 692 and 673 names, for editors and type checkers only (typing has them from Python 3.11)
    from typing_extensions import Self, Unpack


class Learner:
    """A model of one task to train, evaluate and use, written once for every task (see tasks/base.py).

    Every training option of `deepfit train` is a keyword (see `TrainConfig`); the task's data options (e.g.
    `masks=` for segmentation, `path_column=` for a CSV) are keywords of `fit`. An unknown or misspelt option is an
    error that suggests the right name. `ImageClassifier`, `ObjectDetector` and `SemanticSegmenter` are this class
    for their tasks; a task registered from outside deepfit is used as `Learner(task="name", ...)`.
    """

    tasks: ClassVar[tuple[str, ...]] = ()  # the tasks a subclass is for (empty: any)

    @with_options(TrainConfig, skip=("task", "model"))
    def __init__(self, model: str | None = None, *, task: str | None = None, preset: str | None = None,
                 **options: Unpack[TrainOptions]) -> None:
        task = task or (self.tasks[0] if self.tasks else "classify")
        if self.tasks and task not in self.tasks:
            raise DeepfitError(f"task={task!r}: {type(self).__name__} is for {' and '.join(map(repr, self.tasks))}; use "
                               f"{_front_end(task).__name__} for {task!r}")
        # model=None keeps the preset's (or the task's default) architecture.
        self.config: TrainConfig = apply_preset(preset, {"task": task, **options, **({"model": model} if model else {})})
        self.run_dir: Path | None = None
        self.result: TrainResult | None = None
        self.cv_result: CVResult | None = None  # after a fit with cv=N: the folds' runs and scores
        self._predictor: Any = None

    @property
    def task(self) -> Task:
        return get_task(self.config.task)

    def fit(self, data: str | Path, **options: Any) -> Self:
        """Train on `data`; `options` are the task's data options (see `task.data_options`) and training options, which
        override the learner's for this fit (and stay set)."""
        # a data option of any task goes to the workflow, which names the task it belongs to if it is not this one's
        data_names = {o.name for task in all_tasks() for o in task.data_options}
        config = self.config.replace(**{k: v for k, v in options.items() if k not in data_names})
        data_options = {k: v for k, v in options.items() if k in data_names}
        if config.cv:  # one model per fold: no single run to predict with; each fold's run loads with deepfit.load
            self.cv_result, self.config, self.run_dir, self._predictor = cross_validate(data, config, **data_options), config, None, None
            return self
        self.result = train(data, config, **data_options)
        self.config, self.run_dir, self._predictor = config, self.result.run_dir, None
        return self

    def evaluate(self, data: str | Path | None = None, checkpoint: str = "best", *, data_root: str | Path | None = None,
                 **options: Any) -> Any:
        """Score the test split of the training data (or another labelled set, read with the task's `options`, e.g.
        masks=); writes report.html. `data_root`: where the training data is now, when it moved."""
        return evaluate_run(self._require_run(), data, checkpoint=checkpoint, device=self.config.device, data_root=data_root,
                            **options)

    @property
    def predictor(self) -> Any:
        if self._predictor is None:
            self._predictor = load_predictor(self._require_run(), device=self.config.device)[1]
        return self._predictor

    @property
    def classes(self) -> list[str]:
        return list(self.predictor.trained.classes)

    def predict(self, inputs: Any, **options: Any) -> Any:
        """One input (a path, or what the modality takes in memory) -> the task's prediction; a list, a folder or a glob
        -> a list of them. `options` are the task's prediction options (e.g. conf=, iou= for detection)."""
        options = option_values(self.task, options, self.task.predict_options, "predict")
        if names_many(inputs):
            inputs = get_modality(getattr(self.predictor, "modality", self.task.modality)).expand([inputs])
        return self.predictor.predict(inputs, **options)

    def explain(self, inputs: Any, *, method: str | None = None, target: str | None = None, layer: str | None = None,
                max_objects: int = 5, conf: float = 0.25, output: str | Path | None = None) -> list[Any]:
        """Where the model looked: a list of `Explanation`s (`.target`, `.probability`, `.method`, `.layer`, `.heat` map
        in [0, 1] or `.tokens` with scores, `.picture` drawn, `.box` for detections) for one input, a list, a folder or
        a glob; several per image for detection and segmentation (objects, regions). `target`: the class to explain
        (default the predicted one); `output`: also write the pictures and explanations.json into this new folder."""
        from deepfit.explain.result import ExplainSettings, output_folder, write_explanations
        from deepfit.modalities.sound import is_samples_with_rate
        from deepfit.workflows.explain import explain_items

        if max_objects < 1:
            raise ConfigError(f"max_objects must be at least 1, not {max_objects}")
        modality = getattr(self.predictor, "modality", self.task.modality)
        if modality != "text" and names_many(inputs):  # a text classifier's strings are texts (a Path is a file)
            inputs = get_modality(modality).expand([inputs])
        one = not isinstance(inputs, list | tuple) or is_samples_with_rate(inputs)  # (samples, rate) is one clip
        items = [inputs] if one else list(inputs)
        made = explain_items(self.task, self.predictor, items, ExplainSettings(method, target, layer, max_objects, conf))
        if output is not None:
            write_explanations(made, output_folder(Path(output), self._require_run()))
        return made

    def stream(self, source: str | Path, *, every: int = 1, max_fps: float | None = None, max_frames: int | None = None,
               **options: Any) -> Any:
        """A generator of per-frame results (`.index`, `.time`, `.image`, `.result`) of a video file, a folder of frames,
        "webcam:N" or a stream URL, as the frames arrive; `options` as for predict (e.g. conf=)."""
        from deepfit.workflows.video import stream

        options = option_values(self.task, options, self.task.predict_options, "predict")
        return stream(self.task, self.predictor, source, every=every, max_fps=max_fps, max_frames=max_frames, options=options)

    @classmethod
    def from_run(cls, run_dir: str | Path, checkpoint: str = "best", device: str = "auto", backend: str = "torch") -> Learner:
        """A trained run, ready to predict and evaluate in a fresh process (no user code needed); backend "onnx" or
        "int8" predicts with its exported file in ONNX Runtime (`deepfit export`)."""
        task, predictor = load_predictor(run_dir, checkpoint, device, backend)
        learner = cls(task=task.name, **{k: v for k, v in predictor.trained.meta["config"].items() if k != "task"})
        learner.config = learner.config.replace(device=device)
        learner.run_dir, learner._predictor = run_folder(run_dir), predictor
        return learner

    def _require_run(self) -> Path:
        if self.run_dir is None:
            if self.cv_result is not None:
                raise DeepfitError(f"cross-validation trained one model per fold: load one with deepfit.load(RUN), RUN one "
                                   f"of {', '.join(str(r) for r in self.cv_result.runs)}")
            raise DeepfitError(f"this {type(self).__name__} has not been trained yet: call fit(data) or deepfit.load(run_dir)")
        return self.run_dir

    def __repr__(self) -> str:
        """The model, the task where the class does not say it, every option that differs from its default, the run."""
        task = f", task={self.config.task!r}" if type(self) is Learner or len(self.tasks) > 1 else ""
        defaults = TrainConfig(task=self.config.task).to_dict()
        changed = "".join(f", {k}={v!r}" for k, v in self.config.to_dict().items()
                          if k not in ("task", "model") and v != defaults.get(k))
        where = f", run_dir={str(self.run_dir)!r}" if self.run_dir else ""
        return f"{type(self).__name__}({self.config.model!r}{task}{changed}{where})"


class ImageClassifier(Learner):
    """An image classifier to train (from scratch or by transfer learning), evaluate and use.

        clf = ImageClassifier("resnet18", pretrained=True).fit("data/")   # or fit("list.csv", path_column=...)
        clf.predict("a.jpg")                                              # Prediction(source, label, probability, top)
        clf.predict(["a.jpg", pil_image, tensor])                        # a list of them (also for a folder or a glob)
    """

    tasks = ("classify",)

    @with_options(TrainConfig, skip=("task",))
    def fit(self, data: str | Path, *, path_column: str | None = None, label_column: str | None = None,
            label_pattern: str | None = None,
            **options: Unpack[TrainOptions]) -> Self:
        """Train on `data`: class folders, train/val/test folders of them, a CSV/TSV (`path_column`, `label_column`:
        its columns, found by name when not given), or any images whose names hold their label (`label_pattern`, a
        regular expression with named groups label, group, split). Training options override the classifier's (and
        stay set)."""
        return super().fit(data, **given_options(path_column=path_column, label_column=label_column, label_pattern=label_pattern),
                           **options)

    def evaluate(self, data: str | Path | None = None, checkpoint: str = "best", *, data_root: str | Path | None = None,
                 path_column: str | None = None, label_column: str | None = None, label_pattern: str | None = None) -> Any:
        """Score the test split (or another labelled set `data`, read as `fit` reads it); writes report.html."""
        given = given_options(path_column=path_column, label_column=label_column, label_pattern=label_pattern)
        return super().evaluate(data, checkpoint, data_root=data_root, **given)

    def predict(self, inputs: ImageInput | Sequence[ImageInput], top_k: int = 3) -> Prediction | list[Prediction]:
        """One input (a file path, or one PIL image, array or (C, H, W) tensor) -> one Prediction, as for every task;
        a list, a folder, a glob or a (B, C, H, W) batch -> a list of them."""
        predictions = self.predictor.predict(self._expand(inputs), top_k=top_k)
        return predictions[0] if _one_input(inputs) else predictions

    def predict_proba(self, inputs: ImageInput | Sequence[ImageInput]) -> np.ndarray:
        """(N, num_classes) probabilities, columns in the order of `classes`."""
        return self.predictor.predict_proba(self._expand(inputs))

    def _expand(self, inputs: Any) -> Any:
        if is_path_list(inputs):
            return get_modality(self.task.modality).expand([inputs] if isinstance(inputs, str | Path) else inputs)
        return inputs


def _one_input(inputs: Any) -> bool:
    """A single input: a path that is not a folder or a glob, or one in-memory image (not a list, not a batch)."""
    if isinstance(inputs, str | Path):
        return not names_many(inputs)
    if isinstance(inputs, torch.Tensor):
        return inputs.ndim != 4
    return not isinstance(inputs, list | tuple)


class ObjectDetector(Learner):
    """A detector (task="detect": boxes) or instance segmenter (task="segment-instances": boxes and masks).

        det = ObjectDetector("fasterrcnn:tv/mobilenet_v2", weights="mobilenet_v2.safetensors").fit("coco128/")  # format=, classes=
        det.predict("street.jpg", conf=0.25, iou=0.5)   # {"boxes", "labels", "names", "scores"} (+ "masks")
    """

    tasks = ("detect", "segment-instances")

    @with_options(TrainConfig, skip=("task",))
    def fit(self, data: str | Path, *, format: str | None = None, classes: list[str] | None = None,
            masks: str | Path | None = None, mask_name: str | None = None, label_attribute: str | None = None,
            **options: Unpack[TrainOptions]) -> Self:
        """Train on `data` (COCO JSON, YOLO, Pascal VOC, instance-mask PNGs, or VIA, LabelMe or CVAT files; `format`
        forces one); `classes`: the class names in order (VOC and the tools' files; mask PNGs: one name for all objects
        without classes.json); `masks`: the folder of mask PNGs when `data` is the image folder; `mask_name`: a mask's
        name after its image's, "{name}_mask"; `label_attribute`: the VIA region attribute that names the class.
        Training options override the detector's (and stay set)."""
        given = given_options(format=format, classes=classes, masks=masks, mask_name=mask_name, label_attribute=label_attribute)
        return super().fit(data, **given, **options)

    def evaluate(self, data: str | Path | None = None, checkpoint: str = "best", *, data_root: str | Path | None = None,
                 masks: str | Path | None = None, mask_name: str | None = None, label_attribute: str | None = None) -> Any:
        """Score the test split (or another labelled set: `data`, its mask PNGs' folder and names, its VIA label
        attribute); writes report.html."""
        given = given_options(masks=masks, mask_name=mask_name, label_attribute=label_attribute)
        return super().evaluate(data, checkpoint, data_root=data_root, **given)

    def predict(self, inputs: ImageInput | Sequence[ImageInput], *, conf: float = DEFAULT_CONF,
                iou: float = DEFAULT_IOU) -> Detections | list[Detections]:
        """One image -> its Detections (boxes, labels, names, scores, and masks for instance segmenters); a list, a
        folder or a glob -> a list of them. `conf`: the lowest score kept; `iou`: the overlap NMS merges above."""
        return super().predict(inputs, conf=conf, iou=iou)


class SemanticSegmenter(Learner):
    """A semantic segmenter (a class for every pixel). fit() takes masks=, format=, classes=, colors=, skip_unmasked=;
    predict() gives an (H, W) uint8 array of class indexes (into `classes`) at the image's own size."""

    tasks = ("segment",)

    @with_options(TrainConfig, skip=("task",))
    def fit(self, data: str | Path, *, masks: str | Path | None = None, mask_name: str | None = None, format: str | None = None,
            classes: list[str] | None = None, colors: str | Path | dict[str, Any] | None = None, skip_unmasked: bool = False,
            label_attribute: str | None = None, **options: Unpack[TrainOptions]) -> Self:
        """Train on `data` (images and masks, or object labels painted into masks; `masks`: the mask folder when `data`
        is the image folder; `mask_name`: a mask's name after its image's, "{name}_mask"; `format` forces a layout;
        `classes` names mask values 0, 1, ...; `colors` maps class names to RGB mask colours; `skip_unmasked` leaves
        images without a mask out; `label_attribute`: the VIA region attribute that names the class). Training
        options override the segmenter's (and stay set)."""
        given = given_options(masks=masks, mask_name=mask_name, format=format, classes=classes, colors=colors,
                       skip_unmasked=skip_unmasked or None, label_attribute=label_attribute)
        return super().fit(data, **given, **options)

    def evaluate(self, data: str | Path | None = None, checkpoint: str = "best", *, data_root: str | Path | None = None,
                 masks: str | Path | None = None, mask_name: str | None = None, skip_unmasked: bool = False,
                 label_attribute: str | None = None) -> Any:
        """Score the test split (or another labelled set: `data`, its `masks` folder and `mask_name`, its VIA label
        attribute); writes report.html."""
        given = given_options(masks=masks, mask_name=mask_name, skip_unmasked=skip_unmasked or None, label_attribute=label_attribute)
        return super().evaluate(data, checkpoint, data_root=data_root, **given)

    def predict(self, inputs: ImageInput | Sequence[ImageInput]) -> np.ndarray | list[np.ndarray]:
        """One image -> an (H, W) uint8 array of class indexes (into `classes`) at its own size; a list, a folder or a
        glob -> a list of them."""
        return super().predict(inputs)


def given_options(**values: Any) -> dict[str, Any]:
    """The keywords a user gave (not None), so that a task's own defaults apply to the others (the front ends of
    api_modalities.py use it too)."""
    return {k: v for k, v in values.items() if v is not None}


def _front_end(task: str) -> type[Learner]:
    """The Python class users know for a task: the one whose `tasks` name it, else the generic Learner."""
    for cls in (ImageClassifier, ObjectDetector, SemanticSegmenter):
        if task in cls.tasks:
            return cls
    return Learner


def resume(run_dir: str | Path, *, epochs: int | None = None, device: str | None = None,
           data_root: str | Path | None = None) -> Learner:
    """Continue a stopped run (or extend a finished one to `epochs`) and return it ready to evaluate and predict;
    `data_root`: the data's new place when it moved (the run keeps its split)."""
    result = resume_run(run_dir, epochs=epochs, device=device, data_root=data_root)
    learner = load(result.run_dir, device=device or "auto")
    learner.result = result
    return learner


def rerun(run_dir: str | Path, *, output: str | Path | None = None, name: str | None = None, device: str | None = None,
          data_root: str | Path | None = None) -> Learner:
    """Train a run again in a new folder (beside it, or in `output`): the same data, split, options and seed, bit for
    bit on the same machine; a --time-budget run step by step as its schedule was recorded. Returns it ready to
    evaluate and predict."""
    result = rerun_run(run_dir, output=output, name=name, device=device, data_root=data_root)
    learner = load(result.run_dir, device=device or "auto")
    learner.result = result
    return learner


def load(run_dir: str | Path, checkpoint: str = "best", device: str = "auto", backend: str = "torch") -> Learner:
    """A trained run, ready to predict and evaluate in a fresh process (no user code needed): an ImageClassifier,
    SoundClassifier, TextClassifier, ObjectDetector or SemanticSegmenter, or a Learner for a task registered from
    outside deepfit; backend "onnx" or "int8" predicts with the run's exported file in ONNX Runtime."""
    task = run_task(run_dir)
    modality = read_run_config(run_folder(run_dir)).get("modality") if task == "classify" else None
    if modality in ("sound", "text"):
        # imported here: they build on Learner, defined in this module
        from deepfit.api_modalities import SoundClassifier, TextClassifier

        return (SoundClassifier if modality == "sound" else TextClassifier).from_run(run_dir, checkpoint, device, backend)
    return _front_end(task).from_run(run_dir, checkpoint, device, backend)
