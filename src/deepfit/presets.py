"""Presets: tested sets of training options to start from (`--preset NAME`, `deepfit.ImageClassifier(preset=...)`).

The user's explicit options always win over the preset's.
"""

from __future__ import annotations

from typing import Any

from deepfit.config import TrainConfig, suggest_name
from deepfit.errors import ConfigError

PRESETS: dict[str, dict[str, Any]] = {
    # Small, fast net for the embedded digits: 8x8 images upscaled to 16 px; flips would turn a 2 into a 5-like shape.
    "quickstart": dict(
        model="cnn", model_args={"depth": 2, "width": 32}, image_size=16, epochs=12, batch_size=64,
        optimizer="adamw", lr=3e-3, weight_decay=5e-4, augment="light", hflip=False, schedule="onecycle",
        warmup_epochs=1.0, label_smoothing=0.05,
    ),
    # CIFAR-sized images from scratch on a CPU budget: see bench/cifar10_budget.py and BENCHMARKS.md.
    "cifar": dict(
        model="fastnet", image_size=32, epochs=13, batch_size=256, optimizer="sgd", lr=0.2, momentum=0.9,
        weight_decay=5e-4, schedule="onecycle", warmup_epochs=2.0, label_smoothing=0.2, augment="light",
        tta=True,
    ),
    # Transfer learning from ImageNet weights on a few hundred photos.
    "finetune": dict(
        epochs=5, head_epochs=2, batch_size=32, optimizer="adamw", lr=1e-3, backbone_lr_scale=0.1,
        weight_decay=0.01, augment="light", schedule="cosine", warmup_epochs=0.5, label_smoothing=0.1,
    ),
}


def apply_preset(name: str | None, overrides: dict[str, Any]) -> TrainConfig:
    """Preset values first, then the user's explicit options on top."""
    values: dict[str, Any] = {}
    if name:
        if name not in PRESETS:
            close = suggest_name(name, PRESETS)
            hint = f" (did you mean {close!r}?)" if close else ""
            raise ConfigError(f"unknown preset {name!r}{hint}; presets: {', '.join(PRESETS)}")
        values.update(PRESETS[name])
    values.update(overrides)
    return TrainConfig.from_dict(values)
