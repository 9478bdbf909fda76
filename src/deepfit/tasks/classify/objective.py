"""Image classification: its loss, how logits become predictions, and how predictions are scored."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from deepfit.report.stats import bootstrap_intervals, wilson_interval
from deepfit.tasks.balance import imbalance_ratio


class ClassificationTask:
    """What the engine needs to know about classification, and nothing about how the model is built."""

    name = "classify"
    monitor = "val_acc"
    columns = ("train_acc", "val_loss", "val_acc")  # the epoch values metrics.csv keeps

    def __init__(self, num_classes: int, label_smoothing: float = 0.0, mixup: float = 0.0,
                 weight: torch.Tensor | None = None) -> None:
        self.num_classes = num_classes
        # `weight` (--class-weights): training's loss only; the validation loss stays the plain one, comparable across runs
        self.criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)
        self.plain = nn.CrossEntropyLoss(label_smoothing=label_smoothing) if weight is not None else self.criterion
        self.mixup = mixup  # Beta(alpha, alpha) of the blend; 0: off

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.criterion(logits.float(), targets)  # fp32 loss even under autocast: stable softmax

    def training_loss(self, model: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mixup and len(targets) > 1:
            return self._mixup_loss(model, x, targets)
        logits = model(x)  # (B, num_classes)
        return self.loss(logits, targets), (logits.detach().argmax(1) == targets).sum()

    def _mixup_loss(self, model: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixup (Zhang et al., 2018): each input blended with another of the batch, the loss with both labels in the
        same proportion. Drawn from torch's global generator, which the trainer seeds and keeps in its resumable state.
        Accuracy counts the label that dominates the blend."""
        blend = float(torch.distributions.Beta(self.mixup, self.mixup).sample())
        other = torch.randperm(len(targets)).to(targets.device)
        logits = model(blend * x + (1 - blend) * x[other])  # (B, num_classes)
        loss = blend * self.loss(logits, targets) + (1 - blend) * self.loss(logits, targets[other])
        dominant = targets if blend >= 0.5 else targets[other]
        return loss, (logits.detach().argmax(1) == dominant).sum()

    def validation_batch(self, model: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> tuple[float, int, int]:
        """(summed loss, correct, images) of one batch."""
        logits = model(x)
        return float(self.plain(logits.float(), targets)) * len(targets), int((logits.argmax(1) == targets).sum()), len(targets)

    @staticmethod
    def validation_result(parts: list[tuple[float, int, int]]) -> dict[str, float]:
        loss_sum, correct, seen = (sum(p[i] for p in parts) for i in range(3))
        return {"val_loss": loss_sum / max(1, seen), "val_acc": correct / max(1, seen)}

    @staticmethod
    def correct(logits: torch.Tensor, targets: torch.Tensor) -> int:
        return int((logits.argmax(1) == targets).sum())

    @staticmethod
    def probabilities(logits: torch.Tensor) -> torch.Tensor:
        return logits.float().softmax(1)


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, class_names: list[str], *, intervals: bool = False) -> dict:
    """Accuracy, balanced accuracy, per-class precision/recall/F1 and the confusion matrix; with `intervals`, their
    95% confidence intervals too (see `classification_intervals`).

    Classes that never occur in `y_true` still get a row (support 0), so reports line up across runs.
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    y_true = np.asarray(y_true)
    y_pred = np.asarray(probs).argmax(1)
    labels = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    present = support > 0
    extra = {"intervals": classification_intervals(y_true, y_pred, len(class_names))} if intervals else {}
    return {
        "num_samples": int(len(y_true)),
        "accuracy": float((y_pred == y_true).mean()) if len(y_true) else 0.0,
        # the mean recall over the classes present, as sklearn's balanced_accuracy_score defines it.
        "balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "imbalance": imbalance_ratio(support),  # largest class over smallest: from 1.5, reports lead with the two above
        "per_class": [
            {"class": name, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(class_names, precision, recall, f1, support, strict=True)
        ],
        "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        **extra,
    }


def _class_means(tp: np.ndarray, true: np.ndarray, predicted: np.ndarray) -> tuple[float, float]:
    """(balanced accuracy, macro F1) from per-class counts, over the classes present in the truth (as sklearn's)."""
    present = true > 0
    if not present.any():
        return float("nan"), float("nan")
    recall = tp[present] / true[present]
    f1 = 2 * tp[present] / (true[present] + predicted[present])
    return float(recall.mean()), float(f1.mean())


def classification_intervals(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> dict[str, dict]:
    """95% confidence intervals: accuracy by Wilson's interval (images are independent trials), balanced accuracy
    and macro F1 by a seeded bootstrap over the images (they are means over classes, not proportions)."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    correct = (y_true == y_pred).astype(np.float64)

    def figures(weights: np.ndarray) -> tuple[float, float]:
        def count(labels: np.ndarray, w: np.ndarray) -> np.ndarray:
            return np.bincount(labels, weights=w, minlength=num_classes)

        return _class_means(count(y_true, weights * correct), count(y_true, weights), count(y_pred, weights))

    found = {"accuracy": wilson_interval(float(correct.sum()), len(y_true)),
             **bootstrap_intervals(figures, len(y_true), ["balanced_accuracy", "macro_f1"])}
    return {name: interval.to_dict() for name, interval in found.items()}
