"""What every task's evaluation tells its report about the run itself: the training options and the training curves.

The scores are each task's own; how the run was made is the same question for all of them, answered here once
from the checkpoint's sidecar (its resolved ``config``) and the run's ``metrics.csv``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from deepfit.config import TrainConfig
from deepfit.errors import DeepfitError
from deepfit.report.gallery import ClassExamples
from deepfit.report.page import RunDetails
from deepfit.report.plots import ACCURACY_COLUMNS, plot_training_curves

# Options every report shows (config key), in reading order; the task's own ones follow (`TASK_OPTIONS`).
_COMMON = ("model", "model_args", "weights", "pretrained", "epochs", "batch_size", "accumulate", "image_size", "optimizer",
           "lr", "schedule", "warmup_epochs", "weight_decay", "augment", "hflip", "class_weights", "sampler", "early_stopping", "precision", "seed")
TASK_OPTIONS = {
    "classify": ("head_epochs", "backbone_lr_scale", "label_smoothing", "mixup", "dropout", "tta"),
    "detect": ("freeze_backbone", "backbone_lr_scale"),
    "segment-instances": ("freeze_backbone", "backbone_lr_scale"),
    "segment": ("freeze_backbone", "backbone_lr_scale", "loss", "ignore_index", "tile_size"),
}
_TRANSFER_ONLY = {"head_epochs", "backbone_lr_scale", "freeze_backbone"}  # meaningless when trained from scratch


def _resolved_lr(config: Mapping[str, Any]) -> Any:
    """The learning rate the run used: the config's, or the default its optimizer and task gave it."""
    if config.get("lr") is not None:
        return config["lr"]
    try:
        return TrainConfig.from_dict(dict(config)).resolved_lr
    except (DeepfitError, TypeError):  # a config from another version: say what is known
        return "default"


def training_options(meta: Mapping[str, Any], **resolved: Any) -> dict[str, Any]:
    """The options a run was trained with, as the report shows them: ``--flag`` -> value, in reading order.

    From the checkpoint sidecar's ``config``; ``resolved`` gives values the config left to a default that
    only the trained model knows (``image_size=224`` from a pretrained model's own settings). A model fitted
    on a network's features (``meta["features"]``) shows its feature options instead of epochs and rates.
    """
    config = {**(meta.get("config") or {}), **{key: value for key, value in resolved.items() if value is not None}}
    if not config:
        return {}
    features = meta.get("features")
    if features:
        keys = ("model", "weights", "pretrained", "image_size", "seed")
        shown = {_flag(key): config.get(key) for key in keys if key in config}
        return {**shown, "--layer": features.get("layer"), "--classifier": features.get("classifier"),
                "--cv-folds": features.get("cv_folds"), "chosen by cross-validation": features.get("params")}
    transfer = bool(config.get("weights") or config.get("pretrained"))
    keys = [*_COMMON, *TASK_OPTIONS.get(str(config.get("task", "classify")), ())]
    shown = {}
    for key in keys:
        if key not in config or (key in _TRANSFER_ONLY and not transfer):
            continue
        shown[_flag(key)] = _resolved_lr(config) if key == "lr" else config[key]
    return shown


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def run_details(
    run_dir: Path, folder: Path, meta: Mapping[str, Any], *, notes: Sequence[str] = (),
    examples: Sequence[ClassExamples] = (), scores: Sequence[tuple[str, str]] = ACCURACY_COLUMNS,
    score_title: str = "Accuracy", as_percent: bool = True, **resolved: Any,
) -> RunDetails:
    """The report's :class:`~deepfit.report.page.RunDetails` of a run: its ``notes`` and class ``examples``, its
    training options (``resolved`` as in :func:`training_options`) and its training curves, drawn into
    ``folder`` from ``run_dir/metrics.csv`` with the task's validation ``scores`` (columns and labels).

    A run with no ``metrics.csv`` (a classical model fitted on features has no epochs) has no curves.
    """
    metrics_csv = Path(run_dir) / "metrics.csv"
    curves = None
    if metrics_csv.exists():
        curves = plot_training_curves(metrics_csv, Path(folder) / "training_curves.png", scores=scores,
                                      score_title=score_title, as_percent=as_percent)
    classes = meta.get("classes")
    lr_find = Path(run_dir) / "lr_find.png"
    return RunDetails(notes=list(notes), options=training_options(meta, **resolved), curves=curves,
                      lr_find=lr_find if lr_find.is_file() else None, examples=list(examples),
                      classes=len(classes) if classes else None)
