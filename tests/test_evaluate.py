"""`deepfit evaluate`: metrics equal to scikit-learn's, a report that names the worst images, a warning
when the test split is scored again, and a one-line error for data with unknown classes."""

from __future__ import annotations

import csv
import html
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, precision_recall_fscore_support

from conftest import write_class_folders
from deepfit.cli import main
from deepfit.errors import DataError
from deepfit.workflows.evaluate import evaluate

CLASSES = ["2", "10", "ring"]
REUSE_NOTE = "no longer an unseen test set"


def read_predictions(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def assert_metrics_match_sklearn(metrics: dict, rows: list[dict[str, str]]) -> None:
    y_true = [CLASSES.index(r["true"]) for r in rows]
    y_pred = [CLASSES.index(r["predicted"]) for r in rows]
    assert metrics["num_samples"] == len(rows)
    assert metrics["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert metrics["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=[0, 1, 2], zero_division=0)
    assert [c["class"] for c in metrics["per_class"]] == CLASSES
    for i, c in enumerate(metrics["per_class"]):
        assert c["precision"] == pytest.approx(p[i])
        assert c["recall"] == pytest.approx(r[i])
        assert c["f1"] == pytest.approx(f[i])
        assert c["support"] == s[i]
    # the predicted column is the arg-max of the probability columns
    for row in rows:
        probs = [float(row[f"p_{c}"]) for c in CLASSES]
        assert CLASSES[int(np.argmax(probs))] == row["predicted"]
        assert sum(probs) == pytest.approx(1.0, abs=1e-4)


@pytest.fixture(scope="session")
def mislabelled_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """New images of the three classes, three of them filed under the wrong class."""
    root = tmp_path_factory.mktemp("mislabelled") / "other"
    write_class_folders(root, CLASSES, 6, first=300)
    shutil.move(root / "2" / "img0.png", root / "10" / "moved-from-2-a.png")
    shutil.move(root / "2" / "img1.png", root / "10" / "moved-from-2-b.png")
    shutil.move(root / "ring" / "img0.png", root / "2" / "moved-from-ring.png")
    return root


def test_test_split_metrics_equal_sklearn(evaluated_run: Path) -> None:
    metrics = json.loads((evaluated_run / "test_metrics.json").read_text())
    rows = read_predictions(evaluated_run / "test_predictions.csv")
    assert len(rows) == 9
    assert_metrics_match_sklearn(metrics, rows)
    for name in ("report.html", "confusion_matrix.png", "confusion_matrix.csv", "training_curves.png"):
        assert (evaluated_run / name).is_file(), name


def test_external_data_metrics_and_worst_images_in_report(run_copy: Path, mislabelled_data: Path) -> None:
    result = evaluate(run_copy, mislabelled_data)
    assert result.split == "external"
    assert result.folder == run_copy / "eval-other"
    rows = read_predictions(result.folder / "external_predictions.csv")
    assert len(rows) == 18
    metrics = json.loads((result.folder / "external_metrics.json").read_text())
    assert_metrics_match_sklearn(metrics, rows)
    wrong = [r["path"] for r in rows if r["true"] != r["predicted"]]
    # the model learned the shapes, so the three misfiled images are among its errors
    assert {Path(p).name for p in wrong} >= {"moved-from-2-a.png", "moved-from-2-b.png", "moved-from-ring.png"}
    assert metrics["accuracy"] < 1.0
    report = result.report.read_text()
    for path in wrong:
        assert html.escape(path) in report, f"worst prediction {path} not in the report"
    # the training run's own test split was not touched
    assert not (run_copy / "test_metrics.json").exists()


def test_scoring_the_test_split_twice_adds_a_note(run_copy: Path, caplog: pytest.LogCaptureFixture, mislabelled_data: Path) -> None:
    first = evaluate(run_copy)
    assert REUSE_NOTE not in first.report.read_text()
    evaluate(run_copy, mislabelled_data)  # other data do not count as a re-use of the test split
    assert REUSE_NOTE not in first.report.read_text()
    caplog.clear()
    second = evaluate(run_copy)
    report = second.report.read_text()
    assert "scored 1 time(s) before" in report and REUSE_NOTE in report
    assert any(REUSE_NOTE in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    log = [json.loads(line) for line in (run_copy / "evaluations.jsonl").read_text().splitlines()]
    assert [e["split"] for e in log] == ["test", "external", "test"]


def test_data_with_an_unknown_class_is_a_one_line_error(
    run_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other"
    write_class_folders(other, ["2", "10", "zebra"], 2, first=400)
    capsys.readouterr()
    assert main(["evaluate", str(run_copy), "--data", str(other)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error:")]
    assert len(errors) == 1 and err[-1] == errors[0]  # progress logs may come before it, nothing after
    assert "zebra" in errors[0] and str(other / "zebra") in errors[0]
    assert "the model knows 2, 10, ring" in errors[0]
    with pytest.raises(DataError) as info:
        evaluate(run_copy, other)
    assert "\n" not in str(info.value)
    assert not (run_copy / "eval-other").exists()  # nothing scored, nothing written


def test_trained_run_evaluated_through_the_cli(run_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", str(run_copy)]) == 0
    out = capsys.readouterr().out
    metrics = json.loads((run_copy / "test_metrics.json").read_text())
    assert f"test accuracy {metrics['accuracy']:.2%}" in out
    assert str(run_copy / "report.html") in out
