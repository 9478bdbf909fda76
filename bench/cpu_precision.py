"""Precision on the CPU: training steps in fp32 and in bf16 autocast, for each task's model, alternated.

`--precision auto` picks bf16 autocast on a CPU that computes bf16 in hardware (engine/device.py). This measures
what that buys on this machine: the same training steps (forward, loss, backward, SGD step) of the same model from
the same weights, once in fp32 and once under `torch.autocast("cpu", torch.bfloat16)`, repeats alternated so drift
in the shared machine's speed hits both alike. Inputs are batches as deepfit's trainer sees them:

- classify: `fastnet` (the `cifar` preset) on 256 CIFAR-sized images, and `resnet18` at 224 px, batch 16;
- segment: `unet:tv/mobilenet_v2` at 256 px, batch 8, with deepfit's segmentation loss;
- detect: `fasterrcnn:tv/mobilenet_v2` at 320 px, batch 4, real coco128 batches through deepfit's loader and
  objective (the threaded RoIAlign of tasks/detect/roi.py included).

    uv run python bench/cpu_precision.py [--steps 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from deepfit.engine.device import cpu_has_native_bf16
from deepfit.modalities.image.augment import to_unit_range
from deepfit.models.small import FastNet
from deepfit.tasks.detect.data import read_detection
from deepfit.tasks.detect.model import DetectorSpec, build_detector
from deepfit.tasks.detect.objective import DetectionTask
from deepfit.tasks.detect.store import DetectionStore
from deepfit.tasks.segment.model import SegmenterSpec, build_segmenter
from deepfit.tasks.segment.objective import SegmentationTask

from common import SHARED, record, unpack

MOBILENET = SHARED / "weights" / "mobilenet_v2.safetensors"
Step = Callable[[], torch.Tensor]  # one batch's loss


def _classify(model: nn.Module, size: int, batch: int) -> tuple[nn.Module, Step]:
    model = model.to(memory_format=torch.channels_last)
    x = torch.rand(batch, 3, size, size).to(memory_format=torch.channels_last)  # (B, 3, S, S)
    y = torch.randint(0, 10, (batch,))
    return model, lambda: nn.functional.cross_entropy(model(x), y, label_smoothing=0.1)


def _segment() -> tuple[nn.Module, Step]:
    model = build_segmenter(SegmenterSpec("unet:tv/mobilenet_v2", 2), encoder_weights=MOBILENET)
    model = model.to(memory_format=torch.channels_last)
    task = SegmentationTask(2)
    x = torch.rand(8, 3, 256, 256).to(memory_format=torch.channels_last)  # (B, 3, H, W)
    masks = (torch.rand(8, 256, 256) > 0.5).long()  # (B, H, W)
    return model, lambda: task.training_loss(model, x, masks)[0]


def _detect() -> tuple[nn.Module, Step]:
    data = read_detection(unpack("coco128.tar", "coco128") / "object_detection")
    store = DetectionStore(data.samples, 320, train=True, masks=False, workers=0, hflip=True)
    batches = [b for _, b in zip(range(2), store.batches(4, order=torch.arange(8), seed=0), strict=False)]
    model = build_detector(DetectorSpec("fasterrcnn:tv/mobilenet_v2", len(data.classes), 320, 320), backbone_weights=MOBILENET)
    task = DetectionTask(data.classes, masks=False)
    turn = [0]

    def step() -> torch.Tensor:
        x, targets, _ = batches[turn[0] % len(batches)]
        turn[0] += 1
        return task.training_loss(model, to_unit_range(x), targets)[0]

    return model, step


CASES: dict[str, Callable[[], tuple[nn.Module, Step]]] = {
    "classify fastnet 32px, batch 256": lambda: _classify(FastNet(10), 32, 256),
    "classify resnet18 224px, batch 16": lambda: _classify(__import__("torchvision").models.resnet18(num_classes=10), 224, 16),
    "segment unet:tv/mobilenet_v2 256px, batch 8": _segment,
    "detect fasterrcnn:tv/mobilenet_v2 320px, batch 4": _detect,
}


def seconds_per_step(model: nn.Module, step: Step, bf16: bool, n: int) -> float:
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    model.train()

    def once() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = step()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    once()  # warm-up: oneDNN picks its kernels for the shapes and dtype
    started = time.perf_counter()
    for _ in range(n):
        once()
    return (time.perf_counter() - started) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for name, build in CASES.items():
        torch.manual_seed(0)
        model, step = build()
        initial = {k: v.clone() for k, v in model.state_dict().items()}
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.repeats):
            for bf16 in (False, True):
                model.load_state_dict(initial)  # both start from the same weights each time
                times[bf16].append(seconds_per_step(model, step, bf16, args.steps))
        fp32, bf16 = statistics.median(times[False]), statistics.median(times[True])
        print(f"{name}: fp32 {fp32:.3f} s/step, bf16 {bf16:.3f} s/step, {fp32 / bf16:.2f}x", flush=True)
        rows.append(f"| {name} | {fp32:.3f} | {bf16:.3f} | **{fp32 / bf16:.2f}x** |")
    native = "has" if cpu_has_native_bf16() else "does not have"
    record(
        "cpu-precision", "Precision on the CPU: fp32 against bf16 autocast",
        f"""
The same training steps (forward, loss, backward, SGD) of each task's model from the same weights, in fp32 and under
bf16 autocast, {args.steps} steps after a warm-up step per run, medians of {args.repeats} alternated repeats, {torch.get_num_threads()} threads.
This CPU {native} native bf16 (`avx512_bf16`/`amx_bf16`/`bf16` in /proc/cpuinfo), so `--precision auto` picks
{'bf16' if native == 'has' else 'fp32'} here.

| model | fp32 s/step | bf16 s/step | bf16 speed-up |
|---|---|---|---|
{chr(10).join(rows)}
""",
    )


if __name__ == "__main__":
    main()
