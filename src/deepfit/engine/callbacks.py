"""Callbacks: progress display, metrics.csv, early stopping and best-checkpoint saving."""

from __future__ import annotations

import csv
import io
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from deepfit.engine.interfaces import Callback, Task
from deepfit.engine.trainer import Trainer
from deepfit.fileio import atomic_write_text
from deepfit.log import logger

# Above this share of an epoch spent waiting for batches, the data pipeline, not the model, sets the pace.
DATA_WAIT_WARNING = 0.30


def metric_columns(task: Task) -> tuple[str, ...]:
    """The columns of metrics.csv for a task: the engine's own around the task's epoch values (`task.columns`)."""
    return ("epoch", "phase", "train_loss", *task.columns, "lr", "samples_per_s", "seconds", "data_wait")


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


class MetricsCSV(Callback):
    """Appends one row per epoch to metrics.csv, flushed at once so a crashed run keeps its history.
    `columns` is the whole header, usually `metric_columns(task)`."""

    def __init__(self, path: Path, keep_epochs: int | None, columns: Sequence[str]) -> None:
        self.path = Path(path)
        self.columns = list(columns)
        if not self.path.exists():
            with self.path.open("w", newline="") as f:
                csv.writer(f).writerow(self.columns)
        elif keep_epochs is not None:  # a resumed run: rows of epochs after its checkpoint are redone, drop them
            with self.path.open(newline="") as f:
                rows = list(csv.reader(f))
            kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= keep_epochs]
            out = io.StringIO()
            csv.writer(out).writerows(kept)
            atomic_write_text(self.path, out.getvalue())

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow([_fmt(record.get(c)) for c in self.columns])


class EarlyStopping(Callback):
    """Stops when the validation score (`monitor`: accuracy, or mAP for detection) has not improved for
    `patience` epochs (0 disables it)."""

    def __init__(self, patience: int, min_delta: float = 1e-4, monitor: str = "val_acc") -> None:
        self.patience, self.min_delta, self.monitor = patience, min_delta, monitor
        self.best = -math.inf
        self.bad_epochs = 0

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        score = record.get(self.monitor)
        if not self.patience or score is None:
            return
        if score > self.best + self.min_delta:
            self.best, self.bad_epochs = score, 0
            return
        self.bad_epochs += 1
        if self.bad_epochs >= self.patience:
            logger.info(f"early stopping: {self.monitor} has not improved for {self.patience} epochs")
            trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.bad_epochs = state["best"], state["bad_epochs"]


