"""Optimizers with sensible parameter groups, and learning-rate schedules with warm-up."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from deepfit.errors import ConfigError


def param_groups(
    named: Iterable[tuple[str, nn.Parameter]], weight_decay: float, lr_scale: float = 1.0
) -> list[dict]:
    """Split parameters into decayed (weights) and undecayed (biases, norm scales: anything 1-D).

    Decaying a norm's scale or a bias only pulls it towards zero without regularising anything.
    """
    decay, no_decay = [], []
    for _, p in named:
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "lr_scale": lr_scale},
        {"params": no_decay, "weight_decay": 0.0, "lr_scale": lr_scale},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(groups: list[dict], name: str, lr: float, momentum: float = 0.9) -> torch.optim.Optimizer:
    for g in groups:
        g["lr"] = lr * g["lr_scale"]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise ConfigError(f"unknown optimizer {name!r}; use sgd or adamw")


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the peak learning rate at `step` (0-based) of `total` optimisation steps.

    Linear warm-up from ~0, then cosine to 0, linear to 0 ("onecycle", the triangular schedule of
    fast-training recipes), or constant.
    """
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    progress = min(1.0, max(0.0, progress))
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "onecycle":
        return 1.0 - progress
    raise ConfigError(f"unknown schedule {schedule!r}; use cosine, onecycle or constant")


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, schedule: str
) -> torch.optim.lr_scheduler.LambdaLR:
    """Stepped once per optimisation step; LambdaLR scales each group's own lr, keeping their ratios."""
    lr_factor(warmup_steps, total_steps, warmup_steps, schedule)  # validates the name early
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, warmup_steps, schedule))
