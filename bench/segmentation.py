"""Semantic segmentation: membrane and coco128 accuracy with wall times, and loop overhead against plain PyTorch.

1. membrane (shared membrane.tar, 30 EM images of 512 x 512 with 0/255 masks): a fixed split, images 0-23
   train and 24-29 test (no validation split: the last epoch is scored), U-Net on MobileNetV2 trained with
   `deepfit train --task segment` from the shared ImageNet weights and from scratch, the same epochs; IoU and
   Dice of each class from `deepfit evaluate`, wall times. In these masks 255 (read as class "foreground")
   is the inside of the cells and 0 ("background") the membranes between them.
2. coco128 semantic masks (shared coco128.tar, 100 train2017 + 100 val2017 images, 129 thing and stuff
   classes; 0 = unlabelled is ignored): train2017 for a fixed number of epochs (the CPU budget), then mIoU on
   val2017 as the test split.
3. Large images: peak memory and time of `SegmentationPredictor` (tiles of 1024 px) on 4096 x 3072 and 2048 x 1536
   images, each run in a fresh process (its peak resident memory, less the same process's before predicting), for
   2 and 80 classes, against the size of the K x H x W probabilities a whole-image prediction would hold.
4. Speed: deepfit's engine (Trainer + SegmentationTask with the callbacks `deepfit train` uses: progress,
   metrics.csv, best/last checkpoints and the resumable state each epoch) against a plain PyTorch loop
   (float images, model, cross-entropy, backward, step, and a torch.save checkpoint per epoch): same model, same
   initial weights, same batches (order and crops) from the same loader, same optimizer; alternated epochs,
   medians of `--repeats`.

    uv run python bench/segmentation.py [--only membrane|coco128|large|speed] [--epochs 40] [--coco-epochs 20]

Each part records its own section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import yaml

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
from deepfit.tasks.segment.data import read_segmentation
from deepfit.tasks.segment.model import SegmenterSpec, build_segmenter
from deepfit.tasks.segment.objective import SegmentationTask
from deepfit.tasks.segment.store import SegmentationStore
from deepfit.workflows.evaluate import evaluate as evaluate_segmenter
from deepfit.workflows.train import train as train_segmenter

from common import SHARED, cache, record, unpack

WEIGHTS = SHARED / "weights" / "mobilenet_v2.safetensors"
MODEL = "unet:tv/mobilenet_v2"


def membrane_split() -> Path:
    """The fixed 24/6 split as a folder of links: train/{image,label}/N.png for N < 24, test/... for the rest."""
    source = unpack("membrane.tar", "membrane")
    view = cache() / "membrane-24-6"
    for n in range(30):
        split = "train" if n < 24 else "test"
        for kind in ("image", "label"):
            link = view / split / kind / f"{n}.png"
            if not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(source / kind / f"{n}.png")
    return view


def _timed_run(data: Path, config: TrainConfig, **read: object) -> tuple[dict, float, float, Path]:
    started = time.perf_counter()
    run = train_segmenter(data, config, **read)
    trained = time.perf_counter() - started
    started = time.perf_counter()
    evaluation = evaluate_segmenter(run.run_dir)
    return evaluation.metrics, trained, time.perf_counter() - started, run.run_dir


def membrane(epochs: int, output: Path) -> None:
    data = membrane_split()
    rows = []
    for label, weights in (("ImageNet MobileNetV2 encoder", str(WEIGHTS)), ("from scratch", None)):
        config = TrainConfig(task="segment", model=MODEL, weights=weights, epochs=epochs, val_fraction=0.0, output=str(output))
        metrics, train_s, eval_s, _ = _timed_run(data, config)
        per = {c["class"]: c for c in metrics["per_class"]}
        rows.append(f"| {label} | {per['foreground']['iou']:.4f} | {per['foreground']['dice']:.4f} | {per['background']['iou']:.4f} | "
                    f"{metrics['miou']:.4f} | {metrics['pixel_accuracy']:.2%} | {train_s / 60:.1f} min | {eval_s:.1f} s |")
    body = (
        f"U-Net (`{MODEL}`), {epochs} epochs of 256 px random crops (batch 8, AdamW 1e-3, cosine, light augmentation: "
        "the defaults), images 0-23 to train, 24-29 to test (6 images of 512 x 512, scored whole), no validation split "
        "(the last epoch is scored). Foreground is the cells' inside (mask 255), background the membranes (mask 0).\n\n"
        "| encoder | foreground IoU | foreground Dice | membrane IoU | mIoU | pixel accuracy | training | evaluation |\n"
        "|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )
    record("segmentation-membrane", "Semantic segmentation: membrane (fixed 24/6 split)", body)


def coco128(epochs: int, output: Path) -> None:
    root = unpack("coco128.tar", "coco128")
    given = yaml.safe_load((root / "semantic_segmentation" / "config.yaml").read_text())
    spec = {
        "train": {"images": str(root / "images" / "train2017"), "masks": str(root / "semantic_segmentation" / "masks" / "train2017")},
        "test": {"images": str(root / "images" / "val2017"), "masks": str(root / "semantic_segmentation" / "masks" / "val2017")},
        "classes": given["classes"],
    }
    folder = cache() / "coco128-semantic-train-test"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    config = TrainConfig(task="segment", model=MODEL, weights=str(WEIGHTS), epochs=epochs, val_fraction=0.0, ignore_index=0,
                         output=str(output))
    metrics, train_s, eval_s, run_dir = _timed_run(folder, config, skip_unmasked=True)
    present = [c for c in metrics["per_class"] if c["iou"] is not None]
    best = sorted(present, key=lambda c: -c["iou"])[:5]
    body = (
        f"U-Net (`{MODEL}`) from the shared ImageNet MobileNetV2, {epochs} epochs of 256 px crops on the 100 train2017 "
        "images with a mask (batch 8, the defaults otherwise), scored on the 100 val2017 images as the test split "
        f"({len(json.loads((run_dir / 'config.json').read_text())['classes'])} classes; 0 = unlabelled ignored).\n\n"
        f"| CPU budget (training) | mIoU | mean Dice | pixel accuracy | classes scored | evaluation |\n|---|---|---|---|---|---|\n"
        f"| {train_s / 60:.1f} min ({epochs} epochs) | {metrics['miou']:.4f} | {metrics['mean_dice']:.4f} | "
        f"{metrics['pixel_accuracy']:.2%} | {len(present)} | {eval_s:.1f} s |\n\n"
        "Best classes: " + ", ".join(f"{c['class']} {c['iou']:.3f}" for c in best) + ".\n"
    )
    record("segmentation-coco128", "Semantic segmentation: coco128 mIoU on a fixed CPU budget", body)


# --- large images -----------------------------------------------------------------------------------

_LARGE = """
import resource, sys, time, torch
from deepfit.tasks.segment.model import SegmenterSpec, build_segmenter
from deepfit.tasks.segment.predict import SegmentationPredictor, TrainedSegmenter
k, height, width = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
model = build_segmenter(SegmenterSpec("unet:tv/mobilenet_v2", k)).eval()
trained = TrainedSegmenter(model, SegmenterSpec("unet:tv/mobilenet_v2", k), [str(i) for i in range(k)],
                           {"colors": [[0, 0, 0]] * k}, 1024, {})
