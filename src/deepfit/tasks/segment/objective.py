"""Semantic segmentation: its losses, its metrics, and how a whole image of any size is predicted.

Conventions shared by everything here:

- The model maps (B, 3, H, W) float images in [0, 1] to (B, K, H, W) logits at the input's size.
- A mask is (B, H, W) (or (H, W)) uint8 or int64 class indexes in [0, K); the value `IGNORE` (255) marks
  pixels that are unlabelled or ambiguous: they count in neither the loss nor the metrics.
- A confusion matrix is (K, K) int64 with rows = true class and columns = predicted class.
- Losses are computed in fp32 whatever autocast the caller set: softmax and Dice's sums lose too much in
  16-bit floats.
- Prediction of a large image runs overlapping tiles and blends their probabilities with a window that
  falls towards each tile's border, where the model sees the least context; only one band of tile rows is
  kept in memory at a time, so a 4000 x 3000 image with 80 classes never holds K * H * W floats.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deepfit.errors import ConfigError

IGNORE = 255  # the mask value of ignored pixels
LOSSES = ("ce", "dice", "focal")
WEIGHT_METHODS = ("balanced", "none")

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


def class_weights(counts: np.ndarray | Sequence[int], method: str = "balanced") -> np.ndarray:
    """(K,) float32 loss weights from the number of training pixels of each class.

    "balanced" is median frequency balancing (Eigen & Fergus 2015): w_c = median(f) / f_c with
    f_c = count_c / sum(counts) and the median taken over the classes present. The median class gets 1,
    rarer classes more and the dominant ones (road, sky, background) less, so a few large classes cannot
    buy most of the loss; normalising by the median rather than the mean keeps the weights near 1, so the
    loss keeps its usual scale. A class with no pixel gets 1.0: it has no frequency to invert (and the
    cross-entropy never meets it). The paper's f_c divides by the pixels of the images
    where c occurs; with only per-class totals we divide by all pixels: the same weights when every class
    occurs in every image, somewhat larger ones for classes found in few images otherwise.
    "none" gives ones.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or (counts < 0).any():
        raise ConfigError(f"class pixel counts must be one non-negative number per class, got {counts.tolist()!r}")
    if method not in WEIGHT_METHODS:
        raise ConfigError(f"unknown class weighting {method!r}: use one of {', '.join(WEIGHT_METHODS)}")
    weights = np.ones(len(counts), dtype=np.float64)
    present = counts > 0
    if method == "balanced" and present.any():
        freq = counts[present] / counts.sum()
        weights[present] = np.median(freq) / freq
    return weights.astype(np.float32)


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
        self, spec: str = "ce", weight: torch.Tensor | None = None, ignore_index: int = IGNORE, focal_gamma: float = 2.0
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
                total = total + self._dice(log_probs.exp(), safe, validf)
        return total

    def _dice(self, probs: torch.Tensor, safe: torch.Tensor, validf: torch.Tensor) -> torch.Tensor:
        probs = probs * validf.unsqueeze(1)  # (B, K, H, W): ignored pixels add to neither sum
        # One-hot truth in fp32 by scatter (one write per pixel, deterministic), 0 at ignored pixels.
        onehot = torch.zeros_like(probs).scatter_(1, safe.unsqueeze(1), validf.unsqueeze(1))  # (B, K, H, W)
        dims = (0, 2, 3)
        intersection = (probs * onehot).sum(dims)  # (K,)
        denominator = probs.sum(dims) + onehot.sum(dims)  # (K,)
        dice = (2 * intersection + DICE_SMOOTH) / (denominator + DICE_SMOOTH)  # (K,)
        if self.weight is None:
            return 1 - dice.mean()
        return 1 - (dice * self.weight).sum() / self.weight.sum()


# --- the task the trainer runs ----------------------------------------------------------------------


class SegmentationTask:
    """What the engine needs to know about semantic segmentation, and nothing about how the model is built."""

    name = "segment"
    monitor = "val_miou"

    def __init__(
        self, num_classes: int, loss: str = "ce", weight: torch.Tensor | None = None, ignore_index: int = IGNORE
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


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = IGNORE) -> torch.Tensor:
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
    per_class, ious, dices = [], [], []
    for c, name in enumerate(classes):
        t, fp, fn = int(tp[c]), int(predicted[c] - tp[c]), int(true[c] - tp[c])
        row: dict[str, Any] = {"class": name, "iou": None, "dice": None, "precision": None, "recall": None,
                               "pixels": int(true[c]), "predicted": int(predicted[c])}
        if t + fp + fn:
            row.update(iou=t / (t + fp + fn), dice=2 * t / (2 * t + fp + fn),
                       precision=_ratio(t, t + fp), recall=_ratio(t, t + fn))
            ious.append(row["iou"])
            dices.append(row["dice"])
        per_class.append(row)
    return {
        "pixel_accuracy": _ratio(int(tp.sum()), int(confusion.sum())),
        "miou": float(np.mean(ious)) if ious else 0.0,
        "mean_dice": float(np.mean(dices)) if dices else 0.0,
        "per_class": per_class,
        "confusion": confusion.tolist(),
    }


