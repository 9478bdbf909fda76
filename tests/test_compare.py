"""`deepfit compare`: nested fractions, the verdict in words, and a small end-to-end comparison."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from conftest import write_class_folders
from deepfit.data.sources import LabeledFile
from deepfit.errors import ConfigError, DataError
from deepfit.workflows.compare import compare, nested_fractions, verdict


def _files(counts: dict[str, int]) -> list[LabeledFile]:
    return [LabeledFile(Path(f"/d/{c}/{i}.png"), c, "train") for c, n in counts.items() for i in range(n)]


def test_fractions_are_nested_stratified_and_keep_every_class() -> None:
    files = _files({"a": 40, "b": 10, "rare": 2})
    subsets = nested_fractions(files, [1.0, 0.1, 0.5, 0.25], seed=3)
    assert list(subsets) == [0.1, 0.25, 0.5, 1.0]
    sizes = {f: {c: sum(x.label == c for x in s) for c in ("a", "b", "rare")} for f, s in subsets.items()}
    assert sizes[0.1] == {"a": 4, "b": 1, "rare": 1}  # every class keeps at least one image
    assert sizes[0.5] == {"a": 20, "b": 5, "rare": 1}
    assert sizes[1.0] == {"a": 40, "b": 10, "rare": 2}
    for small, large in ((0.1, 0.25), (0.25, 0.5), (0.5, 1.0)):
        assert {f.path for f in subsets[small]} <= {f.path for f in subsets[large]}
    assert nested_fractions(files, [0.25], seed=3)[0.25] == subsets[0.25]  # deterministic for a seed
    assert nested_fractions(files, [0.25], seed=4)[0.25] != subsets[0.25]


def _rows(curves: dict[str, tuple[str, list[float], float]], sizes: list[int]) -> list[dict]:
    rows = []
    for name, (kind, accs, seconds) in curves.items():
        for n, acc in zip(sizes, accs, strict=True):
            rows.append({"approach": name, "kind": kind, "fraction": n / sizes[-1], "train_images": n, "accuracy": acc,
                         "balanced_accuracy": acc, "seconds": seconds * n / sizes[-1]})
    return rows


def test_verdict_deep_wins_and_more_data_helps() -> None:
    rows = _rows({
        "hand-made features + svm": ("classical", [0.55, 0.58, 0.60, 0.62], 2.0),
        "net features + svm": ("features", [0.70, 0.78, 0.84, 0.90], 10.0),
        "net fine-tuned": ("finetune", [0.60, 0.70, 0.80, 0.88], 200.0),
    }, [100, 250, 500, 1000])
    lines = verdict(rows, n_test=1000)
    text = " ".join(lines)
    assert lines[0].startswith("With all 1000 training images, net features + svm is the most accurate: 90.0%")
    assert "Deep learning pays off" in text and "28.0 points above" in text
    assert "More data would likely help" in text and "gained 6.0 points from 500 to 1000" in text


def test_verdict_flat_curve_cheaper_rival_and_classical_tie() -> None:
    rows = _rows({
        "hand-made features + svm": ("classical", [0.80, 0.85, 0.88, 0.89], 1.0),
        "net fine-tuned": ("finetune", [0.80, 0.86, 0.895, 0.90], 300.0),
    }, [20, 50, 100, 200])
    lines = verdict(rows, n_test=100)  # 100 test images: about 3 points of noise
    text = " ".join(lines)
    assert "net fine-tuned is the most accurate" in lines[0]
    assert "hand-made features + svm scores 89.0%, within measurement noise" in text and "300x less time" in text
    assert "Deep learning is not clearly better" in text
    assert "has flattened" in text


def test_verdict_classical_beats_deep() -> None:
    rows = _rows({
        "hand-made features + svm": ("classical", [0.95], 1.0),
        "net features + svm": ("features", [0.60], 5.0),
    }, [500])
    text = " ".join(verdict(rows, n_test=2000))
    assert "Deep learning does not pay off here" in text
    assert "More data" not in text and "flattened" not in text  # one size: no curve to read


@pytest.fixture(scope="module")
def small_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Weights of a (randomly initialised) default cnn, standing in for a pretrained network."""
    import torch
    from safetensors.torch import save_model

    from deepfit.models.factory import create_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "cnn.safetensors"
    save_model(create_model("cnn", 3).model, str(path))
    return path