image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8)
predictor = SegmentationPredictor(trained, "cpu")
predictor.predict(image[:, :64, :64])  # first-call allocations, not the image's
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
mask = predictor.predict(image)
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(mask.shape[0], mask.shape[1], seconds, before * 1024, peak * 1024)
"""


def large() -> None:
    import subprocess
    import sys

    rows = []
    for k, height, width in ((2, 3072, 4096), (80, 1536, 2048), (80, 3072, 4096)):
        done = subprocess.run([sys.executable, "-c", _LARGE, str(k), str(height), str(width)], capture_output=True, text=True,
                              check=True)
        h, w, seconds, before, peak = done.stdout.split()
        assert (int(h), int(w)) == (height, width)
        whole = k * height * width * 4
        rows.append(f"| {width} x {height} | {k} | {float(seconds):.1f} s | {(float(peak) - float(before)) / 2**30:.2f} GiB | {float(peak) / 2**30:.2f} GiB | "
                    f"{whole / 2**30:.2f} GiB |")
    body = (
        "`SegmentationPredictor` (`unet:tv/mobilenet_v2`, untrained: time and memory do not depend on the weights) on one "
        "large image, tiles of 1024 px overlapping by 128, fp32 on the CPU, each run in a fresh process. Peak "
        "memory is the process's peak resident set (ru_maxrss); its growth is that peak less the peak before the prediction "
        "(the model loaded and a small image predicted once).\n\n"
        "| image | classes | time | peak memory growth | process peak | K x H x W fp32 probabilities (not held) |\n"
        "|---|---|---|---|---|---|\n"
        + "\n".join(rows) + "\n"
    )
    record("segmentation-large", "Semantic segmentation: large images in tiles", body)


# --- speed ---------------------------------------------------------------------------------------------


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_segmenter(SegmenterSpec(MODEL, 2), encoder_weights=WEIGHTS)


def reference_epochs(model: torch.nn.Module, store: SegmentationStore, batch: int, epochs: int, seed: int, workdir: Path) -> float:
    """A plain PyTorch loop over the same batches the Trainer draws (same generator seed); images/s, loading and
    the per-epoch checkpoint included."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    model.train()
    generator = torch.Generator().manual_seed(seed)
    seen, started = 0, time.perf_counter()
    for epoch in range(epochs):
        order = torch.randperm(len(store), generator=generator)
        crop_seed = int(torch.randint(2**62, (1,), generator=generator))
        for images, masks, _ in store.batches(batch, order=order, seed=crop_seed):
            logits = model(images.float() / 255)
            loss = torch.nn.functional.cross_entropy(logits, masks.long(), ignore_index=255)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seen += len(images)
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch}, workdir / f"model_{seed}.pth")
    return seen / (time.perf_counter() - started)


