"""What a detection or segmentation training run does around its model and data, written once.

Both tasks read labels, build a model and a task object, and then need the same things: a device and
precision (one process or torchrun), a run folder with the split and the resolved config, callbacks that
log, checkpoint and stop early on the task's own metric, and Ctrl-C that leaves a resumable state. The
workflows (detect.py, segment.py) keep what differs: reading the data, the model, the stores.
Classification (train.py) has its head-then-whole phases and keeps its own loop around the same Trainer.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepfit.config import TrainConfig, field_names
from deepfit.modalities.image.store import default_workers
from deepfit.engine import distributed
from deepfit.engine.callbacks import BestCheckpoint, EarlyStopping, MetricsCSV, Progress, ResumeState
from deepfit.engine.checkpoint import (
    RESUME_FILE,
    library_versions,
    link_checkpoint,
    load_training_state,
    save_checkpoint,
    save_training_state,
)
from deepfit.engine.device import resolve_device, resolve_precision
from deepfit.engine.optim import build_optimizer, build_scheduler
from deepfit.engine.trainer import BatchSource, BatchTransformFn, Callback, Task, Trainer
from deepfit.errors import ConfigError
from deepfit.fileio import atomic_write_text
from deepfit.log import logger
from deepfit.runs.folder import new_run_dir, read_run_config
from deepfit.tasks.classify.train import stop_on_ctrl_c


def workers_for(config: TrainConfig) -> int:
    """Loading processes for per-sample decoding and augmentation (data/loader.py)."""
    return config.workers if config.workers is not None else min(4, default_workers())


def to_unit_range(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, 3, S, S) uint8 -> float in [0, 1]: the batch transform of both tasks, whose models normalise inside
    (torchvision's detectors in GeneralizedRCNNTransform, segmenters with their encoder's mean and std)."""
    return images.float().div_(255)


@dataclass
class Machine:
    """Where a run computes: this process's device and precision, and its place among torchrun's processes."""

    device: torch.device
    precision: str
    dist: distributed.Dist


def start(config: TrainConfig) -> Machine:
    """The device and precision for the config; under torchrun, joins the process group first."""
    dist_info = distributed.from_environment()
    if dist_info.enabled and config.batch_size % dist_info.world:
        raise ConfigError(f"--batch-size {config.batch_size} is not divisible by the {dist_info.world} processes")
    device = distributed.init(dist_info, resolve_device(config.device))
    if not dist_info.main:  # rank 0 speaks for all
        logger.setLevel(logging.WARNING)
    return Machine(device, resolve_precision(config.precision, device), dist_info)


def open_run(
    config: TrainConfig, machine: Machine, *, data: str | Path, record: dict[str, Any], save_split: Callable[[Path], None],
    resume_dir: Path | None = None, command: list[str] | None = None,
) -> Path:
    """The run folder (a new one, or `resume_dir`), with the split saved by `save_split(run_dir)` in a new one and
    config.json: the options, `record` (what the data gave: classes, format, ...), the machine and library versions."""
    run_dir: Path | None = resume_dir
    if resume_dir is None and machine.dist.main:
        run_dir = new_run_dir(config.output, config.name, config.model)
        save_split(run_dir)
    if machine.dist.enabled and resume_dir is None:
        run_dir = distributed.broadcast(run_dir if machine.dist.main else None)
    assert run_dir is not None
    resolved = {
        **config.to_dict(), "data": str(Path(data).resolve()), **record, "device": str(machine.device),
        "precision": machine.precision, "command": command or sys.argv, "versions": library_versions(),
    }
    if resume_dir is not None:
        resolved["resumed"] = [*read_run_config(run_dir).get("resumed", []), {"command": sys.argv, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}]
    if machine.dist.main:
        atomic_write_text(run_dir / "config.json", json.dumps(resolved, indent=2) + "\n")
    return run_dir


def reopen(run_dir: Path, *, epochs: int | None, device: str | None) -> tuple[dict[str, Any], TrainConfig, dict[str, Any]]:
    """A stopped (or finished, to extend to `epochs`) run: its saved config.json, its options as a TrainConfig with
    `epochs` and `device` changed when given, and its resumable state."""
    saved = read_run_config(run_dir)
    options = {k: v for k, v in saved.items() if k in field_names(TrainConfig)}
    config = TrainConfig.from_dict({**options, **({"epochs": epochs} if epochs else {}), **({"device": device} if device else {})})
    state = load_training_state(run_dir / RESUME_FILE)
    if state["position"]["epoch"] >= config.epochs:
        raise ConfigError(f"{run_dir.name} already finished its {state['position']['epoch']} epochs; pass --epochs N to extend it")
    return saved, config, state


def fit(
    run_dir: Path, model: nn.Module, task: Task, train_store: BatchSource, val_store: BatchSource | None, config: TrainConfig,
    machine: Machine, *, groups: list[dict], meta: dict[str, Any], columns: list[str], generator: torch.Generator,
    transform: BatchTransformFn, state: dict[str, Any] | None = None,
) -> BestCheckpoint:
    """Train `config.epochs` epochs (the rest of them when `state` resumes a run); checkpoints carry `meta`, the epoch
    and the task's monitored score. Returns the best-checkpoint callback (its best score and epoch)."""

    def save(kind: str, epoch_record: dict[str, Any]) -> None:
        save_checkpoint(run_dir / f"{kind}.safetensors", model,
                        {**meta, "epoch": epoch_record["epoch"], task.monitor: epoch_record.get(task.monitor)})

    best = BestCheckpoint(save, monitor=task.monitor,
                          link=lambda src, dst: link_checkpoint(run_dir / f"{src}.safetensors", run_dir / f"{dst}.safetensors"))
    callbacks: list[Callback] = [EarlyStopping(config.early_stopping, monitor=task.monitor)]
    if machine.dist.main:
        keep = state["position"]["epoch"] if state else None
        resume_state = ResumeState(lambda t: save_training_state(run_dir / RESUME_FILE, t, config), config.save_every_steps)
        callbacks = [Progress(config.epochs), MetricsCSV(run_dir / "metrics.csv", keep, columns), *callbacks, best, resume_state]
    trainer = Trainer(model, task, device=machine.device, precision=machine.precision, callbacks=callbacks, generator=generator,
                      accumulate=config.accumulate, skip_nonfinite=config.skip_nonfinite, dist_info=machine.dist)
    optimizer = build_optimizer(groups, config.optimizer, config.resolved_lr, config.momentum)
    steps_per_epoch = train_store.num_batches(config.batch_size)
    warmup = min(config.epochs * steps_per_epoch // 2, round(config.warmup_epochs * steps_per_epoch))
    scheduler = build_scheduler(optimizer, config.epochs * steps_per_epoch, warmup, config.schedule)
    if state is not None:
        trainer.optimizer, trainer.scheduler = optimizer, scheduler
        trainer.load_state_dict(state)
    try:
        with stop_on_ctrl_c(trainer):
            trainer.fit(train_store, val_store, epochs=config.epochs, batch_size=config.batch_size, optimizer=optimizer,
                        scheduler=scheduler, train_transform=transform, eval_transform=transform)
    except KeyboardInterrupt:
        if machine.dist.main:
            save_training_state(run_dir / RESUME_FILE, trainer, config)
        logger.warning(f"interrupted at epoch {trainer.epoch + 1}, step {trainer.position.step}: the state is saved; continue "
                       f"with `deepfit train --resume {run_dir}`")
        raise
    return best
