"""Prediction to files, written once for every task: a run, input files (folders, globs) -> result files.

The modality finds the inputs (image files in folders, ...); the task predicts and writes what it writes
(a CSV of classes, drawn boxes, mask PNGs), never overwriting a file that exists.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deepfit.errors import ConfigError
from deepfit.log import logger, setup_logging
from deepfit.registry import get_modality, get_task
from deepfit.runs.folder import resolve_checkpoint, run_folder, run_task
from deepfit.tasks.base import option_values

BACKENDS = ("torch", "onnx", "int8")  # PyTorch; the run's model.onnx or model.int8.onnx in ONNX Runtime


def load_predictor(run: str | Path, checkpoint: str = "best", device: str = "auto", backend: str = "torch") -> tuple[Any, Any]:
    """(task, predictor) of a run folder or of a checkpoint file inside one; with backend "onnx" or "int8" (or the
    path of an .onnx file `deepfit export` wrote) the predictor runs the exported file in ONNX Runtime."""
    task = get_task(run_task(run))
    weights = resolve_checkpoint(run, checkpoint)
    predictor = task.predictor(task.load(weights), device)
    if backend != "torch":
        predictor.use_onnx(exported_file(run, backend, weights, predictor.trained.classes))
    return task, predictor


def exported_file(run: str | Path, backend: str, weights: Path, classes: list[str]) -> Path:
    """The .onnx file a backend names, checked to be an export of this run's classes; one made from other weights
    (the run was resumed since) is used with a warning."""
    from deepfit.deploy.graph import read_metadata
    from deepfit.workflows.export import checkpoint_digest

    if backend.endswith(".onnx"):
        path = Path(backend)
    elif backend in ("onnx", "int8"):
        path = run_folder(run) / ("model.onnx" if backend == "onnx" else "model.int8.onnx")
    else:
        raise ConfigError(f"--backend {backend}: use one of {', '.join(BACKENDS)}, or an .onnx file's path")
    if not path.is_file():
        how = "deepfit export RUN --quantize int8" if backend == "int8" else "deepfit export RUN"
        raise ConfigError(f"no exported model at {path}: write it with `{how}` first")
    meta = read_metadata(path)
    if list(meta.get("classes", [])) != list(classes):
        raise ConfigError(f"{path} was exported for the classes {meta.get('classes')}, not this run's {classes}")
    if meta.get("weights_sha256") != checkpoint_digest(weights):
        logger.warning(f"{path.name} was exported from other weights than {weights.name} (the run was trained on since?): "
                       f"its predictions are those of the older weights; export again to update it")
    return path


def predict_files(run_dir: str | Path, inputs: list[str | Path], output: str | Path | None = None, *, checkpoint: str = "best",
                  device: str = "auto", texts: list[str] | None = None, backend: str = "torch", **options: Any) -> list[Any]:
    """Predict on files, folders or glob patterns (and, for a text classifier, `texts` given as strings) and write the
    task's result files (into `output`, default inside the run folder). Returns what to show: lines and rich tables."""
    setup_logging()
    task, predictor = load_predictor(run_dir, checkpoint, device, backend)
    options = option_values(task, {k: v for k, v in options.items() if v is not None}, task.predict_options, "predict")
    modality = getattr(predictor, "modality", task.modality)
    if texts and modality != "text":
        raise ConfigError(f"--text is for text classifiers; {run_dir} takes {get_modality(modality).noun}")
    paths = get_modality(modality).expand(inputs) if inputs else []  # a classifier of sound takes sound files
    return task.predict_files(predictor, [*paths, *(texts or [])], Path(output) if output else None, run_folder(run_dir),
                              **options)


def predict_videos(run_dir: str | Path, sources: list[str | Path], output: str | Path | None = None, *, checkpoint: str = "best",
                   device: str = "auto", backend: str = "torch", every: int = 1, max_fps: float | None = None,
                   max_frames: int | None = None, **options: Any) -> list[str]:
    """Predict on video files, folders of frames, webcam:N or stream URLs: an annotated video and per-frame CSV and JSON
    Lines files per source, in `output` (default RUN/video). Returns a line per source."""
    from deepfit.workflows.video import predict_video

    setup_logging()
    task, predictor = load_predictor(run_dir, checkpoint, device, backend)
    options = option_values(task, {k: v for k, v in options.items() if v is not None}, task.predict_options, "predict")
    target = Path(output) if output else run_folder(run_dir) / "video"
    return predict_video(task, predictor, list(sources), target, every=every, max_fps=max_fps, max_frames=max_frames,
                         options=options)
