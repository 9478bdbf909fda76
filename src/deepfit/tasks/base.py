"""The task interface: everything deepfit's verbs need to know of one task, stated in one place.

A task (classify, detect, segment, ...) is an object with the methods below, registered by name in
`deepfit.registry`. The workflows are written once against it:

    train / resume   workflows/train.py   read -> split -> prepare -> the engine (runs/session.py) -> run folder
    evaluate         workflows/evaluate.py   load -> held-out split (or other data) -> evaluate -> report
    predict          workflows/predict.py    load -> predictor -> predict_files
    explain          workflows/explain.py    load -> predictor -> explain -> pictures + explanations.json
    load, Learner    api.py                  load -> predictor -> predict in Python

and the CLI builds its options from `data_options`, `evaluate_options` and `predict_options`. A task from
outside deepfit subclasses `Task`, registers an instance with `deepfit.registry.register_task`, and every verb
(CLI included) serves it with no change to deepfit (tests/test_external_task.py does exactly that).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from deepfit.config import TrainConfig
from deepfit.engine.interfaces import BatchSource, BatchTransformFn
from deepfit.engine.optim import param_groups
from deepfit.errors import ConfigError, DataError
from deepfit.models.weights import FROZEN_STATS


@dataclass(frozen=True)
class Option:
    """An option of a task's data reading, evaluation or prediction: a keyword in Python, a flag in the CLI."""

    name: str  # the Python keyword, e.g. "skip_unmasked"; the flag is --skip-unmasked
    help: str
    type: type = str  # str, int, float, bool (a switch), or list (one or more values)
    default: Any = None
    modality: str | tuple[str, ...] | None = None  # the modality (or modalities) the option is for, None: every one

    def applies_to(self, modality: str) -> bool:
        return self.modality is None or modality in ((self.modality,) if isinstance(self.modality, str) else self.modality)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


@dataclass
class Data:
    """A labelled data set as a task read it: where it is (deepfit never writes there), its classes in order,
    the task's own data set object, and what config.json keeps to read it the same way again."""

    root: Path
    classes: list[str]
    source: Any
    record: dict[str, Any] = field(default_factory=dict)
    layout: str = ""  # words for the log: "class folders", "coco", ...
    location: str | Path | None = None  # what config.json names as the data, when not the path given to train()


@dataclass
class Setup:
    """What a task prepares for one training run (new or resumed) on the engine."""

    model: nn.Module
    objective: Any  # the engine's Task: training_loss, validation_batch, validation_result, monitor, columns
    train: BatchSource
    val: BatchSource | None
    transform: BatchTransformFn  # stored batch -> model input, for training
    eval_transform: BatchTransformFn | None = None  # for validation; None: `transform`
    meta: dict[str, Any] = field(default_factory=dict)  # into every checkpoint's sidecar (model spec, preprocessing)
    record: dict[str, Any] = field(default_factory=dict)  # into config.json
    summary: str = ""  # one log line: model, parameters, input
    channels_last: bool = False
    pretrained_from: str | None = None
    write: Callable[[Path], None] | None = None  # extra files for a new run folder (duplicates.csv, ...)
    on_resume: Callable[[], None] | None = None  # after the resumable state is loaded into the model
    splits: dict[str, list] | None = None  # the splits as used, when the task dropped unreadable items


