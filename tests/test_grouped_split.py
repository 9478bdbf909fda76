"""Splits by group (a speaker, a source recording): no group on both sides, classes kept in every split, and the
groups a given split leaks named."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import pytest

from deepfit.data.sources import discover
from deepfit.data.split import grouped_split, leaked_groups, resolve_splits
from deepfit.errors import ConfigError, DataError
from deepfit.modalities.sound import SOUND

SOUNDS = SOUND.media

SPEAKERS = ["george", "jackson", "lucas", "nicolas", "theo", "yweweler"]
# FSDD's shape, smaller: 10 digits x 6 speakers x 5 takes
LABELS = [str(d) for s in SPEAKERS for d in range(10) for _ in range(5)]
GROUPS = [s for s in SPEAKERS for _ in range(10) for _ in range(5)]


def test_whole_groups_go_to_one_split_and_every_split_keeps_every_class() -> None:
    splits = grouped_split(LABELS, GROUPS, 0.15, 0.15, seed=0)
    assert not leaked_groups(splits, GROUPS)
    by_split = {name: {g for g, s in zip(GROUPS, splits, strict=True) if s == name} for name in ("train", "val", "test")}
    assert [len(by_split[n]) for n in ("train", "val", "test")] == [4, 1, 1]  # six speakers: one heard only in test
    for name in ("train", "val", "test"):
        assert set(Counter(lab for lab, s in zip(LABELS, splits, strict=True) if s == name)) == {str(d) for d in range(10)}
    assert grouped_split(LABELS, GROUPS, 0.15, 0.15, seed=0) == splits  # reproducible
    assert grouped_split(LABELS, GROUPS, 0.15, 0.15, seed=1) != splits


def test_more_groups_give_shares_close_to_the_fractions() -> None:
    labels = [str(i % 3) for i in range(600)]
    groups = [f"g{i // 6}" for i in range(600)]  # 100 groups of 6 clips
    shares = Counter(grouped_split(labels, groups, 0.2, 0.1, seed=0))
    assert shares["test"] == pytest.approx(60, abs=12) and shares["val"] == pytest.approx(120, abs=18)


def test_one_group_cannot_be_split_and_fractions_are_checked(caplog: pytest.LogCaptureFixture) -> None:
    assert grouped_split(["a", "b"], ["x", "x"], 0.2, 0.2) == ["train", "train"]
    assert "only one group (x)" in caplog.text
    with pytest.raises(ConfigError, match="val_fraction"):
        grouped_split(LABELS, GROUPS, 1.5, 0.1)


def test_leaked_groups_names_each_group_and_its_splits() -> None:
    assert leaked_groups(["train", "test", "train", "val"], ["theo", "theo", "lucas", None]) == {"theo": ["train", "test"]}


# --- through discovery: labels, groups and splits read from file names ----------------------------------------


def _fsdd_like(root: Path, takes: int = 5) -> Path:
    """FSDD's naming, empty files (discovery only reads names): DIGIT_SPEAKER_TAKE.wav, and a stray readme."""
    root.mkdir(parents=True)
    for speaker in SPEAKERS:
        for digit in range(10):
            for take in range(takes):
                (root / f"{digit}_{speaker}_{take}.wav").touch()
    (root / "README.md").write_text("x")
    return root


def test_a_label_pattern_reads_labels_and_groups_and_the_split_keeps_speakers_apart(tmp_path: Path) -> None:
    data = _fsdd_like(tmp_path / "recordings")
    catalog = discover(data, media=SOUNDS, label_pattern=r"(?P<label>\d)_(?P<group>[a-z]+)_\d+\.wav")
    assert catalog.layout == "file-names" and catalog.classes == [str(d) for d in range(10)] and len(catalog.files) == 300
    assert {f.group for f in catalog.files} == set(SPEAKERS)
    splits = resolve_splits(catalog, 0.15, 0.15, seed=0)
    speakers = {name: {f.group for f in files} for name, files in splits.items()}
    assert sum(len(s) for s in speakers.values()) == 6 and len(speakers["test"]) == 1 and len(speakers["val"]) == 1


def test_splits_named_in_file_names_are_used_and_a_speaker_in_two_is_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = tmp_path / "named"
    data.mkdir()
    for name in ("train_a_0_x.wav", "train_b_1_x.wav", "test_a_0_y.wav", "test_c_1_y.wav", "train_c_0_z.wav"):
        (data / name).touch()
    pattern = r"(?P<split>[a-z]+)_(?P<group>[a-z])_(?P<label>\d)_.*\.wav"
    with caplog.at_level(logging.WARNING, logger="deepfit"):
        splits = resolve_splits(discover(data, media=SOUNDS, label_pattern=pattern), 0.0, 0.0, seed=0)
    assert len(splits["train"]) == 3 and len(splits["test"]) == 2
    assert "2 groups are in more than one split (a in train and test; c in train and test)" in caplog.text
    (data / "holdout_a_0_x.wav").touch()
    with pytest.raises(DataError, match=r"holdout_a_0_x\.wav: --label-pattern reads the split 'holdout'"):
        discover(data, media=SOUNDS, label_pattern=pattern)


def test_a_group_column_of_a_csv_keeps_each_group_in_one_split(tmp_path: Path) -> None:
    rows = ["path,label,group"]
    for speaker in SPEAKERS:
        for digit in range(3):
            for take in range(4):
                name = f"{digit}_{speaker}_{take}.wav"
                (tmp_path / name).touch()
                rows.append(f"{name},{digit},{speaker}")
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    catalog = discover(tmp_path / "list.csv", media=SOUNDS)
    assert {f.group for f in catalog.files} == set(SPEAKERS)
    splits = resolve_splits(catalog, 0.15, 0.15, seed=0)
    assert not leaked_groups([f.split for fs in splits.values() for f in fs], [f.group for fs in splits.values() for f in fs])
    assert all(len({f.group for f in fs}) == 1 for name, fs in splits.items() if name != "train")
