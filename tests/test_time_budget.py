"""--time-budget: the schedule runs over wall-clock time and every task's run ends on time, fully decayed.

The logic is tested on a fake clock (no timing); one short real run per task checks that it ends within 10% of
its budget plus one step, measured by the run itself (config.json's budget_result)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from conftest import TINY, draw_rectangles
from deepfit.cli import main
from deepfit.engine import budget as budget_module
from deepfit.engine.budget import TimeBudget
from deepfit.engine.distributed import Dist
from deepfit.engine.trainer import Position


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class _Trainer:
    def __init__(self, phase_index: int = 0) -> None:
        self.position = Position(phase_index)
        self.end_phase = False
        self.dist = Dist()


def _run_phase(budget: TimeBudget, clock: _Clock, trainer: _Trainer, step: float, validation: float | list[float],
               steps_per_epoch: int = 10) -> tuple[int, list[float]]:
    """Steps of `step` seconds until the budget ends the phase, validating each epoch (in `validation` seconds, or
    those of the list, epoch by epoch); (steps, lr factors)."""
    budget.on_fit_start(trainer, "train", 10**9, steps_per_epoch)
    steps, factors = 0, []
    validations = iter(validation if isinstance(validation, list) else [])
    while not trainer.end_phase:
        for _ in range(steps_per_epoch):
            factors.append(budget.lr_factor(0.1, "cosine"))
            clock.now += step
            steps += 1
            budget.on_batch_end(trainer, steps, 8)
            if trainer.end_phase:
                break
        clock.now += next(validations) if isinstance(validation, list) else validation
        budget.on_epoch_end(trainer, {"epoch": steps})
    budget.on_fit_end(trainer)
    return steps, factors


def test_a_phase_ends_on_time_with_its_rate_decayed(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    monkeypatch.setattr(budget_module.time, "perf_counter", clock)
    budget = TimeBudget(60.0, [1], validation_steps=2)
    steps, factors = _run_phase(budget, clock, _Trainer(), step=0.5, validation=1.0)
    assert budget.elapsed() <= 60.0 and budget.elapsed() > 60.0 - 0.5 - 1.0  # ends inside the budget, within a step
    assert factors[0] < 0.1 and max(factors) == pytest.approx(1.0, abs=0.05)  # warm-up, then the peak
    assert factors[-1] < 0.01  # fully decayed at the last step
    assert all(b <= a + 1e-9 for a, b in zip(factors[len(factors) // 2:], factors[len(factors) // 2 + 1:], strict=False))
    result = budget.result(["train"])
    assert result["phases"][0]["steps"] == steps and result["seconds_used"] <= 60.0


def test_an_epoch_that_ends_just_short_of_the_budget_is_the_last(monkeypatch: pytest.MonkeyPatch) -> None:
    # Epochs of 10 one-second steps and 4-second validations in 30 s: the second epoch's last step still fits with
    # its validation (24 + 4 < 30), which ends at 28 s. One more step would need one more validation (33 s).
    clock = _Clock()
    monkeypatch.setattr(budget_module.time, "perf_counter", clock)
    budget = TimeBudget(30.0, [1], validation_steps=2)
    steps, _ = _run_phase(budget, clock, _Trainer(), step=1.0, validation=4.0)
    assert steps == 20 and budget.elapsed() == pytest.approx(28.0)


def test_the_reserve_follows_a_validation_that_grows(monkeypatch: pytest.MonkeyPatch) -> None:
    # A detector's validation slows as it starts to detect: 2, 5, 8, 11 s. Keeping back only the last one's time
    # would let the final one run past the budget; its growth is kept back too.
    clock = _Clock()
    monkeypatch.setattr(budget_module.time, "perf_counter", clock)
    budget = TimeBudget(60.0, [1])
    _run_phase(budget, clock, _Trainer(), step=1.0, validation=[2.0, 5.0, 8.0, 11.0, 14.0])
    assert budget.elapsed() <= 60.0


def test_phases_share_the_budget_and_a_late_phase_gets_what_is_left(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    monkeypatch.setattr(budget_module.time, "perf_counter", clock)
    budget = TimeBudget(100.0, [1, 9])  # a head phase of one epoch before nine: a tenth of the time
    assert budget.shares == pytest.approx([10.0, 90.0])
    _run_phase(budget, clock, _Trainer(0), step=1.0, validation=0.5)
    used = budget.elapsed()
    _run_phase(budget, clock, _Trainer(1), step=1.0, validation=0.5)
    assert budget.shares[1] == pytest.approx(100.0 - used)
    assert used + budget.elapsed() <= 100.0 + 1e-9


def test_a_replay_repeats_the_recorded_steps_and_rates_at_any_speed(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    monkeypatch.setattr(budget_module.time, "perf_counter", clock)
    recorded = TimeBudget(100.0, [1, 9])
    first = [_run_phase(recorded, clock, _Trainer(i), step=1.0, validation=0.5) for i in range(2)]
    replay = TimeBudget(100.0, [1, 9], replay=recorded.schedule())
    again = [_run_phase(replay, clock, _Trainer(i), step=0.1, validation=0.05) for i in range(2)]  # ten times faster
    assert again == first and replay.phase_steps == recorded.phase_steps
    assert replay.phase_epochs_run == recorded.phase_epochs_run


def test_the_budget_left_survives_a_resume(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    monkeypatch.setattr(budget_module.time, "perf_counter", clock)
    first = TimeBudget(30.0, [1])
    trainer = _Trainer()
    first.on_fit_start(trainer, "train", 10**9, 100)
    for i in range(20):
        clock.now += 0.5
        first.on_batch_end(trainer, i, 8)
    state = first.state_dict()
    clock.now += 1000.0  # the run was stopped for a while: that time is not spent
    again = TimeBudget(30.0, [1])
    again.load_state_dict(state)
    again.on_fit_start(trainer, "train", 10**9, 100)
    assert again.elapsed() == pytest.approx(10.0) and again.progress() == pytest.approx(first.progress(), abs=0.02)


def _on_time(run_dir: Path, minutes: float) -> dict:
    result = json.loads((run_dir / "config.json").read_text())["budget_result"]
    steps = sum(p["steps"] for p in result["phases"])
    assert steps > 0
    step = result["seconds_used"] / steps
    budget = minutes * 60
    # It stops early by at most what it keeps back for the last validation: as long as the one before took, plus that
    # one's growth over the one before it (so at most twice as long)
    assert 0.9 * budget - step - 2 * result["last_validation_seconds"] <= result["seconds_used"] <= 1.1 * budget + step, result
    return result


def test_classification_ends_on_time_with_a_decayed_rate(shapes_data: Path, tmp_path: Path) -> None:
    options = ["--model", "cnn", "--model-args", "depth=2,width=8", "--image-size", "16", "--batch-size", "16", "--workers", "0"]
    assert main(["train", str(shapes_data), *options, "--time-budget", "0.1", "--output", str(tmp_path), "--name", "b",
                 "--no-evaluate"]) == 0
    result = _on_time(tmp_path / "b", 0.1)
    rows = list(csv.DictReader((tmp_path / "b" / "metrics.csv").open()))
    assert result["phases"][0]["epochs"] == len(rows) > 1
    assert float(rows[-1]["lr"]) < 0.05 * max(float(r["lr"]) for r in rows)


def test_segmentation_and_detection_end_on_time(tmp_path: Path, squares: Path, weights_dir: Path) -> None:
    from deepfit import ObjectDetector, SemanticSegmenter

    weights = weights_dir / "mobilenet_v2.safetensors"
    rectangles = draw_rectangles(tmp_path / "rect", {"train": 8, "val": 2})
    seg = SemanticSegmenter(weights=str(weights), image_size=48, batch_size=4, workers=0, time_budget=0.1,
                            output=str(tmp_path / "runs"), name="seg").fit(rectangles)
    _on_time(seg.run_dir, 0.1)
    det = ObjectDetector(weights=str(weights), image_size=96, batch_size=4, workers=0, time_budget=0.15,
                         output=str(tmp_path / "runs"), name="det").fit(squares)
    _on_time(det.run_dir, 0.15)


def test_a_budget_must_be_positive(capsys: pytest.CaptureFixture[str], shapes_data: Path) -> None:
    assert main(["train", str(shapes_data), "--time-budget", "0"]) == 2
    assert "--time-budget must be" in capsys.readouterr().err
    with pytest.raises(Exception, match="time_budget must be"):
        from deepfit import ImageClassifier

        ImageClassifier("cnn", time_budget=-1, **{k: v for k, v in TINY.items() if k != "model"})