class Task:
    """The interface (with defaults where one fits most tasks). Attributes:

    name              the registry key and --task value
    modality          the registry key of the input modality ("image")
    defaults          TrainConfig values this task changes when the user gives none (model, batch_size, ...)
    score             words for the monitored validation value, for logs ("accuracy", "box mAP")
    data_options      keywords of `fit` / flags of `deepfit train` that say how to read the data
    evaluate_options  the names among `data_options` that `evaluate --data` takes too
    predict_options   keywords of `predict` / flags of `deepfit predict`
    check_options     flags of `deepfit data check` beyond the data options
    """

    name: ClassVar[str] = ""
    modality: ClassVar[str] = "image"
    title: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    score: ClassVar[str] = "validation score"
    sgd_lr: ClassVar[float] = 0.05  # the default peak rate with --optimizer sgd (adamw's is 1e-3 for every task)
    data_options: ClassVar[tuple[Option, ...]] = ()
    evaluate_options: ClassVar[tuple[str, ...]] = ()
    predict_options: ClassVar[tuple[Option, ...]] = ()
    check_options: ClassVar[tuple[Option, ...]] = ()  # `deepfit data check` options beyond `data_options`
    claim_order: ClassVar[int] = 0  # `deepfit data check` without --task asks tasks in this order whether DATA is theirs
    layouts: ClassVar[str] = ""  # the layouts of data this task reads, shown when no task's layout matches DATA

    # --- options ---------------------------------------------------------------------------------------
    def check_config(self, config: TrainConfig) -> None:
        """Refuse options this task cannot honour (raise ConfigError); called when a TrainConfig is made."""

    # --- data ------------------------------------------------------------------------------------------
    def read(self, data: str | Path, config: TrainConfig, **options: Any) -> Data:
        raise NotImplementedError

    def split(self, data: Data, config: TrainConfig) -> dict[str, list]:
        """{"train": [...], "val": [...], "test": [...]}: the data's own splits, or a seeded split."""
        raise NotImplementedError

    def save_split(self, data: Data, splits: dict[str, list], path: Path) -> None:
        raise NotImplementedError

    def reread(self, saved: dict[str, Any], run_dir: Path) -> tuple[Data, dict[str, list]]:
        """A run's data and splits read again as they were for training (resume, evaluate)."""
        raise NotImplementedError

    def read_other(self, data: str | Path, trained: Any, **options: Any) -> tuple[Data, list]:
        """Another labelled data set to score a trained model on (`evaluate --data`), checked against its classes."""
        raise NotImplementedError

    def class_counts(self, data: Data, items: list) -> Any:
        """(N, K) numpy array: what each of `items` holds of each class (a classification example one of its label, a
        detection image its objects, a segmentation mask its pixels). `--class-weights balanced`, `--sampler balanced`
        and the data audit's class balance are computed from it, the same way for every task (tasks/balance.py)."""
        raise ConfigError(f"--task {self.name} does not count its classes: --class-weights and --sampler are not available")

    def audit_objects(self, data: Data, items: list) -> list[Any]:
        """`deepfit data audit`: what looks wrong among the objects inside `items` (a list of `audit.objects.Finding`:
        degenerate, doubled or oddly sized boxes and masks); none for tasks whose item is one labelled whole."""
        return []

    def judge_labels(self, run: str | Path, data: Data, items: list) -> tuple[list[int], Any, set[int]]:
        """`deepfit data audit --run RUN`: (indexes of the items judged, their label quality in [0, 1], the indexes
        likely mislabelled) from a trained run's predictions on the items it never trained on."""
        raise ConfigError(f"--run judges object labels (detection, instance segmentation), not --task {self.name}'s; a "
                          "classifier's run judges labels as --model RUN (its own embeddings)")

    def describe(self, data: Data, splits: dict[str, list]) -> str:
        counts = ", ".join(f"{len(v)} {k}" for k, v in splits.items())
        return f"{len(data.classes)} classes, {counts} ({data.layout})"

    # --- training --------------------------------------------------------------------------------------
    def phases(self, config: TrainConfig) -> list[tuple[str, int]]:
        """[(phase, epochs)]: one phase by default."""
        return [("train", config.epochs)]

    def prepare(self, config: TrainConfig, data: Data, splits: dict[str, list], device: Any, *,
                resumed: dict[str, Any] | None) -> Setup:
        """Model (with the weights the config asks for, unless `resumed`: the run's saved config.json), objective,
        stores and transforms for a run on `device`."""
        raise NotImplementedError

    def param_groups(self, model: nn.Module, phase: str, config: TrainConfig) -> list[dict]:
        """The trainable parameters of a phase in optimizer groups (see engine/optim.py); all of them by default."""
        return param_groups(model.named_parameters(), config.weight_decay)

    # --- using a trained model -------------------------------------------------------------------------
    # Most tasks only name these two: a function checkpoint -> trained model, and the predictor class.
    loader: ClassVar[Callable[[Path], Any] | None] = None
    predictor_type: ClassVar[type | None] = None

    def load(self, checkpoint: Path) -> Any:
        """A trained model (with `.model`, `.classes` and `.meta`) rebuilt from a checkpoint and its sidecar."""
        if self.loader is None:
            raise NotImplementedError(f"task {self.name!r} names no loader")
        return self.loader(checkpoint)

    def predictor(self, trained: Any, device: str = "auto") -> Any:
        """An object with `predict(inputs, **predict_options)` and `trained`."""
        if self.predictor_type is None:
            raise NotImplementedError(f"task {self.name!r} names no predictor_type")
        return self.predictor_type(trained, device)

    def evaluate(self, run_dir: Path, predictor: Any, split: str, data: Data, items: list, *,
                 checkpoint: str, other: str | Path | None) -> Any:
        """Score `items` (the held-out split, or all of `other`), write the report; an object with `split`,
        `metrics` and `report`."""
        raise NotImplementedError

    def headline(self, evaluation: Any) -> str:
        """One line of the evaluation's main numbers, for the CLI."""
        return f"{evaluation.split}: report: {evaluation.report}"

    def predict_files(self, predictor: Any, paths: list[Path], output: Path | None, run_dir: Path,
                      **options: Any) -> list[Any]:
        """Predict on files and write the results (never overwriting); returns what the CLI prints (text or rich
        renderables)."""
        raise NotImplementedError

    # --- video frames (workflows/video.py): the image tasks name these three ----------------------------
    def frame(self, predictor: Any, image: Any, **options: Any) -> Any:
        """The predictor's result for one (H, W, 3) uint8 RGB video frame, with the task's predict options."""
        raise ConfigError(f"--task {self.name} does not predict on video")

    def draw_frame(self, predictor: Any, image: Any, result: Any) -> Any:
        """The frame (H, W, 3) uint8 with its result drawn on it, for the annotated video."""
        raise ConfigError(f"--task {self.name} does not predict on video")

    def frame_record(self, predictor: Any, result: Any) -> dict[str, Any]:
        """A frame's result as a row of the per-frame CSV / JSON Lines file (lists and dicts are JSON in the CSV)."""
        raise ConfigError(f"--task {self.name} does not predict on video")

    # --- explanations (workflows/explain.py, the reports) ---------------------------------------------------
    def explain(self, predictor: Any, items: list[Any], settings: Any) -> list[Any]:
        """An `explain.result.Explanation` for each input (or each object / region of it) as `settings`
        (`explain.result.ExplainSettings`) asks: the class explained, method, layer, map or token scores, picture."""
        raise ConfigError(f"--task {self.name} does not explain its predictions yet")

    # --- optional --------------------------------------------------------------------------------------
    def check_data(self, data: str | Path, **options: Any) -> list[Any]:
        """`deepfit data check`: a summary of DATA as printable renderables; problems are logged as warnings."""
        raise ConfigError(f"deepfit data check does not know --task {self.name} yet")

    def claims(self, data: str | Path, options: dict[str, Any]) -> bool:
        """Whether `deepfit data check DATA` without --task should read DATA as this task's labels."""
        return False

    def model_names(self, pattern: str) -> dict[str, list[str]]:
        """`deepfit models`: {heading: names} this task offers beyond the classification networks."""
        return {}


