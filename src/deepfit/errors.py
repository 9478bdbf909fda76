"""The exceptions deepfit raises for problems a user can fix.

Each message is one line that names the problem, the file it concerns and what to do,
so the CLI can print it without a traceback.
"""


class DeepfitError(Exception):
    """Base class: a problem with the user's input, not a bug in deepfit."""


class DataError(DeepfitError, ValueError):
    """The data cannot be used as given (missing folder, empty class, bad CSV, unreadable files...)."""


class ConfigError(DeepfitError, ValueError):
    """An option is unknown or has a value that cannot work."""


class WeightsError(DeepfitError, ValueError):
    """A weights or checkpoint file cannot be loaded safely into the requested model."""


class TrainingError(DeepfitError, RuntimeError):
    """Training cannot go on (a loss that became NaN, memory that cannot be freed); the last good checkpoint is kept."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C: the trainer stopped between two steps and a resumable checkpoint was saved."""