# --- inference on whole images ----------------------------------------------------------------------


def _model_device(model: nn.Module, image: torch.Tensor) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # a model without parameters runs where the image is
        return image.device


def _check_image(image: torch.Tensor) -> None:
    if image.ndim != 3:
        raise ValueError(f"expected one (C, H, W) image, got shape {tuple(image.shape)}")


def _probabilities(model: nn.Module, x: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
    """fp32 softmax of the model's logits for a (B, C, h, w) batch, checked to be (B, K, h, w)."""
    logits = model(x)
    if logits.ndim != 4 or logits.shape[-2:] != x.shape[-2:] or (num_classes is not None and logits.shape[1] != num_classes):
        want = f"(B, {num_classes if num_classes is not None else 'K'}, {x.shape[-2]}, {x.shape[-1]})"
        raise ValueError(f"the model gave logits of shape {tuple(logits.shape)} for input {tuple(x.shape)}; expected {want}")
    return logits.float().softmax(1)


@torch.inference_mode()
def predict_whole(model: nn.Module, image: torch.Tensor, *, multiple: int = 32) -> torch.Tensor:
    """(K, H, W) float32 softmax probabilities of a (3, H, W) image in one pass, on the model's device.

    The image is zero-padded at the bottom and right to a multiple of `multiple` (so an encoder of stride
    32 sees whole cells and its decoder's upsampled maps line up), then the output is cropped back."""
    _check_image(image)
    if multiple < 1:
        raise ConfigError(f"predict_whole pads to a multiple of at least 1, not {multiple}")
    _, h, w = image.shape
    x = image.to(_model_device(model, image)).unsqueeze(0)  # (1, 3, H, W)
    x = F.pad(x, (0, -w % multiple, 0, -h % multiple))  # (1, 3, H', W')
    return _probabilities(model, x)[0, :, :h, :w]  # (K, H, W)


def _tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Where tiles begin along one side: every tile - overlap pixels, the last one flush with the end."""
    if length <= tile:
        return [0]  # one tile, padded
    return [*range(0, length - tile, tile - overlap), length - tile]


def _blend_window(tile: int, overlap: int, device: torch.device) -> torch.Tensor:
    """(tile, tile) separable weights: a squared linear ramp over `overlap` pixels at each side, 1 inside.

    A tile's border pixels are its worst: the model saw zero padding where their neighbours are. Squaring
    the ramp ((i + 1) / (overlap + 1))^2 gives them much less say than the neighbouring tile's centre (at 2
    pixels from the border 3% instead of 18% for overlap 16), which in our tests cut argmax changes at the
    seams 5 to 7 times against a plain linear ramp. It never reaches 0: a pixel at the image's edge is
    covered by tile borders only and must still get a weight. Blended probabilities are divided by the
    summed weights, so the window's scale does not matter, only how it shifts trust to tile centres."""
    i = torch.arange(tile, device=device, dtype=torch.float32)
    ramp = (torch.minimum(i + 1, tile - i).clamp(max=overlap + 1) / (overlap + 1)) ** 2  # (tile,)
    return ramp[:, None] * ramp[None, :]