def option_values(task: Task, given: dict[str, Any], allowed: Sequence[Option | str], what: str) -> dict[str, Any]:
    """The options among `given` that `task` takes for `what` ("data", "evaluate", "predict"); one it does not take
    is an error naming the task that does."""
    names = {o.name if isinstance(o, Option) else o for o in allowed}
    unknown = sorted(k for k in given if k not in names)
    if unknown:
        from deepfit.registry import all_tasks

        first = unknown[0]
        owners = [t.name for t in all_tasks() if first in {o.name for o in (*t.data_options, *t.check_options, *t.predict_options)}]
        flag = "--" + first.replace("_", "-")
        owner = f" (it is for --task {', '.join(owners)})" if owners else ""
        raise ConfigError(f"{flag} is not an option of {what} for --task {task.name}{owner}")
    return dict(given)


def task_for_data(data: str | Path, options: dict[str, Any]) -> Task:
    """The task whose labels `data` holds, for `deepfit data check` without --task: the first in `claim_order` that
    claims it; an error showing every task's layouts when none does."""
    from deepfit.registry import all_tasks

    if not Path(data).expanduser().exists():
        raise DataError(f"data not found: {data} — check the path")
    tasks = sorted(all_tasks(), key=lambda t: t.claim_order)
    task = next((t for t in tasks if t.claims(data, options)), None)
    if task is None:
        layouts = "\n".join(dict.fromkeys(t.layouts for t in tasks if t.layouts))  # a layout shared by two tasks once
        raise DataError(f"no labels found in {data}: it is laid out as none of the layouts below (or pass --task NAME "
                        f"to read it as that task's data and see what is missing)\n{layouts}")
    return task


# --- helpers for tasks whose model has a pretrained part (a backbone, an encoder) ----------------------------


def pretrained_part_groups(model: nn.Module, part: nn.Module, config: TrainConfig) -> list[dict]:
    """Optimizer groups: the parameters of `part` (the backbone) at `backbone_lr_scale` of the rate when it starts
    from pretrained weights, the rest (new heads, decoders) at the full rate."""
    part_ids = {id(p) for p in part.parameters()}
    inside = [(n, p) for n, p in model.named_parameters() if id(p) in part_ids]
    rest = [(n, p) for n, p in model.named_parameters() if id(p) not in part_ids]
    scale = config.backbone_lr_scale if config.transfer else 1.0
    return param_groups(inside, config.weight_decay, scale) + param_groups(rest, config.weight_decay)


def keep_norm_statistics(part: nn.Module) -> None:
    """A pretrained part's batch norms keep their (ImageNet) statistics, as torchvision's FrozenBatchNorm2d does:
    a few images per batch, of one data set, give statistics too noisy and too narrow to replace them."""
    for m in part.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            setattr(m, FROZEN_STATS, True)


class ModelPredictor:
    """The start every task's predictor shares: the trained model (with `.model`, `.classes`, `.meta`) in eval mode on
    the best available device, with that device's preferred precision (`resolve_precision`'s auto: bf16 autocast where
    the hardware computes bf16, fp32 elsewhere)."""

    def __init__(self, trained: Any, device: str = "auto") -> None:
        from deepfit.engine.device import resolve_device, resolve_precision

        self.trained = trained
        self.device = resolve_device(device)
        self.precision = resolve_precision("auto", self.device)
        self.model = trained.model.to(self.device).eval()
        self.runner: Any = None  # an OnnxRunner once `use_onnx` is called: the predictions come from ONNX Runtime

    def use_onnx(self, path: Path) -> None:
        """Predict with the exported ONNX file `path` (ONNX Runtime) instead of the PyTorch model: same inputs, same
        results and files, within the export's measured agreement."""
        from deepfit.deploy.graph import OnnxRunner

        self.runner = OnnxRunner(path)
