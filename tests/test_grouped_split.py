"""Splits by group (a speaker, a source recording): no group on both sides, classes kept in every split, and the
groups a given split leaks named."""

from __future__ import annotations

from collections import Counter

import pytest

from deepfit.data.split import grouped_split, leaked_groups
from deepfit.errors import ConfigError

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
