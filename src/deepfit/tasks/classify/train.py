"""Training a classifier, from scratch or by transfer learning, into a run folder.

From scratch: one phase over all weights. Transfer learning (`--pretrained` or `--weights`): first
the new head alone on a frozen backbone (`head_epochs`), so the random head cannot wreck the
pretrained features with large gradients; then the whole network, the pretrained layers at a
lower learning rate (`backbone_lr_scale`).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import logging
import random
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepfit.config import TrainConfig, field_names
from deepfit.data.sources import Catalog, LabeledFile, discover
from deepfit.data.split import cross_split_duplicates, load_split, resolve_splits, save_split
from deepfit.engine import distributed
from deepfit.engine.callbacks import BestCheckpoint, EarlyStopping, MetricsCSV, Progress, ResumeState
from deepfit.engine.checkpoint import (
    RESUME_FILE,
    library_versions,
    link_checkpoint,
    load_training_state,
    read_sidecar,
    save_checkpoint,
    save_training_state,
)
from deepfit.engine.device import resolve_device, resolve_precision
from deepfit.engine.optim import build_optimizer, build_scheduler, param_groups
from deepfit.engine.trainer import Callback, Trainer
from deepfit.errors import ConfigError, DeepfitError, TrainingInterrupted
from deepfit.fileio import atomic_write_text
from deepfit.log import logger, setup_logging
from deepfit.modalities.image.augment import SMALL_IMAGE, BatchTransform
from deepfit.modalities.image.store import BadFile, ImageStore, check_unreadable
from deepfit.models.factory import CreatedModel, Preprocessing, create_model, is_convolutional
from deepfit.models.weights import classifier_module, freeze_folded_norms
from deepfit.runs.folder import CHECKPOINT_FORMAT, check_output_outside_data, new_run_dir, read_run_config
from deepfit.tasks.classify.objective import ClassificationTask

# A linear head on frozen features tolerates, and in the few steps of a short phase needs, a higher
# learning rate than the whole network does.
HEAD_PHASE_LR_SCALE = 10.0


@dataclass
class TrainResult:
    run_dir: Path
    best_val_acc: float | None
    best_epoch: int
    classes: list[str]


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return the generator that drives shuffling and augmentation."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def load_split_stores(
    splits: dict[str, list[LabeledFile]], classes: list[str], size: int, config: TrainConfig
) -> tuple[dict[str, ImageStore], list[BadFile]]:
    """Decode every split; unreadable files are dropped, and too many of them overall is an error."""
    index = {c: i for i, c in enumerate(classes)}
    stores, bad = {}, []
    for name, files in splits.items():
        store, bad_here = ImageStore.load(
            [f.path for f in files], [index[f.label] for f in files], size,
            cache=config.cache, workers=config.workers, what=f"{name} images", max_bad_fraction=1.0,
        )
        stores[name] = store
        bad += bad_here
    check_unreadable(bad, sum(len(f) for f in splits.values()), "images")
    return stores, bad


def channel_stats(store: ImageStore, limit: int = 2048) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of (up to `limit`) training images, in [0, 1] units, for scratch training."""
    total = torch.zeros(3, dtype=torch.float64)
    total_sq = torch.zeros(3, dtype=torch.float64)
    count = 0
    for images, _, _ in store.batches(256, shuffle=False):
        x = images.double() / 255.0
        total += x.sum(dim=(0, 2, 3))
        total_sq += (x * x).sum(dim=(0, 2, 3))
        count += x.shape[0] * x.shape[2] * x.shape[3]
        if count >= limit * x.shape[2] * x.shape[3]:
            break
    mean = total / count
    std = (total_sq / count - mean**2).clamp(min=1e-6).sqrt()
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


def report_duplicates(splits: dict[str, list[LabeledFile]], run_dir: Path) -> int:
    groups = cross_split_duplicates(splits)
    if not groups:
        return 0
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["group", "split", "path"])
    for g, group in enumerate(groups, 1):
        for f in group:
            writer.writerow([g, f.split, f.path])
    atomic_write_text(run_dir / "duplicates.csv", out.getvalue())
    example = " = ".join(f"{f.split}:{f.path}" for f in groups[0][:2])
    logger.warning(
        f"{len(groups)} images occur byte-identical in more than one split (e.g. {example}); test scores are "
        f"optimistic while they stay. All listed in {run_dir / 'duplicates.csv'}"
    )
    return len(groups)


