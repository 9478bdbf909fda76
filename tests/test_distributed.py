"""Distributed training on PyTorch's own engine: torchrun with 2 CPU processes (gloo) against one process,
and a rank that never comes is reported by a timeout error that says what to check."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import draw_rectangles
from deepfit.cli import main

ARGS = ["--model", "cnn", "--model-args", "depth=2,width=8", "--image-size", "16", "--epochs", "4",
        "--batch-size", "16", "--lr", "0.01", "--workers", "0", "--augment", "none", "--no-evaluate"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rows(run: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((run / "metrics.csv").read_text().splitlines()))


def test_two_gloo_processes_match_one_process(shapes_data: Path, tmp_path: Path) -> None:
    assert main(["train", str(shapes_data), *ARGS, "--output", str(tmp_path / "one"), "--name", "run"]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
              "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), "-m", "deepfit.cli"]
    done = subprocess.run([*launch, "train", str(shapes_data), *ARGS, "--output", str(tmp_path / "two"), "--name", "run"],
                          capture_output=True, text=True, timeout=400, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["run"]  # one run folder: only rank 0 writes
    assert done.stdout.count("run folder:") == 1  # and only rank 0 reports
    assert "processes" in (tmp_path / "two" / "run" / "config.json").read_text()
    one, two = _rows(tmp_path / "one" / "run"), _rows(tmp_path / "two" / "run")
    assert len(one) == len(two) == 4
    # each rank takes half of every batch and DDP averages the gradients: the same optimisation as one process,
    # up to batch norm (each rank normalises its own half) and float summation order
    for a, b in zip(one, two, strict=True):
        assert abs(float(a["train_loss"]) - float(b["train_loss"])) < 0.1
        assert abs(float(a["val_loss"]) - float(b["val_loss"])) < 0.1
        assert abs(float(a["val_acc"]) - float(b["val_acc"])) <= 0.12  # at most one of the 9 validation images
    assert (tmp_path / "two" / "run" / "best.safetensors").is_file()


# slow (20 s each): the loop under torchrun is shared by every task; classification runs it in the default suite
@pytest.mark.slow
def test_detection_trains_under_torchrun(squares: Path, tmp_path: Path) -> None:
    """Detection batches (images + per-image target dicts) shard over ranks, and validation mAP gathers every
    rank's predictions: the run ends with a checkpoint and a validation score from all 4 val images."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
              "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), "-m", "deepfit.cli"]
    args = ["train", str(squares), "--task", "detect", "--epochs", "1", "--image-size", "64", "--batch-size", "4",
            "--workers", "0", "--output", str(tmp_path), "--name", "det", "--no-evaluate"]
    done = subprocess.run([*launch, *args], capture_output=True, text=True, timeout=400, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = _rows(tmp_path / "det")
    assert len(rows) == 1 and rows[0]["val_map"] != ""
    assert (tmp_path / "det" / "best.safetensors").is_file()


@pytest.mark.slow
def test_segmentation_trains_under_torchrun(tmp_path: Path) -> None:
    """Crops shard over ranks and validation confusion matrices are gathered from both: one run folder, one score."""
    data = draw_rectangles(tmp_path / "data", {"train": 8, "val": 3})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
              "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), "-m", "deepfit.cli"]
    args = ["train", str(data), "--task", "segment", "--epochs", "1", "--image-size", "32", "--batch-size", "4",
            "--workers", "0", "--output", str(tmp_path / "runs"), "--name", "seg", "--no-evaluate"]
    done = subprocess.run([*launch, *args], capture_output=True, text=True, timeout=400, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = _rows(tmp_path / "runs" / "seg")
    assert len(rows) == 1 and float(rows[0]["val_miou"]) >= 0
    assert (tmp_path / "runs" / "seg" / "best.safetensors").is_file()


def test_batch_must_split_evenly_over_processes(shapes_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert main(["train", str(shapes_data), *ARGS, "--output", str(tmp_path)]) == 2
    assert "not divisible by the 3 processes" in capsys.readouterr().err


def test_a_rank_that_never_comes_is_reported_not_waited_for_forever() -> None:
    code = (
        "import torch\n"
        "from deepfit.engine import distributed\n"
        "distributed.init(distributed.Dist(0, 2, 0), torch.device('cpu'))\n"
    )
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "DEEPFIT_DIST_TIMEOUT": "3"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode != 0
    assert "waited more than 3 s for the other ranks" in done.stderr
    assert "MASTER_ADDR" in done.stderr and "torchrun" in done.stderr


@pytest.mark.slow  # 40 s of two torchrun launches; the default suite keeps the one-launch equivalence test
def test_a_distributed_run_is_extended_with_resume(shapes_data: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def launch(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
                   "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), "-m", "deepfit.cli", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=400, env=env)

    first = launch("train", str(shapes_data), *[a if a != "4" else "2" for a in ARGS], "--output", str(tmp_path), "--name", "run")
    assert first.returncode == 0, first.stderr[-3000:]
    extended = launch("train", "--resume", str(tmp_path / "run"), "--epochs", "4", "--no-evaluate")
    assert extended.returncode == 0, extended.stderr[-3000:]
    rows = _rows(tmp_path / "run")
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4"]
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
