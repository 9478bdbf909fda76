"""Training, written once for every task: read -> split -> prepare -> train on the engine -> a run folder.

    train(data, config, **data_options)   a new run of config.task on `data`
    resume(run_dir, epochs=, data_root=)  continue a stopped run (same data, split, options and random states:
                                          it ends with the weights of a run that never stopped), or extend one
    rerun(run_dir, output=, name=)        train a run again in a new folder, bit for bit (a budgeted one step by
                                          step, as its budget_schedule.json recorded)

The task (tasks/base.py, found in the registry by config.task) reads the data, splits it, and prepares the
model, objective and stores; runs/session.py does the rest (device, run folder, callbacks, phases, Ctrl-C).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from deepfit.config import TrainConfig
from deepfit.engine.checkpoint import read_sidecar
from deepfit.engine.interfaces import Callback
from deepfit.errors import DataError, DeepfitError
from deepfit.log import logger, setup_logging
from deepfit.registry import get_task
from deepfit.runs import session
from deepfit.runs.folder import CHECKPOINT_FORMAT, check_output_outside_data, read_run_config
from deepfit.runs.lr_find import find_lr, write_lr_find
from deepfit.tasks.balance import sampler_weights
from deepfit.tasks.base import Data, Task, option_values


@dataclass
class TrainResult:
    run_dir: Path
    task: str
    monitor: str  # the validation value that chose the best epoch, e.g. "val_acc", "val_map", "val_miou"
    best_score: float | None  # None without a validation split (or on ranks other than 0)
    best_epoch: int
    classes: list[str]

    @property
    def best_val_acc(self) -> float | None:
        """The best validation accuracy of a classification run (kept for code written before other tasks)."""
        return self.best_score if self.monitor == "val_acc" else None


def train(data: str | Path, config: TrainConfig, *, callbacks: Sequence[Callback] = (), **data_options: Any) -> TrainResult:
    """Train config.task on `data`; `data_options` are the task's own (e.g. masks=, format=, path_column=).
    `callbacks`: more engine callbacks (engine/interfaces.py) for this run, e.g. a hyperparameter search's pruning."""
    setup_logging()
    task = get_task(config.task)
    options = option_values(task, {k: v for k, v in data_options.items() if v is not None}, task.data_options, "training data")
    generator = session.seed_everything(config.seed)
    dataset = task.read(data, config, **options)
    splits = task.split(dataset, config)
    check_output_outside_data(config.output, dataset.root)
    return _run(task, dataset.location or data, config, dataset, splits, generator, callbacks=callbacks)


def resume(run_dir: str | Path, *, epochs: int | None = None, device: str | None = None,
           data_root: str | Path | None = None) -> TrainResult:
    """Continue a run that was stopped (killed, Ctrl-C) from its resumable state, or extend a finished one to `epochs`.
    `data_root`: the data's new place when it moved (the run keeps its split; config.json records the new place)."""
    setup_logging()
    run_dir = Path(run_dir).resolve()
    saved, config, state = session.reopen(run_dir, epochs=epochs, device=device)
    saved = session.relocate(saved, data_root)
    task = get_task(config.task)
    dataset, splits = task.reread(saved, run_dir)
    generator = session.seed_everything(config.seed)
    return _run(task, saved["data"], config, dataset, splits, generator, resume_dir=run_dir, state=state, saved=saved)


def rerun(run_dir: str | Path, *, output: str | Path | None = None, name: str | None = None, device: str | None = None,
          data_root: str | Path | None = None) -> TrainResult:
    """Train a run again, in a new folder beside it (or in `output`, named `name`): the same data, split, options and
    seed, so on the same machine the weights come out bit for bit the same. A run trained in a --time-budget follows
    its recorded schedule (the same steps, epoch ends and learning rates) instead of the clock: what the budget chose
    is repeated on any machine, however fast. `data_root`: the data's new place when it moved."""
    setup_logging()
    run_dir = Path(run_dir).resolve()
    saved = session.relocate(read_run_config(run_dir), data_root)
    config = session.saved_config(saved, output=str(output or run_dir.parent), name=name or f"{run_dir.name}-rerun", device=device)
    replay = None
    if config.time_budget is not None:
        replay = session.read_schedule(run_dir)
        if replay is None:
            logger.warning(f"{run_dir / session.BUDGET_SCHEDULE} is missing (the run stopped before its budget was spent, "
                           f"or was trained before deepfit recorded it): the rerun trains in a new --time-budget of "
                           f"{config.time_budget:g} minutes, not step for step")
    task = get_task(config.task)
    if replay is not None and len(replay) != len(task.phases(config)):
        raise DataError(f"{run_dir / session.BUDGET_SCHEDULE} has {len(replay)} phases, the run {len(task.phases(config))}: "
                        "it is not this run's; delete it to rerun in a new --time-budget")
    dataset, splits = task.reread(saved, run_dir)
    generator = session.seed_everything(config.seed)
    return _run(task, saved["data"], config, dataset, splits, generator, replay=replay, rerun_of=run_dir)