def deepfit_epochs(model: torch.nn.Module, store: SegmentationStore, batch: int, epochs: int, seed: int, workdir: Path) -> float:
    """deepfit's Trainer with the callbacks of `deepfit train`; images/s over the same epochs."""
    config = TrainConfig(task="segment", epochs=epochs, batch_size=batch, save_every_steps=0)
    run = workdir / f"run_{seed}"
    run.mkdir()

    def save(kind: str, rec: dict) -> None:
        save_checkpoint(run / f"{kind}.safetensors", model, {"task": "segment", "epoch": rec["epoch"]})

    task = SegmentationTask(2)
    best = BestCheckpoint(save, monitor=task.monitor, link=lambda s, d: link_checkpoint(run / f"{s}.safetensors", run / f"{d}.safetensors"))
    callbacks = [Progress(epochs, live=False), MetricsCSV(run / "metrics.csv", None, metric_columns(task)), best,
                 ResumeState(lambda t: save_training_state(run / "resume.pt", t, config))]
    trainer = Trainer(model, task, device=torch.device("cpu"), precision="fp32", callbacks=callbacks,
                      generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    started = time.perf_counter()
    trainer.fit(store, None, epochs=epochs, batch_size=batch, optimizer=optimizer, scheduler=None, train_transform=to_unit_range,
                eval_transform=to_unit_range)
    return epochs * len(store) / (time.perf_counter() - started)


def speed(repeats: int, epochs: int) -> None:
    dataset = read_segmentation(membrane_split())  # all 30 images
    store = SegmentationStore(dataset, dataset.samples, 256, train=True, augment="light", workers=1)
    batch = 8
    ours, theirs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        # one unmeasured epoch of each first: imports, first allocations and first file writes are paid once per process
        reference_epochs(_model(), store, batch, 1, 99, Path(tmp))
        deepfit_epochs(_model(), store, batch, 1, 99, Path(tmp))
        for r in range(repeats):
            seed = 100 + r
            theirs.append(reference_epochs(_model(), store, batch, epochs, seed, Path(tmp)))
            ours.append(deepfit_epochs(_model(), store, batch, epochs, seed, Path(tmp)))
            print(f"repeat {r + 1}: plain loop {theirs[-1]:.2f} img/s, deepfit {ours[-1]:.2f} img/s", flush=True)
    ratios = [o / t for o, t in zip(ours, theirs, strict=True)]
    body = (
        f"U-Net (`{MODEL}`, ImageNet encoder), membrane's 30 images as 256 px random crops, batch 8, AdamW, fp32 on the CPU, "
        f"{epochs} epochs a measurement, alternated, {repeats} repeats after one unmeasured warm-up epoch of each; loading "
        "(1 worker) and per-epoch checkpoints included on both sides.\n\n"
        "| | images/s (median) | each repeat |\n|---|---|---|\n"
        f"| plain PyTorch loop | {statistics.median(theirs):.2f} | {', '.join(f'{v:.2f}' for v in theirs)} |\n"
        f"| deepfit engine | {statistics.median(ours):.2f} | {', '.join(f'{v:.2f}' for v in ours)} |\n\n"
        f"**deepfit / plain loop: {statistics.median(ratios):.3f}** (median of the per-repeat ratios; each repeat "
        f"{', '.join(f'{v:.3f}' for v in ratios)}; target >= 0.95)\n"
    )
    record("segmentation-speed", "Semantic segmentation: training speed against a plain PyTorch loop", body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["membrane", "coco128", "large", "speed"])
    parser.add_argument("--epochs", type=int, default=40, help="membrane epochs (each run)")
    parser.add_argument("--coco-epochs", type=int, default=20, help="coco128 epochs: the CPU budget")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--speed-epochs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "speed"):
            speed(args.repeats, args.speed_epochs)
        if args.only in (None, "membrane"):
            membrane(args.epochs, Path(tmp))
        if args.only in (None, "coco128"):
            coco128(args.coco_epochs, Path(tmp))
        if args.only in (None, "large"):
            large()


if __name__ == "__main__":
    main()