def write_skipped(bad: list[BadFile], run_dir: Path) -> None:
    if not bad:
        return
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["path", "reason"])
    writer.writerows([b.path, b.reason] for b in bad)
    atomic_write_text(run_dir / "skipped_files.csv", out.getvalue())
    logger.warning(f"{len(bad)} unreadable images were skipped; listed in {run_dir / 'skipped_files.csv'}")


def checkpoint_meta(created: CreatedModel, classes: list[str], prep: Preprocessing, config: TrainConfig) -> dict[str, Any]:
    return {
        "format": CHECKPOINT_FORMAT,
        "task": "classify",
        "model": created.spec.to_dict(),
        "classes": classes,
        "preprocessing": prep.to_dict(),
        "pretrained_from": created.pretrained_source,
        "config": config.to_dict(),
    }


def plan_phases(config: TrainConfig) -> list[tuple[str, int]]:
    """[(phase, epochs)]: "train" from scratch; "head" then "full" for transfer learning."""
    if not config.transfer:
        return [("train", config.epochs)]
    head = min(config.head_epochs, config.epochs)
    return [(name, n) for name, n in (("head", head), ("full", config.epochs - head)) if n > 0]


def phase_param_groups(model: nn.Module, phase: str, config: TrainConfig) -> list[dict]:
    """Freeze or unfreeze for the phase, and group the trainable parameters with their learning-rate scales."""
    head = classifier_module(model)
    head_ids = {id(p) for p in head.parameters()}
    for p in model.parameters():
        p.requires_grad = phase != "head" or id(p) in head_ids
    if phase == "head":
        return param_groups(head.named_parameters(), config.weight_decay, HEAD_PHASE_LR_SCALE)
    backbone = [(n, p) for n, p in model.named_parameters() if id(p) not in head_ids]
    scale = config.backbone_lr_scale if phase == "full" else 1.0
    return param_groups(backbone, config.weight_decay, scale) + param_groups(head.named_parameters(), config.weight_decay)


def train(data: str | Path, config: TrainConfig, *, catalog: Catalog | None = None) -> TrainResult:
    """Train on `data` (class folders, split folders or a CSV) and return the run folder."""
    setup_logging()
    generator = seed_everything(config.seed)
    catalog = catalog or discover(data)
    classes = catalog.classes
    splits = resolve_splits(catalog, config.val_fraction, config.test_fraction, config.seed)
    check_output_outside_data(config.output, catalog.root)
    return _run(data, config, catalog.root, classes, splits, generator, catalog.layout)


def resume(run_dir: str | Path, *, epochs: int | None = None, device: str | None = None) -> TrainResult:
    """Continue a run that was stopped (killed, Ctrl-C) from its resumable state, or extend a finished one
    to `epochs` epochs. Same data, split, options and random states: a run resumed on the same machine ends
    with the same weights as one that never stopped."""
    setup_logging()
    run_dir = Path(run_dir).resolve()
    saved = read_run_config(run_dir)
    if not (run_dir / RESUME_FILE).is_file():
        raise DeepfitError(
            f"{run_dir} has no {RESUME_FILE} to resume from (runs written before deepfit 0.1 or stopped before their "
            "first checkpoint cannot be resumed); start a new run instead"
        )
    options = {k: v for k, v in saved.items() if k in field_names(TrainConfig)}
    config = TrainConfig.from_dict({**options, **({"epochs": epochs} if epochs else {}), **({"device": device} if device else {})})
    if epochs is not None and epochs < saved["epochs"]:
        raise ConfigError(f"--epochs {epochs} is fewer than the run's {saved['epochs']}: a run can be extended, not shortened")
    state = load_training_state(run_dir / RESUME_FILE)
    if state["position"]["epoch"] >= config.epochs:
        raise ConfigError(
            f"{run_dir.name} already finished its {state['position']['epoch']} epochs; pass --epochs N (more than that) "
            "to extend it"
        )
    splits = load_split(run_dir / "split.csv", Path(saved["data_root"]))
    generator = seed_everything(config.seed)
    prep = Preprocessing.from_dict(saved["preprocessing"])
    return _run(saved["data"], config, Path(saved["data_root"]), list(saved["classes"]), splits, generator,
                "resumed", resume_dir=run_dir, state=state, prep=prep, command=saved.get("command"))


