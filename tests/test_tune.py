"""`deepfit tune`: a killed search continues without repeating its finished trials, pruning stops a trial after an
epoch, the YAML space overrides the default one (and its mistakes are one-line errors), and trials are chosen on the
validation split alone: only the best run is ever scored on the test split, once, after the search."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
import time
from datetime import datetime
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

import deepfit
from conftest import TINY, TINY_CLI
from deepfit.cli import main
from deepfit.workflows import evaluate as evaluate_module
from deepfit.workflows import tune as tune_module

# TINY with two epochs: a trial is a second or two
CLI = [*TINY_CLI[:TINY_CLI.index("--epochs")], "--epochs", "2", *TINY_CLI[TINY_CLI.index("--epochs") + 2:]]
OPTIONS = {**TINY, "epochs": 2}

# The child runs `deepfit tune`; its third trial (trial 2) hangs after its first epoch, when its run folder, its
# heartbeat and its first reported score exist, and says so in a file: the test then kills it, as a user or a
# preempted machine would.
_HANGS_IN_TRIAL_2 = textwrap.dedent('''
    import sys, time
    from pathlib import Path
    from deepfit.engine.interfaces import Callback
    from deepfit.workflows import tune as tune_module
    marker, original = Path(sys.argv[1]), tune_module.train

    class Hang(Callback):
        def on_epoch_end(self, trainer, record):
            marker.write_text("hanging")
            time.sleep(600)

    def train(data, config, *, callbacks=(), **options):
        hang = [Hang()] if config.name == "trial-0002" else []
        return original(data, config, callbacks=[*callbacks, *hang], **options)

    tune_module.train = train
    from deepfit.cli import main
    sys.exit(main(sys.argv[2:]))
''')


def _study(folder: Path) -> optuna.Study:
    return optuna.load_study(study_name=folder.name, storage=f"sqlite:///{folder / 'study.db'}")


def _wait_until(done, proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not done():
        assert proc.poll() is None, f"the search ended early:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"the search did not reach trial 2 in {timeout} s:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)


def _best_validation(run: Path) -> float:
    return max(float(row["val_acc"]) for row in csv.DictReader((run / "metrics.csv").open()))


@pytest.fixture(scope="module")
def killed_and_resumed(shapes_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A search of 3 trials killed (SIGKILL) in its third trial, then the same command again until it ends; what the
    study and the run folders held in between."""
    output = tmp_path_factory.mktemp("tune")
    folder, marker, log = output / "search", output / "hanging", output / "child.log"
    args = ["tune", str(shapes_data), *CLI, "--trials", "3", "--output", str(output), "--name", "search"]
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-c", _HANGS_IN_TRIAL_2, str(marker), *args], stdout=err, stderr=err)
        try:
            _wait_until(marker.exists, proc, log)
            trials = _study(folder).get_trials()
            before = [(t.number, t.state, t.value, t.params, t.datetime_complete) for t in trials]
            killed_started = trials[-1].datetime_start
            proc.kill()
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    folders = {run.name: (run / "metrics.csv").read_text() for run in (folder / "trials").iterdir()}
    evaluated: list[Path] = []
    with pytest.MonkeyPatch.context() as mp:
        # a trial silent for a second is stale here (instead of a minute): the rerun fails and retries the killed one
        mp.setattr(tune_module, "GRACE_PERIOD", 1)
        mp.setattr(tune_module, "HEARTBEAT_INTERVAL", 1)
        original = evaluate_module.evaluate
        mp.setattr(evaluate_module, "evaluate", lambda run, *a, **k: evaluated.append(Path(run)) or original(run, *a, **k))
        # past the grace period, in the database's whole seconds: its heartbeat came as it started
        time.sleep(max(0.0, 2.2 - (datetime.now() - killed_started).total_seconds()))
        code = main(args)
    return {"folder": folder, "before": before, "folders": folders, "code": code, "evaluated": evaluated, "args": args}


