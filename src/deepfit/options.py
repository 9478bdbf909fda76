"""The options of the Python API, spelled out for editors, type checkers and `help()`.

`TrainConfig` and `FeaturesConfig` (deepfit.config) hold every option with its default and its help; the API takes
them as keywords (`ImageClassifier("cnn", epochs=20)`). Written as `**options: Any` those keywords would be invisible:
no completion in an editor, no check by a type checker, nothing in `help()`. So:

- `TrainOptions` and `FeaturesOptions` are the same fields as `TypedDict`s, for `**options: Unpack[TrainOptions]`
  (PEP 692), which editors complete and type checkers check. A test keeps them equal to the config classes.
- `with_options` gives a function the signature `help()`, `inspect.signature` and notebooks show: its own
  parameters followed by every option as a keyword with its default.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any, TypedDict, TypeVar

_F = TypeVar("_F", bound=Callable[..., Any])


class TrainOptions(TypedDict, total=False):
    """The training options of `deepfit train` as keywords (see `deepfit.TrainConfig` for each one's help)."""

    model: str | None
    pretrained: bool
    weights: str | None
    model_args: dict
    dropout: float
    freeze_backbone: bool
    image_size: int | None
    val_fraction: float
    test_fraction: float
    modality: str
    sample_rate: int | None
    clip_seconds: float | None
    channels: int
    frontend: dict
    max_length: int | None
    tokenizer: str
    vocab_size: int
    noise: str | None
    augment: str
    hflip: bool
    cache: str
    workers: int | None
    epochs: int
    time_budget: float | None
    batch_size: int | None
    optimizer: str
    lr: float | str | None
    momentum: float
    weight_decay: float
    schedule: str
    warmup_epochs: float
    label_smoothing: float
    mixup: float
    loss: str
    class_weights: str
    sampler: str
    ignore_index: int
    tile_size: int
    cv: int
    early_stopping: int
    ema: float
    head_epochs: int
    backbone_lr_scale: float
    tta: bool
    accumulate: int
    skip_nonfinite: bool
    save_every_steps: int
    device: str
    precision: str
    channels_last: bool | None
    compile: bool
    seed: int
    output: str
    name: str | None


class FeaturesOptions(TypedDict, total=False):
    """The options of `deepfit features` as keywords (see `deepfit.FeaturesConfig` for each one's help)."""

    pretrained: bool
    weights: str | None
    model_args: dict
    layer: str | None
    image_size: int | None
    modality: str
    max_length: int | None
    sample_rate: int | None
    clip_seconds: float | None
    channels: int | None
    frontend: dict
    classifier: str | None
    cv_folds: int
    export: str | None
    val_fraction: float
    test_fraction: float
    cache: bool
    workers: int | None
    batch_size: int
    device: str
    seed: int
    output: str
    name: str | None


def with_options(config: type, *, skip: tuple[str, ...] = ()) -> Callable[[_F], _F]:
    """Decorator: the function's signature becomes its own parameters (less its ``**options``) and then every field of
    the dataclass `config` not among them or in `skip`, keyword-only with its default, so help() lists them all."""

    def decorate(func: _F) -> _F:
        own = [p for p in inspect.signature(func).parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        taken = {p.name for p in own} | set(skip)
        extra = []
        for f in dataclasses.fields(config):
            if f.name in taken:
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            extra.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=f.type))
        func.__signature__ = inspect.Signature([*own, *extra])  # type: ignore[attr-defined]
        return func

    return decorate
