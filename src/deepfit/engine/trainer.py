"""The training loop: one short function per concern, everything optional added by callbacks.

The loop knows nothing of files, logs or early stopping; callbacks (see callbacks.py) do those.
It knows nothing of losses, metrics or what a batch holds either: the task object (tasks/) runs the
model on a batch and scores it, so every task shares this loop. A batch is (inputs, targets, indices),
inputs and targets any tree of tensors, lists, tuples and dicts (see batch.py): a (B, C, H, W) tensor of
images and a (B,) tensor of labels for classification; images and a list of B dicts of boxes, labels and
masks for detection; a dict of (B, T) token ids and attention mask for text.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from deepfit.engine.batch import batch_size as samples_in
from deepfit.engine.batch import split, to_device
from deepfit.engine.device import autocast
from deepfit.engine.distributed import Dist, all_sum, collective, gather, unwrap
from deepfit.engine.interfaces import BatchSource, BatchTransformFn, Callback, Inputs, Targets, Task
from deepfit.errors import TrainingError, TrainingInterrupted
from deepfit.log import logger


@dataclass
class RunningStats:
    """Sums kept as tensors on the device: reading them (a sync) is left to whoever needs the numbers."""

    loss_sum: torch.Tensor | float = 0.0
    correct: torch.Tensor | float | None = 0.0  # None once the task reports no count of correct predictions
    seen: int = 0
    started: float = field(default_factory=time.perf_counter)

    def add(self, loss: torch.Tensor, correct: torch.Tensor | None, n: int) -> None:
        self.loss_sum = self.loss_sum + loss.detach() * n
        self.correct = None if correct is None or self.correct is None else self.correct + correct
        self.seen += n

    def summary(self) -> tuple[float, float | None, float]:
        """(mean loss, accuracy or None for tasks that report no correct predictions, samples per second)."""
        accuracy = None if self.correct is None else float(self.correct) / self.seen if self.seen else math.nan
        if not self.seen:
            return math.nan, accuracy, 0.0
        elapsed = max(1e-9, time.perf_counter() - self.started)
        return float(self.loss_sum) / self.seen, accuracy, self.seen / elapsed


@dataclass
class Position:
    """Where training stands; with the weights, optimizer and random states it is all a resumed run needs
    to continue bit-exactly: the phase, the epochs done in it, the steps done in the current epoch and
    that epoch's shuffled order (None between epochs)."""

    phase_index: int = 0
    epoch_in_phase: int = 0
    step: int = 0
    order: torch.Tensor | None = None
    seed: int = 0  # the epoch's augmentation seed, for sources that augment per sample


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
        accumulate: int = 1,
        skip_nonfinite: bool = False,
        dist_info: Dist | None = None,
        sample_weights: torch.Tensor | None = None,
    ) -> None:
        self.device = device
        self.precision = precision
        self.dist = dist_info or Dist()
        self.model = model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
        if self.dist.enabled:
            self.model = nn.parallel.DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda" else None)
        self.task = task
        self.callbacks = list(callbacks)
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        # fp16 needs loss scaling to keep small gradients from flushing to zero; bf16 and fp32 do not.
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.micro_batches = accumulate  # each batch is split into this many pieces, gradients accumulated
        self.skip_nonfinite = skip_nonfinite
        self.should_stop = False
        self.stop_requested = False  # set by a Ctrl-C handler: stop after the current step
        self.end_phase = False  # set by a callback (a time budget): end this epoch after the current step, and the phase
        self.epoch = 0  # epochs completed over all fit() calls, so phases continue the count
        self.position = Position()
        self.running = RunningStats()
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self.last_lr = 0.0
        self.last_loss: torch.Tensor | None = None  # the last step's mean loss (detached; None: it was not finite)
        self.data_wait = 0.0  # seconds of the last epoch spent waiting for batches
        self.skipped_steps = 0
        # (N,) chances of the training items: each epoch draws N of them with replacement (a balanced sampler);
        # None: each epoch is a shuffle of all of them
        self.sample_weights = sample_weights

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
        phase_index: int = 0,
    ) -> None:
        """Train `epochs` epochs of one phase; a position restored by `load_state_dict` for this phase resumes it."""
        self.optimizer, self.scheduler = optimizer, scheduler
        self.should_stop = self.end_phase = False
        if self.position.phase_index != phase_index:
            self.position = Position(phase_index)
        self._emit("on_fit_start", phase, epochs, train.num_batches(batch_size))
        while self.position.epoch_in_phase < epochs:
            started = time.perf_counter()
            train_loss, train_acc, speed = self.train_epoch(train, batch_size, optimizer, scheduler, train_transform)
            validation = self.evaluate(val, batch_size, eval_transform) if val is not None and len(val) else {}
            self.epoch += 1
            self.position = Position(phase_index, self.position.epoch_in_phase + 1)
            seconds = time.perf_counter() - started
            record = {"epoch": self.epoch, "phase": phase, "train_loss": train_loss, "train_acc": train_acc, **validation,
                      "lr": self.last_lr, "samples_per_s": speed, "seconds": seconds,
                      "data_wait": self.data_wait / max(seconds, 1e-9)}
            self._emit("on_epoch_end", record)
            if self.should_stop or self.end_phase:
                break
        self._emit("on_fit_end")

    def train_epoch(
        self, data: BatchSource, batch_size: int, optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None, transform: BatchTransformFn,
    ) -> tuple[float, float | None, float]:
        """One epoch, or the rest of one when the position was restored mid-epoch."""
        self.model.train()
        keep_frozen_norms_in_eval(self.model)
        pos = self.position
        if pos.order is None:  # a new epoch: draw its order (and augmentation seed) from the training generator
            if self.sample_weights is not None:
                pos.order = torch.multinomial(self.sample_weights, len(data), replacement=True, generator=self.generator)
            else:
                pos.order = torch.randperm(len(data), generator=self.generator)
            pos.step = 0
            if hasattr(data, "arrange_order"):  # e.g. texts of similar length batched together (length buckets)
                pos.order = data.arrange_order(pos.order, batch_size)
            if getattr(data, "per_sample_augment", False):
                pos.seed = int(torch.randint(2**62, (1,), generator=self.generator))
            self.running = RunningStats()
        self.data_wait = 0.0
        order, local_batch = self._shard(pos.order, batch_size)
        seeded = {"seed": pos.seed} if getattr(data, "per_sample_augment", False) else {}
        batches = iter(data.batches(local_batch, order=order[pos.step * local_batch :], **seeded))
        while True:
            waited = time.perf_counter()
            batch = next(batches, None)
            self.data_wait += time.perf_counter() - waited
            if batch is None:
                break
            inputs, targets, _ = batch
            x = transform(to_device(inputs, self.device), self.generator)  # e.g. (B, 3, S, S) uint8 -> normalised float
            targets = to_device(targets, self.device)  # e.g. (B,) labels, or B dicts of boxes, labels, masks
            if self.dist.enabled:  # DDP's gradient all-reduce runs inside backward: a hung rank times out there
                with collective(f"step {pos.step + 1} of epoch {self.epoch + 1}"):
                    self._step(x, targets, optimizer)
            else:
                self._step(x, targets, optimizer)
            self.last_lr = max(g["lr"] for g in optimizer.param_groups)  # the rate this step used (the head's)
            if scheduler is not None:
                scheduler.step()
            pos.step += 1
            self._emit("on_batch_end", pos.step - 1, samples_in((x, targets)))
            if self.stop_requested:
                raise TrainingInterrupted(f"stopped at epoch {self.epoch + 1}, step {pos.step}")
            if self.end_phase:  # the epoch ends early: it is validated, recorded and checkpointed as any other
                break
        pos.order = None
        if self.dist.enabled:  # every rank reports the whole epoch
            run = self.running
            loss_sum, correct, seen = all_sum([float(run.loss_sum), float(run.correct or 0), run.seen], self.device)
            self.running = RunningStats(float(loss_sum), None if run.correct is None else float(correct), int(seen), run.started)
        return self.running.summary()

    def _shard(self, order: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, int]:
        """This rank's part of the epoch order, and its batch size: rank r takes items r, r + world, ...
        of every global batch, so together the ranks make the same batches as one process would."""
        if not self.dist.enabled:
            return order, batch_size
        world = self.dist.world
        usable = len(order) - len(order) % world  # every rank must get the same number of batches, none empty
        chunks = order[:usable].split(batch_size)
        return torch.cat([c[self.dist.rank :: world] for c in chunks]), batch_size // world

    def _step(self, x: Inputs, targets: Targets, optimizer: torch.optim.Optimizer) -> None:
        """One optimisation step on a batch; out of memory, the batch is split in more pieces and retried."""
        n = samples_in((x, targets))
        while True:
            optimizer.zero_grad(set_to_none=True)
            try:
                loss, correct = self._forward_backward(x, targets)
                break
            except torch.OutOfMemoryError:
                if self.micro_batches >= n:
                    raise TrainingError(
                        f"out of memory even with one sample per step (epoch {self.epoch + 1}, step "
                        f"{self.position.step + 1}): use smaller inputs (--image-size), a smaller model, or another device"
                    ) from None
                optimizer.zero_grad(set_to_none=True)  # free the partial gradients before emptying the cache
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                self.micro_batches = min(n, self.micro_batches * 2)
                logger.warning(
                    f"out of memory: batches are now split into {self.micro_batches} pieces of about "
                    f"{math.ceil(n / self.micro_batches)} samples, with gradients accumulated so the "
                    f"effective batch stays {n}"
                )
        if not self._finite(loss):
            self.skipped_steps += 1
            self.last_loss = None
            optimizer.zero_grad(set_to_none=True)
            return
        self.scaler.step(optimizer)
        self.scaler.update()
        self.running.add(loss, correct, n)
        self.last_loss = loss

    def _forward_backward(self, x: Inputs, targets: Targets) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Loss of the whole batch (detached) and its number of correct predictions; gradients summed over the
        micro-batches, each weighted by its share of the batch so the result equals the whole batch's mean loss."""
        n = samples_in((x, targets))
        total, correct = None, None
        for xs, ts in split((x, targets), self.micro_batches):
            share = samples_in((xs, ts))
            if not share:
                continue
            with autocast(self.device, self.precision):
                loss, right = self.task.training_loss(self.model, xs, ts)
            if self.micro_batches > 1:
                loss = loss * (share / n)
            self.scaler.scale(loss).backward()
            total = loss.detach() if total is None else total + loss.detach()
            if right is not None:
                correct = right if correct is None else correct + right
        assert total is not None
        return total, correct

    def _finite(self, loss: torch.Tensor) -> bool:
        """Stop on a NaN or infinite loss (or, with skip_nonfinite, skip the step), naming where it happened.

        Checking reads the loss (a GPU sync); the steps before it are untouched, so the checkpoints on
        disk are the last good weights."""
        if bool(torch.isfinite(loss)):
            return True
        where = f"epoch {self.epoch + 1}, step {self.position.step + 1}"
        if not self.skip_nonfinite:
            raise TrainingError(
                f"the loss became {float(loss)} at {where}; training stopped and the checkpoints written so far are "
                "kept. Try a lower --lr, --precision fp32, or check the data; --skip-nonfinite skips such batches instead"
            )
        logger.warning(f"non-finite loss ({float(loss)}) at {where}: this batch was skipped")
        return False

    @torch.inference_mode()
    def evaluate(self, data: BatchSource, batch_size: int, transform: BatchTransformFn) -> dict[str, float]:
        """The task's validation values (e.g. val_loss and val_acc) over a validation source."""
        self.model.eval()
        parts = []
        order = torch.arange(len(data))[self.dist.rank :: self.dist.world]  # every sample once over all ranks
        for inputs, targets, _ in data.batches(batch_size, order=order):
            x = transform(to_device(inputs, self.device), None)
            with autocast(self.device, self.precision):
                parts.append(self.task.validation_batch(self.model, x, to_device(targets, self.device)))
        if self.dist.enabled:
            parts = [p for rank_parts in gather(parts) for p in rank_parts]
        return self.task.validation_result(parts)

    # --- resumable state ------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-exactly: only tensors and plain Python values, so it loads
        with `torch.load(weights_only=True)` (no code runs when a checkpoint is read)."""
        np_state = np.random.get_state()
        pos = self.position
        return {
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python_rng": random.getstate(),
            "numpy_rng": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
            "position": {"phase_index": pos.phase_index, "epoch_in_phase": pos.epoch_in_phase, "step": pos.step,
                         "order": pos.order, "seed": pos.seed, "epoch": self.epoch},
            "running": {"loss_sum": self.running.loss_sum, "correct": self.running.correct, "seen": self.running.seen},
            "micro_batches": self.micro_batches,
            "last_lr": self.last_lr,
            "callbacks": {type(cb).__name__: cb.state_dict() for cb in self.callbacks if hasattr(cb, "state_dict")},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict`; the optimizer and scheduler must be those of the phase being resumed."""
        unwrap(self.model).load_state_dict(state["model"])
        if state["optimizer"] is not None and self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        if state["scheduler"] is not None and self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        python_rng = state["python_rng"]
        random.setstate((python_rng[0], tuple(python_rng[1]), python_rng[2]))
        name, keys, *rest = state["numpy_rng"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
        p = state["position"]
        self.position = Position(p["phase_index"], p["epoch_in_phase"], p["step"], p["order"], p.get("seed", 0))
        self.epoch = p["epoch"]
        r = state["running"]
        correct = r["correct"]  # NaN in states saved before None meant "no accuracy"
        no_count = correct is None or (isinstance(correct, float) and math.isnan(correct))
        self.running = RunningStats(r["loss_sum"], None if no_count else correct, r["seen"])
        self.micro_batches = max(self.micro_batches, state["micro_batches"])
        self.last_lr = state["last_lr"]
        for cb in self.callbacks:
            if hasattr(cb, "load_state_dict") and type(cb).__name__ in state["callbacks"]:
                cb.load_state_dict(state["callbacks"][type(cb).__name__])


def keep_frozen_norms_in_eval(model: nn.Module) -> None:
    """Batch-norm layers keep their statistics when frozen (training only the head must not shift them) or when
    marked `deepfit_frozen_stats` (statistics folded into the weights, see models/weights.py)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and (
            not any(p.requires_grad for p in m.parameters()) or getattr(m, "deepfit_frozen_stats", False)
        ):
            m.eval()
