"""Image classification: its loss, how logits become predictions, and how predictions are scored."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class ClassificationTask:
    """What the engine needs to know about classification, and nothing about how the model is built."""

    name = "classify"
    monitor = "val_acc"
    columns = ("train_acc", "val_loss", "val_acc")  # the epoch values metrics.csv keeps

    def __init__(self, num_classes: int, label_smoothing: float = 0.0) -> None:
        self.num_classes = num_classes
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.criterion(logits.float(), targets)  # fp32 loss even under autocast: stable softmax

    def training_loss(self, model: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x)  # (B, num_classes)
        return self.loss(logits, targets), (logits.detach().argmax(1) == targets).sum()

    def validation_batch(self, model: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> tuple[float, int, int]:
        """(summed loss, correct, images) of one batch."""
        logits = model(x)
        return float(self.loss(logits, targets)) * len(targets), int((logits.argmax(1) == targets).sum()), len(targets)

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


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, class_names: list[str]) -> dict:
    """Accuracy, balanced accuracy, per-class precision/recall/F1 and the confusion matrix.

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
    return {
        "num_samples": int(len(y_true)),
        "accuracy": float((y_pred == y_true).mean()) if len(y_true) else 0.0,
        # the mean recall over the classes present, as sklearn's balanced_accuracy_score defines it.
        "balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": [
            {"class": name, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(class_names, precision, recall, f1, support, strict=True)
        ],
        "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }
