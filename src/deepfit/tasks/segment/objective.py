"""Semantic segmentation: its losses and its metrics (whole-image and tiled prediction are in `tiling`).

Conventions shared by everything here:

- The model maps (B, 3, H, W) float images in [0, 1] to (B, K, H, W) logits at the input's size.
- A mask is (B, H, W) (or (H, W)) uint8 or int64 class indexes in [0, K); the value `IGNORE_INDEX` (255) marks
  pixels that are unlabelled or ambiguous: they count in neither the loss nor the metrics.
- A confusion matrix is (K, K) int64 with rows = true class and columns = predicted class.
- Losses are computed in fp32 whatever autocast the caller set: softmax and Dice's sums lose too much in
  16-bit floats.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from deepfit.data.formats.masks import IGNORE_INDEX
from deepfit.errors import ConfigError
from deepfit.report.stats import bootstrap_intervals

LOSSES = ("ce", "dice", "focal")

# Dice's smoothing term, added to numerator and denominator. 1 (a pixel's worth) rather than a tiny epsilon:
# a class absent from the truth whose predicted probabilities sum to 0.001 then scores ~1, not ~0 — with a
# tiny epsilon every absent class would push the loss towards 1 for a rounding error's worth of probability.
DICE_SMOOTH = 1.0


# --- losses -----------------------------------------------------------------------------------------


def parse_loss(spec: str) -> tuple[str, ...]:
    """The terms of a loss spec such as "ce", "ce+dice" or "focal+dice", in the order written."""
    parts = tuple(p.strip().lower() for p in str(spec).split("+"))
    for part in parts:
        if part not in LOSSES:
            raise ConfigError(
                f"unknown loss term {part!r} in {spec!r}: use one of {', '.join(LOSSES)} or a sum of them such as 'ce+dice'"
            )
    repeated = sorted({p for p in parts if parts.count(p) > 1})
    if repeated:
        raise ConfigError(f"the loss {spec!r} names {', '.join(repeated)} more than once: name each term once, e.g. 'ce+dice'")
    return parts


class SegmentationLoss(nn.Module):
    """A sum of cross-entropy, soft Dice and focal terms over the non-ignored pixels.

    - ce: cross-entropy, weighted like F.cross_entropy(weight=): sum_i w_{y_i} CE_i / sum_i w_{y_i}.
    - focal (Lin et al. 2017): (1 - p_t)^gamma * w_{y_i} CE_i, averaged over the valid pixels: confident,
      right pixels (most of a segmentation mask) fade out and the hard ones drive the gradient. With gamma 0
      and no weights it is the cross-entropy.
    - dice: 1 - mean_c (2 sum(p_c y_c) + s) / (sum(p_c) + sum(y_c) + s) with the sums over the valid pixels
      of the whole batch and s = DICE_SMOOTH; class weights (when given) weight the mean over classes.
      It scores overlap per class, so small classes count as much as large ones.

    A batch whose pixels are all ignored gives 0 (with a grad_fn, so backward still works), not NaN.
    """

    weight: torch.Tensor | None

    def __init__(
        self, spec: str = "ce", weight: torch.Tensor | None = None, ignore_index: int = IGNORE_INDEX, focal_gamma: float = 2.0
    ) -> None:
        super().__init__()
        self.terms = parse_loss(spec)
        self.ignore_index = ignore_index
        if focal_gamma < 0:
            raise ConfigError(f"the focal loss's gamma must be >= 0, not {focal_gamma}")
        self.focal_gamma = float(focal_gamma)
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape[-2:] != target.shape[-2:] or logits.shape[0] != target.shape[0]:
            raise ValueError(f"logits {tuple(logits.shape)} and masks {tuple(target.shape)} do not match: "
                             "the model must give (B, K, H, W) logits at the masks' (B, H, W) size")
        if self.weight is not None and self.weight.shape != (logits.shape[1],):
            raise ValueError(f"{len(self.weight)} class weights for a model with {logits.shape[1]} classes")
        if self.weight is not None and self.weight.device != logits.device:
            self.weight = self.weight.to(logits.device)  # once: the task is never moved with the model
        with torch.autocast(logits.device.type, enabled=False):
            log_probs = logits.float().log_softmax(1)  # (B, K, H, W)
            valid = target != self.ignore_index  # (B, H, W)
            safe = torch.where(valid, target.long(), 0)  # (B, H, W): ignored pixels point at class 0, then masked out
            log_pt = log_probs.gather(1, safe.unsqueeze(1)).squeeze(1)  # (B, H, W) log-probability of the true class
            validf = valid.float()
            # Per-pixel weight: 0 where ignored, w_{y_i} (or 1) elsewhere.
            pixel_w = validf if self.weight is None else self.weight[safe] * validf  # (B, H, W)
            # Where nothing counts, divide by 1: the sum is then an exact 0 that keeps its graph (no 0/0 NaN).
            n_valid = validf.sum()
            n_valid = torch.where(n_valid > 0, n_valid, torch.ones_like(n_valid))
            total = log_probs.new_zeros(())
            if "ce" in self.terms:
                w_sum = pixel_w.sum()
                total = total + (-log_pt * pixel_w).sum() / torch.where(w_sum > 0, w_sum, torch.ones_like(w_sum))
            if "focal" in self.terms:
                # (B, H, W) (1 - p_t)^gamma; kept off 0, where its gradient is infinite for gamma < 1 (inf * 0 = NaN)
                modulation = (1 - log_pt.exp()).clamp_min(1e-12).pow(self.focal_gamma)
                total = total + (-log_pt * modulation * pixel_w).sum() / n_valid
            if "dice" in self.terms:
                total = total + self._dice(log_probs.exp(), log_pt.exp(), safe, validf)
        return total

    def _dice(self, probs: torch.Tensor, p_true: torch.Tensor, safe: torch.Tensor, validf: torch.Tensor) -> torch.Tensor:
        """Soft Dice from per-class sums, without a one-hot (B, K, H, W) truth. With coco's 129 classes (batch 8,
        256 px) the one-hot and its products made the loss's forward and backward take 3.5 times as long as CE's
        alone (1.1-1.3 s against 0.33 s on 2 CPU cores); these sums take 1.7-2 times as long."""
        num_classes = probs.shape[1]
        labels, keep = safe.flatten(), validf.flatten()  # (B*H*W,)
        # sum over valid pixels of p_c * y_c: each pixel adds its true class's probability to that class
        # (index_add is deterministic on CPU, and on CUDA under torch.use_deterministic_algorithms)
        intersection = probs.new_zeros(num_classes).index_add(0, labels, p_true.flatten() * keep)  # (K,)
        truth = probs.new_zeros(num_classes).index_add(0, labels, keep)  # (K,) valid pixels of each class
        predicted = _valid_sums(probs, validf)  # (K,) ignored pixels add nothing
        dice = (2 * intersection + DICE_SMOOTH) / (predicted + truth + DICE_SMOOTH)  # (K,)
        if self.weight is None:
            return 1 - dice.mean()
        return 1 - (dice * self.weight).sum() / self.weight.sum()


def _valid_sums(probs: torch.Tensor, validf: torch.Tensor) -> torch.Tensor:
    """(K,) sums of (B, K, H, W) `probs` over the pixels where `validf` (B, H, W) is 1, as one batched matrix product
    in the layout the model gave (channels-last or not): 3x faster than multiplying and summing, and no copy."""
    mask = validf.flatten(1)  # (B, H*W)
    if probs.is_contiguous(memory_format=torch.channels_last):
        return (mask.unsqueeze(1) @ probs.movedim(1, -1).flatten(1, 2)).sum((0, 1))  # (B, 1, H*W) @ (B, H*W, K)
    return (probs.flatten(2) @ mask.unsqueeze(2)).sum((0, 2))  # (B, K, H*W) @ (B, H*W, 1)


# --- the task the trainer runs ----------------------------------------------------------------------


class SegmentationTask:
    """What the engine needs to know about semantic segmentation, and nothing about how the model is built."""

    name = "segment"
    monitor = "val_miou"
    columns = ("val_loss", "val_miou", "val_pixel_acc")  # the epoch values metrics.csv keeps

    def __init__(
        self, num_classes: int, loss: str = "ce", weight: torch.Tensor | None = None, ignore_index: int = IGNORE_INDEX
    ) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.criterion = SegmentationLoss(loss, weight=weight, ignore_index=ignore_index)

    def training_loss(self, model: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, None]:
        """(the batch's loss, None: pixel accuracy is left to validation, where it costs no extra sync)."""
        return self.criterion(model(x), targets), None  # model(x): (B, K, H, W)

    def validation_batch(self, model: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> tuple[float, int, np.ndarray]:
        """(loss * valid pixels, valid pixels, (K, K) confusion) of one batch, on the CPU.

        The epoch's loss is the pixel-weighted mean of the batch losses: exactly the mean over all pixels
        for an unweighted cross-entropy, a close stand-in for Dice, which is not a per-pixel sum."""
        logits = model(x)  # (B, K, H, W)
        loss = self.criterion(logits, targets)
        confusion = confusion_matrix(logits.argmax(1), targets, self.num_classes, self.ignore_index)
        valid = int(confusion.sum())  # the confusion counts exactly the valid pixels
        return float(loss) * valid, valid, confusion.cpu().numpy()

    def validation_result(self, parts: list[tuple[float, int, np.ndarray]]) -> dict[str, float]:
        loss_sum = sum(p[0] for p in parts)
        pixels = sum(p[1] for p in parts)
        confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        for part in parts:
            confusion += part[2]
        metrics = segmentation_metrics(confusion, [str(k) for k in range(self.num_classes)])
        return {"val_loss": loss_sum / max(1, pixels), "val_miou": metrics["miou"], "val_pixel_acc": metrics["pixel_accuracy"]}


# --- metrics ----------------------------------------------------------------------------------------


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """(K, K) int64 counts, rows = true class, columns = predicted class, on the inputs' device.

    pred and target are class indexes of the same shape; pixels whose target is `ignore_index` are left
    out. One bincount over true * K + pred: the ignored pixels go to an extra bin that is dropped, rather
    than being removed by boolean indexing, which would sync with the GPU to learn the count."""
    if pred.shape != target.shape:
        raise ValueError(f"predictions {tuple(pred.shape)} and masks {tuple(target.shape)} differ in shape")
    k = num_classes
    target = target.long()
    index = torch.where(target != ignore_index, target * k + pred.long(), k * k)
    return torch.bincount(index.flatten(), minlength=k * k + 1)[: k * k].reshape(k, k)


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else 0.0


def segmentation_metrics(confusion: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Pixel accuracy, mean IoU, mean Dice and per-class values from a (K, K) confusion matrix.

    IoU_c = TP / (TP + FP + FN) and Dice_c = 2 TP / (2 TP + FP + FN), per class over the whole data set
    (not averaged per image). A class with no true and no predicted pixel has iou, dice, precision and
    recall None and is left out of the means: there is nothing to score, and counting it as 1 (or 0) would
    move the mean with the number of such classes. A class with true pixels none of which is predicted right
    has 0. Precision is 0 for a class never predicted and recall 0 for one never true (sklearn's
    zero_division=0). `pixels` is a class's true pixel count, `predicted` its predicted one.
    """
    confusion = np.asarray(confusion, dtype=np.int64)
    if confusion.shape != (len(classes), len(classes)):
        raise ValueError(f"a confusion matrix of shape {confusion.shape} for {len(classes)} classes")
    tp = np.diag(confusion)
    true = confusion.sum(1)
    predicted = confusion.sum(0)
    per_class = []
    for c, name in enumerate(classes):
        t, fp, fn = int(tp[c]), int(predicted[c] - tp[c]), int(true[c] - tp[c])
        row: dict[str, Any] = {"class": name, "iou": None, "dice": None, "precision": None, "recall": None,
                               "pixels": int(true[c]), "predicted": int(predicted[c])}
        if t + fp + fn:
            row.update(iou=t / (t + fp + fn), dice=2 * t / (2 * t + fp + fn),
                       precision=_ratio(t, t + fp), recall=_ratio(t, t + fn))
        per_class.append(row)
    miou, mean_dice, pixel_accuracy = (0.0 if np.isnan(v) else v for v in _means(tp, true, predicted))
    return {
        "pixel_accuracy": pixel_accuracy,
        "miou": miou,
        "mean_dice": mean_dice,
        "per_class": per_class,
        "confusion": confusion.tolist(),
    }


SCORED = ("miou", "mean_dice", "pixel_accuracy")  # the figures `_means` returns, in its order


def _means(tp: np.ndarray, true: np.ndarray, predicted: np.ndarray) -> tuple[float, float, float]:
    """(mean IoU, mean Dice, pixel accuracy) from per-class true-positive, true and predicted pixel counts (they may
    be weighted sums); the means over the classes present in the truth or the prediction, NaN when there is none."""
    union = true + predicted - tp
    present = union > 0
    if not present.any():
        return float("nan"), float("nan"), float("nan")
    iou = tp[present] / union[present]
    dice = 2 * tp[present] / (true[present] + predicted[present])
    return float(iou.mean()), float(dice.mean()), float(tp.sum() / true.sum()) if true.sum() else float("nan")


def per_image_counts(confusion: np.ndarray) -> np.ndarray:
    """(3, K) true-positive, true and predicted pixels per class of one image's (K, K) confusion: all a bootstrap
    over images needs of it, in far less memory than the matrix."""
    confusion = np.asarray(confusion, dtype=np.int64)
    return np.stack([np.diag(confusion), confusion.sum(1), confusion.sum(0)])


def segmentation_intervals(counts: np.ndarray) -> dict[str, dict]:
    """95% intervals of mean IoU, mean Dice and pixel accuracy by a seeded bootstrap over the images, from their
    (N, 3, K) `per_image_counts`: pixels of one image are not independent, so images are what is resampled."""
    counts = np.asarray(counts, dtype=np.float64)
    flat = counts.reshape(len(counts), -1)

    def figures(weights: np.ndarray) -> tuple[float, float, float]:
        tp, true, predicted = (weights @ flat).reshape(3, -1)
        return _means(tp, true, predicted)

    return {name: interval.to_dict() for name, interval in bootstrap_intervals(figures, len(counts), SCORED).items()}
