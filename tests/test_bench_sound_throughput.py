"""bench/sound_throughput.py, deepfit's engine against a plain PyTorch loop on sound, kept from rotting: its --smoke
run (a few generated tones, one epoch each side) trains both and gives a ratio; BENCHMARKS.md is never written."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import sound_throughput  # noqa: E402


def test_smoke_gives_a_ratio(monkeypatch: pytest.MonkeyPatch) -> None:
    written = []
    monkeypatch.setattr(sound_throughput, "record", lambda *a, **k: written.append(a))
    before = (REPO / "BENCHMARKS.md").read_text()
    result = sound_throughput.main(["--smoke"])
    assert not written and (REPO / "BENCHMARKS.md").read_text() == before
    assert result["clips"] == 24 and result["epochs"] == 1 and result["repeats"] == 1
    assert len(result["deepfit"]) == len(result["plain"]) == 1
    assert all(v > 0 for v in [*result["deepfit"], *result["plain"]])
    assert math.isfinite(result["ratio"]) and result["ratio"] > 0
