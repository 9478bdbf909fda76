"""Texts as token ids in memory, and padded batches of them for the engine (a `BatchSource`).

A batch is {"input_ids": (B, L) int64, "attention_mask": (B, L) bool}, padded to its own longest text (dynamic
padding), not to `--max-length`. `arrange_order` groups texts of similar length into the same batches (length
buckets) for an epoch's random order, so short texts are not padded to long ones: the engine calls it once per epoch
and slices batches from what it returns, so a resumed epoch continues with the same batches.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import torch

BUCKET_BATCHES = 50  # batches per bucket: texts are sorted by length within each stretch of 50 batches of the order


class TextStore:
    def __init__(self, ids: list[list[int]], labels: list[int], paths: list[Path]) -> None:
        self.ids = [torch.tensor(i, dtype=torch.long) for i in ids]
        self.lengths = torch.tensor([len(i) for i in ids], dtype=torch.long)
        self.labels, self.paths = torch.tensor(labels, dtype=torch.long), paths

    @property
    def in_memory(self) -> bool:
        return True

    def __len__(self) -> int:
        return len(self.ids)

    def num_batches(self, batch_size: int) -> int:
        return math.ceil(len(self) / batch_size)

    def pad(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """The texts `idx` padded (with id 0) to the longest of them."""
        longest = int(self.lengths[idx].max())
        ids = torch.zeros(len(idx), longest, dtype=torch.long)
        for row, i in enumerate(idx.tolist()):
            ids[row, : len(self.ids[i])] = self.ids[i]
        return {"input_ids": ids, "attention_mask": torch.arange(longest)[None] < self.lengths[idx][:, None]}

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
                order: torch.Tensor | None = None) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]]:
        if order is None:
            order = torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            yield self.pad(idx), self.labels[idx], idx

    def arrange_order(self, order: torch.Tensor, batch_size: int) -> torch.Tensor:
        """The epoch's random `order`, rearranged so each batch holds texts of similar length: within each stretch of
        BUCKET_BATCHES batches the texts are sorted by length and cut into batches, and those batches are shuffled
        (by a permutation drawn from the order itself, so the same order always gives the same batches)."""
        stretch = batch_size * BUCKET_BATCHES
        out = []
        for start in range(0, len(order), stretch):
            part = order[start : start + stretch]
            part = part[torch.argsort(self.lengths[part], stable=True)]
            chunks = list(part.split(batch_size))
            shuffle = torch.randperm(len(chunks), generator=torch.Generator().manual_seed(int(order[start])))
            out += [chunks[i] for i in shuffle.tolist()]
        return torch.cat(out) if out else order

    def padded_tokens(self, order: torch.Tensor, batch_size: int) -> int:
        """Tokens of padding the batches of `order` carry (to measure what bucketing saves)."""
        return sum(int(self.lengths[c].max()) * len(c) - int(self.lengths[c].sum()) for c in order.split(batch_size))
