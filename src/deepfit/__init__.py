"""deepfit: teach a computer by example, and get an honest measure of how well it learned.

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
    "load": "deepfit.api",
    "resume": "deepfit.api",
    "extract_features": "deepfit.api",
    "fit_features": "deepfit.api",
    "FeaturesConfig": "deepfit.config",
    "TrainConfig": "deepfit.config",
    "Prediction": "deepfit.tasks.classify.predict",
    "Task": "deepfit.tasks.base",
    "register_task": "deepfit.registry",
    "DeepfitError": "deepfit.errors",
    "DataError": "deepfit.errors",
    "ConfigError": "deepfit.errors",
    "WeightsError": "deepfit.errors",
}

__all__ = [
    "ConfigError", "DataError", "DeepfitError", "FeaturesConfig", "ImageClassifier", "Learner", "ObjectDetector", "Prediction", "SemanticSegmenter",
    "Task", "TrainConfig", "WeightsError", "__version__", "extract_features", "fit_features", "load", "register_task", "resume",
]

if TYPE_CHECKING:
    from deepfit.api import (
        ImageClassifier,
        Learner,
        ObjectDetector,
        SemanticSegmenter,
        extract_features,
        fit_features,
        load,
        resume,
    )
    from deepfit.config import FeaturesConfig, TrainConfig
    from deepfit.errors import ConfigError, DataError, DeepfitError, WeightsError
    from deepfit.registry import register_task
    from deepfit.tasks.base import Task
    from deepfit.tasks.classify.predict import Prediction


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'deepfit' has no attribute {name!r}")
