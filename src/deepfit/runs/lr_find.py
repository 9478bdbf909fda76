"""`--lr find`: a learning-rate range test (Smith 2017, "Cyclical learning rates"; fastai's lr_find) before training.

The run's own model, objective, data and optimizer take up to STEPS steps while the rate grows exponentially from
START to END; the loss is smoothed and the test stops once it has run away (four times its lowest). The rate chosen
is the one at the lowest smoothed loss divided by ten: at the minimum the rate is already about to diverge, and a
tenth of it is where the loss was still falling fast, which is where a schedule's peak belongs. The weights,
optimizer and batch-norm statistics are then put back as they were, so training starts from the same
initialisation as without the test; only the random draws (batch order, augmentation) moved on, deterministically.

For every task and modality alike: it uses the engine's Trainer and the task's loss, nothing of images or labels.
"""

from __future__ import annotations

import copy
import csv
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from deepfit.engine.interfaces import Callback
from deepfit.engine.optim import build_optimizer
from deepfit.engine.trainer import Trainer
from deepfit.errors import ConfigError, TrainingError
from deepfit.log import logger

if TYPE_CHECKING:
    from deepfit.config import TrainConfig
    from deepfit.runs.session import Fit, Machine

STEPS = 100  # as fastai: enough points for a smooth curve, a minute or two on a CPU for a small network
START, END = 1e-7, 10.0
DIVERGED = 4.0  # the test stops once the smoothed loss is this many times its lowest
SMOOTHING = 0.9  # exponential moving average of the loss (debiased): one batch's noise must not pick the rate
PICTURE, TABLE = "lr_find.png", "lr_find.csv"


@dataclass
class LrFinding:
    rate: float  # the rate chosen (the lowest smoothed loss's rate / 10)
    lowest: float  # the rate at the lowest smoothed loss
    rates: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        """What config.json keeps of the test (its `lr` becomes the chosen rate)."""
        return {"chosen": self.rate, "lowest_loss_at": self.lowest, "steps": len(self.rates), "range": [START, END],
                "picture": PICTURE, "table": TABLE}


class _RangeTest(Callback):
    """Raises the rate after every step, records the step's loss, and ends the test when the loss runs away."""

    def __init__(self, steps: int) -> None:
        self.steps, self.rates, self.losses, self.smoothed = steps, [], [], []
        self.average, self.best = 0.0, math.inf

    def on_batch_end(self, trainer: Trainer, step: int, batch_size: int) -> None:
        # a loss that was not finite (the step was skipped) means the rate is already too high
        loss = math.inf if trainer.last_loss is None else float(trainer.last_loss)
        self.rates.append(trainer.last_lr)
        self.losses.append(loss)
        self.average = SMOOTHING * self.average + (1 - SMOOTHING) * loss
        smooth = self.average / (1 - SMOOTHING ** len(self.losses))
        self.smoothed.append(smooth)
        self.best = min(self.best, smooth)
        if len(self.rates) >= self.steps or not math.isfinite(smooth) or smooth > DIVERGED * self.best:
            trainer.should_stop = True
            trainer.end_phase = True


def find_lr(job: Fit, config: TrainConfig, machine: Machine, generator: torch.Generator, steps: int = STEPS) -> LrFinding:
    """The range test on the job's first phase; the model is left exactly as it was given."""
    if machine.dist.enabled:
        raise ConfigError("--lr find runs in one process: find the rate with plain `deepfit train ... --lr find`, then give "
                          "the rate it chose (config.json's lr) to torchrun")
    model = job.model
    saved = copy.deepcopy(model.state_dict())  # weights and batch-norm statistics, to put back afterwards
    phase, _ = job.phases[0]
    optimizer = build_optimizer(job.groups(phase), config.optimizer, 1.0, config.momentum)  # the schedule sets the rate
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: START * (END / START) ** (min(s, steps - 1) / (steps - 1)))
    test = _RangeTest(steps)
    # The test draws its batches, augmentation and dropout from copies of the random states, so the training after it
    # is the one `--lr RATE` gives: a run whose rate was found is repeated by a rerun with that rate, bit for bit.
    copy_of = torch.Generator().set_state(generator.get_state())
    trainer = Trainer(model, job.objective, device=machine.device, precision=machine.precision, channels_last=job.channels_last,
                      callbacks=[test], generator=copy_of, accumulate=config.accumulate, skip_nonfinite=True,
                      sample_weights=job.sample_weights)
    per_epoch = max(1, job.train.num_batches(config.batch_size))
    cuda = [machine.device] if machine.device.type == "cuda" else []
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=cuda):
            trainer.fit(job.train, None, epochs=math.ceil(steps / per_epoch), batch_size=config.batch_size, optimizer=optimizer,
                        scheduler=scheduler, train_transform=job.transform, eval_transform=job.eval_transform, phase="lr-find")
    finally:
        model.load_state_dict(saved)
        random.setstate(python_state)
        np.random.set_state(numpy_state)
    finding = choose_rate(test.rates, test.losses, test.smoothed)
    logger.info(f"--lr find: the loss was lowest at {finding.lowest:.2g} over {len(test.rates)} steps; training at "
                f"{finding.rate:.2g}")
    return finding


def choose_rate(rates: list[float], losses: list[float], smoothed: list[float]) -> LrFinding:
    """The lowest smoothed loss's rate / 10 (the steps after a divergence are left out)."""
    finite = [i for i, v in enumerate(smoothed) if math.isfinite(v)]
    if len(finite) < 5:
        raise TrainingError(f"--lr find took {len(finite)} usable steps (the loss was not finite): check the data, or "
                            "give --lr a number")
    lowest = rates[min(finite, key=lambda i: smoothed[i])]
    return LrFinding(lowest / 10, lowest, rates, losses, smoothed)


def write_lr_find(run_dir: Path, finding: LrFinding) -> None:
    """lr_find.csv (step, rate, loss, smoothed) and lr_find.png (the curve and the rate chosen) in the run."""
    from matplotlib.figure import Figure

    from deepfit.report.plots import light_grid, save_figure

    with (run_dir / TABLE).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "lr", "loss", "smoothed_loss"])
        for i, row in enumerate(zip(finding.rates, finding.losses, finding.smoothed, strict=True)):
            writer.writerow([i + 1, *(f"{v:.6g}" for v in row)])
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.subplots()
    ax.plot(finding.rates, finding.losses, color="#c3ccd6", linewidth=1, label="loss of each step")
    ax.plot(finding.rates, finding.smoothed, color="#2563eb", linewidth=2, label="smoothed")
    ax.axvline(finding.rate, color="#b42318", linestyle="--", label=f"chosen {finding.rate:.2g} (lowest / 10)")
    ax.set_xscale("log")
    finite = np.asarray([v for v in finding.smoothed if math.isfinite(v)])
    ax.set_ylim(finite.min() * 0.9, min(finite.max(), DIVERGED * finite.min()) * 1.05)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title("learning-rate range test")
    light_grid(ax)
    ax.legend(frameon=False)
    save_figure(fig, run_dir / PICTURE, "learning-rate range test")
