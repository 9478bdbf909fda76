"""Training throughput: `deepfit train` against a plain, hand-written PyTorch loop, in one run.

Both train the same network (deepfit's `fastnet`) on the same CIFAR-10 images held in memory as
uint8, with the same batch size, optimizer, dtype (fp32 on CPU), memory format and augmentation
(4-pixel random translation + horizontal flip). The first epoch of each is warm-up and not counted.

    uv run python bench/throughput.py [--images 10000] [--epochs 3] [--repeats 2]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from deepfit.models.small import FastNet
from deepfit.presets import apply_preset
from deepfit.workflows.train import train

from common import record, unpack

BATCH = 256


def subset(root: Path, n: int) -> list[tuple[Path, str]]:
    classes = sorted(p.name for p in (root / "train").iterdir())
    per_class = n // len(classes)
    return [(f, c) for c in classes for f in sorted((root / "train" / c).glob("*.jpg"))[:per_class]]


def deepfit_speed(items: list[tuple[Path, str]], epochs: int, workdir: Path, **options: object) -> float:
    csv_path = workdir / "data" / "subset.csv"
    csv_path.parent.mkdir(exist_ok=True)
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        writer.writerows((str(p), c) for p, c in items)
    config = apply_preset("cifar", {
        "epochs": epochs, "batch_size": BATCH, "val_fraction": 0.01, "test_fraction": 0.0, "tta": False,
        "output": str(workdir / "runs"), "workers": 1, **options,
    })
    run = train(csv_path, config).run_dir
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    return statistics.mean(float(r.get("samples_per_s") or r["images_per_s"]) for r in rows[1:])


def plain_speed(items: list[tuple[Path, str]], epochs: int) -> float:
    """The reference: what a careful user writes by hand with PyTorch alone."""
    classes = sorted({c for _, c in items})
    images = torch.from_numpy(np.stack([np.asarray(Image.open(p).convert("RGB")) for p, _ in items])).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor([classes.index(c) for _, c in items])
    mean = images.float().mean(dim=(0, 2, 3)).view(1, 3, 1, 1) / 255
    std = images.float().std(dim=(0, 2, 3)).view(1, 3, 1, 1) / 255
    torch.manual_seed(0)
    model = FastNet(num_classes=len(classes)).to(memory_format=torch.channels_last)
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0}],
                          lr=0.2, momentum=0.9, nesterov=True)
    steps = epochs * ((len(images) + BATCH - 1) // BATCH)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.2, total_steps=steps, anneal_strategy="linear")
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.2)
    speeds = []
    for _ in range(epochs):
        model.train()
        start = time.perf_counter()
        order = torch.randperm(len(images))
        for i in range(0, len(images), BATCH):
            idx = order[i : i + BATCH]
            x = images[idx].float()
            padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
            dx, dy = torch.randint(0, 9, (2, len(idx))).tolist()
            x = torch.stack([padded[j, :, dy[j] : dy[j] + 32, dx[j] : dx[j] + 32] for j in range(len(idx))])
            flip = torch.rand(len(idx)) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
            x = ((x / 255 - mean) / std).contiguous(memory_format=torch.channels_last)
            loss = loss_fn(model(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        speeds.append(len(images) / (time.perf_counter() - start))
    return statistics.mean(speeds[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    items = subset(unpack("cifar10.tar.gz", "cifar10"), args.images)
    ours, ref = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):  # alternate, so drift in machine speed hits both alike
            ours.append(deepfit_speed(items, args.epochs, Path(tmp)))
            ref.append(plain_speed(items, args.epochs))
            print(f"deepfit {ours[-1]:.0f} img/s, plain loop {ref[-1]:.0f} img/s", flush=True)
    ratio = statistics.mean(ours) / statistics.mean(ref)
    record(
        "throughput", "Training throughput: deepfit vs a plain PyTorch loop (CIFAR-10, CPU)",
        f"""
Same model (`fastnet`, {sum(p.numel() for p in FastNet().parameters()) / 1e6:.2f}M parameters), batch {BATCH}, fp32,
channels-last, {len(items)} CIFAR-10 training images in memory, 4-px translation + flip, SGD; {args.epochs} epochs per run,
first epoch not counted, {args.repeats} alternating repeats.

| loop | images/s (mean of repeats) | each repeat |
|---|---|---|
| deepfit `train` | {statistics.mean(ours):.0f} | {', '.join(f'{v:.0f}' for v in ours)} |
| plain PyTorch loop | {statistics.mean(ref):.0f} | {', '.join(f'{v:.0f}' for v in ref)} |

**Ratio deepfit / plain: {ratio:.3f}** (target >= 0.95). The plain loop cuts its random crops image by image
in Python, as most hand-written loops do; deepfit cuts them for the whole batch in one `roi_align` call.
""",
    )


if __name__ == "__main__":
    main()
