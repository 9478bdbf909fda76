"""Which device and numeric precision to train with."""

from __future__ import annotations

import contextlib

import torch

from deepfit.errors import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when present, else CPU (MPS is opt-in: its op coverage still varies)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} asked for CUDA, but torch sees no CUDA GPU here; use --device cpu or auto")
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' is bf16 autocast on CUDA (fast, no loss scaling) and fp32 on CPU.

    Many CPUs have no native bf16, where bf16 matmuls run several times slower than fp32.
    """
    if precision == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("--precision fp16 needs a CUDA GPU; use fp32 or bf16 on CPU")
    return precision


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
