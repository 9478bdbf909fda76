"""Using a trained run: `deepfit predict` on files, folders and globs (CSV and JSON out), the Python API on
paths, PIL images and tensors, and a run loaded in a fresh process with no test code around it."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import deepfit
from conftest import TrainedRun
from deepfit.cli import main

CLASSES = ["2", "10", "ring"]


def test_cli_predict_file_folder_and_glob_to_csv(
    trained_run: TrainedRun, run_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = trained_run.data
    one = data / "2" / "img3.png"
    glob = str(data / "ring" / "img1*.png")  # img1.png and img10 ... img19.png
    assert main(["predict", str(run_copy), str(one), str(data / "10"), glob]) == 0
    out = capsys.readouterr().out
    written = run_copy / "predictions.csv"
    assert f"predictions written to {written}" in out
    with written.open(newline="") as f:
        rows = list(csv.DictReader(f))
    expected = [one, *sorted((data / "10").glob("*.png"), key=lambda p: int(p.stem[3:])),
                data / "ring" / "img1.png", *(data / "ring" / f"img{i}.png" for i in range(10, 20))]
    assert [Path(r["source"]) for r in rows] == expected  # given order, natural order inside folders and globs
    assert list(rows[0]) == ["source", "label", "probability", "top1", "prob1", "top2", "prob2", "top3", "prob3"]
    for r in rows:
        assert r["label"] == r["top1"] and r["label"] in CLASSES
        probs = [float(r["prob1"]), float(r["prob2"]), float(r["prob3"])]
        assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1, abs=1e-4)
        assert float(r["probability"]) == probs[0]
    # the run has learned the shapes: the folder's images are called by their folder's name
    assert sum(Path(r["source"]).parent.name == r["label"] for r in rows) >= 0.9 * len(rows)
    # piped (as capsys is), the table is tab-separated lines: grep finds a file's line with its label and probability
    lines = out.splitlines()
    assert lines[0] == f"# {len(rows)} images" and lines[1].split("\t") == ["image", "class", "probability", "top 3"]
    for r in rows:
        fields = next(line for line in lines if line.startswith(r["source"] + "\t")).split("\t")
        assert fields[:3] == [r["source"], r["label"], f"{float(r['probability']):.1%}"]
    assert not any("│" in line or "─" in line for line in lines)  # no box drawing


def test_cli_predict_to_json_with_top_k(trained_run: TrainedRun, run_copy: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "x.json"
    assert main(["predict", str(run_copy), str(trained_run.data / "10"), "--top-k", "2", "--output", str(out)]) == 0
    predictions = json.loads(out.read_text())
    assert len(predictions) == 20
    for p in predictions:
        assert set(p) == {"source", "label", "probability", "top"}
        assert len(p["top"]) == 2
        assert p["top"][0] == [p["label"], p["probability"]]
        assert p["top"][0][1] >= p["top"][1][1]
        assert {label for label, _ in p["top"]} <= set(CLASSES)
    assert not (run_copy / "predictions.csv").exists()  # --output replaces the default file


def test_cli_predict_missing_file_is_an_error(run_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", str(run_copy), str(tmp_path / "nothing.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: file not found: {tmp_path / 'nothing.png'}"]


def test_api_predicts_paths_pil_images_and_tensors_alike(trained_run: TrainedRun) -> None:
    clf = deepfit.load(trained_run.run_dir)
    assert clf.classes == CLASSES
    path = trained_run.data / "ring" / "img5.png"
    pil = Image.open(path).convert("RGB")
    as_uint8 = torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1)  # (3, H, W) uint8
    as_float = as_uint8.float() / 255.0  # (3, H, W) in [0, 1]
    predictions = clf.predict([path, pil, as_uint8, as_float])
    assert len(predictions) == 4
    assert predictions[0].source == str(path)
    assert predictions[1].source.startswith("<") and predictions[2].source.startswith("<")
    labels = {p.label for p in predictions}
    assert labels == {"ring"}
    # the same pixels, however they are given, get the same probabilities
    probs = clf.predict_proba([path, pil, as_uint8, as_float])
    assert probs.shape == (4, 3)
    np.testing.assert_allclose(probs, np.repeat(probs[:1], 4, axis=0), atol=1e-6)
    assert predictions[0].probability == pytest.approx(float(probs[0].max()), abs=1e-6)


def test_api_predicts_a_folder_and_a_batch_tensor(trained_run: TrainedRun) -> None:
    clf = deepfit.load(trained_run.run_dir)
    folder = clf.predict(trained_run.data / "2")
    assert len(folder) == 20
    batch = torch.stack([torch.from_numpy(np.asarray(Image.open(trained_run.data / "2" / f"img{i}.png").convert("RGB")).copy()).permute(2, 0, 1) for i in range(3)])
    from_batch = clf.predict(batch)  # (B, 3, H, W): B images
    assert [p.label for p in from_batch] == [p.label for p in folder[:3]]


def test_run_loads_in_a_fresh_process(trained_run: TrainedRun) -> None:
    path = trained_run.data / "10" / "img7.png"
    in_process = deepfit.load(trained_run.run_dir).predict(path)  # one path: one Prediction, as for every task
    code = (
        f"import deepfit; p = deepfit.load({str(trained_run.run_dir)!r}).predict({str(path)!r}); "
        "print(p.label); print(repr(p.probability))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    label, probability = done.stdout.strip().splitlines()[-2:]
    assert label == in_process.label
    assert float(probability) == pytest.approx(in_process.probability, abs=1e-5)


def test_tta_views_mirror_and_shift_small_images() -> None:
    import torch

    from deepfit.tasks.classify.predict import tta_views

    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float).view(2, 3, 8, 8)
    views = tta_views(x)
    assert len(views) == 6 and all(v.shape == x.shape for v in views)
    assert torch.equal(views[0], x) and torch.equal(views[1], x.flip(3))
    assert torch.equal(views[2][..., 1:, 1:], x[..., :-1, :-1])  # shifted down-right by one pixel
    assert torch.equal(views[4][..., :-1, :-1], x[..., 1:, 1:])  # shifted up-left
    assert torch.equal(views[3][..., 1:, 1:], x.flip(3)[..., :-1, :-1])
    big = torch.zeros(1, 3, 96, 96)
    assert len(tta_views(big)) == 2  # large images: mirror only
