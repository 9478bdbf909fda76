"""A task deepfit does not have, added from this file alone: classifying synthetic 1-D signals.

It registers a modality (signals stored as .npy files) and a task, then trains, resumes, evaluates and
predicts through the generic workflows, the Python API and the CLI, with no edit to deepfit's files. This
is the proof that a task is a plugin: sound and text come in the same way.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import deepfit
from deepfit.cli import main
from deepfit.config import TrainConfig
from deepfit.engine.checkpoint import load_weights, read_sidecar
from deepfit.errors import DataError, TrainingInterrupted
from deepfit.modalities.base import expand_paths
from deepfit.registry import register_modality, register_task, unregister_task
from deepfit.tasks.base import Data, Option, Setup, Task
from deepfit.tasks.classify.objective import ClassificationTask, classification_metrics

LENGTH = 64
CLASSES = ("low", "high", "square")


def signal(kind: str, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(LENGTH) / LENGTH
    phase = rng.uniform(0, 2 * np.pi)
    wave = {"low": np.sin(2 * np.pi * 2 * t + phase), "high": np.sin(2 * np.pi * 12 * t + phase),
            "square": np.sign(np.sin(2 * np.pi * 4 * t + phase))}[kind]
    return (wave + rng.normal(0, 0.2, LENGTH)).astype(np.float32)


# --- the modality and the task, as a user outside deepfit would write them --------------------------------------


@dataclass(frozen=True)
class SignalModality:
    name: str = "signal-1d"
    noun: str = "signals"
    extensions: frozenset[str] = frozenset({".npy"})

    def load(self, item: Any) -> torch.Tensor:
        array = np.load(item) if isinstance(item, str | Path) else np.asarray(item)
        if array.shape != (LENGTH,):
            raise DataError(f"a signal has {LENGTH} samples, got shape {array.shape}")
        return torch.as_tensor(array, dtype=torch.float32)

    def expand(self, items: Any) -> list[Path]:
        return expand_paths(items, self.extensions, self.noun)


MODALITY = SignalModality()


class SignalStore:
    """An in-memory BatchSource of (B, L) signals; stops the run once when told to (as a Ctrl-C would)."""

    def __init__(self, signals: torch.Tensor, labels: torch.Tensor, stop_at: int | None = None) -> None:
        self.signals, self.labels, self.stop_at, self.served = signals, labels, stop_at, 0

    def __len__(self) -> int:
        return len(self.labels)

    def num_batches(self, batch_size: int) -> int:
        return -(-len(self) // batch_size)

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: Any = None, order: torch.Tensor | None = None):
        order = torch.arange(len(self)) if order is None else order
        for idx in order.split(batch_size):
            if self.stop_at is not None and self.served == self.stop_at:
                self.stop_at = None
                raise TrainingInterrupted("stopped by the test")
            self.served += 1
            yield {"signal": self.signals[idx]}, self.labels[idx], idx


class TinyNet(nn.Module):
    def __init__(self, classes: int, width: int = 16) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv1d(1, width, 7, padding=3), nn.ReLU(), nn.Conv1d(width, width, 7, padding=3), nn.ReLU(),
                                  nn.AdaptiveAvgPool1d(1), nn.Flatten())
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, L) -> (B, K)
        return self.head(self.body(x.unsqueeze(1)))


class Objective(ClassificationTask):
    """deepfit's classification loss and accuracy, on a model that takes the batch's dict."""

    def training_loss(self, model: nn.Module, x: dict, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return super().training_loss(lambda batch: model(batch["signal"]), x, targets)

    def validation_batch(self, model: nn.Module, x: dict, targets: torch.Tensor) -> tuple[float, int, int]:
        return super().validation_batch(lambda batch: model(batch["signal"]), x, targets)


@dataclass
class Trained:
    model: TinyNet
    classes: list[str]
    meta: dict[str, Any]


class Predictor:
    def __init__(self, trained: Trained) -> None:
        self.trained = trained

    @torch.inference_mode()
    def predict(self, inputs: Any) -> Any:
        single = not isinstance(inputs, list | tuple)
        items = [inputs] if single else list(inputs)
        logits = self.trained.model(torch.stack([MODALITY.load(i) for i in items]))
        labels = [self.trained.classes[i] for i in logits.argmax(1).tolist()]
        return labels[0] if single else labels


@dataclass
class Evaluation:
    split: str
    metrics: dict[str, Any]
    report: Path


class SignalTask(Task):
    name = "signal-test"
    modality = MODALITY.name
    defaults = {"model": "tinynet", "batch_size": 16}
    score = "accuracy"
    data_options = (Option("length", "samples per signal", int),)
    predict_options = (Option("suffix", "name of the predictions file", str, "predictions"),)
    stop_at: int | None = None  # set by a test: the training batch at which the run is interrupted

    def read(self, data: str | Path, config: TrainConfig, *, length: int = LENGTH) -> Data:
        root = Path(data)
        files = [(p, p.parent.name) for p in sorted(root.rglob("*.npy"))]
        if not files:
            raise DataError(f"no .npy signals in {root}")
        return Data(root, sorted({label for _, label in files}), files, {"length": length}, layout="class folders")

    def split(self, data: Data, config: TrainConfig) -> dict[str, list]:
        order = np.random.default_rng(config.seed).permutation(len(data.source))
        files = [data.source[i] for i in order]
        n = len(files) // 5
        return {"train": files[2 * n:], "val": files[:n], "test": files[n:2 * n]}

    def save_split(self, data: Data, splits: dict[str, list], path: Path) -> None:
        with path.open("w", newline="") as f:
            csv.writer(f).writerows([p.relative_to(data.root), label, name] for name, items in splits.items() for p, label in items)

    def reread(self, saved: dict[str, Any], run_dir: Path) -> tuple[Data, dict[str, list]]:
        root = Path(saved["data_root"])
        splits: dict[str, list] = {"train": [], "val": [], "test": []}
        with (run_dir / "split.csv").open(newline="") as f:
            for path, label, name in csv.reader(f):
                splits[name].append((root / path, label))
        return Data(root, list(saved["classes"]), None), splits

    def read_other(self, data: str | Path, trained: Trained, **options: Any) -> tuple[Data, list]:
        other = self.read(data, TrainConfig(task=self.name), **options)
        return other, other.source

    def store(self, items: list, classes: list[str], stop_at: int | None = None) -> SignalStore:
        signals = torch.stack([MODALITY.load(p) for p, _ in items])
        return SignalStore(signals, torch.tensor([classes.index(label) for _, label in items]), stop_at)

    def prepare(self, config: TrainConfig, data: Data, splits: dict[str, list], device: Any, *, resumed: dict | None) -> Setup:
        model = TinyNet(len(data.classes))
        return Setup(model=model, objective=Objective(len(data.classes)), train=self.store(splits["train"], data.classes, self.stop_at),
                     val=self.store(splits["val"], data.classes), transform=lambda batch, generator: batch,
                     meta={"model": {"name": "tinynet", "width": 16}}, summary="model tinynet")

    def load(self, checkpoint: Path) -> Trained:
        meta = read_sidecar(checkpoint)
        model = TinyNet(len(meta["classes"]), meta["model"]["width"])
        load_weights(model, checkpoint)
        return Trained(model.eval(), list(meta["classes"]), meta)

    def predictor(self, trained: Trained, device: str = "auto") -> Predictor:
        return Predictor(trained)

    def evaluate(self, run_dir: Path, predictor: Predictor, split: str, data: Data, items: list, *, checkpoint: str,
                 other: Any) -> Evaluation:
        classes = predictor.trained.classes
        predicted = predictor.predict([p for p, _ in items])
        y_true = np.array([classes.index(label) for _, label in items])
        probs = np.eye(len(classes))[[classes.index(label) for label in predicted]]
        metrics = classification_metrics(y_true, probs, classes)
        report = run_dir / "signal_evaluation.json"
        report.write_text(json.dumps({"split": split, "accuracy": metrics["accuracy"]}))
        return Evaluation(split, metrics, report)

    def headline(self, evaluation: Evaluation) -> str:
        return f"{evaluation.split} signal accuracy {evaluation.metrics['accuracy']:.2%}"

    def predict_files(self, predictor: Predictor, paths: list[Path], output: Path | None, run_dir: Path, *,
                      suffix: str = "predictions") -> list[Any]:
        out = output or run_dir / f"{suffix}.csv"
        with out.open("w", newline="") as f:
            csv.writer(f).writerows(zip(map(str, paths), predictor.predict(paths), strict=True))
        return [f"{len(paths)} signals classified; written to {out}"]


# --- the tests ----------------------------------------------------------------------------------------------------


@pytest.fixture
def signal_task():
    task = register_task(SignalTask())
    register_modality(MODALITY)
    yield task
    unregister_task(task.name)


@pytest.fixture(scope="module")
def signals(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("signals")
    rng = np.random.default_rng(0)
    for kind in CLASSES:
        (root / kind).mkdir()
        for i in range(20):
            np.save(root / kind / f"{kind}{i}.npy", signal(kind, rng))
    return root


OPTIONS = ["--epochs", "4", "--lr", "0.03", "--warmup-epochs", "0", "--device", "cpu"]


def test_a_task_from_outside_trains_evaluates_and_predicts_through_the_cli(signal_task, signals, tmp_path, capsys):
    assert main(["train", str(signals), "--task", "signal-test", *OPTIONS, "--output", str(tmp_path), "--name", "run"]) == 0
    out = capsys.readouterr().out
    run = tmp_path / "run"
    assert f"run folder: {run}" in out and "test signal accuracy" in out
    config = json.loads((run / "config.json").read_text())
    assert config["task"] == "signal-test" and config["length"] == LENGTH and config["model"] == "tinynet"
    with (run / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {"train_acc", "val_acc", "samples_per_s"} <= set(rows[0])
    accuracy = json.loads((run / "signal_evaluation.json").read_text())["accuracy"]
    assert accuracy >= 0.8, f"tiny net on three well-separated signal kinds: {accuracy:.2f}"

    assert main(["evaluate", str(run)]) == 0
    assert "test signal accuracy" in capsys.readouterr().out
    assert main(["predict", str(run), str(signals / "low"), "--suffix", "low"]) == 0
    assert "20 signals classified" in capsys.readouterr().out
    with (run / "low.csv").open() as f:
        predicted = [label for _, label in csv.reader(f)]
    assert len(predicted) == 20 and predicted.count("low") >= 16

    # an option of another task is refused by name, never silently dropped
    assert main(["predict", str(run), str(signals / "low"), "--conf", "0.5"]) == 2
    assert "--conf is not an option of predict for --task signal-test (it is for --task detect, segment-instances)" in capsys.readouterr().err


def test_a_task_from_outside_resumes_bit_exactly_and_loads_in_python(signal_task, signals, tmp_path, capsys):
    args = ["train", str(signals), "--task", "signal-test", *OPTIONS, "--output", str(tmp_path), "--no-evaluate"]
    assert main([*args, "--name", "whole"]) == 0
    signal_task.stop_at = 7  # the 8th training batch (of 3 an epoch): in the middle of the third epoch
    assert main([*args, "--name", "stopped"]) == 130
    assert "interrupted at epoch 3" in capsys.readouterr().err
    signal_task.stop_at = None
    assert main(["train", "--resume", str(tmp_path / "stopped"), "--no-evaluate"]) == 0

    whole = deepfit.load(tmp_path / "whole", checkpoint="last")
    resumed = deepfit.load(tmp_path / "stopped", checkpoint="last")
    assert type(whole) is deepfit.Learner and whole.config.task == "signal-test"
    for a, b in zip(whole.predictor.trained.model.state_dict().values(), resumed.predictor.trained.model.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)
    assert whole.predict(signal("high", np.random.default_rng(5))) == "high"
    assert whole.predict(str(signals / "square" / "square0.npy")) == "square"

    learner = deepfit.Learner(task="signal-test", epochs=2, device="cpu", output=str(tmp_path), name="api")
    learner.fit(signals, length=LENGTH)
    assert learner.result.best_epoch >= 1 and learner.classes == sorted(CLASSES)
    assert learner.evaluate().split == "test"
    with pytest.raises(deepfit.ConfigError, match="--masks is not an option of training data for --task signal-test"):
        learner.fit(signals, masks="elsewhere")
