"""Bad input: a few unreadable files are skipped and listed, too many are an error; every mistake in the data
source is one `error:` line and exit code 2; odd image modes train; the data folder is never written to;
files duplicated across splits are reported."""

from __future__ import annotations

import csv
import logging
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from conftest import TINY, TINY_CLI, TrainedRun, write_class_folders
from deepfit import ImageClassifier
from deepfit.cli import main
from deepfit.errors import DataError


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every entry under root (folders too) with its size and modification time."""
    return {p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns) for p in [root, *root.rglob("*")]}


def add_bad_files(data: Path) -> tuple[Path, Path]:
    corrupt = data / "a" / "corrupt.jpg"
    corrupt.write_bytes(os.urandom(600))  # random bytes with an image name
    text = data / "b" / "notes.png"
    text.write_text("this is not a picture\n")
    return corrupt, text


# --- unreadable images -----------------------------------------------------------------------------


def test_a_few_unreadable_images_are_skipped_and_listed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    write_class_folders(data, ["a", "b"], 20)
    bad = add_bad_files(data)  # 2 of 42: under 5%
    caplog.set_level(logging.WARNING, logger="deepfit")
    # the whole CLI job, evaluation included: the skipped files must not resurface in the test split
    assert main(["train", str(data), *TINY_CLI, "--output", str(tmp_path / "runs"), "--name", "r"]) == 0
    run = tmp_path / "runs" / "r"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for path in bad:
        named = [w for w in warnings if str(path) in w and "skipped unreadable image" in w]
        assert len(named) == 1, f"expected one warning naming {path}, got {named}"
    skipped = read_csv(run / "skipped_files.csv")
    assert {Path(r["path"]) for r in skipped} == set(bad)
    assert all(r["reason"] for r in skipped)
    assert (run / "best.safetensors").is_file() and (run / "report.html").is_file()
    used = {(data / r["path"]).resolve() for r in read_csv(run / "split.csv")}
    assert len(used) == 40 and not used & {p.resolve() for p in bad}
    assert "test accuracy" in capsys.readouterr().out


def test_too_many_unreadable_images_is_an_error_listing_them(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_class_folders(data, ["a", "b"], 20)
    bad = list(add_bad_files(data))
    for i in range(2):  # 4 of 44 (9%)
        path = data / "b" / f"empty{i}.jpg"
        path.write_bytes(b"")
        bad.append(path)
    with pytest.raises(DataError) as info:
        ImageClassifier(output=str(tmp_path / "runs"), **TINY).fit(data)
    message = str(info.value)
    assert "4 of 44 images" in message and "more than 5%" in message
    for path in bad:
        assert str(path) in message


# --- mistakes in the data source: one line, exit code 2 --------------------------------------------


def _error_line(capsys: pytest.CaptureFixture[str], argv: list[str], *, alone: bool = True) -> str:
    """Run the CLI, expect exit code 2 and one `error:` line: the only stderr line, or (not alone) the last,
    after the progress log of the steps that went well."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    if alone:
        assert len(err) == 1, err
    assert [line for line in err if line.startswith("error:")] == err[-1:]
    assert err[-1].startswith("error: ")
    return err[-1]


def test_empty_class_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    write_class_folders(data, ["a", "b"], 3)
    (data / "c").mkdir()
    line = _error_line(capsys, ["train", str(data), "--output", str(tmp_path / "runs")])
    assert f"class folder {data / 'c'} has no images" in line


def test_csv_row_with_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_class_folders(tmp_path / "img", ["a", "b"], 2)
    listing = tmp_path / "list.csv"
    listing.write_text("path,label\nimg/a/img0.png,a\nimg/b/img0.png,b\nimg/b/gone.png,b\n")
    line = _error_line(capsys, ["train", str(listing), "--output", str(tmp_path / "runs")])
    assert f"{listing} line 4: file not found: {tmp_path / 'img' / 'b' / 'gone.png'}" in line


@pytest.mark.parametrize("label_column", [None, "species"])
def test_csv_without_the_label_column(tmp_path: Path, capsys: pytest.CaptureFixture[str], label_column: str | None) -> None:
    write_class_folders(tmp_path / "img", ["a", "b"], 2)
    listing = tmp_path / "list.csv"
    if label_column is None:
        listing.write_text("path\nimg/a/img0.png\nimg/b/img0.png\n")
        expected = "needs a label column but has only 1 column(s) (path)"
    else:
        listing.write_text("path,label\nimg/a/img0.png,a\nimg/b/img0.png,b\n")
        expected = "label column 'species' not found in"
    argv = ["train", str(listing), "--output", str(tmp_path / "runs")]
    line = _error_line(capsys, argv + (["--label-column", label_column] if label_column else []))
    assert expected in line and str(listing) in line