class BestCheckpoint(Callback):
    """Saves "best" when the validation score (`monitor`) improves (a tie is broken by lower validation
    loss, where the task has one; else by the later epoch), and "last" after every epoch."""

    def __init__(self, save: Callable[[str, dict[str, Any]], None], monitor: str = "val_acc",
                 link: Callable[[str, str], None] | None = None) -> None:
        self.save = save  # save(kind, record) with kind "best" or "last"
        # link("last", "best"): make best the checkpoint just saved as last without writing the weights again
        self.link = link
        self.monitor = monitor
        self.best_score = -math.inf
        self.best_loss = math.inf
        self.best_epoch = 0

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        score = record.get(self.monitor)
        loss = record.get("val_loss", -record["epoch"])
        if score is None:  # no validation split: the latest weights are the best we know
            score, loss = 0.0, -record["epoch"]
        self.save("last", record)
        if score > self.best_score or (score == self.best_score and loss < self.best_loss):
            self.best_score, self.best_loss, self.best_epoch = score, loss, record["epoch"]
            if self.link is not None:
                self.link("last", "best")
            else:
                self.save("best", record)

    def state_dict(self) -> dict[str, Any]:
        return {"best_score": self.best_score, "best_loss": self.best_loss, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # runs saved before detection named the score best_acc
        self.best_score = state.get("best_score", state.get("best_acc", -math.inf))
        self.best_loss, self.best_epoch = state["best_loss"], state["best_epoch"]


class ResumeState(Callback):
    """Writes the trainer's whole state (see Trainer.state_dict) after every epoch and, within an epoch,
    every `every_steps` steps or `every_seconds` seconds, whichever comes first, so a killed run loses
    little. Put it last: the states of the other callbacks are taken after they have run."""

    def __init__(self, save: Callable[[Trainer], None], every_steps: int = 0, every_seconds: float = 300.0) -> None:
        self.save = save
        self.every_steps, self.every_seconds = every_steps, every_seconds
        self._steps, self._last = 0, time.perf_counter()

    def on_batch_end(self, trainer: Trainer, step: int, batch_size: int) -> None:
        self._steps += 1
        if (self.every_steps and self._steps >= self.every_steps) or time.perf_counter() - self._last > self.every_seconds:
            self._write(trainer)

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        self._write(trainer)

    def _write(self, trainer: Trainer) -> None:
        self.save(trainer)
        self._steps, self._last = 0, time.perf_counter()


class Progress(Callback):
    """A live bar with loss, accuracy and samples/s on a terminal; one line per epoch otherwise."""

    def __init__(self, total_epochs: int | None, live: bool | None = None, console: Any = None) -> None:
        self.total_epochs = total_epochs  # None: not known ahead (a time budget ends the run)
        self.live = sys.stderr.isatty() if live is None else live
        self.console = console  # a rich Console; None: rich's default (the terminal)
        self._progress = None
        self._task = None
        self._last_refresh = 0.0

    def on_fit_start(self, trainer: Trainer, phase: str, epochs: int, steps_per_epoch: int) -> None:
        self.phase = phase
        self.steps = steps_per_epoch
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"), TimeRemainingColumn(), transient=False, console=self.console,
            )
            self._progress.start()

    def _of(self, epoch: int) -> str:
        return f"{epoch}/{self.total_epochs}" if self.total_epochs else str(epoch)

    def _description(self, trainer: Trainer) -> str:
        return f"{self.phase} epoch {self._of(trainer.epoch + 1)}"

    def on_batch_end(self, trainer: Trainer, step: int, batch_size: int) -> None:
        if self._progress is None:
            return
        if self._task is None:
            self._task = self._progress.add_task(self._description(trainer), total=self.steps, stats="")
        now = time.perf_counter()
        stats = None
        if now - self._last_refresh > 0.5 or step + 1 == self.steps:  # reading the sums syncs a GPU: not every step
            loss, acc, speed = trainer.running.summary()
            stats = f"loss {loss:.4f}  " + (f"acc {acc:.2%}  " if acc is not None else "") + f"{speed:,.1f} samples/s"
            self._last_refresh = now
        if stats:
            self._progress.update(self._task, completed=step + 1, stats=stats, refresh=True)
        else:
            self._progress.update(self._task, completed=step + 1)

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        line = f"epoch {self._of(record['epoch'])} [{record['phase']}] train loss {record['train_loss']:.4f}"
        if record.get("train_acc") is not None:
            line += f" acc {record['train_acc']:.2%}"
        validation = [(k[4:], v) for k, v in record.items() if k.startswith("val_") and v is not None]
        if validation:
            line += " | val " + " ".join(f"{k} {v:.2%}" if k == "acc" else f"{k} {v:.4f}" for k, v in validation)
        speed = record.get("samples_per_s", record.get("images_per_s", 0.0))  # images_per_s: records of older runs
        line += f" | {speed:,.0f} samples/s, " if speed >= 10 else f" | {speed:.2f} samples/s, "
        line += f"{record['seconds']:.1f}s"
        wait = record.get("data_wait")
        if wait is not None:
            line += f", data wait {wait:.0%}"
            if wait > DATA_WAIT_WARNING:
                logger.warning(
                    f"epoch {record['epoch']} spent {wait:.0%} of its time waiting for images: the data pipeline is the "
                    "bottleneck (more --workers, --cache memory, or a smaller storage size would help)"
                )
        if self._progress is not None:
            # The finished bar goes before the line is printed: printed first, the line would be followed by a
            # redraw of the finished bar. soft_wrap: the terminal folds a long line; rich would break it into two.
            if self._task is not None:
                self._progress.remove_task(self._task)
                self._progress.refresh()
                self._task = None
            self._progress.console.print(line, markup=False, highlight=False, soft_wrap=True)
        else:
            print(line, file=sys.stderr, flush=True)

    def on_fit_end(self, trainer: Trainer) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
