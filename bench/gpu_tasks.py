"""Detection and semantic segmentation on the GPU: deepfit's engine against a plain PyTorch loop.

As bench/detection_coco128.py and bench/segmentation.py do on the CPU, but on the device in bf16: the same
model and initial weights, the same batches (order and augmentation, from the same store and its loading
workers), the same optimizer, each side with its end-of-epoch checkpoint (the plain loop's torch.save of model
and optimizer; deepfit's last/best checkpoints and resumable state, with the callbacks `deepfit train` uses).
Epochs alternate between the two, after one unmeasured epoch of each; the ratio is the median of the repeats'.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deepfit.config import TrainConfig
from deepfit.engine.callbacks import BestCheckpoint, MetricsCSV, Progress, ResumeState, metric_columns
from deepfit.engine.checkpoint import link_checkpoint, save_checkpoint, save_training_state
from deepfit.engine.trainer import Trainer
from deepfit.modalities.image.augment import to_unit_range
from deepfit.modalities.image.store import default_workers
from deepfit.tasks.detect.data import read_detection
from deepfit.tasks.detect.model import DetectorSpec, build_detector
from deepfit.tasks.detect.objective import DetectionTask
from deepfit.tasks.detect.store import DetectionStore
from deepfit.tasks.segment.data import read_segmentation
from deepfit.tasks.segment.model import SegmenterSpec, build_segmenter
from deepfit.tasks.segment.objective import SegmentationTask
from deepfit.tasks.segment.store import SegmentationStore
from gpu_common import Context

DETECTOR = "fasterrcnn:tv/mobilenet_v2"
SEGMENTER = "unet:tv/mobilenet_v2"


def _precision(ctx: Context) -> torch.autocast:
    return torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=ctx.cuda)


def _workers(ctx: Context) -> int:
    """deepfit's own choice for per-sample loading (runs/session.workers_for); none in a smoke run, where starting
    processes would cost more than the few images they load."""
    return 0 if ctx.smoke else min(4, default_workers())


def deepfit_epoch(ctx: Context, model: nn.Module, task: Any, store: Any, batch: int, seed: int, workdir: Path,
                  optimizer: torch.optim.Optimizer, transform: Callable) -> float:
    """One epoch through deepfit's Trainer with the callbacks of `deepfit train`; images/s, checkpoints included."""
    run = workdir / f"deepfit-{seed}"
    run.mkdir(parents=True, exist_ok=True)
    config = TrainConfig(task="segment" if isinstance(task, SegmentationTask) else "detect", epochs=1, batch_size=batch)
    meta = {"task": config.task}
    best = BestCheckpoint(lambda kind, rec: save_checkpoint(run / f"{kind}.safetensors", model, meta), monitor=task.monitor,
                          link=lambda src, dst: link_checkpoint(run / f"{src}.safetensors", run / f"{dst}.safetensors"))
    callbacks = [Progress(1, live=False), MetricsCSV(run / "metrics.csv", None, metric_columns(task)), best,
                 ResumeState(lambda t: save_training_state(run / "resume.pt", t, config))]
    trainer = Trainer(model, task, device=ctx.device, precision="bf16" if ctx.cuda else "fp32", callbacks=callbacks,
                      generator=torch.Generator().manual_seed(seed))
    started = time.perf_counter()
    trainer.fit(store, None, epochs=1, batch_size=batch, optimizer=optimizer, scheduler=None, train_transform=transform,
                eval_transform=transform)
    return len(store) / (time.perf_counter() - started)


def _same_batches(store: Any, batch: int, seed: int) -> Any:
    """The batches the Trainer draws for its first epoch with a generator seeded so: order, then augmentation seed."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(store), generator=generator)
    return store.batches(batch, order=order, seed=int(torch.randint(2**62, (1,), generator=generator)))


def plain_detection_epoch(ctx: Context, model: nn.Module, store: DetectionStore, batch: int, seed: int, workdir: Path,
                          optimizer: torch.optim.Optimizer) -> float:
    """torchvision's references/detection train_one_epoch, essentials only, on the device; and its checkpoint."""
    model.train()
    started = time.perf_counter()
    for images, targets, _ in _same_batches(store, batch, seed):
        images = list(images.to(ctx.device, non_blocking=True).float() / 255)
        targets = [{"boxes": t["boxes"].to(ctx.device), "labels": t["labels"].to(ctx.device) + 1} for t in targets]
        with _precision(ctx):
            losses = sum(model(images, targets).values())
        optimizer.zero_grad()
        losses.backward()
        optimizer.step()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, workdir / f"plain-{seed}.pth")
    ctx.sync()
    return len(store) / (time.perf_counter() - started)


