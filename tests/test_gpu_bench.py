"""bench/gpu.py, the GPU benchmark, kept from rotting between the sessions that have a GPU.

Its --smoke run (every section on the CPU, on generated data) runs here as a subprocess, as on the device
machine (OUT set, nothing installed beyond the tree), and bench/gpu_report.py turns its JSON into a section
of a copy of BENCHMARKS.md; the real BENCHMARKS.md is never written by a test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from gpu_cifar import parse_airbench  # noqa: E402
from gpu_common import SMOKE, Context, run_section  # noqa: E402

SECTIONS = ("cifar10", "resnet50", "detection", "segmentation", "checks", "cuda_tests")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, Path]:
    out = tmp_path_factory.mktemp("gpu-out")
    work = tmp_path_factory.mktemp("gpu-work")
    env = {**os.environ, "OUT": str(out), "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, str(REPO / "bench" / "gpu.py"), "--smoke", "--work", str(work)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return json.loads((out / "gpu.json").read_text()), out / "gpu.json", work


def test_smoke_run_fills_every_section(smoke: tuple[dict, Path, Path]) -> None:
    results = smoke[0]
    assert results["mode"] == "smoke" and results["env"]["device"] == "cpu"
    assert list(results["sections"]) == list(SECTIONS)
    assert all(section["status"] == "ok" for section in results["sections"].values()), results["sections"]
    c = results["sections"]["cifar10"]
    assert [run["epochs"] for run in c["deepfit"]] == [1, 2]  # the unreachable smoke target walks the whole ladder
    assert c["time_to_target"] is None and 0 <= c["plain"]["accuracy"] <= 1 and c["deepfit_vs_plain"] > 0
    assert c["airbench94"]["published"]["seconds"] == 3.09 and "skipped" in c["airbench94"]
    # the images airbench would train on, in its loader's format, load as its loader loads them (weights_only)
    train = torch.load(smoke[2] / "airbench" / "cifar10" / "train.pt", weights_only=True)
    assert train["images"].shape == (c["data"]["train"], 32, 32, 3) and train["images"].dtype == torch.uint8
    assert train["labels"].tolist() == sorted(train["labels"].tolist()) and len(train["classes"]) == 4
    r = results["sections"]["resnet50"]
    assert r["flops_per_image"] > 1e8  # resnet18 at 48 px: forward and backward of its convolutions
    for key in ("synthetic", "deepfit_in_memory", "deepfit_jpeg", "deepfit_gpu_decode"):
        assert r[key]["images_per_s"] > 0, key
    assert r["data_path_ratio"] > 0 and r["cpu_decode_images_per_s"] > 0 and r["gpu_decode_images_per_s"] > 0
    for task in ("detection", "segmentation"):
        assert results["sections"][task]["ratio"] > 0
    checks = results["sections"]["checks"]
    assert checks["bf16"]["ok"] and checks["oom"]["ok"], checks
    assert checks["oom"]["micro_batches"] == 4 and checks["oom"]["simulated"]


def test_smoke_run_finds_the_cuda_tests(smoke: tuple[dict, Path, Path]) -> None:
    tests = smoke[0]["sections"]["cuda_tests"]
    assert tests["returncode"] == 0 and tests["collected"] >= 3, tests
    assert "--collect-only" in tests["command"] and "-m cuda" in tests["command"]


def test_every_test_skipped_without_cuda_is_marked_cuda() -> None:
    """`pytest -m cuda` (bench/gpu.py on the device machine) must run every test that only a GPU can run."""
    unmarked = []
    for path in sorted((REPO / "tests").glob("test_*.py")):
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if "skipif" in line and "cuda.is_available()" in line:
                decorators = lines[max(0, i - 3) : i + 3]
                if not any("pytest.mark.cuda" in d for d in decorators):
                    unmarked.append(f"{path.name}:{i + 1}")
    assert not unmarked, unmarked


def test_report_writes_the_gpu_section_into_a_copy(smoke: tuple[dict, Path, Path], tmp_path: Path) -> None:
    real = REPO / "BENCHMARKS.md"
    before = real.read_text()
    copy = tmp_path / "BENCHMARKS.md"
    shutil.copy(real, copy)
    for _ in range(2):  # a second report replaces the section instead of adding another
        done = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_report.py"), str(smoke[1]), "--benchmarks", str(copy)],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    text = copy.read_text()
    assert text.count("<!-- bench:gpu -->") == 1 and text.count("<!-- /bench:gpu -->") == 1
    section = text[text.index("<!-- bench:gpu -->") :]
    for phrase in ("CIFAR-10 time to", "ResNet-50 MFU", "detection, deepfit / plain loop", "segmentation, deepfit / plain loop",
                   "out-of-memory recovery", "CUDA-only tests", "a --smoke run", "FlopCounterMode"):
        assert phrase in section, phrase
    assert real.read_text() == before  # the real file is not touched
    without = re.sub(r"\n*<!-- bench:gpu -->.*?<!-- /bench:gpu -->\n?", "\n", text, flags=re.S)
    original = re.sub(r"\n*<!-- bench:gpu -->.*?<!-- /bench:gpu -->\n?", "\n", before, flags=re.S)
    assert without.strip() == original.strip()  # every other section as it was


def test_airbench_output_is_parsed() -> None:
    output = """|  run     |  epoch  |  train_loss  |  train_acc  |  val_acc  |  tta_val_acc  |  total_time_seconds  |
|      0  |      0  |      1.4253  |     0.4814  |   0.3871  |               |              0.8821  |
|         |   eval  |      0.5919  |     0.9316  |   0.9346  |       0.9402  |              3.5147  |"""
    assert parse_airbench(output) == [{"accuracy": 0.9402, "seconds": 3.5147}]


def test_a_failing_or_slow_section_is_recorded_and_the_next_runs(tmp_path: Path) -> None:
    ctx = Context(device=torch.device("cpu"), smoke=True, scale=SMOKE, data=None, work=tmp_path, out=tmp_path,
                  deadline=time.perf_counter() + 60, results={"sections": {}})

    def broken(ctx: Context, result: dict) -> None:
        result["measured"] = 1.5
        raise RuntimeError("no GPU here")

    def slow(ctx: Context, result: dict) -> None:
        result["started"] = True
        time.sleep(30)

    run_section(ctx, "broken", broken, 20)
    started = time.perf_counter()
    run_section(ctx, "slow", slow, 0.5)
    assert time.perf_counter() - started < 5
    saved = json.loads((tmp_path / "gpu.json").read_text())["sections"]
    assert saved["broken"]["status"] == "error" and saved["broken"]["measured"] == 1.5 and "no GPU here" in saved["broken"]["error"]
    assert saved["slow"]["status"] == "timeout" and saved["slow"]["started"]
