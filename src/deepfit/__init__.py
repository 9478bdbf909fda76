"""deepfit: teach a computer by example, and get an honest measure of how well it learned.

    clf = deepfit.ImageClassifier("resnet18", pretrained=True, epochs=10)
    clf.fit("pets/")                       # class folders, split folders or a CSV; trains into runs/<name>/
    clf.evaluate().metrics["accuracy"]     # the test split, scored once; report.html in the run folder
    clf.predict("photo.jpg")               # Prediction(source, label, probability, top)
    deepfit.load("runs/<name>").predict("new_photos/")

Front-ends, one per kind of task (each a `Learner`; every option of `deepfit train` is a keyword, listed by
help(deepfit.ImageClassifier) and completed by editors):
    ImageClassifier     image classes (from scratch, transfer learning)
    SoundClassifier     sound classes (recordings in, the spectrogram front end inside the model)
    TextClassifier      text classes (strings in, the tokenizer learned from the training texts inside the run)
    ObjectDetector      boxes (task="detect") or boxes and masks (task="segment-instances")
    SemanticSegmenter   a class for every pixel
    Learner             any task by name, including one registered from outside deepfit (register_task)
Runs: load(run_dir) a trained run; resume(run_dir) a stopped one; rerun(run_dir) trains one again, bit for bit.
Search: tune(data, trials=20, space=..., **options) searches training options with Optuna (`deepfit tune`).
Features + a classical model: extract_features(data, model), fit_features(data, model, classifier="svm").
Data: audit_data(data, model=..., weights=...) finds duplicates, label errors, outliers and bad objects (`deepfit data audit`).
Options and results: TrainConfig, FeaturesConfig (every option with its help), TrainOptions, FeaturesOptions
(the same as typed keywords), Prediction, Detections. Errors: DeepfitError and its kinds DataError, ConfigError,
WeightsError. The command line (`deepfit --help`) runs the same code.

The public names are imported on first use, so `import deepfit` (and `deepfit --help`) stays fast:
torch and torchvision take seconds to import on a small machine.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from deepfit.version import __version__

_EXPORTS = {
    "Learner": "deepfit.api",
    "ImageClassifier": "deepfit.api",
    "ObjectDetector": "deepfit.api",
    "SemanticSegmenter": "deepfit.api",
    "SoundClassifier": "deepfit.api_modalities",
    "TextClassifier": "deepfit.api_modalities",
    "load": "deepfit.api",
    "resume": "deepfit.api",
    "rerun": "deepfit.api",
    "tune": "deepfit.workflows.tune",
    "audit_data": "deepfit.workflows.audit",
    "extract_features": "deepfit.api_features",
    "fit_features": "deepfit.api_features",
    "FeaturesConfig": "deepfit.config",
    "TrainConfig": "deepfit.config",
    "Prediction": "deepfit.tasks.classify.predict",
    "Detections": "deepfit.tasks.detect.predict",
    "TrainOptions": "deepfit.options",
    "FeaturesOptions": "deepfit.options",
    "Task": "deepfit.tasks.base",
    "register_task": "deepfit.registry",
    "DeepfitError": "deepfit.errors",
    "DataError": "deepfit.errors",
    "ConfigError": "deepfit.errors",
    "WeightsError": "deepfit.errors",
}

__all__ = [
    "ConfigError", "DataError", "DeepfitError", "Detections", "FeaturesConfig", "FeaturesOptions", "ImageClassifier", "Learner",
    "ObjectDetector", "Prediction", "SemanticSegmenter", "SoundClassifier", "Task", "TextClassifier", "TrainConfig", "TrainOptions", "WeightsError", "__version__",
    "audit_data", "extract_features", "fit_features", "load", "register_task", "rerun", "resume", "tune",
]

if TYPE_CHECKING:
    from deepfit.api import (
        ImageClassifier,
        Learner,
        ObjectDetector,
        SemanticSegmenter,
        load,
        rerun,
        resume,
    )
    from deepfit.api_features import extract_features, fit_features
    from deepfit.api_modalities import SoundClassifier, TextClassifier
    from deepfit.config import FeaturesConfig, TrainConfig
    from deepfit.errors import ConfigError, DataError, DeepfitError, WeightsError
    from deepfit.options import FeaturesOptions, TrainOptions
    from deepfit.registry import register_task
    from deepfit.tasks.base import Task
    from deepfit.tasks.classify.predict import Prediction
    from deepfit.tasks.detect.predict import Detections
    from deepfit.workflows.audit import audit_data
    from deepfit.workflows.tune import tune


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'deepfit' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public names too, before their first use has imported them (dir(), help() and completion show them)."""
    return sorted({*__all__, *(name for name in globals() if name.startswith("__"))})
