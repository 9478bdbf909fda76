"""Detection and instance segmentation on coco128: accuracy, wall time, and loop overhead against torchvision.

1. Speed: deepfit's engine (Trainer + DetectionTask, with the callbacks `deepfit train` uses: progress,
   metrics.csv, best/last checkpoints and the resumable state each epoch) against the essentials of
   torchvision's own detection training loop (references/detection/engine.py `train_one_epoch`: list of
   float images, model(images, targets), sum of the losses, backward, step; then the per-epoch checkpoint
   of references/detection/train.py), same model, same initial weights, same batches (order and
   augmentation) from the same loader, same optimizer; alternated, medians of `--repeats`.
2. Accuracy: `deepfit train --task detect` (Faster R-CNN) and `--task segment-instances` (Mask R-CNN) on
   coco128 train2017 with the shared ImageNet MobileNetV2 backbone, then `deepfit evaluate` on val2017
   (box and mask mAP), with wall times.

    uv run python bench/detection_coco128.py [--epochs 12] [--mask-epochs 8] [--image-size 384] [--only speed|accuracy]

Each part records its own section of BENCHMARKS.md, so they can be run (and re-run) apart.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from deepfit.config import TrainConfig
from deepfit.engine.callbacks import (
    BestCheckpoint,
    MetricsCSV,
    Progress,
    ResumeState,
    metric_columns,
)
from deepfit.engine.checkpoint import link_checkpoint, save_checkpoint, save_training_state
from deepfit.engine.trainer import Trainer
from deepfit.modalities.image.augment import to_unit_range
from deepfit.tasks.detect.data import read_detection
from deepfit.tasks.detect.model import DetectorSpec, build_detector
from deepfit.tasks.detect.objective import DetectionTask
from deepfit.tasks.detect.store import DetectionStore
from deepfit.workflows.evaluate import evaluate as evaluate_detector
from deepfit.workflows.train import train as train_detector

from common import SHARED, record, unpack

WEIGHTS = SHARED / "weights" / "mobilenet_v2.safetensors"
MODEL = "fasterrcnn:tv/mobilenet_v2"


def _model(classes: int, size: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_detector(DetectorSpec(MODEL, classes, size, size), backbone_weights=WEIGHTS)


def _optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    # the reference's defaults: SGD, momentum 0.9, weight decay 1e-4 (lr scaled down for 4 images a batch)
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.005, momentum=0.9, weight_decay=1e-4)


def reference_epoch(model: torch.nn.Module, store: DetectionStore, batch: int, seed: int, workdir: Path) -> float:
    """torchvision's train_one_epoch, essentials only, and the checkpoint its train.py saves after each epoch
    (model and optimizer state, torch.save); images per second over the epoch, loading and saving included."""
    optimizer = _optimizer(model)
    model.train()
    # the order and augmentation seed the Trainer draws from a generator seeded so: the very same batches
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(store), generator=generator)
    augment_seed = int(torch.randint(2**62, (1,), generator=generator))
    seen, started = 0, time.perf_counter()
    for images, targets, _ in store.batches(batch, order=order, seed=augment_seed):
        images = list(images.float() / 255)
        targets = [{"boxes": t["boxes"], "labels": t["labels"] + 1} for t in targets]
        loss_dict = model(images, targets)
        losses = sum(loss for loss in loss_dict.values())
        optimizer.zero_grad()
        losses.backward()
        optimizer.step()
        seen += len(images)
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 0}, workdir / f"model_{seed}.pth")
    return seen / (time.perf_counter() - started)


def deepfit_epoch(model: torch.nn.Module, store: DetectionStore, batch: int, seed: int, classes: list[str], workdir: Path) -> float:
    """One epoch through deepfit's Trainer with the callbacks `deepfit train` uses."""
    optimizer = _optimizer(model)
    meta = {"task": "detect", "classes": classes}
    config = TrainConfig(task="detect")
    callbacks = [
        Progress(1, live=False), MetricsCSV(workdir / "metrics.csv", None, metric_columns(DetectionTask(classes, masks=False))),
        BestCheckpoint(lambda kind, r: save_checkpoint(workdir / f"{kind}.safetensors", model, meta), monitor="val_map",
                       link=lambda src, dst: link_checkpoint(workdir / f"{src}.safetensors", workdir / f"{dst}.safetensors")),
        ResumeState(lambda t: save_training_state(workdir / "resume.pt", t, config)),
    ]
    trainer = Trainer(model, DetectionTask(classes, masks=False), device=torch.device("cpu"), precision="fp32",
                      callbacks=callbacks, generator=torch.Generator().manual_seed(seed))
    started = time.perf_counter()
    trainer.fit(store, None, epochs=1, batch_size=batch, optimizer=optimizer, scheduler=None,
                train_transform=to_unit_range, eval_transform=to_unit_range)
    return len(store) / (time.perf_counter() - started)