def test_data_folder_that_does_not_exist(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = _error_line(capsys, ["train", str(tmp_path / "nope"), "--output", str(tmp_path / "runs")])
    assert f"data folder not found: {tmp_path / 'nope'}" in line
    assert not (tmp_path / "runs").exists()


def test_fewer_than_two_classes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    write_class_folders(data, ["only"], 5)
    line = _error_line(capsys, ["train", str(data), "--output", str(tmp_path / "runs")])
    assert "need at least 2 classes" in line and "(only)" in line and str(data) in line


# --- image modes ----------------------------------------------------------------------------------


def test_grey_palette_and_rgba_images_train_together(tmp_path: Path) -> None:
    data = tmp_path / "data"
    paths = write_class_folders(data, ["a", "b", "c"], 12, modes=("L", "P", "RGBA", "RGB"))
    assert {Image.open(p).mode for p in paths} == {"L", "P", "RGBA", "RGB"}
    clf = ImageClassifier(output=str(tmp_path / "runs"), **TINY).fit(data)
    assert not (clf.run_dir / "skipped_files.csv").exists()
    assert len(read_csv(clf.run_dir / "split.csv")) == 36
    predictions = clf.predict([p for p in paths if Image.open(p).mode != "RGB"])
    assert len(predictions) == 27 and all(p.label in ("a", "b", "c") for p in predictions)


# --- the data folder is read-only to deepfit --------------------------------------------------------


def test_train_and_evaluate_never_write_into_the_data(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_class_folders(data, ["a", "b"], 12)
    (data / "labels.csv").write_text("path,label\n" + "".join(f"a/img{i}.png,a\nb/img{i}.png,b\n" for i in range(12)))
    os.utime(data, ns=(1_000_000_000, 1_000_000_000))  # an old, known folder time: any new entry would change it
    before = snapshot(data)
    for source in (data, data / "labels.csv"):
        clf = ImageClassifier(output=str(tmp_path / "runs"), **TINY).fit(source)
        clf.evaluate()
        clf.predict(data / "a")
    assert snapshot(data) == before


def test_output_inside_the_data_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    write_class_folders(data, ["a", "b"], 4)
    before = snapshot(data)
    line = _error_line(capsys, ["train", str(data), *TINY_CLI, "--output", str(data / "runs")], alone=False)
    assert "is inside the data folder" in line and "--output" in line
    assert snapshot(data) == before


# --- duplicates across splits ----------------------------------------------------------------------


def test_identical_files_in_different_splits_are_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = tmp_path / "data"
    write_class_folders(data / "train", ["a", "b"], 10)
    write_class_folders(data / "val", ["a", "b"], 3, first=50)
    write_class_folders(data / "test", ["a", "b"], 3, first=80)
    # two leaks: a training image copied into test/, and another into val/ and test/
    shutil.copy(data / "train" / "a" / "img4.png", data / "test" / "a" / "copy.png")
    shutil.copy(data / "train" / "b" / "img7.png", data / "val" / "b" / "again.png")
    shutil.copy(data / "train" / "b" / "img7.png", data / "test" / "b" / "again.png")
    caplog.set_level(logging.WARNING, logger="deepfit")
    clf = ImageClassifier(output=str(tmp_path / "runs"), **TINY).fit(data)
    rows = read_csv(clf.run_dir / "duplicates.csv")
    groups: dict[str, set[tuple[str, str]]] = {}
    for r in rows:
        groups.setdefault(r["group"], set()).add((r["split"], Path(r["path"]).relative_to(data.resolve()).as_posix()))
    assert sorted(groups.values(), key=len) == [
        {("train", "train/a/img4.png"), ("test", "test/a/copy.png")},
        {("train", "train/b/img7.png"), ("val", "val/b/again.png"), ("test", "test/b/again.png")},
    ]
    warning = [r.getMessage() for r in caplog.records if "byte-identical" in r.getMessage()]
    assert len(warning) == 1 and warning[0].startswith("2 images occur byte-identical in more than one split")
    assert str(clf.run_dir / "duplicates.csv") in warning[0]


def test_no_duplicates_file_for_clean_data(trained_run: TrainedRun) -> None:
    assert not (trained_run.run_dir / "duplicates.csv").exists()
    assert not (trained_run.run_dir / "skipped_files.csv").exists()
