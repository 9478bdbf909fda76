"""`deepfit train --rerun RUN` (deepfit.rerun): a run trained again in a new folder, bit for bit; a --time-budget run
step by step as its schedule was recorded, so what a budget chose is repeated whatever the machine's speed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import deepfit
from conftest import TINY, epoch_metrics, same_weights
from deepfit.cli import main


def test_a_budgeted_run_is_rerun_step_by_step(shapes_data: Path, tmp_path: Path) -> None:
    options = {k: v for k, v in TINY.items() if k != "epochs"}
    first = deepfit.ImageClassifier(**options, time_budget=0.05, ema=0.9, output=str(tmp_path), name="budget").fit(shapes_data)
    run = first.run_dir
    schedule = json.loads((run / "budget_schedule.json").read_text())["progress"]
    bought = json.loads((run / "config.json").read_text())["budget_result"]
    assert [len(p) - 1 for p in schedule] == [p["steps"] for p in bought["phases"]]

    assert main(["train", "--rerun", str(run), "--no-evaluate"]) == 0  # the same steps, whatever this moment's speed
    again = tmp_path / "budget-rerun"
    saved = json.loads((again / "config.json").read_text())
    assert saved["rerun_of"] == str(run) and saved["time_budget"] == 0.05
    assert [p["steps"] for p in saved["budget_result"]["phases"]] == [p["steps"] for p in bought["phases"]]
    assert epoch_metrics(run) == epoch_metrics(again)  # the learning rates, losses and accuracies of every epoch
    assert same_weights(run, again, "last") and same_weights(run, again, "best")


def test_a_run_whose_rate_was_found_is_rerun_bit_for_bit(shapes_data: Path, tmp_path: Path) -> None:
    # The range test draws from copies of the random states: training after it is training at the rate it chose.
    found = deepfit.ImageClassifier(**{**TINY, "epochs": 2, "lr": "find"}, output=str(tmp_path), name="found").fit(shapes_data)
    rate = json.loads((found.run_dir / "config.json").read_text())["lr"]
    assert isinstance(rate, float)
    again = deepfit.rerun(found.run_dir, output=tmp_path / "elsewhere", name="again")
    assert again.run_dir == tmp_path / "elsewhere" / "again"
    assert same_weights(found.run_dir, again.run_dir, "last") and epoch_metrics(found.run_dir) == epoch_metrics(again.run_dir)
    given = deepfit.ImageClassifier(**{**TINY, "epochs": 2, "lr": rate}, output=str(tmp_path), name="given").fit(shapes_data)
    assert same_weights(found.run_dir, given.run_dir, "last")


def test_a_budgeted_run_without_its_schedule_reruns_in_a_new_budget(shapes_data: Path, tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    options = {k: v for k, v in TINY.items() if k != "epochs"}
    run = deepfit.ImageClassifier(**options, time_budget=0.03, output=str(tmp_path), name="old").fit(shapes_data).run_dir
    (run / "budget_schedule.json").unlink()  # as a run trained before deepfit recorded it
    again = deepfit.rerun(run)
    assert "budget_schedule.json is missing" in caplog.text and "not step for step" in caplog.text
    assert json.loads((again.run_dir / "config.json").read_text())["budget_result"]["minutes"] == pytest.approx(0.03)
    assert (run / "config.json").is_file() and not (run / "budget_schedule.json").exists()  # the old run is left as it was


def test_rerun_mistakes_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--rerun", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "Traceback" not in err
    assert main(["train", "--rerun", str(tmp_path), "--epochs", "3"]) == 2
    assert "only --output, --name and --device may change (got epochs)" in capsys.readouterr().err
