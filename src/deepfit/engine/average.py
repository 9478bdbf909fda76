"""Weight averaging for short schedules: every few steps the weights are pulled back to their running average.

This is the "lookahead" form of an exponential moving average (EMA) of the weights that fast CIFAR-10 training
uses: the average is not a second model kept beside the one that trains, the model *becomes* the average every
`every` steps (average <- average + (1 - d) * (weights - average); weights <- average). So validation,
checkpoints and a resumed run all see the averaged weights with no swapping, and the averaging smooths the noisy
last steps of a high-learning-rate schedule as an EMA would.

The decay d grows with the phase's progress p (0..1) as `decay ** every * p ** 3`: nothing is averaged while the
weights still travel far, and the most at the end, where the schedule has decayed and the steps are noise.
Batch-norm statistics are averaged with the weights, so they match them. Each phase (head, then whole network)
starts its own average. There is no such callback in torch (`torch.optim.swa_utils.AveragedModel` keeps a
separate copy the trainer would have to validate and save instead), hence this one.
"""

from __future__ import annotations

from typing import Any

import torch

from deepfit.engine.budget import TimeBudget
from deepfit.engine.distributed import unwrap
from deepfit.engine.interfaces import Callback
from deepfit.engine.trainer import Trainer


class WeightAverage(Callback):
    """Averages the weights (and batch-norm statistics) every `every` steps and at the end of every epoch.
    `decay` is per step (e.g. 0.95); with a time budget, progress is the budget's, else steps over the phase's."""

    def __init__(self, decay: float, every: int = 5, budget: TimeBudget | None = None) -> None:
        self.decay, self.every, self.budget = decay, every, budget
        self.average: list[torch.Tensor] | None = None
        self.phase_index = -1
        self.since = 0  # steps since the last update
        self.epochs, self.steps_per_epoch = 1, 1

    @staticmethod
    def _tensors(trainer: Trainer) -> list[torch.Tensor]:
        """The model's floating-point parameters and buffers, as views that write through to the model."""
        return [t for t in unwrap(trainer.model).state_dict(keep_vars=False).values() if t.is_floating_point()]

    def on_fit_start(self, trainer: Trainer, phase: str, epochs: int, steps_per_epoch: int) -> None:
        self.epochs, self.steps_per_epoch = epochs, max(1, steps_per_epoch)
        if self.phase_index != trainer.position.phase_index or self.average is None:  # a new phase: a new average
            self.phase_index, self.since = trainer.position.phase_index, 0
            self.average = [t.detach().clone() for t in self._tensors(trainer)]
        else:  # resumed: the average was read from the state onto the CPU
            self.average = [a.to(t.device) for a, t in zip(self.average, self._tensors(trainer), strict=True)]

    def progress(self, trainer: Trainer) -> float:
        if self.budget is not None:
            return self.budget.progress()
        done = trainer.position.epoch_in_phase * self.steps_per_epoch + trainer.position.step
        return min(1.0, done / (self.epochs * self.steps_per_epoch))

    @torch.no_grad()
    def on_batch_end(self, trainer: Trainer, step: int, batch_size: int) -> None:
        self.since += 1
        epoch_ends = step + 1 >= self.steps_per_epoch or trainer.end_phase or trainer.should_stop
        if self.since < self.every and not epoch_ends:
            return
        assert self.average is not None
        decay = self.decay**self.since * self.progress(trainer) ** 3
        for average, weights in zip(self.average, self._tensors(trainer), strict=True):
            average.lerp_(weights, 1.0 - decay)
            weights.copy_(average)
        self.since = 0

    def state_dict(self) -> dict[str, Any]:
        return {"average": self.average, "phase_index": self.phase_index, "since": self.since}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.average, self.phase_index, self.since = state["average"], state["phase_index"], state["since"]
