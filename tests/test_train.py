"""Training end to end on synthetic data: every data layout, the split it saves, what evaluate then scores,
the progress lines and metrics.csv, and the device / in-memory / streamed-from-disk choices."""

from __future__ import annotations

import csv
import dataclasses
import json
import re
from collections import Counter
from pathlib import Path

import pytest
import torch

from conftest import TINY, TINY_CLI, TrainedRun, write_class_folders
from deepfit import ImageClassifier, TrainConfig
from deepfit.cli import main
from deepfit.engine.device import resolve_device, resolve_precision
from deepfit.modalities.image.store import ImageStore


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def image_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*.png")}


def train_cli(data: Path, output: Path, *extra: str) -> Path:
    """`deepfit train DATA --no-evaluate` with the tiny options; returns the run folder."""
    rc = main(["train", str(data), *TINY_CLI, "--output", str(output), "--name", "run", "--no-evaluate", *extra])
    assert rc == 0
    return output / "run"


def evaluate_cli(run: Path) -> list[dict[str, str]]:
    assert main(["evaluate", str(run)]) == 0
    return read_csv(run / "test_predictions.csv")


def assert_evaluate_scores_exactly_the_test_rows(run: Path, data_root: Path) -> None:
    split_rows = read_csv(run / "split.csv")
    test_rows = {(data_root / r["path"]).resolve() for r in split_rows if r["split"] == "test"}
    predictions = evaluate_cli(run)
    assert len(predictions) == len(test_rows)
    assert {Path(r["path"]).resolve() for r in predictions} == test_rows
    metrics = json.loads((run / "test_metrics.json").read_text())
    assert metrics["num_samples"] == len(test_rows)


def assert_stratified_70_15_15(split_rows: list[dict[str, str]], per_class: int) -> None:
    counts = Counter((r["label"], r["split"]) for r in split_rows)
    held_out = round(per_class * 0.15)
    for label in {r["label"] for r in split_rows}:
        assert counts[label, "val"] == held_out
        assert counts[label, "test"] == held_out
        assert counts[label, "train"] == per_class - 2 * held_out


# --- data layouts ----------------------------------------------------------------------------------


def test_class_folders_natural_class_order_and_split(trained_run: TrainedRun) -> None:
    run = trained_run.run_dir
    config = json.loads((run / "config.json").read_text())
    best = json.loads((run / "best.json").read_text())
    assert config["classes"] == ["2", "10", "ring"]  # natural order, not "10" < "2"
    assert best["classes"] == ["2", "10", "ring"]
    rows = read_csv(run / "split.csv")
    assert {r["path"] for r in rows} == image_files(trained_run.data)
    assert len(rows) == 60
    assert all(r["label"] == r["path"].split("/")[0] for r in rows)
    assert_stratified_70_15_15(rows, per_class=20)


def test_evaluate_scores_exactly_the_saved_test_split(run_copy: Path, trained_run: TrainedRun) -> None:
    assert_evaluate_scores_exactly_the_test_rows(run_copy, trained_run.data)


def test_nested_class_folders(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_class_folders(data, ["a", "b"], 20, nest=True)
    assert any(p.count("/") == 3 for p in image_files(data))  # a/deep/er/img1.png
    run = train_cli(data, tmp_path / "runs")
    rows = read_csv(run / "split.csv")
    assert {r["path"] for r in rows} == image_files(data)
    assert all(r["label"] == r["path"].split("/")[0] for r in rows)  # nested files keep their class
    assert_stratified_70_15_15(rows, per_class=20)
    assert_evaluate_scores_exactly_the_test_rows(run, data)


def test_split_folders_with_valid(tmp_path: Path) -> None:
    data = tmp_path / "data"
    # other variants per split, so nothing is byte-identical across splits
    write_class_folders(data / "train", ["a", "b"], 12)
    write_class_folders(data / "valid", ["a", "b"], 4, first=50)
    write_class_folders(data / "test", ["a", "b"], 5, first=100)
    run = train_cli(data, tmp_path / "runs")
    rows = read_csv(run / "split.csv")
    assert {r["path"] for r in rows} == image_files(data)
    expected_split = {"train": "train", "valid": "val", "test": "test"}
    assert all(r["split"] == expected_split[r["path"].split("/")[0]] for r in rows)
    assert Counter(r["split"] for r in rows) == {"train": 24, "val": 8, "test": 10}
    assert not (run / "duplicates.csv").exists()
    assert_evaluate_scores_exactly_the_test_rows(run, data)


def test_csv_of_relative_paths(tmp_path: Path) -> None:
    images = tmp_path / "lists" / "images"
    paths = write_class_folders(images, ["cat", "dog", "owl"], 20)
    listing = tmp_path / "lists" / "labels.csv"
    lines = ["path,label"] + [f"images/{p.parent.name}/{p.name},{p.parent.name}" for p in paths]
    listing.write_text("\n".join(lines) + "\n")
    run = train_cli(listing, tmp_path / "runs")
    rows = read_csv(run / "split.csv")
    # paths are saved relative to the CSV's folder, and cover every listed file
    assert {r["path"] for r in rows} == {line.split(",")[0] for line in lines[1:]}
    assert_stratified_70_15_15(rows, per_class=20)
    config = json.loads((run / "config.json").read_text())
    assert config["classes"] == ["cat", "dog", "owl"]
    assert Path(config["data_root"]) == listing.parent.resolve()
    assert_evaluate_scores_exactly_the_test_rows(run, listing.parent)


# --- progress and metrics --------------------------------------------------------------------------


def test_one_progress_line_per_epoch_when_not_a_terminal(trained_run: TrainedRun) -> None:
    lines = [line for line in trained_run.stderr.splitlines() if re.match(r"epoch \d+/\d+ ", line)]
    assert len(lines) == TINY["epochs"] == 4
    for n, line in enumerate(lines, 1):
        assert re.match(rf"epoch {n}/4 \[train\] train loss [\d.]+ acc [\d.]+% \| val loss [\d.]+ acc [\d.]+%", line)
    assert "\r" not in trained_run.stderr  # no live bar redraws in a log file


def test_metrics_csv_one_row_per_epoch(trained_run: TrainedRun) -> None:
    rows = read_csv(trained_run.run_dir / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4"]
    assert {r["phase"] for r in rows} == {"train"}
    for r in rows:
        for column in ("train_loss", "val_loss"):
            assert 0 < float(r[column]) < 10
        for column in ("train_acc", "val_acc"):
            assert 0 <= float(r[column]) <= 1
        assert 0 <= float(r["lr"]) <= TINY["lr"]
    assert float(rows[0]["lr"]) > 0  # the cosine schedule reaches 0 only at the very end
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])  # it learned something
    # the accuracy printed for the last epoch is the one in metrics.csv
    last = [line for line in trained_run.stderr.splitlines() if line.startswith("epoch 4/4")][0]
    printed_val = float(re.search(r"val loss [\d.]+ acc ([\d.]+)%", last).group(1)) / 100
    assert printed_val == pytest.approx(float(rows[-1]["val_acc"]), abs=1e-4)