def speed(root: Path, size: int, batch: int, images: int, repeats: int) -> str:
    dataset = read_detection(root / "object_detection")
    samples = [s for s in dataset.samples if s.split == "train"][:images]
    store = DetectionStore(samples, size, train=True, masks=False, workers=0)
    ours, theirs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):  # alternated, so drifts of a shared machine hit both alike
            theirs.append(reference_epoch(_model(len(dataset.classes), size), store, batch, r, Path(tmp)))
            ours.append(deepfit_epoch(_model(len(dataset.classes), size), store, batch, r, dataset.classes, Path(tmp)))
            print(f"repeat {r + 1}: torchvision loop {theirs[-1]:.3f} img/s, deepfit {ours[-1]:.3f} img/s", flush=True)
    a, b = statistics.median(ours), statistics.median(theirs)
    return (
        f"Training speed, {MODEL} at {size}px, batch {batch}, {len(samples)} coco128 train images per epoch, fp32 on CPU, "
        f"medians of {repeats} alternated epochs; both include loading and augmentation of the same batches and their "
        "end-of-epoch checkpoint (torchvision's train.py: model + optimizer; deepfit: last + best + the resumable state):\n\n"
        f"| loop | images/s |\n|---|---|\n| torchvision's train_one_epoch (essentials) + its checkpoint | {b:.3f} |\n"
        f"| deepfit Trainer + DetectionTask + run callbacks | {a:.3f} |\n\n**deepfit / torchvision = {a / b:.3f}** (target ≥ 0.95)\n"
    )


def accuracy(root: Path, size: int, epochs: int, mask_epochs: int, output: Path) -> str:
    rows = []
    for task, folder, n in (("detect", "object_detection", epochs), ("segment-instances", "instance_segmentation", mask_epochs)):
        started = time.perf_counter()
        config = TrainConfig(task=task, epochs=n, image_size=size, weights=str(WEIGHTS), output=str(output))
        run = train_detector(root / folder, config)
        trained = time.perf_counter() - started
        evaluation = evaluate_detector(run.run_dir)
        total = time.perf_counter() - started
        mask = evaluation.mask
        rows.append(
            f"| {task} | {config.model} | {n} | {evaluation.box['map']:.4f} | {evaluation.box['map50']:.4f} | "
            f"{mask['map']:.4f} | {mask['map50']:.4f} | " if mask else
            f"| {task} | {config.model} | {n} | {evaluation.box['map']:.4f} | {evaluation.box['map50']:.4f} | – | – | "
        )
        rows[-1] += f"{trained / 60:.1f} min | {total / 60:.1f} min |"
        print(rows[-1], flush=True)
    return (
        f"coco128: trained on `train2017` (128 images), scored on `val2017` (the other 128), {size}px letterboxed, batch 4, "
        "AdamW lr 1e-3 (the defaults), backbone = the shared ImageNet MobileNetV2 (`../shared/weights/mobilenet_v2.safetensors`), "
        "pyramid and heads from random; validation box mAP each epoch picks the checkpoint; val2017 is therefore not an unseen "
        "test set (coco128 has none).\n\n"
        "| task | model | epochs | box mAP | box mAP50 | mask mAP | mask mAP50 | training | training + evaluation |\n"
        "|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--mask-epochs", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=384)
    parser.add_argument("--speed-images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=["speed", "accuracy"], help="run one part only")
    args = parser.parse_args()
    root = unpack("coco128.tar", "coco128")
    if args.only != "accuracy":
        record("detection-speed", "Detection training speed: deepfit's engine vs torchvision's loop",
               speed(root, args.image_size, 4, args.speed_images, args.repeats))
    if args.only != "speed":
        with tempfile.TemporaryDirectory() as tmp:
            body = accuracy(root, args.image_size, args.epochs, args.mask_epochs, Path(tmp))
        record("detection-coco128", "Detection and instance segmentation on coco128", body)


if __name__ == "__main__":
    main()
