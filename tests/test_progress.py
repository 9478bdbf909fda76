"""The live progress bar on a terminal: loss, accuracy and samples/s while an epoch runs."""

from __future__ import annotations

import io

import torch
from rich.console import Console

from deepfit.engine.callbacks import Progress
from deepfit.engine.trainer import RunningStats


class _FakeTrainer:
    def __init__(self) -> None:
        self.epoch = 0
        self.running = RunningStats()


def test_live_bar_shows_loss_accuracy_and_speed() -> None:
    out = io.StringIO()
    progress = Progress(total_epochs=2, live=True, console=Console(file=out, force_terminal=True, width=160))
    trainer = _FakeTrainer()
    progress.on_fit_start(trainer, "train", epochs=2, steps_per_epoch=3)
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [2.0, 0.0]])
    targets = torch.tensor([0, 1, 1, 0])  # 3 of 4 right
    for step in range(3):
        trainer.running.add(torch.tensor(0.5), (logits.argmax(1) == targets).sum(), len(targets))
        progress.on_batch_end(trainer, step, 4)
    record = {"epoch": 1, "phase": "train", "train_loss": 0.5, "train_acc": 0.75, "val_loss": 0.4, "val_acc": 0.8,
              "samples_per_s": 100.0, "seconds": 0.1}
    progress.on_epoch_end(trainer, record)
    progress.on_fit_end(trainer)
    text = out.getvalue()
    assert "train epoch 1/2" in text
    assert "loss 0.5000" in text and "acc 75.00%" in text and "samples/s" in text
    assert "epoch 1/2 [train] train loss 0.5000 acc 75.00% | val loss 0.4000 acc 80.00%" in text


def test_epoch_line_reads_the_speed_of_old_records_too(capsys) -> None:  # type: ignore[no-untyped-def]
    """Records of runs from before samples_per_s named the speed images_per_s."""
    progress = Progress(total_epochs=1, live=False)
    progress.on_fit_start(_FakeTrainer(), "train", epochs=1, steps_per_epoch=1)
    for key in ("samples_per_s", "images_per_s"):
        progress.on_epoch_end(_FakeTrainer(), {"epoch": 1, "phase": "train", "train_loss": 0.5, key: 123.0, "seconds": 2.0})
        assert "| 123 samples/s, 2.0s" in capsys.readouterr().err


def test_narrow_terminal_keeps_the_epoch_line_whole_and_the_finished_bar_gone() -> None:
    """In a terminal narrower than the epoch line, rich must not break the line (the terminal folds it), and the
    finished epoch's bar is removed before the line is printed, so it is not drawn again below it."""
    out = io.StringIO()
    progress = Progress(total_epochs=2, live=True, console=Console(file=out, force_terminal=True, width=40))
    trainer = _FakeTrainer()
    progress.on_fit_start(trainer, "train", epochs=2, steps_per_epoch=2)
    for epoch in range(2):
        trainer.epoch = epoch
        for step in range(2):
            trainer.running.add(torch.tensor(0.5), torch.tensor(3), 4)
            progress.on_batch_end(trainer, step, 4)
        progress.on_epoch_end(trainer, {"epoch": epoch + 1, "phase": "train", "train_loss": 0.5, "train_acc": 0.75,
                                        "val_loss": 0.4, "val_acc": 0.8, "samples_per_s": 100.0, "seconds": 0.1})
    progress.on_fit_end(trainer)
    text = out.getvalue()
    for epoch in (1, 2):
        line = f"epoch {epoch}/2 [train] train loss 0.5000 acc 75.00% | val loss 0.4000 acc 80.00% | 100 samples/s, 0.1s\n"
        assert line in text  # whole, although it is longer than the 40 columns
        after = text.split(line, 1)[1]
        assert "loss 0.5000" not in after.split("train epoch 2/2", 1)[0]  # no redrawn finished bar after the line
