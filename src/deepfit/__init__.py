"""deepfit: teach a computer by example, and get an honest measure of how well it learned."""

__version__ = "0.1.0"

from deepfit.api import ImageClassifier, load  # noqa: E402
from deepfit.config import TrainConfig  # noqa: E402
from deepfit.errors import ConfigError, DataError, DeepfitError, WeightsError  # noqa: E402
from deepfit.workflows.predict import Prediction  # noqa: E402

__all__ = [
    "ConfigError", "DataError", "DeepfitError", "ImageClassifier", "Prediction", "TrainConfig", "WeightsError",
    "__version__", "load",
]