def _run(
    data: str | Path, config: TrainConfig, data_root: Path, classes: list[str], splits: dict[str, list[LabeledFile]],
    generator: torch.Generator, layout: str, *, resume_dir: Path | None = None, state: dict[str, Any] | None = None,
    prep: Preprocessing | None = None, command: list[str] | None = None,
) -> TrainResult:
    logger.info(f"{len(classes)} classes, {', '.join(f'{len(v)} {k}' for k, v in splits.items())} images ({layout})")
    if not splits.get("test"):
        logger.warning("the data has no test split: `deepfit evaluate` will fall back to the validation split")

    dist_info = distributed.from_environment()
    if dist_info.enabled and config.batch_size % dist_info.world:
        raise ConfigError(
            f"--batch-size {config.batch_size} is not divisible by the {dist_info.world} processes: each takes an equal "
            "share of every batch; choose a multiple"
        )
    device = distributed.init(dist_info, resolve_device(config.device))
    if not dist_info.main:
        logger.setLevel(logging.WARNING)  # one rank reports; the others speak only of problems
    precision = resolve_precision(config.precision, device)
    created = create_model(
        config.model, len(classes), pretrained=config.pretrained and state is None, weights=config.weights if state is None else None,
        drop_rate=config.dropout, model_args=config.model_args, image_size=config.image_size,
    )
    model = created.model
    if prep is None:
        prep = created.preprocessing
        if not config.transfer and prep.image_size <= SMALL_IMAGE:
            # no pretrained evaluation crop to honour: keep the whole of a small image
            prep = dataclasses.replace(prep, crop_pct=1.0)

    stores, bad = load_split_stores(splits, classes, prep.resize_size, config)
    if bad:  # split.csv lists the images used: a skipped file must not reappear in `evaluate`'s test split
        skipped = {b.path for b in bad}
        splits = {name: [f for f in files if f.path not in skipped] for name, files in splits.items()}
    train_store, val_store = stores["train"], stores.get("val")
    if state is None and not config.transfer:  # from scratch, normalise with the data's own statistics
        prep = dataclasses.replace(prep, **dict(zip(("mean", "std"), channel_stats(train_store), strict=True)))
    channels_last = config.channels_last if config.channels_last is not None else is_convolutional(model)
    if state is None and not config.transfer and hasattr(model, "init_from_data"):  # data-dependent initialisation (fastnet)
        sample, _, _ = next(train_store.batches(1024, shuffle=True, generator=torch.Generator().manual_seed(config.seed)))
        model.init_from_data(BatchTransform(prep.image_size, prep.mean, prep.std, "none")(sample))

    if resume_dir is not None:
        run_dir = resume_dir
    elif dist_info.main:
        # The run folder is made only now, so a typo in the model name or broken data leaves no empty folder;
        # everything needed to repeat or evaluate the run is written into it before training starts.
        run_dir = new_run_dir(config.output, config.name, config.model)
        save_split(splits, run_dir / "split.csv", data_root)
        report_duplicates(splits, run_dir)
        write_skipped(bad, run_dir)
    if dist_info.enabled and resume_dir is None:
        run_dir = distributed.broadcast(run_dir if dist_info.main else None)
    logger.info(f"run folder: {run_dir}" + (f" (resumed at epoch {state['position']['epoch']}, step {state['position']['step']})" if state else ""))
    resolved = {
        **config.to_dict(),
        "data": str(Path(data).resolve()),
        "data_root": str(data_root),
        "classes": classes,
        "preprocessing": prep.to_dict(),
        "device": str(device),
        "precision": precision,
        "channels_last": channels_last,
        "command": command or sys.argv,
        "versions": library_versions(),
    }
    if dist_info.enabled:
        resolved["processes"] = dist_info.world
    if resume_dir is not None:
        resolved["resumed"] = [*read_run_config(run_dir).get("resumed", []), {"command": sys.argv, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}]
    if dist_info.main:
        atomic_write_text(run_dir / "config.json", json.dumps(resolved, indent=2) + "\n")
    logger.info(
        f"model {created.spec.source}:{created.spec.name} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M "
        f"parameters), input {prep.image_size}px, {device} {precision}, "
        f"images {'in memory' if train_store.in_memory else 'streamed from disk'}"
    )

    meta = checkpoint_meta(created, classes, prep, config)
    if state is not None and (run_dir / "last.json").is_file():
        meta["pretrained_from"] = read_sidecar(run_dir / "last.safetensors").get("pretrained_from")

    def save(kind: str, record: dict[str, Any]) -> None:
        save_checkpoint(run_dir / f"{kind}.safetensors", model, {**meta, "epoch": record["epoch"], "val_acc": record.get("val_acc")})

    best = BestCheckpoint(save, link=lambda src, dst: link_checkpoint(run_dir / f"{src}.safetensors", run_dir / f"{dst}.safetensors"))
    resume_state = ResumeState(lambda t: save_training_state(run_dir / RESUME_FILE, t, config), config.save_every_steps)
    keep = state["position"]["epoch"] if state else None
    # Early stopping decides from metrics summed over ranks, so every rank stops together; only rank 0 writes.
    callbacks: list[Callback] = [EarlyStopping(config.early_stopping)]
    if dist_info.main:
        callbacks = [Progress(config.epochs), MetricsCSV(run_dir / "metrics.csv", keep), *callbacks, best, resume_state]
    trainer = Trainer(
        torch.compile(model) if config.compile else model, ClassificationTask(len(classes), config.label_smoothing),
        device=device, precision=precision, channels_last=channels_last, callbacks=callbacks, generator=generator,
        accumulate=config.accumulate, skip_nonfinite=config.skip_nonfinite, dist_info=dist_info,
    )
    train_tf = BatchTransform(prep.image_size, prep.mean, prep.std, config.augment, config.hflip, channels_last)
    eval_tf = BatchTransform(prep.image_size, prep.mean, prep.std, "none", channels_last=channels_last)

    try:
        with stop_on_ctrl_c(trainer):
            for phase_index, (phase, epochs) in enumerate(plan_phases(config)):
                if state is not None and phase_index < state["position"]["phase_index"]:
                    continue  # finished before the run stopped
                optimizer = build_optimizer(phase_param_groups(model, phase, config), config.optimizer, config.resolved_lr, config.momentum)
                steps_per_epoch = train_store.num_batches(config.batch_size)
                warmup = min(epochs * steps_per_epoch // 2, round(config.warmup_epochs * steps_per_epoch))
                scheduler = build_scheduler(optimizer, epochs * steps_per_epoch, warmup, config.schedule)
                if state is not None:  # the phase that was running: weights, optimizer, schedule, random states, position
                    trainer.optimizer, trainer.scheduler = optimizer, scheduler
                    trainer.load_state_dict(state)
                    if config.transfer:  # batch norms with folded statistics stay frozen, as in the first run
                        freeze_folded_norms(model)
                    state = None
                trainer.fit(
                    train_store, val_store, epochs=epochs, batch_size=config.batch_size, optimizer=optimizer,
                    scheduler=scheduler, train_transform=train_tf, eval_transform=eval_tf, phase=phase, phase_index=phase_index,
                )
                if trainer.should_stop:
                    break
    except TrainingInterrupted:
        if dist_info.main:
            save_training_state(run_dir / RESUME_FILE, trainer, config)
        logger.warning(
            f"interrupted at epoch {trainer.epoch + 1}, step {trainer.position.step}: the state is saved; continue with "
            f"`deepfit train --resume {run_dir}`"
        )
        raise
    if trainer.skipped_steps:
        logger.warning(f"{trainer.skipped_steps} batches with a non-finite loss were skipped (--skip-nonfinite)")

    best_acc = best.best_score if val_store is not None and len(val_store) and dist_info.main else None
    if best_acc is not None:
        logger.info(f"best validation accuracy {best_acc:.2%} at epoch {best.best_epoch}; weights in {run_dir / 'best.safetensors'}")
    return TrainResult(run_dir, best_acc, best.best_epoch, classes)


@contextlib.contextmanager
def stop_on_ctrl_c(trainer: Trainer) -> Iterator[None]:
    """The first Ctrl-C asks the trainer to stop after the current step (it then saves a resumable state);
    a second one interrupts at once. Only in the main thread, where Python delivers signals."""
    # torchrun forwards Ctrl-C to every rank, which could stop at different steps: there it just interrupts
    if threading.current_thread() is not threading.main_thread() or trainer.dist.enabled:
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if trainer.stop_requested:
            raise KeyboardInterrupt
        trainer.stop_requested = True
        logger.warning("Ctrl-C: stopping after this step and saving a resumable state (press again to quit at once)")

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
