"""bench/text_throughput.py, deepfit's engine against a plain PyTorch loop on text, kept from rotting: its --smoke run
(96 generated messages, two epochs each side) trains both, gives a ratio and counts the padding length buckets save;
its section goes into a BENCHMARKS file of the test's own, never the repository's."""

from __future__ import annotations

import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import text_throughput  # noqa: E402


def test_smoke_gives_a_ratio_and_the_padding_saved(tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# Benchmarks\n\n<!-- bench:other -->\nkept\n<!-- /bench:other -->\n")
    before = (REPO / "BENCHMARKS.md").read_text()
    result = text_throughput.main(["--smoke", "--out", str(out)])
    assert (REPO / "BENCHMARKS.md").read_text() == before
    assert result["texts"] == 96 and result["epochs"] == 2 and result["repeats"] == 1 and result["model"] == "rnn"
    assert len(result["deepfit"]) == len(result["plain"]) == 1
    assert all(v > 0 for v in [*result["deepfit"], *result["plain"]])
    assert math.isfinite(result["ratio"]) and result["ratio"] > 0
    pad = result["padding"]
    assert pad["tokens"] > 0 and 0 <= pad["bucketed"] < pad["random"]  # messages of 1 to 60 words: buckets must save
    assert 0 < result["padding_saved"] <= 1
    text = out.read_text()
    assert "<!-- bench:other -->\nkept" in text  # the other sections are left as they were
    assert text.count("<!-- bench:text-throughput -->") == 1 and "<!-- /bench:text-throughput -->" in text
    assert "**Ratio deepfit / plain:" in text and "Length buckets save" in text and "| deepfit `train` |" in text
