"""Batches of samples read one by one in DataLoader workers: the base of the detection and segmentation stores.

Classification keeps decoded images in memory and augments whole batches on the device (images.py,
augment.py). Detection and segmentation read each image from disk every epoch and augment it with its
labels (boxes, masks) while loading, so a worker process makes each item; this class turns an index
order into batches of them. The items' random draws are seeded from the epoch's `seed` (the dataset's
`seed` attribute) and the item's index, never from the worker or torch's global generator, so a resumed
epoch repeats them exactly (see engine/trainer.py `per_sample_augment`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset


class PerSampleStore:
    """A BatchSource (see engine/trainer.py) over `data`, whose items `collate` makes into a batch."""

    per_sample_augment = True

    def __init__(self, data: Dataset, collate: Callable[[list[Any]], Any], workers: int = 0) -> None:
        self._data, self._collate, self.workers = data, collate, workers

    def __len__(self) -> int:
        return len(self._data)  # type: ignore[arg-type]

    @property
    def in_memory(self) -> bool:
        return False

    def num_batches(self, batch_size: int) -> int:
        return math.ceil(len(self) / batch_size)

    def batches(
        self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
        order: torch.Tensor | None = None, seed: int = 0,
    ) -> Iterator[Any]:
        """Batches of the items in `order` (default: shuffled with `generator` when `shuffle`, else in sequence)."""
        if order is None:
            order = torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        if not len(order):
            return
        self._data.seed = seed  # the epoch's augmentation seed, read by the items in every worker
        chunks = [c.tolist() for c in order.split(batch_size)]
        loader = DataLoader(self._data, batch_sampler=chunks, num_workers=min(self.workers, len(chunks)), collate_fn=self._collate,
                            pin_memory=torch.cuda.is_available(),
                            # workers' seeds come from this, not from torch's global generator that dropout uses
                            generator=torch.Generator().manual_seed(seed))
        yield from loader
