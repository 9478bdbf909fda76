"""The search space of `deepfit tune`: what each trial may change, per task, and the small YAML file that overrides it.

A space maps option names to what a trial does with them, written as in the YAML file (`--space FILE`):

    lr: {low: 1e-4, high: 1e-2, log: true}      a range (integers when the option is a whole number, or both ends are)
    batch_size: [16, 32]                        a choice
    epochs: 3                                   a fixed value: every trial trains with it
    model_args.width: [16, 32, 64]              one key of a dict option (model_args, frontend)

Every name is a `TrainConfig` field (or FIELD.KEY of a dict field); the options that decide the split (seed, fractions)
and where runs go cannot be searched, so every trial trains and validates on the same images. The default space
(`default_space`) holds only what applies to the task, its modality and its network; the file's keys replace it key
by key.
"""

from __future__ import annotations

import json
import math
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from deepfit.config import OptionError, TrainConfig, field_names, field_type, suggest_name
from deepfit.errors import ConfigError
from deepfit.tasks.classify.text_model import TEXT_MODELS

# Same for every trial by construction: the split (seed, fractions), the data's reading, and where the runs go.
NOT_SEARCHED = {"task": "--task", "seed": "--seed", "val_fraction": "--val-fraction", "test_fraction": "--test-fraction",
                "cv": "--cv", "modality": "--modality", "output": "--output", "name": "--name"}
DICT_FIELDS = ("model_args", "frontend")
# deepfit's own networks and the argument that sets their size, with its default; other networks are left alone
# (a timm or torchvision name fixes its size), unless the space lists models itself.
MODEL_SIZE = {"cnn": ("width", 32), "soundcnn": ("width", 32), "crnn": ("width", 32), "transformer": ("width", 128),
              "bag": ("dim", 64), "rnn": ("hidden", 128)}
_RANGE_KEYS = {"low", "high", "log", "step"}


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    log: bool = False
    step: float | None = None
    integer: bool = False


@dataclass(frozen=True)
class Choice:
    values: tuple[Any, ...]


@dataclass(frozen=True)
class Fixed:
    value: Any


Dimension = Range | Choice | Fixed
Space = dict[str, Dimension]


