"""The checks every config makes of its values: types, choices and ranges, and names that do not exist (with the
nearest valid one suggested). Shared by TrainConfig and FeaturesConfig (config.py), which re-export what callers use."""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from typing import Any

from deepfit.errors import ConfigError


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _did_you_mean(name: str, valid: typing.Iterable[str]) -> str:
    close = suggest_name(name, valid)
    return f" (did you mean {close!r}?)" if close else ""


class OptionError(ConfigError):
    """A value an option cannot take. The message names the Python keyword (`lr`); `cli_message` the flag (`--lr`)."""

    def __init__(self, option: str, problem: str) -> None:
        super().__init__(f"{option} {problem}")
        self.option, self.problem = option, problem

    def cli_message(self) -> str:
        return f"--{_flag(self.option)} {self.problem}"


# The smallest input side: deepfit's own nets and the quickstart preset (8x8 digits upscaled) work at 16 px; below that
# a network's downsampling leaves less than a pixel, and most images become a few meaningless values.
MIN_IMAGE_SIZE = 16

# option -> (lowest, lowest allowed itself, highest, highest allowed itself); None: no bound on that side
_Limit = tuple[float | None, bool, float | None, bool]
_AT_LEAST_0: _Limit = (0, True, None, False)
_AT_LEAST_1: _Limit = (1, True, None, False)
_SHARE: _Limit = (0, True, 1, False)
_COMMON_LIMITS: dict[str, _Limit] = {
    "image_size": (MIN_IMAGE_SIZE, True, None, False), "val_fraction": _SHARE, "test_fraction": _SHARE,
    "workers": _AT_LEAST_0, "batch_size": _AT_LEAST_1, "seed": _AT_LEAST_0,
}
_SOUND_LIMITS: dict[str, _Limit] = {"sample_rate": (1000, True, None, False), "clip_seconds": (0, False, None, False),
                                    "channels": _AT_LEAST_1}
TRAIN_LIMITS: dict[str, _Limit] = {
    **_COMMON_LIMITS, "epochs": _AT_LEAST_1, "lr": (0, False, None, False), "momentum": _SHARE, "weight_decay": _AT_LEAST_0,
    "warmup_epochs": _AT_LEAST_0, "label_smoothing": _SHARE, "ema": _SHARE, "mixup": _AT_LEAST_0, "dropout": _SHARE, "ignore_index": (-1, True, None, False),
    "tile_size": (32, True, None, False), "early_stopping": _AT_LEAST_0, "head_epochs": _AT_LEAST_0,
    "backbone_lr_scale": _AT_LEAST_0, "accumulate": _AT_LEAST_1, "save_every_steps": _AT_LEAST_0, "time_budget": (0, False, None, False),
    "cv": _AT_LEAST_0, **_SOUND_LIMITS, "max_length": _AT_LEAST_1, "vocab_size": (100, True, None, False),
}
FEATURES_LIMITS: dict[str, _Limit] = {**_COMMON_LIMITS, **_SOUND_LIMITS, "cv_folds": (2, True, None, False),
                                      "max_length": _AT_LEAST_1}
_TYPE_NAMES = {bool: "true or false", int: "a whole number", float: "a number", str: "text", dict: "a dict"}


def describe_limit(limit: _Limit) -> str:
    """(0, True, 1, False) -> 'in [0, 1)'; (1, True, None, False) -> 'at least 1'."""
    low, low_in, high, high_in = limit
    if low is not None and high is not None:
        return f"in {'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"
    if low is not None:
        return f"at least {low:g}" if low_in else f"greater than {low:g}"
    return f"at most {high:g}" if high_in else f"less than {high:g}"


def check_values(config: Any, limits: dict[str, _Limit]) -> None:
    """Every field of a config dataclass: its type (an int is accepted for a float), its choices and its range."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if value is None or (isinstance(value, str) and value in f.metadata.get("words", ())):
            continue
        kind = field_type(f, type(config))
        if kind is str and isinstance(value, os.PathLike):  # output=Path(...): kept as text, as config.json stores it
            value = os.fspath(value)
            setattr(config, f.name, value)
        ok = isinstance(value, (int, float) if kind is float else kind) and (kind is bool or not isinstance(value, bool))
        if not ok:
            words = "".join(f" or {w!r}" for w in f.metadata.get("words", ()))
            raise OptionError(f.name, f"must be {_TYPE_NAMES.get(kind, kind.__name__)}{words}, got {value!r} ({type(value).__name__})")
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise OptionError(f.name, f"must be one of {', '.join(choices)}, not {value!r}{_did_you_mean(str(value), choices)}")
        limit = limits.get(f.name)
        if limit is not None:
            low, low_in, high, high_in = limit
            below = low is not None and (value < low if low_in else value <= low)
            above = high is not None and (value > high if high_in else value >= high)
            if below or above:
                raise OptionError(f.name, f"must be {describe_limit(limit)}, got {value}")
    if config.val_fraction + config.test_fraction >= 1:
        raise ConfigError("--val-fraction and --test-fraction (val_fraction, test_fraction) must sum to less than 1")


# Names users bring from other tools, mapped to ours: only used to suggest, never silently accepted.
ALIASES = {
    "learning_rate": "lr", "wd": "weight_decay", "bs": "batch_size", "lr_schedule": "schedule", "arch": "model",
    "size": "image_size", "img_size": "image_size", "patience": "early_stopping", "drop_rate": "dropout",
    "num_epochs": "epochs", "max_epochs": "epochs",
}


def suggest_name(name: str, valid: typing.Iterable[str]) -> str | None:
    """The valid name a user most likely meant: a close match to a valid name or to a known alias."""
    valid = list(valid)
    aliases = {a: t for a, t in ALIASES.items() if t in valid}
    close = difflib.get_close_matches(name, valid + list(aliases), n=1, cutoff=0.5)
    return aliases.get(close[0], close[0]) if close else None


def check_names(values: dict[str, Any], valid: list[str], what: str) -> None:
    """Reject unknown keys with a suggestion, so a typo never silently falls back to a default."""
    for key in values:
        if key not in valid:
            raise ConfigError(f"unknown {what} {key!r}{_did_you_mean(key, valid)}; valid: {', '.join(valid)}")


def field_type(f: dataclasses.Field, cls: type) -> type:
    """The plain type behind `int | None`-style annotations of a field of the dataclass `cls`, for the CLI's parsers."""
    hint = typing.get_type_hints(cls)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return args[0]
    return hint