def test_compare_end_to_end(tmp_path: Path, small_weights: Path) -> None:
    data = tmp_path / "data"
    write_class_folders(data, ["a", "b", "c"], 10, size=32)
    result = compare(
        data, models=[f"cnn={small_weights}"], fractions=[0.5, 1.0], finetune_epochs=1, scratch=True, scratch_epochs=1,
        output=tmp_path / "out", name="cmp", workers=0,
    )
    assert result.folder == tmp_path / "out" / "cmp"
    with open(result.folder / "results.csv") as f:
        rows = list(csv.DictReader(f))
    approaches = ["hand-made features + rbf", "cnn features + svm", "cnn fine-tuned", "cnn from scratch"]
    assert [r["approach"] for r in rows] == [a for a in approaches for _ in range(2)]
    assert result.test_images == 6  # 20% of each class of 10, the rest trains
    assert [int(r["train_images"]) for r in rows[:2]] == [12, 24]
    assert all(float(r["seconds"]) > 0 for r in rows)
    assert float(rows[1]["accuracy"]) >= 0.8  # colour and shape: the hand-made features separate them
    for png in ("accuracy_vs_size.png", "accuracy_vs_time.png"):
        assert (result.folder / png).stat().st_size > 1000
    html = result.report.read_text()
    assert "Verdict" in html and result.verdict[0].split(":")[0] in html
    # the trained approaches are ordinary runs, scored on the same test split
    for run in ("cnn-fine-tuned-50pct", "cnn-fine-tuned-100pct", "cnn-from-scratch-100pct"):
        assert (result.folder / "runs" / run / "best.safetensors").is_file()
        test_rows = list(csv.DictReader((result.folder / "runs" / run / "split.csv").read_text().splitlines()))
        assert sum(r["split"] == "test" for r in test_rows) == 6 and not any(r["split"] == "val" for r in test_rows)


def test_compare_uses_val_as_test_when_there_is_no_test_split(tmp_path: Path) -> None:
    for split, n in (("train", 8), ("val", 4)):
        write_class_folders(tmp_path / "data" / split, ["a", "b"], n, size=32, first=100 if split == "val" else 0)
    result = compare(tmp_path / "data", models=[], fractions=[1.0], output=tmp_path / "out", workers=0)
    assert result.test_images == 8
    assert "its validation split is the test set" in result.report.read_text()


def test_compare_bad_input(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_class_folders(data, ["a", "b"], 6, size=32)
    with pytest.raises(ConfigError, match="=FILE, or pass --pretrained"):
        compare(data, models=["resnet18"], output=tmp_path / "out")
    with pytest.raises(ConfigError, match="weights file not found"):
        compare(data, models=["resnet18=/nowhere.safetensors"], output=tmp_path / "out")
    with pytest.raises(ConfigError, match="fractions"):
        compare(data, models=[], fractions=[0.5, 1.5], output=tmp_path / "out")
    with pytest.raises(ConfigError, match="inside the data folder"):
        compare(data, models=[], output=data / "runs")
    only_train = tmp_path / "only-train"
    write_class_folders(only_train / "train", ["a", "b"], 4, size=32)
    with pytest.raises(DataError, match="no test"):
        compare(only_train, models=[], output=tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written for a comparison that could not start


def test_verdict_uses_one_significance_rule_on_a_small_test_set() -> None:
    # 8 test images: +25 points over the baseline and +37.5 points along the curve are both within noise
    rows = _rows({
        "hand-made features + svm": ("classical", [0.25, 0.5], 1.0),
        "net fine-tuned": ("finetune", [0.375, 0.75], 50.0),
    }, [20, 40])
    text = " ".join(verdict(rows, n_test=8))
    assert "+25.0 points, within measurement noise" in text
    assert "More data would likely help" not in text
    assert "+37.5 points from 20 to 40 training images, within noise" in text
