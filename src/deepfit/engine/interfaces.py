"""What the training loop (trainer.py) asks of the things it is given: a source of batches, a task that turns a
batch into a loss and a validation result, and callbacks; each a small protocol that stores, tasks and callbacks in
every part of deepfit implement."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

if TYPE_CHECKING:
    from deepfit.engine.trainer import Trainer

Inputs = Any  # a tree of tensors, lists, tuples and dicts (see batch.py): images, token ids and mask, ...
Targets = Any  # a tree too: a (B,) tensor of labels, a list of B per-image dicts of boxes, ...
BatchTransformFn = Callable[[Inputs, torch.Generator | None], Inputs]  # stored inputs (on the device) -> model inputs


class BatchSource(Protocol):
    """Anything that yields (inputs, targets, indices) batches: an in-memory or streamed store.

    A source whose augmentation runs per sample while loading (detection: boxes move with the image)
    sets `per_sample_augment`; the trainer then passes `batches` a `seed` per epoch, kept in the resumable
    state, so an epoch's augmentation is the same whether or not the run was stopped in between. A source that
    wants a say in which items share a batch (texts of similar length) defines `arrange_order(order, batch_size)`:
    the trainer calls it on each epoch's random order and keeps what it returns as the epoch's order."""

    def __len__(self) -> int: ...

    def batches(
        self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
        order: torch.Tensor | None = None,
    ) -> Iterable[tuple[Inputs, Targets, torch.Tensor]]: ...

    def num_batches(self, batch_size: int) -> int: ...


class Task(Protocol):
    """What the trainer asks of a task (e.g. tasks/classify/objective.py and tasks/detect/objective.py)."""

    monitor: str  # the validation value that picks the best epoch and drives early stopping, e.g. "val_acc"
    columns: tuple[str, ...]  # the task's own epoch values for metrics.csv, e.g. ("train_acc", "val_loss", "val_acc")

    def training_loss(self, model: nn.Module, x: Inputs, targets: Targets) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(mean loss of the batch, number of correct predictions or None where the task has no accuracy)."""
        ...

    def validation_batch(self, model: nn.Module, x: Inputs, targets: Targets) -> Any:
        """A picklable partial result for one validation batch (collected over batches and ranks)."""
        ...

    def validation_result(self, parts: list[Any]) -> dict[str, float]:
        """The epoch's validation values (including `monitor`) from all the partial results."""
        ...


class Callback:
    """Hooks called by the Trainer; override what you need. A callback with state that a resumed run
    must get back (best score, patience counter) also defines `state_dict()` and `load_state_dict()`."""

    def on_fit_start(self, trainer: Trainer, phase: str, epochs: int, steps_per_epoch: int) -> None: ...

    def on_batch_end(self, trainer: Trainer, step: int, batch_size: int) -> None: ...

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None: ...

    def on_fit_end(self, trainer: Trainer) -> None: ...
