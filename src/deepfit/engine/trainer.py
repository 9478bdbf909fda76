"""The training loop: one short function per concern, everything optional added by callbacks.

The loop knows nothing of files, logs or early stopping; callbacks (see callbacks.py) do those.
It knows nothing of losses or metrics either: the task object supplies them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from deepfit.engine.device import autocast

BatchTransformFn = Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]


class BatchSource(Protocol):
    """Anything that yields (images, targets, indices) batches: an in-memory or streamed image store."""

    def __len__(self) -> int: ...

    def batches(
        self, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None
    ) -> Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]: ...

    def num_batches(self, batch_size: int) -> int: ...


class Task(Protocol):
    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor: ...


class Callback:
    """Hooks called by the Trainer; override what you need."""

    def on_fit_start(self, trainer: Trainer, phase: str, epochs: int, steps_per_epoch: int) -> None: ...

    def on_batch_end(self, trainer: Trainer, step: int, batch_size: int) -> None: ...

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None: ...

    def on_fit_end(self, trainer: Trainer) -> None: ...


@dataclass
class RunningStats:
    """Sums kept as tensors on the device: reading them (a sync) is left to whoever needs the numbers."""

    loss_sum: torch.Tensor | float = 0.0
    correct: torch.Tensor | float = 0.0
    seen: int = 0
    started: float = field(default_factory=time.perf_counter)

    def add(self, loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
        n = targets.shape[0]
        self.loss_sum = self.loss_sum + loss.detach() * n
        self.correct = self.correct + (logits.detach().argmax(1) == targets).sum()
        self.seen += n

    def summary(self) -> tuple[float, float, float]:
        """(mean loss, accuracy, images per second)."""
        if not self.seen:
            return float("nan"), float("nan"), 0.0
        elapsed = max(1e-9, time.perf_counter() - self.started)
        return float(self.loss_sum) / self.seen, float(self.correct) / self.seen, self.seen / elapsed


class Trainer:
    def __init__(
        self,
        model: nn.Module,
        task: Task,
        *,
        device: torch.device,
        precision: str = "fp32",
        channels_last: bool = False,
        callbacks: Sequence[Callback] = (),
        generator: torch.Generator | None = None,
    ) -> None:
        self.device = device
        self.precision = precision
        self.model = model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
        self.task = task
        self.callbacks = list(callbacks)
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        # fp16 needs loss scaling to keep small gradients from flushing to zero; bf16 and fp32 do not.
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.should_stop = False
        self.epoch = 0  # epochs completed over all fit() calls, so phases continue the count
        self.running = RunningStats()
        self.optimizer: torch.optim.Optimizer | None = None
        self.last_lr = 0.0

    def _emit(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    def fit(
        self,
        train: BatchSource,
        val: BatchSource | None,
        *,
        epochs: int,
        batch_size: int,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None,
        train_transform: BatchTransformFn,
        eval_transform: BatchTransformFn,
        phase: str = "train",
    ) -> None:
        self.optimizer = optimizer
        self.should_stop = False
        self._emit("on_fit_start", phase, epochs, train.num_batches(batch_size))
        for _ in range(epochs):
            started = time.perf_counter()
            train_loss, train_acc, speed = self.train_epoch(train, batch_size, optimizer, scheduler, train_transform)
            val_loss, val_acc = self.evaluate(val, batch_size, eval_transform) if val is not None and len(val) else (None, None)
            self.epoch += 1
            record = {
                "epoch": self.epoch,
                "phase": phase,
                "train_loss": train_loss,
                "train_acc": train_acc,
                "val_loss": val_loss,
                "val_acc": val_acc,
                "lr": self.last_lr,
                "images_per_s": speed,
                "seconds": time.perf_counter() - started,
            }
            self._emit("on_epoch_end", record)
            if self.should_stop:
                break
        self._emit("on_fit_end")

    def train_epoch(
        self,
        data: BatchSource,
        batch_size: int,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None,
        transform: BatchTransformFn,
    ) -> tuple[float, float, float]:
        self.model.train()
        _keep_frozen_norms_in_eval(self.model)
        self.running = RunningStats()
        for step, (images, targets, _) in enumerate(data.batches(batch_size, shuffle=True, generator=self.generator)):
            images = images.to(self.device, non_blocking=True)  # (B, 3, S, S) uint8
            targets = targets.to(self.device, non_blocking=True)  # (B,)
            x = transform(images, self.generator)  # (B, 3, H, W) float, normalised
            with autocast(self.device, self.precision):
                logits = self.model(x)  # (B, num_classes)
                loss = self.task.loss(logits, targets)
            optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)
            self.scaler.update()
            self.last_lr = max(g["lr"] for g in optimizer.param_groups)  # the rate this step used (the head's)
            if scheduler is not None:
                scheduler.step()
            self.running.add(loss, logits, targets)
            self._emit("on_batch_end", step, targets.shape[0])
        return self.running.summary()

    @torch.inference_mode()
    def evaluate(self, data: BatchSource, batch_size: int, transform: BatchTransformFn) -> tuple[float, float]:
        """(mean loss, accuracy) over a validation store."""
        self.model.eval()
        loss_sum, correct = 0.0, 0
        for images, targets, _ in data.batches(batch_size, shuffle=False):
            x = transform(images.to(self.device, non_blocking=True), None)
            targets = targets.to(self.device, non_blocking=True)
            with autocast(self.device, self.precision):
                logits = self.model(x)
                loss_sum += float(self.task.loss(logits, targets)) * targets.shape[0]
            correct += int((logits.argmax(1) == targets).sum())
        return loss_sum / max(1, len(data)), correct / max(1, len(data))


def _keep_frozen_norms_in_eval(model: nn.Module) -> None:
    """Batch-norm layers keep their statistics when frozen (training only the head must not shift them) or when
    marked `deepfit_frozen_stats` (statistics folded into the weights, see models/weights.py)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and (
            not any(p.requires_grad for p in m.parameters()) or getattr(m, "deepfit_frozen_stats", False)
        ):
            m.eval()
