"""What every training run does around its model and data, written once for every task.

A run needs a device and precision (one process or torchrun), seeded random numbers, a run folder with the
split and the resolved config, callbacks that log, checkpoint and stop early on the task's own metric,
phases (classification's head-then-whole-network fine-tuning is two of them), and Ctrl-C that leaves a
resumable state. The task (tasks/base.py) supplies the model, objective, stores and parameter groups;
workflows/train.py joins the two.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepfit.config import TrainConfig, field_names
from deepfit.engine import distributed
from deepfit.engine.average import WeightAverage
from deepfit.engine.budget import TimeBudget
from deepfit.engine.callbacks import (
    BestCheckpoint,
    EarlyStopping,
    MetricsCSV,
    Progress,
    ResumeState,
    metric_columns,
)
from deepfit.engine.checkpoint import (
    RESUME_FILE,
    library_versions,
    link_checkpoint,
    load_training_state,
    save_checkpoint,
    save_training_state,
)
from deepfit.engine.device import resolve_device, resolve_precision
from deepfit.engine.interfaces import BatchSource, BatchTransformFn, Callback
from deepfit.engine.optim import build_optimizer, build_scheduler
from deepfit.engine.trainer import Trainer
from deepfit.errors import ConfigError, DataError, DeepfitError, TrainingInterrupted
from deepfit.fileio import atomic_write_text
from deepfit.log import logger
from deepfit.modalities.image.store import default_workers
from deepfit.runs.folder import new_run_dir, read_run_config


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return the generator that drives shuffling and augmentation."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def workers_for(config: TrainConfig) -> int:
    """Loading processes for per-sample decoding and augmentation (data/loader.py)."""
    return config.workers if config.workers is not None else min(4, default_workers())


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
        raise ConfigError(
            f"--batch-size {config.batch_size} is not divisible by the {dist_info.world} processes: each takes an equal "
            "share of every batch; choose a multiple"
        )
    device = distributed.init(dist_info, resolve_device(config.device))
    if not dist_info.main:  # rank 0 speaks for all; the others speak only of problems
        logger.setLevel(logging.WARNING)
    return Machine(device, resolve_precision(config.precision, device), dist_info)


def open_run(
    config: TrainConfig, machine: Machine, *, data: str | Path, record: dict[str, Any], write: Callable[[Path], None],
    resume_dir: Path | None = None, command: list[str] | None = None,
) -> Path:
    """The run folder (a new one, or `resume_dir`), with `write(run_dir)` (the split, ...) done in a new one, and
    config.json: the options, `record` (what the data gave: classes, format, ...), the machine and library versions.

    A new folder is made only now, so a typo in the model name or broken data leaves no empty folder behind."""
    run_dir: Path | None = resume_dir
    if resume_dir is None and machine.dist.main:
        run_dir = new_run_dir(config.output, config.name, config.model)
        write(run_dir)
    if machine.dist.enabled and resume_dir is None:
        run_dir = distributed.broadcast(run_dir if machine.dist.main else None)
    assert run_dir is not None
    resolved = {
        **config.to_dict(), "data": str(Path(data).resolve()), **record, "device": str(machine.device),
        "precision": machine.precision, "command": command or sys.argv, "versions": library_versions(),
    }
    if machine.dist.enabled:
        resolved["processes"] = machine.dist.world
    if resume_dir is not None:
        resolved["resumed"] = [*read_run_config(run_dir).get("resumed", []), {"command": sys.argv, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}]
    if machine.dist.main:
        atomic_write_text(run_dir / "config.json", json.dumps(resolved, indent=2) + "\n")
    return run_dir


def saved_config(saved: dict[str, Any], **changes: Any) -> TrainConfig:
    """A run's options (its config.json, `saved`) as a TrainConfig, with the `changes` given (neither None nor empty)."""
    options = {k: v for k, v in saved.items() if k in field_names(TrainConfig)}
    return TrainConfig.from_dict({**options, **{k: v for k, v in changes.items() if v}})


def reopen(run_dir: Path, *, epochs: int | None, device: str | None) -> tuple[dict[str, Any], TrainConfig, dict[str, Any]]:
    """A stopped run (or a finished one, to extend to `epochs`): its saved config.json, its options as a TrainConfig
    with `epochs` and `device` changed when given, and its resumable state."""
    saved = read_run_config(run_dir)
    if not (run_dir / RESUME_FILE).is_file():
        raise DeepfitError(
            f"{run_dir} has no {RESUME_FILE} to resume from (runs written before deepfit 0.1 or stopped before their "
            "first checkpoint cannot be resumed); start a new run instead"
        )
    config = saved_config(saved, epochs=epochs, device=device)
    if epochs is not None and epochs < saved["epochs"]:
        raise ConfigError(f"--epochs {epochs} is fewer than the run's {saved['epochs']}: a run can be extended, not shortened")
    state = load_training_state(run_dir / RESUME_FILE)
    if config.time_budget is not None and "budget_result" in saved:
        raise ConfigError(f"{run_dir.name} already spent its --time-budget of {config.time_budget:g} minutes; start a new run")
    if config.time_budget is None and state["position"]["epoch"] >= config.epochs:
        raise ConfigError(
            f"{run_dir.name} already finished its {state['position']['epoch']} epochs; pass --epochs N (more than that) "
            "to extend it"
        )
    return saved, config, state