def test_a_killed_search_resumes_without_repeating_finished_trials(killed_and_resumed: dict,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    folder, before = killed_and_resumed["folder"], killed_and_resumed["before"]
    assert killed_and_resumed["code"] == 0
    assert [(n, s) for n, s, *_ in before] == [(0, TrialState.COMPLETE), (1, TrialState.COMPLETE), (2, TrialState.RUNNING)]
    trials = _study(folder).get_trials()
    # the two finished trials are kept as they were, not run again; the killed one failed and its options were retried
    assert [(t.number, t.state, t.value, t.params, t.datetime_complete) for t in trials[:2]] == before[:2]
    assert trials[2].state == TrialState.FAIL
    assert len(trials) == 4 and trials[3].state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert trials[3].params == before[2][3] and trials[3].system_attrs["failed_trial"] == 2
    assert all(t.params != trials[0].params and t.params != trials[1].params for t in trials[2:])
    # the finished trials' run folders are untouched; the retried trial has a folder of its own
    runs = sorted(p.name for p in (folder / "trials").iterdir())
    assert runs == ["trial-0000", "trial-0001", "trial-0002", "trial-0003"]
    assert all((folder / "trials" / name / "metrics.csv").read_text() == text
               for name, text in killed_and_resumed["folders"].items() if name != "trial-0002")
    best = json.loads((folder / "best.json").read_text())
    assert best["value"] == max(t.value for t in trials if t.state == TrialState.COMPLETE)
    assert best["command"].startswith("deepfit train ") and "--lr " in best["command"]
    page = (folder / "tune.html").read_text()
    assert "trial-0003" in page and "failed" in page and "What mattered" in page
    assert len(list(csv.DictReader((folder / "trials.csv").open()))) == 4
    # the same name with other options is another search: refused, not mixed into this one
    args = killed_and_resumed["args"]
    assert main([*args[:-4], "--lr", "0.02", *args[-4:]]) == 2
    assert "holds a search with other options" in capsys.readouterr().err
    # a finished search run again runs nothing more
    assert deepfit.tune.__module__ == "deepfit.workflows.tune"
    again = tune_module.resume_tune(folder, trials=3)
    assert (again.complete + again.pruned, again.best_trial) == (3, best["trial"]) and len(_study(folder).trials) == 4


def test_trials_are_chosen_on_validation_and_only_the_best_run_sees_the_test_split(killed_and_resumed: dict) -> None:
    folder = killed_and_resumed["folder"]
    best = json.loads((folder / "best.json").read_text())
    best_run = Path(best["run_dir"])
    assert killed_and_resumed["evaluated"] == [best_run]  # scored once, after the search
    for trial in _study(folder).get_trials():
        run = Path(trial.user_attrs["run_dir"])
        assert (run / "report.html").exists() == (run == best_run)  # no other run was ever evaluated
        if trial.state == TrialState.COMPLETE:
            assert trial.value == pytest.approx(_best_validation(run), abs=1e-6)  # its best validation score
            assert json.loads((run / "config.json").read_text())["seed"] == 0  # one seed: one split for all trials
    splits = {(Path(t.user_attrs["run_dir"]) / "split.csv").read_text() for t in _study(folder).get_trials()}
    assert len(splits) == 1


class _AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return True


def test_a_pruned_trial_stops_after_its_first_epoch(shapes_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tune_module, "make_pruner", _AlwaysPrune)
    result = deepfit.tune(shapes_data, trials=1, **{**OPTIONS, "epochs": 3}, output=str(tmp_path), name="pruned")
    (trial,) = _study(result.tune_dir).get_trials()
    assert trial.state == TrialState.PRUNED and list(trial.intermediate_values) == [1]
    run = Path(trial.user_attrs["run_dir"])
    assert [row["epoch"] for row in csv.DictReader((run / "metrics.csv").open())] == ["1"]  # stopped after epoch 1 of 3
    assert (result.pruned, result.complete, result.best_run) == (1, 0, None)
    assert "pruned" in (result.tune_dir / "tune.html").read_text()
    assert not (result.tune_dir / "best.json").exists()


def test_the_space_file_overrides_the_default_space(shapes_data: Path, tmp_path: Path) -> None:
    space = tmp_path / "space.yaml"
    space.write_text("lr: {low: 1e-3, high: 2e-3, log: true}\nbatch_size: [8]\naugment: none\nepochs: 1\n"
                     "model_args.width: [4]\n")
    result = deepfit.tune(shapes_data, trials=1, space=space, **OPTIONS, output=str(tmp_path), name="spaced")
    saved = json.loads((Path(result.best_run) / "config.json").read_text())
    assert 1e-3 <= saved["lr"] <= 2e-3 and saved["batch_size"] == 8 and saved["augment"] == "none"
    assert saved["epochs"] == 1 and saved["model_args"] == {"depth": 2, "width": 4}  # depth from the base options
    searched = json.loads((result.tune_dir / "tune.json").read_text())["space"]
    assert searched["dropout"] == {"low": 0.0, "high": 0.5} and searched["epochs"] == 1  # defaults kept, file's added
    assert set(result.best_params) == {"lr", "batch_size", "weight_decay", "dropout", "model_args.width"}


@pytest.mark.parametrize(("text", "expected"), [
    ("learning_rate: {low: 1e-4, high: 1e-2}\n", "unknown option 'learning_rate' (did you mean 'lr'?)"),
    ("lr: {low: 1e-4, high: [1e-2\nepochs: 3\n", ", line 2: not valid YAML"),
    ("seed: [0, 1]\n", "seed is the same for every trial"),
    ("lr: {low: 0.1, high: 0.01}\n", "lr: low (0.1) must be below high (0.01)"),
    ("batch_size: [0, 8]\n", "batch_size must be at least 1, got 0"),
])
def test_mistakes_in_the_space_file_are_one_line_errors(text: str, expected: str, shapes_data: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(text)
    assert main(["tune", str(shapes_data), *CLI, "--space", str(space), "--output", str(tmp_path), "--name", "bad"]) == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]  # one line; before it, only the log's
    assert line.startswith(f"error: {space}") and expected in line and "Traceback" not in err, err
    assert not (tmp_path / "bad").exists()  # said before any folder or trial


def test_data_without_a_validation_split_is_refused(shapes_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tune", str(shapes_data), *CLI, "--val-fraction", "0", "--output", str(tmp_path)]) == 2
    assert "gives no validation split" in capsys.readouterr().err
    assert main(["tune", "--resume", str(tmp_path), "--lr", "0.1"]) == 2
    assert "only --trials and --timeout may change" in capsys.readouterr().err
