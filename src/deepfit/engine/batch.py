"""A batch of any shape: moving it to the device, counting its samples and cutting it into micro-batches.

The inputs and targets of a batch are trees of tensors, lists, tuples and dicts: a (B, 3, H, W) image
tensor and (B,) labels; {"input_ids": (B, T), "attention_mask": (B, T)} and (B,) labels; images and a
list of B per-image dicts of boxes and labels for detection. The rule that makes a tree splittable:

- a tensor's dim 0 is the batch (a 0-dim tensor is a value shared by the whole batch);
- a list holds one entry per sample (whatever each entry is: a dict of boxes, a string, a tensor);
- a tuple or a dict is structure: each of its entries is a tree of its own, with the same batch;
- anything else (a number, a string, None) is shared by the whole batch.
"""

from __future__ import annotations

from typing import Any

import torch

Tree = Any  # a tensor, a list of per-sample entries, a tuple or dict of trees, or a shared value


def _rebuild(tree: tuple | dict, entries: list[Any]) -> Any:
    """A tuple (named tuples included) or dict like `tree` holding `entries` (its values, in order)."""
    if isinstance(tree, dict):
        return dict(zip(tree.keys(), entries, strict=True))
    return type(tree)(*entries) if hasattr(tree, "_fields") else type(tree)(entries)


def to_device(tree: Tree, device: torch.device) -> Tree:
    """The tree with every tensor on `device` (copied without blocking the host); everything else as it was."""
    if isinstance(tree, torch.Tensor):
        return tree.to(device, non_blocking=True)
    if isinstance(tree, dict | tuple):
        return _rebuild(tree, [to_device(v, device) for v in (tree.values() if isinstance(tree, dict) else tree)])
    if isinstance(tree, list):
        return [to_device(v, device) for v in tree]
    return tree


def batch_size(tree: Tree) -> int | None:
    """The number of samples: the dim 0 of the first tensor found, or the length of the first list
    (lists hold one entry per sample); None for a tree with neither."""
    if isinstance(tree, torch.Tensor):
        return tree.shape[0] if tree.dim() else None
    if isinstance(tree, list):
        return len(tree)
    if isinstance(tree, dict | tuple):
        for entry in tree.values() if isinstance(tree, dict) else tree:
            size = batch_size(entry)
            if size is not None:
                return size
    return None


def _cut(tree: Tree, start: int, stop: int, n: int) -> Tree:
    if isinstance(tree, list) or (isinstance(tree, torch.Tensor) and tree.dim()):
        if len(tree) != n:
            raise ValueError(f"a batch of {n} samples holds a {type(tree).__name__} of {len(tree)}: every tensor's "
                             "dim 0 and every list's length must be the batch size")
        return tree[start:stop]
    if isinstance(tree, dict | tuple):
        return _rebuild(tree, [_cut(v, start, stop, n) for v in (tree.values() if isinstance(tree, dict) else tree)])
    return tree


def split(tree: Tree, pieces: int) -> list[Tree]:
    """`pieces` consecutive parts of the batch, of the sizes `torch.Tensor.tensor_split` gives (pieces
    beyond the batch are empty), cut the same way in every tensor and list of the tree."""
    n = batch_size(tree) or 0
    bounds = [0]
    for part in torch.arange(n).tensor_split(pieces):
        bounds.append(bounds[-1] + len(part))
    return [_cut(tree, a, b, n) for a, b in zip(bounds, bounds[1:], strict=False)]
