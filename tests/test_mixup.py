"""Mixup in classification: the blended loss, seeded draws, and a run that trains with it (images and sound alike:
it blends whatever tensor the network takes)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import deepfit
from conftest import TINY
from deepfit.tasks.classify.objective import ClassificationTask


def test_the_loss_blends_both_labels_in_the_inputs_proportion() -> None:
    model = nn.Linear(4, 3)
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    task = ClassificationTask(3, mixup=0.4)
    torch.manual_seed(5)
    loss, correct = task.training_loss(model, x, y)
    torch.manual_seed(5)  # the same draws, made by hand
    blend = float(torch.distributions.Beta(0.4, 0.4).sample())
    other = torch.randperm(6)
    logits = model(blend * x + (1 - blend) * x[other])
    ce = nn.functional.cross_entropy
    expected = blend * ce(logits, y) + (1 - blend) * ce(logits, y[other])
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
    assert int(correct) == int((logits.argmax(1) == (y if blend >= 0.5 else y[other])).sum())
    plain, _ = ClassificationTask(3).training_loss(model, x, y)
    assert float(plain.detach()) != pytest.approx(float(loss.detach()))


def test_a_run_trains_with_mixup_and_records_it(shapes_data: Path, tmp_path: Path) -> None:
    clf = deepfit.ImageClassifier(output=str(tmp_path), **{**TINY, "epochs": 2}, mixup=0.2).fit(shapes_data)
    assert '"mixup": 0.2' in (clf.run_dir / "config.json").read_text()
    with pytest.raises(deepfit.ConfigError, match="mixup"):
        deepfit.ImageClassifier(**TINY, mixup=-1)