def read_schedule(run_dir: Path) -> list[list[float]] | None:
    """The schedule a budgeted run recorded (BUDGET_SCHEDULE), or None when it has none."""
    path = run_dir / BUDGET_SCHEDULE
    if not path.is_file():
        return None
    try:
        progress = json.loads(path.read_text())["progress"]
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path} is not a schedule deepfit wrote ({e}); delete it to rerun in a new --time-budget") from None
    return [[float(v) for v in phase] for phase in progress]


def relocate(saved: dict[str, Any], data_root: str | Path | None) -> dict[str, Any]:
    """A run's saved config.json pointed at its data's new place: `data_root` is where the data root (the folder
    split.csv's paths are relative to) now is, or where the DATA folder given to `train` now is. The split is kept."""
    if data_root is None:
        return saved
    new = Path(data_root).expanduser().resolve()
    if not new.is_dir():
        raise DataError(f"--data-root {data_root}: no such folder")
    old_root, old_data = Path(saved["data_root"]), Path(saved["data"])
    base = old_root
    if old_data in old_root.parents and (new / old_root.relative_to(old_data)).is_dir():
        base = old_data  # the new place of DATA, whose data root is a folder inside it (e.g. images/)
    moved = {}
    for key in ("data", "data_root", "masks"):
        value = saved.get(key)
        if isinstance(value, str) and (Path(value) == base or base in Path(value).parents):
            moved[key] = str(new / Path(value).relative_to(base))
    return {**saved, **moved}


@dataclass
class Fit:
    """What the engine trains in a run: the task's model, objective, stores and transforms, and its phases."""

    model: nn.Module
    objective: Any
    train: BatchSource
    val: BatchSource | None
    transform: BatchTransformFn
    eval_transform: BatchTransformFn
    phases: list[tuple[str, int]]
    groups: Callable[[str], list[dict]]  # phase -> optimizer parameter groups (and requires_grad set for it)
    meta: dict[str, Any]
    channels_last: bool = False
    on_resume: Callable[[], None] | None = None
    sample_weights: torch.Tensor | None = None  # (N,) a balanced sampler's chances of the training items


def fit(run_dir: Path, job: Fit, config: TrainConfig, machine: Machine, *, generator: torch.Generator,
        state: dict[str, Any] | None = None, callbacks: Sequence[Callback] = (),
        replay: list[list[float]] | None = None) -> BestCheckpoint:
    """Train the job's phases (the rest of them when `state` resumes a run); checkpoints carry `job.meta`, the epoch
    and the monitored score; `callbacks` are the caller's own, called after deepfit's; `replay`: a budgeted run's
    recorded schedule (BUDGET_SCHEDULE) to follow instead of the clock. Returns the best-checkpoint callback (its
    best score and epoch)."""
    model, monitor = job.model, job.objective.monitor

    def save(kind: str, record: dict[str, Any]) -> None:
        save_checkpoint(run_dir / f"{kind}.safetensors", model, {**job.meta, "epoch": record["epoch"], monitor: record.get(monitor)})

    best = BestCheckpoint(save, monitor=monitor,
                          link=lambda src, dst: link_checkpoint(run_dir / f"{src}.safetensors", run_dir / f"{dst}.safetensors"))
    budget = None
    if config.time_budget is not None:  # every process keeps the budget: rank 0's clock decides for all (engine/budget.py)
        budget = TimeBudget(config.time_budget * 60, [e for _, e in job.phases],
                            job.val.num_batches(config.batch_size) if job.val is not None and len(job.val) else 0, replay=replay)
    # Early stopping decides from metrics summed over ranks, so every rank stops together; only rank 0 writes.
    hooks: list[Callback] = [EarlyStopping(config.early_stopping, monitor=monitor), *([budget] if budget else [])]
    if config.ema:  # after the budget, which decides whether this step ends the epoch
        hooks.append(WeightAverage(config.ema, budget=budget))
    if machine.dist.main:
        keep = state["position"]["epoch"] if state else None
        resume_state = ResumeState(lambda t: save_training_state(run_dir / RESUME_FILE, t, config), config.save_every_steps)
        hooks = [Progress(None if budget else config.epochs),
                 MetricsCSV(run_dir / "metrics.csv", keep, list(metric_columns(job.objective))), *hooks, best, resume_state]
    trainer = Trainer(torch.compile(model) if config.compile else model, job.objective, device=machine.device,
                      precision=machine.precision, channels_last=job.channels_last, callbacks=[*hooks, *callbacks], generator=generator,
                      accumulate=config.accumulate, skip_nonfinite=config.skip_nonfinite, dist_info=machine.dist,
                      sample_weights=job.sample_weights)
    with stop_on_ctrl_c(trainer):  # still listening while the state is saved: a doubled SIGINT must not cut it short
        try:
            for phase_index, (phase, epochs) in enumerate(job.phases):
                if state is not None and phase_index < state["position"]["phase_index"]:
                    continue  # finished before the run stopped
                optimizer = build_optimizer(job.groups(phase), config.optimizer, config.resolved_lr, config.momentum)
                if budget is not None:  # the same schedule over the phase's time; its epochs end when the time does
                    scheduler = budget.scheduler(optimizer, min(0.5, config.warmup_epochs / epochs), config.schedule)
                    epochs = UNTIL_TIME_RUNS_OUT
                else:
                    steps_per_epoch = job.train.num_batches(config.batch_size)
                    warmup = min(epochs * steps_per_epoch // 2, round(config.warmup_epochs * steps_per_epoch))
                    scheduler = build_scheduler(optimizer, epochs * steps_per_epoch, warmup, config.schedule)
                if state is not None:  # the phase that was running: weights, optimizer, schedule, random states, position
                    trainer.optimizer, trainer.scheduler = optimizer, scheduler
                    trainer.load_state_dict(state)
                    if job.on_resume is not None:
                        job.on_resume()
                    state = None
                trainer.fit(job.train, job.val, epochs=epochs, batch_size=config.batch_size, optimizer=optimizer,
                            scheduler=scheduler, train_transform=job.transform, eval_transform=job.eval_transform,
                            phase=phase, phase_index=phase_index)
                if trainer.should_stop:
                    break
        except TrainingInterrupted:  # the first Ctrl-C, between two steps; a later second one quits at once, saving nothing
            if machine.dist.main:
                save_training_state(run_dir / RESUME_FILE, trainer, config)
            logger.warning(f"interrupted at epoch {trainer.epoch + 1}, step {trainer.position.step}: the state is saved; continue "
                           f"with `deepfit train --resume {run_dir}`")
            raise
    if trainer.skipped_steps:
        logger.warning(f"{trainer.skipped_steps} batches with a non-finite loss were skipped (--skip-nonfinite)")
    if budget is not None and machine.dist.main:  # what the budget bought, beside the options that asked for it
        saved = read_run_config(run_dir)
        saved["budget_result"] = budget.result([p for p, _ in job.phases])
        atomic_write_text(run_dir / "config.json", json.dumps(saved, indent=2) + "\n")
        schedule = budget.schedule()
        if schedule is not None:  # what `deepfit train --rerun` replays (floats written in full: they read back exactly)
            atomic_write_text(run_dir / BUDGET_SCHEDULE, json.dumps({"minutes": config.time_budget, "progress": schedule}) + "\n")
        logger.info(budget.summary())
    return best


BUDGET_SCHEDULE = "budget_schedule.json"  # a budgeted run's schedule, step by step, for a rerun to follow
UNTIL_TIME_RUNS_OUT = 10**9  # the epochs of a phase trained in a time budget: the budget ends it first

# Two SIGINTs closer than this are one Ctrl-C: `uv run` forwards the terminal's to its child, which gets both.
SAME_CTRL_C_S = 1.0


@contextlib.contextmanager
def stop_on_ctrl_c(trainer: Trainer) -> Iterator[None]:
    """The first Ctrl-C asks the trainer to stop after the current step (it then saves a resumable state);
    a second one, a second or more later, interrupts at once (one sooner is the same Ctrl-C, delivered twice). Only in the main thread, where Python delivers signals."""
    # torchrun forwards Ctrl-C to every rank, which could stop at different steps: there it just interrupts
    if threading.current_thread() is not threading.main_thread() or trainer.dist.enabled:
        yield
        return

    first: list[float] = []  # when the first Ctrl-C came

    def handler(signum: int, frame: Any) -> None:
        now = time.monotonic()
        if trainer.stop_requested and first:
            if now - first[0] < SAME_CTRL_C_S:
                return  # the same Ctrl-C: the terminal's SIGINT and the one `uv run` forwards come together
            raise KeyboardInterrupt
        first[:] = [now]
        trainer.stop_requested = True
        logger.warning("Ctrl-C: stopping after this step and saving a resumable state (press again to quit at once)")

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