def _accumulator(num_classes: int, rows: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The band accumulators: (K, rows, W) weighted probabilities and (rows, W) summed weights.

    The only large buffers tiled prediction allocates (the test checks their size through this function)."""
    return (torch.zeros(num_classes, rows, width, device=device), torch.zeros(rows, width, device=device))


def _shift_up(buffer: torch.Tensor, rows: int) -> None:
    """Move a (..., R, W) buffer's rows [rows, R) to the top and zero the rest, in place.

    Copied in chunks of `rows` rows, so source and destination never overlap and nothing is allocated."""
    total = buffer.shape[-2]
    for start in range(0, total - rows, rows):
        stop = min(start + rows, total - rows)
        buffer[..., start:stop, :].copy_(buffer[..., start + rows : stop + rows, :])
    buffer[..., max(total - rows, 0) :, :].zero_()


def _tiled_bands(
    model: nn.Module, image: torch.Tensor, num_classes: int, tile: int, overlap: int, batch_size: int
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Blend tile predictions band by band, top to bottom.

    Yields (first row, (K, n, W) summed weighted probabilities, (n, W) summed weights) for consecutive
    bands of final rows; both are views into the accumulators, valid until the next band is asked for.
    Probabilities are their ratio; the argmax needs only the first (the weights are positive)."""
    if tile < 1 or not 0 <= overlap < tile or batch_size < 1:
        raise ConfigError(f"tiling needs tile >= 1, 0 <= overlap < tile and batch size >= 1; got tile {tile}, "
                          f"overlap {overlap}, batch size {batch_size}")
    _check_image(image)
    _, h, w = image.shape
    device = _model_device(model, image)
    rows, cols = _tile_starts(h, tile, overlap), _tile_starts(w, tile, overlap)
    window = _blend_window(tile, overlap, device)  # (tile, tile)
    # Row r of the accumulators is image row top + r, top being the current tile row's first image row.
    acc, weights = _accumulator(num_classes, tile, w, device)  # (K, tile, W), (tile, W)
    for i, top in enumerate(rows):
        th = min(tile, h - top)  # rows of this tile row inside the image (< tile only when H < tile)
        for b in range(0, len(cols), batch_size):
            starts = cols[b : b + batch_size]
            crops = [F.pad(image[:, top : top + th, x : x + tile], (0, tile - min(tile, w - x), 0, tile - th)) for x in starts]
            probs = _probabilities(model, torch.stack(crops).to(device), num_classes)  # (b, K, tile, tile)
            probs.mul_(window)
            for x, p in zip(starts, probs, strict=True):
                tw = min(tile, w - x)
                acc[:, :th, x : x + tw] += p[:, :th, :tw]
                weights[:th, x : x + tw] += window[:th, :tw]
        # Rows above the next tile row's top get no more tiles: they are final.
        done = rows[i + 1] - top if i + 1 < len(rows) else th
        yield top, acc[:, :done], weights[:done]
        _shift_up(acc, done)
        _shift_up(weights, done)


@torch.inference_mode()
def _predict_tiled_probs(
    model: nn.Module, image: torch.Tensor, *, num_classes: int, tile: int = 1024, overlap: int = 128, batch_size: int = 4
) -> torch.Tensor:
    """(K, H, W) float32 blended probabilities of the tiled prediction, on the model's device.

    For tests and small images only: it holds K * H * W floats, which predict_tiled exists to avoid."""
    bands = [acc / weights for _, acc, weights in _tiled_bands(model, image, num_classes, tile, overlap, batch_size)]
    return torch.cat(bands, 1)


@torch.inference_mode()
def predict_tiled(
    model: nn.Module, image: torch.Tensor, *, num_classes: int, tile: int = 1024, overlap: int = 128, batch_size: int = 4
) -> torch.Tensor:
    """(H, W) int64 class indexes (on the CPU) of a (3, H, W) image of any size, in bounded memory.

    Overlapping tile x tile windows (stride tile - overlap, the last row and column flush with the image's
    edge, a side shorter than a tile zero-padded and cropped back) run in batches of `batch_size` tiles of
    one tile row. Each tile's softmax is multiplied by a window that falls towards the tile's border, where
    the model sees least context (a squared linear ramp over `overlap` pixels), and accumulated with the
    window's sums. Only one band of tile rows is held, as a (K, tile, W) accumulator on the model's device:
    once a tile row is done, the rows above the next one's top are final, so their argmax is moved to the
    output and the band moves down. Memory is
    O(K * tile * W + H * W), never O(K * H * W).
    """
    _check_image(image)
    _, h, w = image.shape
    out = torch.empty(h, w, dtype=torch.int64)  # (H, W), on the CPU
    for top, acc, _ in _tiled_bands(model, image, num_classes, tile, overlap, batch_size):
        out[top : top + acc.shape[1]] = acc.argmax(0).cpu()  # argmax(acc / weights) = argmax(acc): weights > 0
    return out


def predict_image(
    model: nn.Module, image: torch.Tensor, *, num_classes: int, tile: int = 1024, overlap: int = 128, batch_size: int = 4
) -> torch.Tensor:
    """(H, W) int64 class indexes (on the CPU): one pass when the image fits in a tile, tiles otherwise."""
    _check_image(image)
    if max(image.shape[-2:]) <= tile:
        probs = predict_whole(model, image)  # (K, H, W)
        if probs.shape[0] != num_classes:
            raise ValueError(f"the model gave {probs.shape[0]} classes, expected {num_classes}")
        return probs.argmax(0).cpu()
    return predict_tiled(model, image, num_classes=num_classes, tile=tile, overlap=overlap, batch_size=batch_size)

