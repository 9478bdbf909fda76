"""Class imbalance, handled the same way for every task and modality.

Each task says what every training item holds of each class (`Task.class_counts`: an (N, K) array — a one for a
classification example's label, the objects of each class in a detection image, the pixels of each class in a
segmentation mask). From that one array:

    --class-weights balanced   the loss weights each class by the inverse of its frequency (`class_weights`), so a
                               rare class buys as much of the loss as a common one
    --sampler balanced         each epoch draws its items with replacement, an item's chance set by the rarest class
                               it holds (`sample_weights`), so rare classes are seen about as often as common ones
    `imbalance_ratio`          largest over smallest class: reports lead with class-averaged scores above IMBALANCED
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from deepfit.errors import ConfigError
from deepfit.log import logger

if TYPE_CHECKING:
    from deepfit.config import TrainConfig
    from deepfit.tasks.base import Data, Task

WEIGHT_METHODS = ("balanced", "none")

# Largest class over smallest from which accuracy misleads enough that reports lead with balanced accuracy and macro
# F1: at 3:2 a model that always answers the large class already scores 60%.
IMBALANCED = 1.5


def class_weights(counts: np.ndarray | Sequence[int], method: str = "balanced") -> np.ndarray:
    """(K,) float32 loss weights from what the training split holds of each class (examples, objects or pixels).

    "balanced" is median frequency balancing (Eigen & Fergus 2015): w_c = median(f) / f_c with
    f_c = count_c / sum(counts) and the median taken over the classes present. The median class gets 1,
    rarer classes more and the dominant ones (road, sky, background) less, so a few large classes cannot
    buy most of the loss; normalising by the median rather than the mean keeps the weights near 1, so the
    loss keeps its usual scale. A class with no count gets 1.0: it has no frequency to invert (and the
    loss never meets it). For segmentation the paper's f_c divides by the pixels of the images where c occurs;
    with only per-class totals we divide by all pixels: the same weights when every class occurs in every image,
    somewhat larger ones for classes found in few images otherwise. "none" gives ones.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or (counts < 0).any():
        raise ConfigError(f"class counts must be one non-negative number per class, got {counts.tolist()!r}")
    if method not in WEIGHT_METHODS:
        raise ConfigError(f"unknown class weighting {method!r}: use one of {', '.join(WEIGHT_METHODS)}")
    weights = np.ones(len(counts), dtype=np.float64)
    present = counts > 0
    if method == "balanced" and present.any():
        freq = counts[present] / counts.sum()
        weights[present] = np.median(freq) / freq
    return weights.astype(np.float32)


def sample_weights(counts: np.ndarray) -> torch.Tensor:
    """(N,) float64 chances of drawing each item, from its (N, K) class counts.

    An item's weight is 1 / (the number of items holding its rarest class): for single-label classification every
    class is then drawn equally often; an image of several classes (detection, segmentation) is drawn for the rarest
    it holds, as LVIS's repeat-factor sampling does. An item holding no class (a background image) is weighted as
    the most common class's items are."""
    present = np.asarray(counts) > 0  # (N, K)
    holding = present.sum(0)  # (K,) items that hold each class
    inverse = np.where(holding > 0, 1.0 / np.maximum(holding, 1), 0.0)  # (K,)
    weights = (present * inverse).max(1)  # (N,)
    floor = 1.0 / holding.max() if holding.max() > 0 else 1.0
    return torch.as_tensor(np.where(weights > 0, weights, floor), dtype=torch.float64)


def imbalance_ratio(counts: np.ndarray | Sequence[float]) -> float:
    """Largest over smallest count among the classes present (1.0 for fewer than two)."""
    counts = np.asarray(counts, dtype=np.float64)
    present = counts[counts > 0]
    return float(present.max() / present.min()) if len(present) >= 2 else 1.0


def imbalance_note(ratio: float, scores: str, counted: str) -> str:
    """A sentence for reports when classes are imbalanced (empty otherwise): `scores` are the class-averaged ones the
    report leads with, `counted` what a plain share is taken over ("examples", "objects", "pixels")."""
    if ratio < IMBALANCED:
        return ""
    return (f"classes are imbalanced (the largest has {ratio:.1f}x the {counted} of the smallest): {scores} weigh every "
            f"class equally, while a share of all {counted} is won mostly on the large classes")


def loss_weights(task: Task, config: TrainConfig, data: Data, items: list, device: Any) -> torch.Tensor | None:
    """The (K,) loss weights `--class-weights` asks for, from the training items (logged), or None."""
    if config.class_weights == "none":
        return None
    weights = class_weights(task.class_counts(data, items).sum(0), config.class_weights)
    logger.info("class weights: " + ", ".join(f"{c} {w:.2f}" for c, w in zip(data.classes, weights, strict=True)))
    return torch.as_tensor(weights, dtype=torch.float32, device=device)


def sampler_weights(task: Task, config: TrainConfig, data: Data, items: list) -> torch.Tensor | None:
    """The per-item drawing weights `--sampler balanced` asks for, or None (each epoch a plain shuffle)."""
    if config.sampler != "balanced":
        return None
    counts = task.class_counts(data, items)
    held = (counts > 0).sum(0)
    logger.info(f"balanced sampler: items drawn with replacement, each class about equally often "
                f"(items per class from {held[held > 0].min()} to {held.max()})")
    return sample_weights(counts)


def label_counts(labels: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """(N, K) one-hot counts of single-label examples (classification)."""
    index = {c: i for i, c in enumerate(classes)}
    counts = np.zeros((len(labels), len(classes)), dtype=np.int64)
    counts[np.arange(len(labels)), [index[label] for label in labels]] = 1
    return counts