def default_space(task: str, base: TrainConfig, modality: str) -> Space:
    """What a search changes when no file says otherwise: the learning rate around the base one (the task's default
    unless --lr was given), weight decay, a few batch sizes around the base one, augmentation where the modality has
    it, dropout before a classifier, and the width of deepfit's own networks."""
    batch = base.batch_size or 32
    space: Space = {} if base.find_lr else {"lr": Range(base.resolved_lr / 10, base.resolved_lr * 10, log=True)}  # find: each trial's own
    space |= {
        "weight_decay": Range(1e-4, 0.3, log=True),
        "batch_size": Choice(tuple(sorted({max(1, batch // 2), batch, batch * 2}))),
    }
    if modality == "image":
        space["augment"] = Choice(("none", "light", "strong"))
    elif modality == "sound":  # sound has one augmentation (shifts, SpecAugment, noise): light and strong are the same
        space["augment"] = Choice(("none", "light"))
    if task == "classify":
        space["dropout"] = Range(0.0, 0.5)
    model = effective_model(base, modality)
    if model in MODEL_SIZE and "widths" not in base.model_args:  # `widths` sets every stage: width would be ignored
        arg, default = MODEL_SIZE[model]
        size = int(base.model_args.get(arg, default))
        space[f"model_args.{arg}"] = Choice(tuple(sorted({max(1, size // 2), size, size * 2})))
    return space


def effective_model(base: TrainConfig, modality: str) -> str | None:
    """The network a run of `base` trains: text found by --modality auto trains deepfit's `bag` unless a text network
    is named (tasks/classify/text.py does the same)."""
    if modality == "text" and base.model not in TEXT_MODELS and base.modality == "auto" and ":" not in (base.model or ""):
        return "bag"
    return base.model


def load_space(source: dict[str, Any] | str | Path | None) -> tuple[Space, str]:
    """A space from a dict (Python) or a YAML file: (the space, what error messages name it)."""
    if source is None:
        return {}, "space"
    if isinstance(source, dict):
        return parse_space(source, "space"), "space"
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"space file {path} not found")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}{line}: not valid YAML: {problem}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot be read ({e})") from None
    if loaded is None:  # an empty file: the default space
        return {}, str(path)
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected one 'option: values' a line (e.g. 'lr: {{low: 1e-4, high: 1e-2, log: true}}'), "
                          f"got a {type(loaded).__name__}")
    return parse_space(loaded, str(path)), str(path)


def parse_space(plain: dict[str, Any], where: str) -> Space:
    """The YAML form (also tune.json's) -> a Space; every name checked, numbers written as text (YAML reads 1e-4 as
    text) read as numbers."""
    names = field_names(TrainConfig)
    space: Space = {}
    for key, value in plain.items():
        key = str(key)
        head = key.split(".", 1)[0]
        if head not in names or ("." in key and head not in DICT_FIELDS):
            close = suggest_name(head, names)
            hint = f" (did you mean {close!r}?)" if close else ""
            raise ConfigError(f"{where}: unknown option {key!r}{hint}; a key is an option of `deepfit train` (lr, batch_size, "
                              f"...: see its --help), or {' or '.join(f'{d}.KEY' for d in DICT_FIELDS)}")
        if key in NOT_SEARCHED:
            raise ConfigError(f"{where}: {key} is the same for every trial (so every trial has the same split and folder): "
                              f"give {NOT_SEARCHED[key]} to `deepfit tune` instead")
        space[key] = _dimension(key, value, where)
    return space


def _dimension(key: str, value: Any, where: str) -> Dimension:
    kind = _kind(key)
    if isinstance(value, dict) and "low" in value and "high" in value and set(value) <= _RANGE_KEYS:
        low, high = _number(value["low"], key, where), _number(value["high"], key, where)
        log, step = bool(value.get("log", False)), value.get("step")
        integer = kind is int or (kind is None and isinstance(low, int) and isinstance(high, int) and not isinstance(step, float))
        if kind is not None and kind not in (int, float):
            raise ConfigError(f"{where}: {key} is {kind.__name__}, not a number: list its values instead, e.g. {key}: [a, b]")
        if not low < high:
            raise ConfigError(f"{where}: {key}: low ({low}) must be below high ({high})")
        if log and low <= 0:
            raise ConfigError(f"{where}: {key}: a log range needs low above 0, got {low}")
        if log and step is not None:
            raise ConfigError(f"{where}: {key}: give either log or step, not both")
        if integer and (low != int(low) or high != int(high)):
            raise ConfigError(f"{where}: {key} is a whole number: give whole-number low and high")
        return Range(low, high, log, None if step is None else _number(step, key, where), integer)
    if isinstance(value, dict) and kind is not dict:
        raise ConfigError(f"{where}: {key}: a range is {{low: A, high: B}} (optionally log: true or step: S), got keys "
                          f"{', '.join(map(str, value))}")
    if isinstance(value, list):
        if not value:
            raise ConfigError(f"{where}: {key}: an empty list leaves nothing to choose; give values, or one plain value")
        return Choice(tuple(_typed(v, kind, key, where) for v in value))
    return Fixed(_typed(value, kind, key, where))


def _kind(key: str) -> type | None:
    """The option's type (int, float, str, bool, dict); None for a key inside a dict option (its type is the value's)."""
    if "." in key:
        return None
    return field_type(TrainConfig.__dataclass_fields__[key], TrainConfig)


def _number(value: Any, key: str, where: str) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(f"{where}: {key}: {value!r} is not a number")
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"{where}: {key}: {value!r} is not a number") from None
        return int(number) if number.is_integer() and "." not in value and "e" not in value.lower() else number
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: {key}: {value} is not a finite number")
    return value


def _typed(value: Any, kind: type | None, key: str, where: str) -> Any:
    """A value as the option takes it: YAML's text '3e-4' for a float option is the number 3e-4."""
    if kind in (int, float) and isinstance(value, str) and value not in TrainConfig.__dataclass_fields__[key].metadata.get("words", ()):
        number = _number(value, key, where)
        return float(number) if kind is float else number
    return value


def to_plain(space: Space) -> dict[str, Any]:
    """The space in its YAML form (tune.json keeps it so; `parse_space` reads it back)."""
    plain: dict[str, Any] = {}
    for key, dim in space.items():
        if isinstance(dim, Range):
            plain[key] = {"low": dim.low, "high": dim.high, **({"log": True} if dim.log else {}),
                          **({"step": dim.step} if dim.step is not None else {})}
        elif isinstance(dim, Choice):
            plain[key] = list(dim.values)
        else:
            plain[key] = dim.value
    return plain


def _as_categorical(value: Any) -> Any:
    """Optuna stores choices that are None, bool, int, float or text; a list or dict choice is kept as its JSON."""
    return value if value is None or isinstance(value, bool | int | float | str) else json.dumps(value)


def suggest(trial: Any, space: Space) -> dict[str, Any]:
    """The trial's values of every searched and fixed option ({"lr": 0.003, "model_args.width": 16, "epochs": 3})."""
    values: dict[str, Any] = {}
    for key, dim in space.items():
        if isinstance(dim, Range):
            if dim.integer:
                values[key] = trial.suggest_int(key, int(dim.low), int(dim.high), step=int(dim.step or 1), log=dim.log)
            else:
                values[key] = trial.suggest_float(key, float(dim.low), float(dim.high), step=dim.step, log=dim.log)
        elif isinstance(dim, Choice):
            stored = {_as_categorical(v): v for v in dim.values}
            values[key] = stored[trial.suggest_categorical(key, list(stored))]
        else:
            values[key] = dim.value
    return values


def config_changes(base: TrainConfig, values: dict[str, Any]) -> dict[str, Any]:
    """Values of a trial as TrainConfig fields: a whole dict option replaces the base's, then FIELD.KEY values go
    into it (or into the base's)."""
    changes = {k: v for k, v in values.items() if "." not in k}
    for key, value in values.items():
        if "." in key:
            head, sub = key.split(".", 1)
            changes[head] = {**changes.get(head, getattr(base, head)), sub: value}
    return changes


def merge_spaces(default: Space, given: Space) -> Space:
    """The default space with the given one's keys replacing it key by key; a given `model` or whole `model_args`
    also drops the default's network size (a width is not an option of every network)."""
    merged = {**default, **given}
    if "model" in given or "model_args" in given:
        merged = {k: d for k, d in merged.items() if not k.startswith("model_args.") or k in given}
    return merged


def check_space(space: Space, base: TrainConfig, where: str) -> None:
    """Each bound, choice and fixed value must make a valid config on its own: a mistake is said now, naming the file,
    not in the middle of the search."""
    fixed = {k: d.value for k, d in space.items() if isinstance(d, Fixed)}
    for key, dim in space.items():
        candidates = [dim.low, dim.high] if isinstance(dim, Range) else list(dim.values) if isinstance(dim, Choice) else [dim.value]
        for value in candidates:
            try:
                base.replace(**config_changes(base, {**fixed, key: value}))
            except OptionError as e:
                raise ConfigError(f"{where}: {key}: {e.option} {e.problem}" if e.option != key else f"{where}: {key} {e.problem}") from None
            except ConfigError as e:
                raise ConfigError(f"{where}: {key}: {e}") from None
            except TypeError as e:  # e.g. a list where the config wants text, caught by no check of its own
                raise ConfigError(f"{where}: {key}: {value!r} cannot be used ({e})") from None


def base_values(space: Space, base: TrainConfig, modality: str) -> dict[str, Any]:
    """The base config's own value of each searched option that the space can hold: the first trial tries them, so the
    search starts from (and can only improve on) the defaults."""
    model_args = dict(base.model_args)
    model = effective_model(base, modality)
    if model in MODEL_SIZE:
        model_args.setdefault(*MODEL_SIZE[model])
    values: dict[str, Any] = {}
    for key, dim in space.items():
        head, _, sub = key.partition(".")
        value = (model_args if head == "model_args" else getattr(base, head)).get(sub) if sub else getattr(base, key)
        value = base.resolved_lr if key == "lr" and not base.find_lr else value  # no --lr: the optimizer's default rate
        if isinstance(dim, Range) and isinstance(value, int | float) and not isinstance(value, bool) and dim.low <= value <= dim.high:
            values[key] = int(value) if dim.integer else float(value)
        elif isinstance(dim, Choice) and value in dim.values:
            values[key] = _as_categorical(value)
    return values


def train_command(data: str, preset: str | None, options: dict[str, Any], data_options: dict[str, Any]) -> str:
    """`deepfit train DATA --preset P --lr 0.003 --model-args depth=2,width=16 ...`: the same run again (same seed)."""
    words = ["deepfit", "train", data, *(["--preset", preset] if preset else [])]
    for key, value in {**options, **data_options}.items():
        if value is None or key == "name" or value == {} or (value is False and key in data_options):
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            words.append(flag if value else f"--no-{flag[2:]}")
        elif isinstance(value, dict):
            words += [flag, ",".join(f"{k}={v if isinstance(v, str) else json.dumps(v, separators=(',', ':'))}" for k, v in value.items())]
        elif isinstance(value, list):
            words += [flag, *map(str, value)]
        else:
            words += [flag, str(value)]
    return shlex.join(words)
