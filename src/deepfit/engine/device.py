"""Which device and numeric precision to train with."""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path

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


# The CPU features that compute bf16 in hardware, as /proc/cpuinfo names them: x86 AVX512-BF16 and AMX, Arm BF16.
_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware. There bf16 autocast trains convolutional networks 1.3-1.9x
    faster than fp32 (BENCHMARKS.md, "Precision on the CPU"); elsewhere bf16 is emulated and several times slower.

    Read from /proc/cpuinfo (Linux), because torch has no public query for it; other systems answer no.
    DEEPFIT_CPU_BF16=0 or 1 overrides the answer (the test suite sets 0, so it computes the same on every CPU).
    """
    forced = os.environ.get("DEEPFIT_CPU_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):  # x86 names them flags, Arm features
            return bool(_BF16_FLAGS & set(value.split()))
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' is bf16 autocast where the hardware computes bf16 (CUDA GPUs that support it, CPUs with native bf16):
    fast, and with no loss scaling needed; fp32 elsewhere."""
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("--precision fp16 needs a CUDA GPU; use fp32 or bf16 on CPU")
    return precision


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
