"""Does detection training use every CPU core? Mask R-CNN training steps with RoIAlign on one thread and on all.

torchvision's CPU RoIAlign kernels run on one thread; deepfit splits them over the cores (tasks/detect/roi.py).
This measures training images/s and the CPU time per second of wall time (200% = both cores of this machine
busy) of the same steps, same batches and same initial weights, with the threaded RoIAlign off and on,
alternated: deepfit's loader and objective (`DetectionStore`, `DetectionTask.training_loss`), SGD.

    uv run python bench/detection_cores.py [--kind maskrcnn] [--steps 6] [--repeats 3] [--image-size 320]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from deepfit.modalities.image.augment import to_unit_range
from deepfit.tasks.detect import roi
from deepfit.tasks.detect.data import read_detection
from deepfit.tasks.detect.model import DetectorSpec, build_detector
from deepfit.tasks.detect.objective import DetectionTask
from deepfit.tasks.detect.store import DetectionStore

from common import SHARED, record, unpack

BATCH = 4


def steps(kind: str, size: int, n: int, threaded: bool, store: DetectionStore, classes: list[str]) -> tuple[float, float]:
    """(images/s, CPU seconds of this process and its loader workers per wall second) over n steps after one."""
    roi.THREADED = threaded
    torch.manual_seed(0)
    model = build_detector(DetectorSpec(f"{kind}:tv/mobilenet_v2", len(classes), size, size),
                           backbone_weights=SHARED / "weights" / "mobilenet_v2.safetensors")
    task = DetectionTask(classes, masks=kind == "maskrcnn")
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.005, momentum=0.9)
    model.train()
    batches = iter(store.batches(BATCH, order=torch.arange(BATCH * (n + 1)), seed=0))

    def step() -> None:
        x, targets, _ = next(batches)
        loss, _ = task.training_loss(model, to_unit_range(x), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()  # warm-up: allocator, first loader batch
    cpu0, wall0 = os.times(), time.perf_counter()
    for _ in range(n):
        step()
    cpu1, wall = os.times(), time.perf_counter() - wall0
    cpu = sum(getattr(cpu1, k) - getattr(cpu0, k) for k in ("user", "system", "children_user", "children_system"))
    return BATCH * n / wall, cpu / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", default="maskrcnn", choices=("maskrcnn", "fasterrcnn"))
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=320)
    args = parser.parse_args()
    data = read_detection(unpack("coco128.tar", "coco128") / "instance_segmentation")
    store = DetectionStore(data.samples, args.image_size, train=True, masks=args.kind == "maskrcnn", workers=1, hflip=True)
    runs: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for _ in range(args.repeats):  # alternate, so drift in machine speed hits both alike
        for threaded in (False, True):
            runs[threaded].append(steps(args.kind, args.image_size, args.steps, threaded, store, data.classes))
            speed, cpu = runs[threaded][-1]
            print(f"threaded RoIAlign {'on' if threaded else 'off'}: {speed:.2f} images/s, CPU {cpu:.0%}", flush=True)

    def cells(threaded: bool) -> str:
        speeds, cpus = zip(*runs[threaded], strict=True)
        return (f"{statistics.median(speeds):.2f} | {statistics.median(cpus):.0%} | "
                f"{', '.join(f'{s:.2f}' for s in speeds)}")

    ratio = statistics.median(s for s, _ in runs[True]) / statistics.median(s for s, _ in runs[False])
    record(
        f"detection-cores-{args.kind}", f"Detection training on every CPU core ({args.kind}:tv/mobilenet_v2)",
        f"""
Training steps of `{args.kind}:tv/mobilenet_v2` at {args.image_size}px, batch {BATCH}, coco128 `instance_segmentation`
through deepfit's loader (1 worker) and objective, fp32 on {torch.get_num_threads()} threads; {args.steps} steps after one
warm-up step per run, {args.repeats} alternating repeats. CPU is the CPU time of the process and its loader workers
per second of wall time (200% = both cores busy).

| RoIAlign | images/s (median) | CPU (median) | each repeat |
|---|---|---|---|
| torchvision's, one thread | {cells(False)} |
| deepfit's, over {torch.get_num_threads()} threads | {cells(True)} |

**Speed-up: {ratio:.2f}x.** torch.profiler put torchvision's RoIAlign backward at about a quarter of a Mask R-CNN
step on one thread; split over the cores (tasks/detect/roi.py), the step keeps both busy.
""",
    )


if __name__ == "__main__":
    main()
