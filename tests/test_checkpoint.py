"""Checkpoints: safetensors weights with a JSON sidecar that rebuilds the model with no user code, a header
other tools can read, the best epoch chosen as documented, and no temporary files left behind."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors import safe_open
from safetensors.torch import load_file

import deepfit
from conftest import TINY, TrainedRun
from deepfit.config import TrainConfig
from deepfit.engine.checkpoint import read_sidecar
from deepfit.errors import DeepfitError, WeightsError
from deepfit.runs.folder import CHECKPOINT_FORMAT, resolve_checkpoint
from deepfit.tasks.classify.model import load_trained


def test_sidecar_holds_everything_to_rebuild_the_model(trained_run: TrainedRun) -> None:
    meta = json.loads((trained_run.run_dir / "best.json").read_text())
    assert meta["format"] == CHECKPOINT_FORMAT
    assert meta["task"] == "classify"
    assert meta["model"] == {"source": "deepfit", "name": "cnn", "num_classes": 3, "drop_rate": 0.0,
                             "model_args": TINY["model_args"]}
    assert meta["classes"] == ["2", "10", "ring"]
    assert set(meta["preprocessing"]) == {"image_size", "mean", "std", "crop_pct"}
    assert meta["preprocessing"]["image_size"] == 16
    assert meta["pretrained_from"] is None  # trained from scratch
    assert TrainConfig.from_dict(meta["config"]).model_args == TINY["model_args"]
    versions = meta["versions"]
    assert versions["torch"] == torch.__version__
    assert versions["torchvision"] == torchvision.__version__
    assert versions["deepfit"] == deepfit.__version__
    assert {"timm", "scikit-learn", "pillow", "python"} <= set(versions)
    assert 1 <= meta["epoch"] <= TINY["epochs"] and 0 <= meta["val_acc"] <= 1
    last = json.loads((trained_run.run_dir / "last.json").read_text())
    assert last["epoch"] == TINY["epochs"]


def test_from_scratch_preprocessing_is_the_data_statistics(trained_run: TrainedRun) -> None:
    """Scratch training normalises with the training images' own mean/std, not ImageNet's."""
    from deepfit.modalities.image.store import ImageStore

    prep = json.loads((trained_run.run_dir / "best.json").read_text())["preprocessing"]
    with (trained_run.run_dir / "split.csv").open(newline="") as f:
        train = [trained_run.data / r["path"] for r in csv.DictReader(f) if r["split"] == "train"]
    store, _ = ImageStore.load(train, [0] * len(train), 16, workers=0)
    x = store.images.double() / 255
    assert prep["mean"] == pytest.approx(x.mean(dim=(0, 2, 3)).tolist(), abs=1e-3)
    assert prep["std"] == pytest.approx(x.std(dim=(0, 2, 3)).tolist(), abs=1e-3)


def test_safetensors_header_carries_preprocessing_and_classes(trained_run: TrainedRun) -> None:
    meta = json.loads((trained_run.run_dir / "best.json").read_text())
    with safe_open(str(trained_run.run_dir / "best.safetensors"), framework="pt") as f:
        header = f.metadata()
    assert json.loads(header["classes"]) == meta["classes"]
    assert json.loads(header["mean"]) == meta["preprocessing"]["mean"]
    assert json.loads(header["std"]) == meta["preprocessing"]["std"]
    assert json.loads(header["image_size"]) == 16


def test_loaded_model_has_the_saved_weights(trained_run: TrainedRun) -> None:
    trained = load_trained(trained_run.run_dir)
    saved = load_file(str(trained_run.run_dir / "best.safetensors"))
    state = trained.model.state_dict()
    assert set(saved) == set(state)
    for key, tensor in saved.items():
        assert torch.equal(state[key], tensor), key
    assert not trained.model.training  # ready for inference
    last = load_trained(trained_run.run_dir, "last")
    assert last.meta["epoch"] == TINY["epochs"]


def test_best_checkpoint_is_the_best_validation_epoch(trained_run: TrainedRun) -> None:
    with (trained_run.run_dir / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    best_acc = max(float(r["val_acc"]) for r in rows)
    # ties in accuracy go to the lower validation loss (the first such epoch on an exact tie)
    tied = [r for r in rows if float(r["val_acc"]) == best_acc]
    expected = min(tied, key=lambda r: float(r["val_loss"]))
    meta = read_sidecar(trained_run.run_dir / "best.safetensors")
    assert meta["epoch"] == int(expected["epoch"])
    assert meta["val_acc"] == pytest.approx(best_acc, abs=1e-5)


def test_no_temporary_files_left(evaluated_run: Path) -> None:
    names = [p.name for p in evaluated_run.rglob("*")]
    assert "best.safetensors" in names and "report.html" in names
    leftovers = [n for n in names if n.startswith(".") or n.endswith(".tmp")]
    assert leftovers == []


def test_missing_sidecar_or_checkpoint_is_a_clear_error(run_copy: Path, tmp_path: Path) -> None:
    with pytest.raises(DeepfitError, match="no checkpoint at"):
        resolve_checkpoint(tmp_path)
    (run_copy / "best.json").unlink()
    with pytest.raises(WeightsError, match=r"sidecar missing: .*best\.json"):
        load_trained(run_copy)


def test_best_linked_to_last_survives_the_next_last(tmp_path: Path) -> None:
    """When an epoch is both last and best, best is a link to last's files, not a second serialisation;
    saving a later last (a new file renamed into place) leaves that best as it was."""
    from torch import nn

    from deepfit.engine.callbacks import BestCheckpoint
    from deepfit.engine.checkpoint import link_checkpoint, save_checkpoint

    model = nn.Linear(2, 2)
    saves: list[str] = []

    def save(kind: str, record: dict) -> None:
        saves.append(kind)
        save_checkpoint(tmp_path / f"{kind}.safetensors", model, {"epoch": record["epoch"]})

    best = BestCheckpoint(save, link=lambda src, dst: link_checkpoint(tmp_path / f"{src}.safetensors", tmp_path / f"{dst}.safetensors"))
    best.on_epoch_end(None, {"epoch": 1, "val_acc": 0.5, "val_loss": 1.0})
    first = load_file(tmp_path / "best.safetensors")
    with torch.no_grad():
        model.weight.add_(1.0)
    best.on_epoch_end(None, {"epoch": 2, "val_acc": 0.4, "val_loss": 1.0})  # worse: best stays epoch 1
    assert saves == ["last", "last"]
    assert read_sidecar(tmp_path / "best.safetensors")["epoch"] == 1 and read_sidecar(tmp_path / "last.safetensors")["epoch"] == 2
    torch.testing.assert_close(load_file(tmp_path / "best.safetensors")["weight"], first["weight"])
    assert not torch.equal(load_file(tmp_path / "last.safetensors")["weight"], first["weight"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.json", "best.safetensors", "last.json", "last.safetensors"]


def test_weights_of_another_architecture_are_an_error_naming_the_keys(tmp_path: Path) -> None:
    from deepfit.engine.checkpoint import load_weights, save_checkpoint

    save_checkpoint(tmp_path / "small.safetensors", torch.nn.Linear(3, 2), {"format": CHECKPOINT_FORMAT})
    with pytest.raises(WeightsError, match=r"does not match its architecture: missing \['0.bias', '0.weight'\], "
                                           r"unexpected \['bias', 'weight'\]"):
        load_weights(torch.nn.Sequential(torch.nn.Linear(3, 2)), tmp_path / "small.safetensors")
