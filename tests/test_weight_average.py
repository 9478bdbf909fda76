"""Weight averaging (`ema`): the lookahead update's arithmetic, its schedule, and a resumed run that ends the same."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import deepfit
from conftest import TINY, ctrl_c_after
from deepfit.engine.average import WeightAverage
from deepfit.engine.trainer import Position
from deepfit.errors import TrainingInterrupted


def _trainer(model: nn.Module, step: int = 0, epoch_in_phase: int = 0) -> SimpleNamespace:
    return SimpleNamespace(model=model, position=Position(0, epoch_in_phase, step), end_phase=False, should_stop=False)


def test_the_weights_become_their_average_with_the_scheduled_decay() -> None:
    model = nn.BatchNorm1d(1)  # a weight, a bias and running statistics: all averaged
    trainer = _trainer(model)
    average = WeightAverage(0.5, every=2)
    average.on_fit_start(trainer, "train", epochs=1, steps_per_epoch=8)  # type: ignore[arg-type]
    with torch.no_grad():
        model.weight.fill_(3.0)
        model.running_mean.fill_(2.0)
    trainer.position.step = 4
    average.on_batch_end(trainer, 3, 1)  # type: ignore[arg-type]
    assert model.weight.item() == 3.0  # one step since the last update: not yet
    average.on_batch_end(trainer, 4, 1)  # type: ignore[arg-type]
    # progress 4/8: decay 0.5**2 * 0.5**3 = 1/32 of the old average (1.0) kept, 31/32 of the new weight (3.0)
    assert model.weight.item() == pytest.approx(1 / 32 + 3 * 31 / 32)
    assert model.running_mean.item() == pytest.approx(2 * 31 / 32)
    assert model.num_batches_tracked.item() == 0  # integer buffers are left alone

    with torch.no_grad():
        model.weight.fill_(10.0)
    before = model.weight.item()
    trainer.position.step = 8
    average.on_batch_end(trainer, 7, 1)  # type: ignore[arg-type]  # the epoch's last step updates at once
    # progress 1: decay 0.5 (one step since the update) keeps half the average
    assert model.weight.item() == pytest.approx(0.5 * (1 / 32 + 3 * 31 / 32) + 0.5 * before)


def test_a_new_phase_starts_a_new_average() -> None:
    model = nn.Linear(1, 1, bias=False)
    trainer = _trainer(model)
    average = WeightAverage(0.9, every=1)
    average.on_fit_start(trainer, "head", epochs=1, steps_per_epoch=4)  # type: ignore[arg-type]
    with torch.no_grad():
        model.weight.fill_(5.0)
    trainer.position = Position(1, 0, 3)  # the next phase, near its end
    average.on_fit_start(trainer, "train", epochs=1, steps_per_epoch=4)  # type: ignore[arg-type]
    average.on_batch_end(trainer, 2, 1)  # type: ignore[arg-type]
    assert model.weight.item() == pytest.approx(5.0)  # averaged with itself, not with the head phase's weights


def _fit(data: Path, output: Path, name: str, **options: object) -> Path:
    clf = deepfit.ImageClassifier(output=str(output), name=name, **{**TINY, "epochs": 3, "save_every_steps": 1, **options})
    clf.fit(data)
    assert clf.run_dir is not None
    return clf.run_dir


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "last.safetensors"))


def test_averaged_training_differs_and_resumes_mid_epoch_to_the_same_weights(shapes_data: Path, tmp_path: Path) -> None:
    plain = _weights(_fit(shapes_data, tmp_path, "plain"))
    averaged_run = _fit(shapes_data, tmp_path, "averaged", ema=0.9)
    averaged = _weights(averaged_run)
    assert any(not torch.equal(plain[k], averaged[k]) for k in plain)
    assert '"ema": 0.9' in (averaged_run / "config.json").read_text()

    with ctrl_c_after(5), pytest.raises(TrainingInterrupted):  # epoch 2, step 2 of 3: between two averaging updates
        _fit(shapes_data, tmp_path, "interrupted", ema=0.9)
    run = tmp_path / "interrupted"
    deepfit.resume(run)
    resumed = _weights(run)
    assert all(torch.equal(averaged[k], resumed[k]) for k in averaged)