def test_resolved_config_holds_every_option(trained_run: TrainedRun) -> None:
    config = json.loads((trained_run.run_dir / "config.json").read_text())
    expected = TrainConfig(**{**TINY, "output": config["output"], "name": "shapes"}).to_dict()
    # "auto" choices are saved as what they resolved to on this machine
    expected.update(device=str(resolve_device("auto")), precision=resolve_precision("auto", resolve_device("auto")),
                    channels_last=True)
    for f in dataclasses.fields(TrainConfig):
        assert f.name in config, f"config.json lacks {f.name}"
        assert config[f.name] == expected[f.name], f.name
    assert Path(config["data"]) == trained_run.data.resolve()
    assert config["preprocessing"]["image_size"] == 16


# --- device, memory and disk -----------------------------------------------------------------------


def test_auto_device_and_precision() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"  # the suite sets DEEPFIT_CPU_BF16=0 (conftest)
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"


@pytest.mark.parametrize(
    ("cpuinfo", "native"),
    [
        ("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n", True),  # AMD Zen 4, Intel Cooper Lake
        ("flags\t\t: fpu avx2 avx512f amx_bf16 amx_tile\n", True),  # Intel Sapphire Rapids
        ("Features\t: fp asimd bf16 i8mm sve\n", True),  # Arm (Graviton 3, Neoverse V1)
        ("flags\t\t: fpu sse2 avx2 avx512f avx512bw\n", False),  # AVX-512 without bf16: emulated, slow
    ],
)
def test_auto_precision_is_bf16_on_cpus_with_native_bf16(
    cpuinfo: str, native: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deepfit.engine import device

    fake = tmp_path / "cpuinfo"
    fake.write_text(cpuinfo)
    real_path = device.Path
    monkeypatch.setattr(device, "Path", lambda p: fake if p == "/proc/cpuinfo" else real_path(p))
    monkeypatch.delenv("DEEPFIT_CPU_BF16")
    device.cpu_has_native_bf16.cache_clear()
    try:
        assert device.cpu_has_native_bf16() is native
        assert resolve_precision("auto", torch.device("cpu")) == ("bf16" if native else "fp32")
        monkeypatch.setenv("DEEPFIT_CPU_BF16", "1")  # the override wins over what the CPU says
        device.cpu_has_native_bf16.cache_clear()
        assert resolve_precision("auto", torch.device("cpu")) == "bf16"
    finally:
        device.cpu_has_native_bf16.cache_clear()


def test_small_data_set_is_held_in_memory_as_uint8(shapes_data: Path) -> None:
    paths = sorted(shapes_data.rglob("*.png"))
    store, bad = ImageStore.load(paths, [0] * len(paths), 16, workers=0)
    assert not bad
    assert store.in_memory
    assert store.images is not None
    assert store.images.dtype == torch.uint8
    assert tuple(store.images.shape) == (60, 3, 16, 16)


def test_disk_cache_streams_the_same_batches(shapes_data: Path) -> None:
    paths = sorted(shapes_data.rglob("*.png"))
    labels = list(range(len(paths)))
    memory, _ = ImageStore.load(paths, labels, 16, cache="memory", workers=0)
    disk, _ = ImageStore.load(paths, labels, 16, cache="disk", workers=0)
    assert memory.in_memory and not disk.in_memory
    for (mi, ml, _), (di, dl, _) in zip(memory.batches(16, shuffle=False), disk.batches(16, shuffle=False, workers=0), strict=True):
        assert mi.shape == di.shape and di.dtype == torch.uint8
        assert torch.equal(mi, di) and torch.equal(ml, dl)


def test_training_with_disk_cache(shapes_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    options = {**TINY, "workers": 1, "epochs": 1}  # one decoding process, as a small machine would use
    clf = ImageClassifier(output=str(tmp_path / "runs"), name="disk", cache="disk", **options).fit(shapes_data)
    assert any("streamed from disk" in r.getMessage() for r in caplog.records)
    rows = read_csv(clf.run_dir / "metrics.csv")
    assert len(rows) == 1 and float(rows[0]["train_loss"]) > 0
    assert (clf.run_dir / "best.safetensors").is_file()
    predictions = clf.predict(sorted(shapes_data.rglob("*.png"))[:4])
    assert len(predictions) == 4 and all(p.label in ("2", "10", "ring") for p in predictions)