def _run(task: Task, data: str | Path, config: TrainConfig, dataset: Data, splits: dict[str, list], generator: torch.Generator,
         *, resume_dir: Path | None = None, state: dict[str, Any] | None = None, saved: dict[str, Any] | None = None,
         callbacks: Sequence[Callback] = (), replay: list[list[float]] | None = None, rerun_of: Path | None = None) -> TrainResult:
    logger.info(task.describe(dataset, splits))
    if not splits.get("test"):
        logger.warning("the data has no test split: `deepfit evaluate` will fall back to the validation split")
    machine = session.start(config)
    setup = task.prepare(config, dataset, splits, machine.device, resumed=saved)
    splits = setup.splits or splits
    if setup.record.get("model", config.model) != config.model:  # the task chose the network (texts found by auto)
        config = dataclasses.replace(config, model=setup.record["model"])

    def write(run_dir: Path) -> None:
        task.save_split(dataset, splits, run_dir / "split.csv")
        if setup.write is not None:
            setup.write(run_dir)

    record = {"task": task.name, "data_root": str(dataset.root), "classes": dataset.classes, **dataset.record, **setup.record,
              **({"rerun_of": str(rerun_of)} if rerun_of else {})}
    sampling = sampler_weights(task, config, dataset, splits["train"])
    if sampling is not None and len(sampling) != len(setup.train):
        raise DeepfitError(f"task {task.name} counted the classes of {len(sampling)} training items but trains on "
                           f"{len(setup.train)}: its class_counts must follow its training store")
    job = session.Fit(setup.model, setup.objective, setup.train, setup.val, setup.transform, setup.eval_transform or setup.transform,
                      task.phases(config), lambda phase: task.param_groups(setup.model, phase, config), {},
                      setup.channels_last, setup.on_resume, sampling)
    finding = None
    if config.find_lr:  # (a resumed run has the rate its test chose in config.json)
        finding = find_lr(job, config, machine, generator)
        config = dataclasses.replace(config, lr=finding.rate)
        record["lr_find"] = finding.record()
    run_dir = session.open_run(config, machine, data=data, record=record, write=write, resume_dir=resume_dir,
                               command=saved.get("command") if saved else None)
    if finding is not None and machine.dist.main:
        write_lr_find(run_dir, finding)
    where = f" (resumed at epoch {state['position']['epoch']}, step {state['position']['step']})" if state else ""
    logger.info(f"run folder: {run_dir}{where}")
    if setup.summary:
        logger.info(f"{setup.summary}, {machine.device} {machine.precision}")
    origin = setup.pretrained_from
    if state is not None and (run_dir / "last.json").is_file():  # the weights a resumed run first started from
        origin = read_sidecar(run_dir / "last.safetensors").get("pretrained_from")
    job.meta.update({"format": CHECKPOINT_FORMAT, "task": task.name, **setup.meta, "classes": dataset.classes,
                     "pretrained_from": origin, "config": config.to_dict()})
    best = session.fit(run_dir, job, config, machine, generator=generator, state=state, callbacks=callbacks, replay=replay)
    has_val = setup.val is not None and len(setup.val) > 0
    score = best.best_score if has_val and machine.dist.main else None
    if score is not None:
        logger.info(f"best validation {task.score} {score:.4f} at epoch {best.best_epoch}; weights in {run_dir / 'best.safetensors'}")
    return TrainResult(run_dir, task.name, setup.objective.monitor, score, best.best_epoch, dataset.classes)
