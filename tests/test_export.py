"""ONNX export of a trained image classifier: the file, its metadata, its proof on the test split, int8, the ONNX
Runtime backend, `deepfit benchmark`, and the mistakes a user can make. (Detectors, segmenters, sound and text are
exported in their own tests, beside the runs those train.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import deepfit
from deepfit.cli import main
from deepfit.deploy.graph import METADATA_KEY
from deepfit.errors import ConfigError, DeepfitError
from deepfit.workflows.export import export


def test_export_writes_a_checked_onnx_file_a_user_can_run_alone(run_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(run_copy), "--quantize", "int8", "--dynamic-batch"]) == 0
    out = capsys.readouterr().out
    assert "top1 agreement 100.00%" in out and "model.int8.onnx" in out
    record = json.loads((run_copy / "export.json").read_text())
    assert record["parity"]["top1_agreement"] == 1.0 and record["parity"]["relative_diff"] < 1e-4
    assert record["parity"]["split"] == "test" and record["parity"]["samples"] >= 9
    assert record["int8"]["method"].startswith("static int8") and 0 <= record["int8"]["accuracy"] <= 1
    # the file alone: its metadata names the task, classes, input and deepfit's version
    model = onnx.load(str(run_copy / "model.onnx"))
    meta = json.loads({p.key: p.value for p in model.metadata_props}[METADATA_KEY])
    assert meta["task"] == "classify" and meta["classes"] == ["2", "10", "ring"] and "uint8" in meta["inputs"]["images"]
    assert meta["deepfit_version"] == deepfit.__version__
    # uint8 images of any size and batch go in; resizing and normalisation are inside
    session = ort.InferenceSession(str(run_copy / "model.onnx"))
    images = np.random.default_rng(0).integers(0, 256, (3, 3, 40, 30), dtype=np.uint8)
    (logits,) = session.run(None, {"images": images})
    assert logits.shape == (3, 3) and np.isfinite(logits).all()


def test_the_onnx_backend_predicts_what_pytorch_predicts(run_copy: Path, trained_run, tmp_path: Path) -> None:  # noqa: ANN001
    export(run_copy, quantize="int8")
    images = trained_run.data / "ring"
    torch_clf = deepfit.load(run_copy, device="cpu")
    for backend in ("onnx", "int8"):
        clf = deepfit.load(run_copy, backend=backend)
        assert clf.predictor.runner is not None
        ours, theirs = clf.predict_proba(str(images)), torch_clf.predict_proba(str(images))
        assert ours.shape == theirs.shape == (20, 3)
        assert np.abs(ours - theirs).max() < (0.02 if backend == "onnx" else 0.1)  # torch may compute in bf16 here
    assert main(["predict", str(run_copy), str(images), "--backend", "onnx", "--output", str(tmp_path / "p.csv")]) == 0
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 21


def test_nothing_is_overwritten_and_a_failed_export_leaves_nothing(run_copy: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "mine.onnx"
    target.write_bytes(b"the user's own file")
    with pytest.raises(ConfigError, match="exists: deepfit never overwrites"):
        export(run_copy, output=target)
    assert target.read_bytes() == b"the user's own file"
    with pytest.raises(ConfigError, match=r"\.onnx"):
        export(run_copy, output=tmp_path / "model.txt")

    # an ONNX Runtime that computes something else: the export is refused and no file is left behind
    import deepfit.workflows.export as workflow

    class Wrong(workflow.OnnxRunner):
        def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return tuple(t + 1.0 for t in super().__call__(*inputs))

    monkeypatch.setattr(workflow, "OnnxRunner", Wrong)
    before = sorted(p.name for p in run_copy.iterdir())
    with pytest.raises(DeepfitError, match="disagrees with its PyTorch model.*nothing was written"):
        export(run_copy)
    assert sorted(p.name for p in run_copy.iterdir()) == before


def test_an_operator_onnx_cannot_express_is_named(run_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deepfit.tasks.classify.predict import Predictor

    class Unexportable(torch.nn.Module):
        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return torch.special.zeta(images.float(), images.float())  # no ONNX form

    original = Predictor.export_graph

    def graph(self: Predictor) -> object:
        g = original(self)
        g.module = Unexportable()
        return g

    monkeypatch.setattr(Predictor, "export_graph", graph)
    with pytest.raises(ConfigError, match="cannot export to ONNX: the operator .*zeta"):
        export(run_copy)
    assert not (run_copy / "model.onnx").exists() and not (run_copy / "export.json").exists()


def test_bad_runs_and_backends_are_one_line_errors(run_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (run_copy / "best.safetensors").unlink()
    assert main(["export", str(run_copy)]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nowhere")]) == 2
    assert "not found" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="deepfit export RUN"):
        deepfit.load(run_copy, checkpoint="last", backend="onnx")
    with pytest.raises(ConfigError, match="--backend tensorrt"):
        deepfit.load(run_copy, checkpoint="last", backend="tensorrt")
    fake = tmp_path / "fake.onnx"
    fake.write_text("not a model")
    with pytest.raises(DeepfitError, match="not an ONNX file"):
        deepfit.load(run_copy, checkpoint="last", backend=str(fake))


def test_a_stale_export_is_used_with_a_warning(run_copy: Path, caplog: pytest.LogCaptureFixture) -> None:
    from safetensors.torch import load_file, save_file

    export(run_copy)
    state = load_file(run_copy / "best.safetensors")  # as if the run had been trained on after the export
    save_file({k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}, run_copy / "best.safetensors",
              metadata={"format": "pt"})
    deepfit.load(run_copy, backend="onnx")
    assert "exported from other weights" in caplog.text


def test_benchmark_measures_every_backend_in_one_run(run_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["benchmark", str(run_copy), "--repeats", "2", "--rounds", "1", "--batch", "4"]) == 0
    out = capsys.readouterr().out
    for backend in ("torch (eager)", "onnxruntime", "onnxruntime int8"):
        assert f"\n{backend}\t" in out
    assert not (run_copy / "model.onnx").exists()  # measured on temporary exports: the run is left as it was
