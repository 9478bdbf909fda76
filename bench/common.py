"""Shared helpers for the benchmarks: unpacking the shared data sets and recording results.

Each benchmark writes its own section of BENCHMARKS.md (between `<!-- bench:NAME -->` markers) with
the machine it ran on and the command that produced it, so re-running one updates only its figures.
"""

from __future__ import annotations

import math
import os
import platform
import re
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DEEPFIT_SHARED", REPO.parent / "shared"))


def cache() -> Path:
    from deepfit.fileio import cache_dir

    return cache_dir() / "data"


def unpack(archive: str, folder: str) -> Path:
    """Unpack ../shared/data/<archive> into the cache once; return the unpacked <folder>."""
    target = cache() / folder
    if not (target.exists() and any(target.iterdir())):
        source = SHARED / "data" / archive
        if not source.exists():
            sys.exit(f"{source} not found: the benchmarks need the shared data beside the repository")
        target.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(source) as tar:
            tar.extractall(target.parent, filter="data")
    return target


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    return f"{cpu}, {os.cpu_count()} cores{gpu}; torch {torch.__version__}, Python {platform.python_version()}"


def command() -> str:
    return "uv run python " + " ".join([str(Path(sys.argv[0]).relative_to(REPO)) if Path(sys.argv[0]).is_absolute() else sys.argv[0], *sys.argv[1:]])


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


def record(name: str, title: str, body: str, *, where: str | None = None, how: str | None = None,
           path: Path | None = None) -> None:
    """Replace (or append) the section `name` of BENCHMARKS.md (or of `path`). `where` and `how` replace this machine
    and this command with those of a run made elsewhere (bench/gpu_report.py: the device machine's run)."""
    path = path or REPO / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n\nFigures measured by the scripts in `bench/`; each section says on what machine and how.\n"
    section = (
        f"<!-- bench:{name} -->\n## {title}\n\n"
        f"- machine: {where or machine()}\n- command: {how or f'`{command()}` (commit {commit()})'}\n\n{body.strip()}\n<!-- /bench:{name} -->"
    )
    pattern = re.compile(rf"<!-- bench:{name} -->.*?<!-- /bench:{name} -->", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)
    print(section)


def plain_training(model: torch.nn.Module, *, lr: float, weight_decay: float, label_smoothing: float,
                   steps_per_epoch: int, epochs: int) -> tuple[torch.optim.Optimizer, Any, torch.nn.Module]:
    """(optimizer, scheduler, loss) of the plain loops the throughput benchmarks compare deepfit with, set as deepfit's
    defaults are: AdamW with weight decay on weights only, one epoch of linear warm-up then cosine to 0, label
    smoothing."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr)
    total, warmup = epochs * steps_per_epoch, steps_per_epoch

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor), torch.nn.CrossEntropyLoss(label_smoothing=label_smoothing)
