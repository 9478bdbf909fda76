"""The training engine under stress: resume after SIGKILL, reproducibility, Ctrl-C, NaN losses, out of memory,
gradient accumulation, safe loading of the resumable state, the data-wait figure, and batches that are not
one image tensor (dicts of token ids and masks, lists of per-image targets)."""

from __future__ import annotations

import csv
import os
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import deepfit
from conftest import TINY, ctrl_c_after, epoch_metrics, same_weights
from deepfit.cli import main
from deepfit.engine.checkpoint import RESUME_FILE, load_training_state
from deepfit.errors import ConfigError, TrainingError, TrainingInterrupted, WeightsError

# six epochs of three steps, the resumable state saved after every step
LONG = {**TINY, "epochs": 6, "save_every_steps": 1}


def _fit(data: Path, output: Path, name: str, **options: object) -> Path:
    clf = deepfit.ImageClassifier(output=str(output), name=name, **{**LONG, **options}).fit(data)
    assert clf.run_dir is not None
    return clf.run_dir


@pytest.fixture(scope="module")
def reference(shapes_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run left alone: what every interrupted and resumed run must end with."""
    return _fit(shapes_data, tmp_path_factory.mktemp("reference"), "ref")


def test_same_seed_gives_bit_identical_weights(shapes_data: Path, reference: Path, tmp_path: Path) -> None:
    again = _fit(shapes_data, tmp_path, "again")
    assert same_weights(reference, again) and same_weights(reference, again, "best")
    assert epoch_metrics(reference) == epoch_metrics(again)
    other_seed = _fit(shapes_data, tmp_path, "seed1", seed=1)
    assert not same_weights(reference, other_seed)
    config = (again / "config.json").read_text()
    for key in ('"seed": 0', '"command"', '"versions"', '"torch"'):
        assert key in config  # everything needed to repeat the run


# A child process trains the same run and kills itself with SIGKILL: between two saves of the resumable state
# (before the 6th save: epoch 2, step 2 of 3) or in the middle of writing the 6th one (half the bytes written).
_KILLER = textwrap.dedent('''
    import os, signal, sys
    import torch
    from deepfit.engine import callbacks, checkpoint
    mode, saves = sys.argv[1], [0]
    if mode == "between":
        original = callbacks.ResumeState._write
        def write(self, trainer):
            saves[0] += 1
            if saves[0] == 6:
                os.kill(os.getpid(), signal.SIGKILL)
            original(self, trainer)
        callbacks.ResumeState._write = write
    else:
        original_save = torch.save
        def save(obj, f, *args, **kwargs):
            saves[0] += 1
            if saves[0] == 6:
                with open(f, "wb") as handle:
                    handle.write(b"PK" + b"half a state" * 100)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.kill(os.getpid(), signal.SIGKILL)
            original_save(obj, f, *args, **kwargs)
        checkpoint.torch.save = save
    from deepfit.cli import main
    sys.exit(main(sys.argv[2:]))
''')


@pytest.mark.parametrize("when", ["between", "during"])
def test_resume_after_sigkill_ends_as_if_never_stopped(when: str, shapes_data: Path, reference: Path, tmp_path: Path) -> None:
    args = ["train", str(shapes_data), "--model", "cnn", "--model-args", "depth=2,width=8", "--image-size", "16",
            "--epochs", "6", "--batch-size", "16", "--lr", "0.01", "--workers", "0", "--save-every-steps", "1",
            "--output", str(tmp_path), "--name", "killed", "--no-evaluate"]
    child = subprocess.run([sys.executable, "-c", _KILLER, when, *args], capture_output=True, text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    run = tmp_path / "killed"
    state = load_training_state(run / RESUME_FILE)  # the previous state is intact and loadable
    assert state["position"]["step"] > 0  # killed in the middle of an epoch
    assert main(["train", "--resume", str(run), "--no-evaluate"]) == 0
    assert same_weights(reference, run) and same_weights(reference, run, "best")
    assert epoch_metrics(reference) == epoch_metrics(run)
    assert "resumed" in (run / "config.json").read_text()


def test_ctrl_c_saves_a_resumable_state_and_resume_matches(shapes_data: Path, reference: Path, tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN when pytest was started in the background
    with ctrl_c_after(7), pytest.raises(TrainingInterrupted):
        _fit(shapes_data, tmp_path, "interrupted")
    run = tmp_path / "interrupted"
    assert load_training_state(run / RESUME_FILE)["position"]["step"] == 1  # stopped cleanly after step 7 = epoch 3, step 1
    assert signal.getsignal(signal.SIGINT) is before  # the handler is removed again
    deepfit.resume(run)
    assert same_weights(reference, run)
    assert epoch_metrics(reference) == epoch_metrics(run)


def test_extend_a_finished_run(shapes_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _fit(shapes_data, tmp_path, "short", epochs=3)
    with pytest.raises(ConfigError, match="already finished its 3 epochs"):
        deepfit.resume(run)
    with pytest.raises(ConfigError, match="extended, not shortened"):
        deepfit.resume(run, epochs=2)
    assert main(["train", "--resume", str(run), "--epochs", "5", "--no-evaluate"]) == 0
    rows = epoch_metrics(run)
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4", "5"]
    assert load_training_state(run / RESUME_FILE)["position"]["epoch"] == 5
    assert main(["train", "--resume", str(run), "--lr", "0.1"]) == 2
    assert "only --epochs and --device may change" in capsys.readouterr().err


def test_resume_refuses_a_state_that_needs_unpickling(shapes_data: Path, tmp_path: Path) -> None:
    run = _fit(shapes_data, tmp_path, "victim", epochs=1)

    class Payload:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    (run / RESUME_FILE).write_bytes(pickle.dumps({"format": "deepfit-resume/1", "x": Payload()}, protocol=2))
    with pytest.raises(WeightsError, match="cannot read the resumable state"):
        deepfit.resume(run, epochs=2)
    assert not (tmp_path / "pwned").exists()


def test_nan_loss_stops_naming_epoch_and_step_and_keeps_good_checkpoints(shapes_data: Path, tmp_path: Path) -> None:
    from deepfit.tasks.classify.objective import ClassificationTask

    calls = [0]
    original = ClassificationTask.loss

    def loss(self, logits, targets):  # type: ignore[no-untyped-def]
        calls[0] += torch.is_grad_enabled()  # training steps only, not validation
        out = original(self, logits, targets)
        return out * float("nan") if calls[0] == 8 and torch.is_grad_enabled() else out  # epoch 3, step 2

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ClassificationTask, "loss", loss)
        with pytest.raises(TrainingError, match=r"became nan at epoch 3, step 2"):
            _fit(shapes_data, tmp_path, "nan")
    last = load_file(str(tmp_path / "nan" / "last.safetensors"))
    assert all(torch.isfinite(t).all() for t in last.values() if t.is_floating_point())

    calls[0] = 0
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ClassificationTask, "loss", loss)
        run = _fit(shapes_data, tmp_path, "skipped", skip_nonfinite=True)
    weights = load_file(str(run / "last.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())


def test_out_of_memory_halves_the_pieces_and_keeps_the_effective_batch(
    shapes_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from deepfit.models.small import ConvNet

    original = ConvNet.forward
    sizes: list[int] = []

    def forward(self, x):  # type: ignore[no-untyped-def]
        if self.training and x.shape[0] > 8:
            raise torch.OutOfMemoryError("simulated: CUDA out of memory")
        if self.training:
            sizes.append(x.shape[0])
        return original(self, x)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ConvNet, "forward", forward)
        _fit(shapes_data, tmp_path, "oom", epochs=2)
    assert "split into 2 pieces of about 8 samples" in caplog.text and "effective batch stays 16" in caplog.text
    assert max(sizes) <= 8 and sizes[:2] == [8, 8]


def test_accumulated_pieces_give_the_whole_batch_gradient() -> None:
    from torch import nn

    from deepfit.engine.trainer import Trainer
    from deepfit.tasks.classify.objective import ClassificationTask

    torch.manual_seed(0)
    x, y = torch.randn(10, 3, 4, 4), torch.randint(0, 3, (10,))  # 10 = pieces of 4, 3, 3: unequal on purpose
    grads = []
    for pieces in (1, 3):
        torch.manual_seed(1)
        model = nn.Sequential(nn.Flatten(), nn.Linear(48, 3))
        trainer = Trainer(model, ClassificationTask(3, 0.1), device=torch.device("cpu"), accumulate=pieces)
        loss, correct = trainer._forward_backward(x, y)
        grads.append((float(loss), model[1].weight.grad.clone(), int(correct)))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-6)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-5, atol=1e-6)
    assert grads[0][2] == grads[1][2]


def test_per_image_targets_are_cut_like_the_images() -> None:
    """Detection targets (a list of dicts) are split into the same pieces as the image tensor."""
    from deepfit.engine.batch import split

    images = torch.zeros(10, 3, 2, 2)
    targets = [{"labels": torch.tensor([i])} for i in range(10)]
    for pieces in (1, 3, 4, 12):
        parts = split(targets, pieces)
        assert [len(p) for p in parts] == [len(p) for p in images.tensor_split(pieces)]
        assert [t["labels"].item() for p in parts for t in p] == list(range(10))


def test_nested_batches_are_counted_moved_and_split_consistently() -> None:
    from deepfit.engine.batch import batch_size, split, to_device

    n = 10
    inputs = {"input_ids": torch.arange(n * 4).reshape(n, 4), "attention_mask": torch.ones(n, 4, dtype=torch.long),
              "extra": (torch.arange(n).float(), "shared words"), "scale": torch.tensor(2.0)}
    targets = [{"boxes": torch.full((i % 3, 4), float(i)), "labels": torch.full((i % 3,), i), "name": f"img{i}"} for i in range(n)]
    tree = (inputs, targets)
    assert batch_size(tree) == batch_size(inputs) == batch_size(targets) == n
    assert batch_size({"a": "text", "b": torch.tensor(1.0)}) is None
    assert batch_size([]) == 0

    for pieces in (1, 3, 4, 12):
        parts = split(tree, pieces)
        expected = [len(p) for p in torch.arange(n).tensor_split(pieces)]
        assert len(parts) == pieces and [batch_size(p) for p in parts] == expected
        for (xs, ts), size in zip(parts, expected, strict=True):
            assert isinstance(xs, dict) and isinstance(xs["extra"], tuple) and isinstance(ts, list)
            assert xs["input_ids"].shape == (size, 4) and xs["attention_mask"].shape == (size, 4)
            assert len(xs["extra"][0]) == len(ts) == size and xs["extra"][1] == "shared words"
            assert xs["scale"] is inputs["scale"]  # a 0-dim tensor is shared by the whole batch
        # consecutive pieces, every sample once and the tensors and per-sample lists kept in step
        assert torch.equal(torch.cat([xs["input_ids"] for xs, _ in parts]), inputs["input_ids"])
        assert [t["name"] for _, ts in parts for t in ts] == [f"img{i}" for i in range(n)]
        for xs, ts in parts:
            assert [int(t["labels"][0]) for t in ts if len(t["labels"])] == [
                int(i) for i, t in zip(xs["extra"][0], ts, strict=True) if len(t["labels"])]
            assert [int(row[0]) // 4 for row in xs["input_ids"]] == [int(t["name"][3:]) for t in ts]
    with pytest.raises(ValueError, match="batch of 10 samples holds a list of 9"):
        split((inputs, targets[:9]), 2)

    moved = to_device(tree, torch.device("meta"))
    assert isinstance(moved, tuple) and isinstance(moved[0], dict) and isinstance(moved[1], list)
    assert moved[0]["input_ids"].device.type == "meta" and moved[0]["extra"][0].device.type == "meta"
    assert moved[1][3]["boxes"].device.type == "meta" and moved[1][3]["name"] == "img3"
    assert moved[0]["extra"][1] == "shared words" and inputs["input_ids"].device.type == "cpu"


VOCAB, CLASSES = 40, 3


class _TextStore:
    """An in-memory BatchSource of token ids with padding: inputs are {"input_ids", "attention_mask"}, targets (B,) labels."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, CLASSES, (n,), generator=g)
        lengths = torch.randint(2, 9, (n,), generator=g)
        self.mask = (torch.arange(8)[None, :] < lengths[:, None]).long()  # (N, 8): 1 for real tokens, 0 for padding
        # class c draws its tokens mostly from its own third of the vocabulary
        tokens = torch.randint(0, VOCAB // CLASSES, (n, 8), generator=g) + self.labels[:, None] * (VOCAB // CLASSES)
        self.ids = tokens * self.mask  # padding is token 0

    def __len__(self) -> int:
        return len(self.labels)

    def num_batches(self, batch_size: int) -> int:
        return -(-len(self) // batch_size)

    def batches(self, batch_size: int, *, shuffle: bool = False, generator=None, order=None):  # type: ignore[no-untyped-def]
        for idx in (torch.arange(len(self)) if order is None else order).split(batch_size):
            yield {"input_ids": self.ids[idx], "attention_mask": self.mask[idx]}, self.labels[idx], idx


def _train_text(tmp: Path, accumulate: int, oom_once: bool = False) -> tuple[torch.nn.Module, dict]:
    """Train a bag-of-embeddings classifier through the Trainer; what it saw, its records and metrics.csv."""
    from torch import nn

    from deepfit.engine.callbacks import MetricsCSV, metric_columns
    from deepfit.engine.interfaces import Callback
    from deepfit.engine.trainer import Trainer
    from deepfit.tasks.classify.objective import ClassificationTask

    class BagOfEmbeddings(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.head = nn.Embedding(VOCAB, 8), nn.Linear(8, CLASSES)
            self.sizes: list[int] = []
            self.oom = oom_once

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            if self.training and self.oom and input_ids.shape[0] == 10:  # the whole batch, on the first try
                self.oom = False
                raise torch.OutOfMemoryError("simulated: CUDA out of memory")
            if self.training:
                self.sizes.append(input_ids.shape[0])
            mask = attention_mask.unsqueeze(-1).float()  # (B, T, 1)
            return self.head((self.embed(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1))  # mean over real tokens

    class TextObjective(ClassificationTask):
        def training_loss(self, model, x, targets):  # type: ignore[no-untyped-def]
            return super().training_loss(lambda batch: model(**batch), x, targets)

        def validation_batch(self, model, x, targets):  # type: ignore[no-untyped-def]
            return super().validation_batch(lambda batch: model(**batch), x, targets)

    class Recorder(Callback):
        def __init__(self) -> None:
            self.records: list[dict] = []
            self.batch_sizes: list[int] = []

        def on_batch_end(self, trainer: object, step: int, batch_size: int) -> None:
            self.batch_sizes.append(batch_size)

        def on_epoch_end(self, trainer: object, record: dict) -> None:
            self.records.append(record)

    torch.manual_seed(0)
    model, task, recorder = BagOfEmbeddings(), TextObjective(CLASSES), Recorder()
    tmp.mkdir()
    trainer = Trainer(model, task, device=torch.device("cpu"), accumulate=accumulate, generator=torch.Generator().manual_seed(0),
                      callbacks=[recorder, MetricsCSV(tmp / "metrics.csv", None, metric_columns(task))])
    identity = lambda x, g: x  # noqa: E731
    trainer.fit(_TextStore(25, 1), _TextStore(12, 2), epochs=3, batch_size=10, optimizer=torch.optim.SGD(model.parameters(), lr=0.5),
                scheduler=None, train_transform=identity, eval_transform=identity)
    rows = list(csv.DictReader((tmp / "metrics.csv").read_text().splitlines()))
    return model, {"records": recorder.records, "batch_sizes": recorder.batch_sizes, "rows": rows,
                   "micro_batches": trainer.micro_batches, "sizes": model.sizes}


def test_dict_inputs_train_accumulate_and_survive_out_of_memory(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Text-like batches (a dict of token ids and attention mask) go through the same loop as images: accumulation in
    3 unequal pieces and an out-of-memory retry in 2 pieces both give the whole batch's weights."""
    whole, seen = _train_text(tmp_path / "whole", accumulate=1)
    assert seen["sizes"] == [10, 10, 5] * 3 and seen["batch_sizes"] == [10, 10, 5] * 3

    pieces, in_pieces = _train_text(tmp_path / "pieces", accumulate=3)
    assert in_pieces["sizes"] == [4, 3, 3, 4, 3, 3, 2, 2, 1] * 3 and in_pieces["batch_sizes"] == [10, 10, 5] * 3
    for (name, a), b in zip(whole.state_dict().items(), pieces.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)

    retried, after_oom = _train_text(tmp_path / "oom", accumulate=1, oom_once=True)
    assert "split into 2 pieces of about 5 samples" in caplog.text and "effective batch stays 10" in caplog.text
    assert after_oom["micro_batches"] == 2 and after_oom["sizes"][:2] == [5, 5] and max(after_oom["sizes"]) == 5
    for (name, a), b in zip(whole.state_dict().items(), retried.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)

    for run in (seen, in_pieces, after_oom):
        assert len(run["records"]) == 3 and all(r["samples_per_s"] > 0 and "images_per_s" not in r for r in run["records"])
        assert all(0.0 <= r["train_acc"] <= 1.0 for r in run["records"])
        assert list(run["rows"][0]) == ["epoch", "phase", "train_loss", "train_acc", "val_loss", "val_acc", "lr",
                                        "samples_per_s", "seconds", "data_wait"]
        assert [r["epoch"] for r in run["rows"]] == ["1", "2", "3"] and all(float(r["samples_per_s"]) > 0 for r in run["rows"])
    losses = [r["train_loss"] for r in seen["records"]]
    assert losses[-1] < losses[0]  # it learns: the tokens tell the classes apart


def test_metrics_and_progress_report_data_wait(reference: Path) -> None:
    rows = list(csv.DictReader((reference / "metrics.csv").read_text().splitlines()))
    assert all(0.0 <= float(r["data_wait"]) <= 1.0 for r in rows)


def test_bf16_autocast_and_channels_last_options_train_on_cpu(shapes_data: Path, tmp_path: Path) -> None:
    run = _fit(shapes_data, tmp_path, "bf16", epochs=2, precision="bf16", channels_last=False)
    config = (run / "config.json").read_text()
    assert '"precision": "bf16"' in config and '"channels_last": false' in config
    weights = load_file(str(run / "last.safetensors"))
    assert all(t.dtype != torch.bfloat16 for t in weights.values())  # autocast computes in bf16, weights stay fp32


def test_streamed_store_keeps_its_decoding_workers_across_epochs(tmp_path: Path) -> None:
    from conftest import write_class_folders
    from deepfit.modalities.image.store import ImageStore

    paths = write_class_folders(tmp_path / "many", ["a", "b"], 130, size=16)  # 260: enough to start workers
    store, bad = ImageStore.load(paths, [0] * len(paths), 16, cache="disk", workers=1)
    assert not bad and not store.in_memory
    seen = []
    for epoch in range(2):
        order = torch.randperm(len(store), generator=torch.Generator().manual_seed(epoch))
        rng = torch.get_rng_state()
        got = torch.cat([idx for _, _, idx in store.batches(64, order=order)])
        assert torch.equal(torch.get_rng_state(), rng)  # starting workers draws nothing dropout would have drawn
        assert torch.equal(got, order)  # every image once, in the order asked for
        seen.append(store._loader)
    assert seen[0] is not None and seen[0] is seen[1]  # one loader, its workers persistent
    assert seen[0][0].persistent_workers


def test_slow_data_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    import time

    from torch import nn

    from deepfit.engine.callbacks import Progress
    from deepfit.engine.trainer import Trainer
    from deepfit.tasks.classify.objective import ClassificationTask

    class SlowStore:
        def __len__(self) -> int:
            return 8

        def num_batches(self, batch_size: int) -> int:
            return 4

        def batches(self, batch_size: int, *, shuffle: bool = False, generator=None, order=None):  # type: ignore[no-untyped-def]
            for idx in (order if order is not None else torch.arange(8)).split(batch_size):
                time.sleep(0.05)  # a slow disk: far longer than the step
                yield torch.zeros(len(idx), 3, 4, 4, dtype=torch.uint8), torch.zeros(len(idx), dtype=torch.long), idx

    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 2))
    trainer = Trainer(model, ClassificationTask(2, 0.0), device=torch.device("cpu"), callbacks=[Progress(1, live=False)])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    identity = lambda x, g: x.float()  # noqa: E731
    trainer.fit(SlowStore(), None, epochs=1, batch_size=2, optimizer=optimizer, scheduler=None,
                train_transform=identity, eval_transform=identity)
    assert "waiting for images: the data pipeline is the bottleneck" in caplog.text


@pytest.mark.slow  # torch.compile generates and builds C++ for the CPU: about a minute here
def test_compile_option_trains_and_saves_plain_weights(shapes_data: Path, tmp_path: Path) -> None:
    run = _fit(shapes_data, tmp_path, "compiled", epochs=2, compile=True)
    weights = load_file(str(run / "last.safetensors"))
    assert not any(k.startswith("_orig_mod") for k in weights)
    assert deepfit.load(run).predict(sorted(shapes_data.rglob("*.png"))[:2])
