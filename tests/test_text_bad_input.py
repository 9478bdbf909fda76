"""The bad text input a user brings, each named with its file (and line) and what to do, never a traceback: one class
only, a class with no training rows, a label only in the test split, markup and control characters in the report."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from deepfit.cli import main

SPORT, FOOD = ["goal", "match", "team", "coach"], ["pizza", "soup", "bread", "cook"]


def rows(words: list[str], label: str, split: str, n: int, rng: random.Random) -> list[str]:
    return [f"{' '.join(rng.choices([*words, 'the', 'a', 'of'], k=8))},{label},{split}" for _ in range(n)]


def table(path: Path, extra: list[str]) -> Path:
    rng = random.Random(0)
    lines = ["text,label,split", *rows(SPORT, "sport", "train", 30, rng), *rows(FOOD, "food", "train", 30, rng),
             *rows(SPORT, "sport", "test", 5, rng), *rows(FOOD, "food", "test", 5, rng), *extra]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


TRAIN = ["--epochs", "2", "--batch-size", "16", "--vocab-size", "200", "--model-args", "dim=8,buckets=256"]


def test_one_class_only_is_an_error_naming_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one = tmp_path / "data" / "one.csv"
    one.parent.mkdir()
    one.write_text("text,label\n" + "".join(f"text number {i},sport\n" for i in range(20)), encoding="utf-8")
    assert main(["train", str(one), *TRAIN, "--output", str(tmp_path / "runs")]) != 0
    err = capsys.readouterr().err
    assert f"need at least 2 classes to train a classifier, found 1 in {one} (sport)" in err
    assert "Traceback" not in err and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("split", ["test", "val"])
def test_a_label_only_in_a_held_out_split_is_named_with_its_lines(tmp_path: Path, split: str,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "data").mkdir()
    data = table(tmp_path / "data" / "texts.csv", [f"bake a cake {i},cake,{split}" for i in range(3)])
    assert main(["train", str(data), *TRAIN, "--output", str(tmp_path / "runs")]) != 0
    err = capsys.readouterr().err
    assert f"class 'cake' has no training examples, only 3 in validation or test ({data}:72 ({split})" in err
    assert "move some of them to the training split, or remove the class" in err and "Traceback" not in err


def test_markup_and_control_characters_are_shown_not_run_in_the_report(tmp_path: Path) -> None:
    rng = random.Random(1)
    nasty = ['"<script>alert(1)</script> \x1b[31mgoal\x07 match team"', '"pizza soup <img src=x onerror=alert(2)>"']
    data = table(tmp_path / "texts.csv", [f"{nasty[0]},food,test", f"{nasty[1]},sport,test", *rows(SPORT, "sport", "train", 1, rng)])
    runs = tmp_path.parent / f"{tmp_path.name}-runs"  # outside the data folder
    assert main(["train", str(data), *TRAIN, "--output", str(runs), "--name", "r"]) == 0
    html = (runs / "r" / "report.html").read_text(encoding="utf-8")
    assert "<script>alert" not in html and "<img src=x" not in html  # texts are shown escaped...
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "\x1b" not in html and "\x07" not in html and "\u241b[31mgoal\u2407" in html  # ...control characters visible
