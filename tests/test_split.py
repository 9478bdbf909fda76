"""Stratified, seeded splits; resolving a source's own splits; saving them; finding leaks across them."""

from __future__ import annotations

import itertools
import shutil
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from deepfit.data.sources import LabeledFile, discover
from deepfit.data.split import (
    SPLITS,
    cross_split_duplicates,
    file_digest,
    load_split,
    resolve_splits,
    save_split,
    stratified_split,
)
from deepfit.errors import ConfigError, DataError

_colours = itertools.count(1)


def png(path: Path) -> Path:
    """A tiny image whose colour differs from every other one made here, so no two files are identical."""
    i = next(_colours)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (i % 256, (i // 256) % 256, 100)).save(path)
    return path


def fake_files(counts: dict[str, int]) -> list[LabeledFile]:
    """Files that need not exist: splitting looks only at paths and labels."""
    return [LabeledFile(Path(f"/data/{c}/{i}.png"), c) for c, n in counts.items() for i in range(n)]


def paths(split: dict[str, list[LabeledFile]]) -> dict[str, list[Path]]:
    return {s: [f.path for f in files] for s, files in split.items()}


# --- stratified_split ----------------------------------------------------------------------------


def test_proportions_per_class_and_every_file_once() -> None:
    files = fake_files({"a": 100, "b": 20, "c": 3, "d": 2, "e": 1})
    split = stratified_split(files, val_fraction=0.2, test_fraction=0.1, seed=0)
    assert set(split) == set(SPLITS)
    counts = {s: Counter(f.label for f in split[s]) for s in SPLITS}
    assert (counts["train"]["a"], counts["val"]["a"], counts["test"]["a"]) == (70, 20, 10)
    assert (counts["train"]["b"], counts["val"]["b"], counts["test"]["b"]) == (14, 4, 2)
    # Three files: one in each split, even though 3 * 0.1 rounds to 0.
    assert (counts["train"]["c"], counts["val"]["c"], counts["test"]["c"]) == (1, 1, 1)
    # Too few to hold out: training keeps at least one of every class.
    assert counts["train"]["d"] >= 1 and counts["train"]["e"] == 1
    every = [f.path for s in SPLITS for f in split[s]]
    assert sorted(every) == sorted(f.path for f in files) and len(set(every)) == len(every)
    assert all(f.split == s for s in SPLITS for f in split[s])


def test_same_seed_same_split_other_seed_differs() -> None:
    files = fake_files({"a": 50, "b": 50})
    first = stratified_split(files, seed=1)
    assert paths(first) == paths(stratified_split(list(reversed(files)), seed=1))  # input order is irrelevant
    assert paths(first) != paths(stratified_split(files, seed=2))


def test_output_is_sorted() -> None:
    split = stratified_split(fake_files({"b": 30, "a": 30}), seed=3)
    for files in split.values():
        assert files == sorted(files, key=LabeledFile.sort_key)


def test_zero_fractions_keep_everything_in_train() -> None:
    split = stratified_split(fake_files({"a": 10, "b": 10}), val_fraction=0.0, test_fraction=0.0)
    assert len(split["train"]) == 20 and not split["val"] and not split["test"]


@pytest.mark.parametrize("val, test", [(-0.1, 0.1), (1.0, 0.0), (0.5, 0.5), (0.1, float("nan"))])
def test_bad_fractions(val: float, test: float) -> None:
    with pytest.raises(ConfigError):
        stratified_split(fake_files({"a": 10, "b": 10}), val_fraction=val, test_fraction=test)


# --- resolve_splits ------------------------------------------------------------------------------


def test_resolve_without_source_splits_is_stratified(tmp_path: Path) -> None:
    for c in ("a", "b"):
        for i in range(10):
            png(tmp_path / c / f"{i}.png")
    catalog = discover(tmp_path)
    assert paths(resolve_splits(catalog, 0.2, 0.2, seed=5)) == paths(stratified_split(catalog.files, 0.2, 0.2, 5))


def test_resolve_keeps_given_splits_and_carves_val(tmp_path: Path) -> None:
    for c in ("a", "b"):
        for i in range(10):
            png(tmp_path / "train" / c / f"{i}.png")
        png(tmp_path / "test" / c / "0.png")
    catalog = discover(tmp_path)
    split = resolve_splits(catalog, val_fraction=0.2, test_fraction=0.5, seed=0)
    assert [len(split[s]) for s in SPLITS] == [16, 4, 2]
    assert all(f.path.parent.parent.name == "train" for f in split["val"])
    assert all(f.path.parent.parent.name == "test" for f in split["test"])


def test_resolve_without_test_leaves_it_empty(tmp_path: Path) -> None:
    for c in ("a", "b"):
        png(tmp_path / "train" / c / "0.png")
        png(tmp_path / "val" / c / "0.png")
    split = resolve_splits(discover(tmp_path), 0.15, 0.15, seed=0)
    assert [len(split[s]) for s in SPLITS] == [2, 2, 0]


# --- save / load ---------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for c in ("a", "b"):
        for i in range(6):
            png(data / c / f"{i}.png")
    outside = png(tmp_path / "elsewhere" / "x.png").resolve()
    split = stratified_split(discover(data).files, seed=0)
    split["train"].append(LabeledFile(outside, "a", "train"))
    csv_path = tmp_path / "run" / "split.csv"
    save_split(split, csv_path, data)
    lines = csv_path.read_text().splitlines()
    assert lines[0] == "path,label,split"
    assert any(line.startswith(("a/", "b/")) for line in lines)  # relative inside the data folder
    assert f"{outside.as_posix()},a,train" in lines  # absolute outside it
    assert [p.name for p in csv_path.parent.iterdir()] == ["split.csv"]  # no temp file left behind
    loaded = load_split(csv_path, data)
    assert loaded == {s: sorted(split[s], key=LabeledFile.sort_key) for s in SPLITS}


def test_load_split_missing_file_names_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for c in ("a", "b"):
        for i in range(3):
            png(data / c / f"{i}.png")
    csv_path = tmp_path / "split.csv"
    save_split(stratified_split(discover(data).files, seed=0), csv_path, data)
    gone = csv_path.read_text().splitlines()[2].split(",")[0]
    (data / gone).unlink()
    with pytest.raises(DataError, match=rf"split\.csv line 3: file not found: .*{gone}"):
        load_split(csv_path, data)


# --- duplicates ----------------------------------------------------------------------------------


def test_file_digest_matches_identical_bytes(tmp_path: Path) -> None:
    a = png(tmp_path / "a.png")
    b = tmp_path / "b.png"
    shutil.copy(a, b)
    assert file_digest(a) == file_digest(b) != file_digest(png(tmp_path / "c.png"))


def test_cross_split_duplicates(tmp_path: Path) -> None:
    def lf(name: str, split: str) -> LabeledFile:
        return LabeledFile((tmp_path / name).resolve(), "a", split)

    for name in ("t1.png", "t2.png", "v1.png", "x1.png"):
        png(tmp_path / name)
    shutil.copy(tmp_path / "t1.png", tmp_path / "leak_val.png")  # train -> val leak
    shutil.copy(tmp_path / "t1.png", tmp_path / "leak_test.png")  # same image again, in test
    shutil.copy(tmp_path / "v1.png", tmp_path / "leak2_test.png")  # val -> test leak
    shutil.copy(tmp_path / "t2.png", tmp_path / "t2_copy.png")  # duplicate within train only: fine
    splits = {
        "train": [lf("t1.png", "train"), lf("t2.png", "train"), lf("t2_copy.png", "train")],
        "val": [lf("v1.png", "val"), lf("leak_val.png", "val")],
        "test": [lf("x1.png", "test"), lf("leak_test.png", "test"), lf("leak2_test.png", "test")],
    }
    groups = cross_split_duplicates(splits)
    assert [[(f.path.name, f.split) for f in g] for g in groups] == [
        [("t1.png", "train"), ("leak_val.png", "val"), ("leak_test.png", "test")],
        [("v1.png", "val"), ("leak2_test.png", "test")],
    ]


def test_no_duplicates_in_clean_split(tmp_path: Path) -> None:
    for c in ("a", "b"):
        for i in range(5):
            png(tmp_path / c / f"{i}.png")
    assert cross_split_duplicates(stratified_split(discover(tmp_path).files, seed=0)) == []
