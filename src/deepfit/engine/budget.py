"""Training in a wall-clock budget: the learning-rate schedule runs over time, not over a count of epochs.

"What is the best model I can get in 20 minutes?" has no answer in epochs: how long an epoch takes is known
only once training runs. With a budget, each phase gets a share of it (in proportion to the epochs the
config gives the phases, so a one-epoch head phase before nine whole-network epochs gets a tenth), and
`TimeBudget`, a callback, measures while training:

- the schedule's progress is the phase's training time so far over the time it has for training steps (its
  share less the validation that must still fit), so warm-up and decay stretch over the budget, whatever the
  machine's speed, and the learning rate is fully decayed at the last step;
- before each step it asks whether one more step and the final validation still fit; when not, the trainer
  ends the epoch there (`Trainer.end_phase`), validates it, checkpoints it and goes to the next phase. It asks
  again after each epoch's validation: an epoch that ended by itself just short of the budget ends the phase,
  rather than one more step buying one more validation past the budget.

The validation kept back is as long as the last one took, plus its growth since the one before: a detector's
validation slows as it starts to detect (more boxes to suppress and score), and that trend, not the last time
alone, says what the final one will take. It is kept across phases (a validation is a forward pass whatever the
phase trains).

The time counted is the trainer's (steps, validation and checkpoints), not reading the data or building the
model before, nor scoring the test split after. It is kept in the resumable state, so a resumed run spends
only what was left. A budgeted run depends on the machine's speed; config.json records what the budget bought
(`budget_result`: epochs and steps per phase), and `schedule()` is where the schedule stood before every step.
`TimeBudget(..., replay=schedule)` follows such a record instead of the clock (`deepfit train --rerun`): the same
steps, epoch ends and learning rates, so the run a budget chose is repeated bit for bit on any machine.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from deepfit.engine.distributed import all_sum
from deepfit.engine.interfaces import Callback
from deepfit.engine.optim import lr_factor
from deepfit.engine.trainer import Trainer

_RESOLUTION = 1_000_000  # progress in millionths, for the step-based lr_factor
# A validation step (forward only, no optimiser) costs about a third of a training step; until a validation has
# been timed, this share of a training step's time per validation batch is kept for it, with some margin.
VALIDATION_STEP_COST = 0.4


class TimeBudget(Callback):
    """Ends every phase within its share of `seconds`; `progress()` is where the phase's schedule stands (0..1)."""

    def __init__(self, seconds: float, phase_epochs: Sequence[int], validation_steps: int = 0,
                 replay: Sequence[Sequence[float]] | None = None) -> None:
        self.seconds, self.phase_epochs, self.validation_steps = seconds, list(phase_epochs), validation_steps
        # per phase, the progress at its start and after each of its steps: recorded, or replayed (then no clock is read)
        self.trace: list[list[float]] = [list(t) for t in replay] if replay is not None else [[] for _ in phase_epochs]
        self.replay = replay is not None
        if self.replay and len(self.trace) != len(self.phase_epochs):
            raise ValueError(f"the schedule to replay has {len(self.trace)} phases, the run {len(self.phase_epochs)}")
        self.shares = [seconds * e / sum(phase_epochs) for e in phase_epochs]  # each phase's seconds, as planned at its start
        self.phase = 0
        self.used = 0.0  # seconds the finished phases took
        self.spent = 0.0  # seconds of the current phase spent before the current stretch (a resume, a new epoch)
        self.step_seconds = 0.0  # what the current phase's training steps took
        self.validation = None  # seconds the last validation (and checkpoint) took, once timed
        self.previous_validation = None  # and the one before it
        self.phase_steps: list[int] = [0] * len(phase_epochs)  # training steps and epochs each phase ran
        self.phase_epochs_run: list[int] = [0] * len(phase_epochs)
        self._since = time.perf_counter()
        self._last_step_end = self._since
        self._progress = 0.0
        self._stopped = False

    def share(self) -> float:
        return self.shares[self.phase]

    def steps(self) -> int:
        """Training steps of the current phase."""
        return self.phase_steps[self.phase]

    def total(self) -> float:
        """Seconds of every phase so far."""
        return self.used + self.elapsed()

    def _reserve(self) -> float:
        """Seconds kept back for the phase's final validation and checkpoint: as long as the last one took plus
        its growth since the one before, or before one was timed, estimated from the training steps."""
        if self.validation is not None:
            growth = 0.0 if self.previous_validation is None else max(0.0, self.validation - self.previous_validation)
            return self.validation + growth
        return self.validation_steps * VALIDATION_STEP_COST * self.step_seconds / max(1, self.steps())

    def elapsed(self) -> float:
        """Seconds of the current phase so far (its whole time once it has ended)."""
        return self.spent if self._stopped else self.spent + time.perf_counter() - self._since

    def progress(self) -> float:
        """The phase's training time over what it has for training steps: 0 at its start, 1 at its last step (as
        measured after the last step, the same on every process of a torchrun run)."""
        return self._progress

    def _measure(self) -> float:
        return min(1.0, self.elapsed() / max(1e-9, self.share() - self._reserve()))

    def lr_factor(self, warmup: float, schedule: str) -> float:
        """The learning-rate factor now: `schedule` after a warm-up of `warmup` (a share of the phase's time)."""
        return lr_factor(round(self.progress() * _RESOLUTION), _RESOLUTION, round(warmup * _RESOLUTION), schedule)

    def on_fit_start(self, trainer: Trainer, phase: str, epochs: int, steps_per_epoch: int) -> None:
        if trainer.position.phase_index != self.phase:  # a new phase (not the one a resumed state is in)
            # what the earlier phases left (more or less than planned) is shared by this one and those after it
            self.used += self.elapsed()
            new = trainer.position.phase_index
            left = self.phase_epochs[new:]
            self.shares[new:] = [max(0.0, self.seconds - self.used) * e / sum(left) for e in left]
            self.phase, self.spent, self.step_seconds = new, 0.0, 0.0
        self._since = self._last_step_end = time.perf_counter()
        self._stopped = False
        self._progress = self._measured_or_replayed()

    def _measured_or_replayed(self) -> float:
        """The progress after the phase's steps so far: measured (and recorded), or read from the replayed record."""
        trace, done = self.trace[self.phase], self.steps()
        if self.replay:
            return trace[min(done, len(trace) - 1)]
        del trace[done:]  # a resumed run records again from where its state was saved
        trace.append(self._measure())
        return trace[-1]

    def on_batch_end(self, trainer: Trainer, step: int, batch_size: int) -> None:
        now = time.perf_counter()
        self.phase_steps[self.phase] += 1
        self.step_seconds += now - self._last_step_end
        self._last_step_end = now
        self._progress = self._measured_or_replayed()
        if self.replay:  # the recorded run's last step of the phase is this one's (every process reads the same record)
            trainer.end_phase = trainer.end_phase or self.steps() >= len(self.trace[self.phase]) - 1
            return
        over = self._no_room()
        if trainer.dist.enabled:  # every process must take the same rate and end at the same step: rank 0's clock decides
            mine = [over, self._progress] if trainer.dist.main else [0.0, 0.0]
            over, self._progress = (float(v) for v in all_sum(mine, trainer.device))
            self.trace[self.phase][-1] = self._progress  # the record holds what every process used
        if over:
            trainer.end_phase = True

    def _no_room(self) -> float:
        """1.0 when one more step and the final validation would not fit in the phase's share, else 0.0."""
        mean_step = self.step_seconds / max(1, self.steps())
        return float(self.elapsed() + mean_step + self._reserve() > self.share())

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        # what followed the epoch's last step: its validation (and the callbacks before this one: checkpoints)
        self.previous_validation, self.validation = self.validation, time.perf_counter() - self._last_step_end
        self._last_step_end = time.perf_counter()
        self.phase_epochs_run[self.phase] += 1
        if self.replay:  # ends where the recorded phase ended (on_batch_end says so at its last step)
            return
        over = self._no_room()
        if trainer.dist.enabled:
            over = float(all_sum([over if trainer.dist.main else 0.0], trainer.device)[0])
        if over:  # the epoch just validated is the phase's last: another step would need another validation
            trainer.end_phase = True

    def on_fit_end(self, trainer: Trainer) -> None:
        self.spent, self._stopped = self.elapsed(), True

    def scheduler(self, optimizer: torch.optim.Optimizer, warmup: float, schedule: str) -> torch.optim.lr_scheduler.LambdaLR:
        """The phase's learning-rate schedule over its time (`warmup`: the share of it spent warming up)."""
        lr_factor(0, 1, 0, schedule)  # an unknown schedule is an error now, not at the first step
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: self.lr_factor(warmup, schedule))

    def result(self, phases: Sequence[str]) -> dict[str, Any]:
        """What the budget bought, for config.json: per phase its planned seconds, epochs run and training steps."""
        return {"minutes": self.seconds / 60, "seconds_used": round(self.total(), 2),
                "last_validation_seconds": None if self.validation is None else round(self.validation, 2),
                "phases": [{"phase": p, "seconds": round(s, 1), "epochs": e, "steps": n}
                           for p, s, e, n in zip(phases, self.shares, self.phase_epochs_run, self.phase_steps, strict=True)]}

    def schedule(self) -> list[list[float]] | None:
        """Per phase, where the schedule stood at its start and after each step: what `replay=` repeats (None when
        the record is incomplete: a run resumed from a state saved before deepfit kept it)."""
        if any(len(t) != n + 1 for t, n in zip(self.trace, self.phase_steps, strict=True) if t or n):
            return None
        return [list(t) for t in self.trace]

    def summary(self) -> str:
        parts = ", ".join(f"{e} epochs ({n} steps)" for e, n in zip(self.phase_epochs_run, self.phase_steps, strict=True))
        return f"time budget {self.seconds / 60:g} min: trained {self.total():.0f} s, {parts}"

    def state_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "used": self.used, "shares": list(self.shares), "spent": self.elapsed(),
                "step_seconds": self.step_seconds, "validation": self.validation, "previous_validation": self.previous_validation,
                "phase_steps": list(self.phase_steps), "trace": [list(t) for t in self.trace],
                "phase_epochs_run": list(self.phase_epochs_run)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.phase, self.used, self.shares = state["phase"], state["used"], list(state["shares"])
        self.spent = state["spent"]
        self.step_seconds, self.validation, self.phase_steps = state["step_seconds"], state["validation"], list(state["phase_steps"])
        self.previous_validation = state.get("previous_validation")  # absent from states saved before it was kept
        if not self.replay:  # (a replay keeps the whole record it follows)
            self.trace = [list(t) for t in state.get("trace", [[] for _ in self.phase_epochs])]
        self.phase_epochs_run = list(state["phase_epochs_run"])
        self._since = self._last_step_end = time.perf_counter()
        self._stopped = False