def plain_segmentation_epoch(ctx: Context, model: nn.Module, store: SegmentationStore, batch: int, seed: int, workdir: Path,
                             optimizer: torch.optim.Optimizer) -> float:
    """Images, model, cross-entropy, backward, step; and a torch.save checkpoint."""
    model.train()
    started = time.perf_counter()
    for images, masks, _ in _same_batches(store, batch, seed):
        with _precision(ctx):
            logits = model(images.to(ctx.device, non_blocking=True).float() / 255)
        loss = F.cross_entropy(logits.float(), masks.to(ctx.device).long(), ignore_index=255)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, workdir / f"plain-{seed}.pth")
    ctx.sync()
    return len(store) / (time.perf_counter() - started)


def alternate(ctx: Context, result: dict, make_model: Callable[[], nn.Module], make_optimizer: Callable, plain: Callable,
              ours: Callable, repeats: int) -> None:
    """One unmeasured epoch of each, then `repeats` alternated pairs (so a drift in the machine's speed hits both)."""
    result.update(plain_images_per_s=[], deepfit_images_per_s=[])
    initial = make_model()  # built once; each epoch starts from a copy of the same weights
    for r in range(repeats + 1):
        seed = 100 + r
        model = copy.deepcopy(initial)
        speed = plain(model, seed, make_optimizer(model))
        if r:
            result["plain_images_per_s"].append(round(speed, 2))
        model = copy.deepcopy(initial)
        speed = ours(model, seed, make_optimizer(model))
        if r:
            result["deepfit_images_per_s"].append(round(speed, 2))
        ctx.save()
    ratios = [o / p for o, p in zip(result["deepfit_images_per_s"], result["plain_images_per_s"], strict=True)]
    result["ratios"] = [round(v, 3) for v in ratios]
    result["ratio"] = round(statistics.median(ratios), 3)


def detection_section(ctx: Context, result: dict) -> None:
    s = ctx.scale
    dataset = read_detection(ctx.data.detection)
    train = [x for x in dataset.samples if x.split in (None, "train")]
    samples = [train[i % len(train)] for i in range(s.detection_images)]
    store = DetectionStore(samples, s.detection_size, train=True, masks=False, workers=_workers(ctx))
    task = DetectionTask(dataset.classes, masks=False)
    result.update(model=DETECTOR, image_size=s.detection_size, batch=s.detection_batch, images_per_epoch=len(store),
                  distinct_images=len(train), workers=_workers(ctx), precision="bf16" if ctx.cuda else "fp32")

    def make_model() -> nn.Module:
        torch.manual_seed(0)  # random backbone: speed does not depend on the weights
        return build_detector(DetectorSpec(DETECTOR, len(dataset.classes), s.detection_size, s.detection_size)).to(ctx.device)

    def optimizer(model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.005, momentum=0.9, weight_decay=1e-4)

    work = ctx.work / "detection"
    work.mkdir(parents=True, exist_ok=True)
    alternate(ctx, result, make_model, optimizer,
              lambda m, seed, opt: plain_detection_epoch(ctx, m, store, s.detection_batch, seed, work, opt),
              lambda m, seed, opt: deepfit_epoch(ctx, m, task, store, s.detection_batch, seed, work, opt, to_unit_range),
              s.task_repeats)


def segmentation_section(ctx: Context, result: dict) -> None:
    s = ctx.scale
    dataset = read_segmentation(ctx.data.membrane)
    samples = [dataset.samples[i % len(dataset.samples)] for i in range(s.segmentation_images)]
    store = SegmentationStore(dataset, samples, s.segmentation_size, train=True, augment="light", workers=_workers(ctx))
    task = SegmentationTask(2)
    result.update(model=SEGMENTER, crop=s.segmentation_size, batch=s.segmentation_batch, images_per_epoch=len(store),
                  distinct_images=len(dataset.samples), workers=_workers(ctx), precision="bf16" if ctx.cuda else "fp32")

    def make_model() -> nn.Module:
        torch.manual_seed(0)
        return build_segmenter(SegmenterSpec(SEGMENTER, 2)).to(ctx.device)

    def optimizer(model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)

    work = ctx.work / "segmentation"
    work.mkdir(parents=True, exist_ok=True)
    alternate(ctx, result, make_model, optimizer,
              lambda m, seed, opt: plain_segmentation_epoch(ctx, m, store, s.segmentation_batch, seed, work, opt),
              lambda m, seed, opt: deepfit_epoch(ctx, m, task, store, s.segmentation_batch, seed, work, opt, to_unit_range),
              s.task_repeats)
