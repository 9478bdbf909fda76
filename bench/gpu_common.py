"""What the sections of bench/gpu.py share: sizes (full or smoke), the device, time limits, timing and FLOPs.

A section is a function `fn(ctx, result)` that fills the dict `result` as it goes; the runner gives it a
time limit, catches its failure (or its time running out) and records the error in the JSON beside what
the section had already measured, so one broken section never loses the others' figures.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:  # deepfit is not installed on the device machine: import it from the tree
    sys.path.insert(0, str(REPO / "src"))

import torch  # noqa: E402

from deepfit.engine.interfaces import Callback  # noqa: E402
from deepfit.engine.trainer import Trainer  # noqa: E402
from gpu_data import Data  # noqa: E402

# Dense (no 2:4 sparsity) bf16 tensor-core peaks from NVIDIA's data sheets, TFLOP/s, matched in order against
# torch.cuda.get_device_name(): "NVIDIA H100 80GB HBM3" is the SXM board; the H200 is the same chip.
PEAK_BF16_TFLOPS: list[tuple[str, float]] = [
    ("H100 NVL", 835.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("H200 NVL", 835.0), ("H200", 989.0),
    ("GH200", 989.0), ("B200", 2250.0), ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0), ("A10", 125.0),
]


@dataclass
class Scale:
    """Every size the sections use: the full run on the device, or --smoke on a CPU in seconds."""

    cifar_ladder: list[dict]  # deepfit configurations tried in order until one reaches cifar_target
    cifar_target: float = 0.94
    cifar_repeats: int = 1  # airbench94 runs (its accuracy varies by about 0.15% from run to run)
    resnet_model: str = "resnet50"
    resnet_size: int = 224  # training input; images are stored at 256 (the 0.875 crop of ImageNet recipes)
    resnet_batch: int = 256
    resnet_steps: int = 24  # timed steps of each ResNet measurement, after resnet_warmup untimed ones
    resnet_warmup: int = 6
    detection_size: int = 512
    detection_batch: int = 8
    detection_images: int = 96  # per epoch (the slice's images repeated)
    segmentation_size: int = 256
    segmentation_batch: int = 16
    segmentation_images: int = 256  # crops per epoch
    task_repeats: int = 3  # alternated epochs of deepfit and the plain loop
    oom_hidden: int = 4096  # width of the out-of-memory check's hidden layers
    oom_batch: int = 65536  # a batch whose step needs about 4x the memory of a quarter of it
    matmul: int = 8192
    compile: str = "auto"  # torch.compile in the CIFAR runs: auto = where the warm-up shows it pays


FULL = Scale(cifar_ladder=[
    # the `cifar` preset (widths [32, 64, 128], 13 epochs, batch 256, lr 0.2: 88% on the CPU budget) scaled up, cheapest
    # first (0.64, 1.4 and 2.3 PFLOP of training; airbench94 takes 0.36). [128, 256, 512] is the ResNet-9 of the CIFAR-10 records
    # (Page 2018: 94% in 24 epochs plain, in 10 with more tricks than deepfit has), lr 0.4 and wd 5e-4 at batch 512 as there.
    {"widths": [64, 256, 256], "epochs": 16, "batch_size": 512, "lr": 0.4},
    {"widths": [128, 256, 512], "epochs": 12, "batch_size": 512, "lr": 0.4},
    {"widths": [128, 256, 512], "epochs": 20, "batch_size": 512, "lr": 0.4},
])
SMOKE = Scale(
    cifar_ladder=[{"widths": [8, 16, 16], "epochs": 1, "batch_size": 16, "lr": 0.1},
                  {"widths": [8, 16, 16], "epochs": 2, "batch_size": 16, "lr": 0.1}],
    cifar_target=1.01,  # unreachable: the smoke run walks the whole ladder
    resnet_model="resnet18", resnet_size=48, resnet_batch=4, resnet_steps=2, resnet_warmup=1,
    detection_size=128, detection_batch=2, detection_images=4, segmentation_size=48, segmentation_batch=2,
    segmentation_images=4, task_repeats=1, oom_hidden=32, oom_batch=64, matmul=128, compile="off",
)


class SectionTimeout(Exception):
    """A section ran past its time limit."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise SectionTimeout in the main thread after `seconds` (SIGALRM; Python code only, which all of ours is)."""
    def expire(signum: int, frame: Any) -> None:
        raise SectionTimeout(f"time limit of {seconds:.0f} s reached")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class Context:
    device: torch.device
    smoke: bool
    scale: Scale
    data: Data
    work: Path  # scratch space: run folders, unpacked data
    out: Path  # where gpu.json goes ($OUT on the device machine)
    deadline: float  # time.perf_counter() by which everything must be done
    results: dict = field(default_factory=dict)
    section_deadline: float = float("inf")  # when the running section's time is up

    def section_left(self) -> float:
        """Seconds the running section has left: for steps it can skip when they would not fit."""
        return self.section_deadline - time.perf_counter()

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def remaining(self) -> float:
        return self.deadline - time.perf_counter()

    def save(self) -> None:
        """Write the JSON now (after every section and measurement): a run cut short keeps what it had."""
        path = self.out / "gpu.json"
        path.write_text(json.dumps(self.results, indent=2, default=str) + "\n")

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)


def run_section(ctx: Context, name: str, fn: Callable[[Context, dict], None], limit_s: float) -> None:
    """Run one section under its time limit (less if the whole run's deadline comes first), recording its
    figures, its status (ok, error, timeout, skipped), its error, its seconds and its peak GPU memory."""
    limit = min(limit_s, ctx.remaining() - 5)
    result: dict[str, Any] = {"status": "running", "limit_s": round(limit)}
    ctx.results["sections"][name] = result
    if limit < min(limit_s, 10):  # the run's deadline would cut the section short: leave its time to the JSON's writing
        result.update(status="skipped", error=f"only {ctx.remaining():.0f} s of the run's time left")
        ctx.save()
        return
    print(f"== {name} (limit {limit:.0f} s)", flush=True)
    if ctx.cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(ctx.device)
    started = time.perf_counter()
    ctx.section_deadline = started + limit
    try:
        with time_limit(limit):
            fn(ctx, result)
        result["status"] = "ok"
    except Exception as e:  # noqa: BLE001 - any failure is recorded, and the next section runs
        result["status"] = "timeout" if isinstance(e, SectionTimeout) else "error"
        result["error"] = "".join(traceback.format_exception(e)[-6:])[-3000:]
        print(f"!! {name}: {result['status']}: {e}", flush=True)
    finally:
        result["seconds"] = round(time.perf_counter() - started, 1)
        if ctx.cuda:
            result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(ctx.device) / 2**30, 2)
        ctx.save()
    print(f"== {name}: {result['status']} in {result['seconds']} s", flush=True)


# --- the machine -------------------------------------------------------------------------------------


def peak_bf16_tflops(name: str) -> float | None:
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)


def environment(ctx: Context) -> dict[str, Any]:
    import torchvision

    info: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
        "cpus": os.cpu_count(), "device": str(ctx.device), "smoke": ctx.smoke,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
    }
    if ctx.cuda:
        props = torch.cuda.get_device_properties(ctx.device)
        info.update(gpu=props.name, capability=f"{props.major}.{props.minor}", memory_gib=round(props.total_memory / 2**30, 1),
                    multiprocessors=props.multi_processor_count, cuda=torch.version.cuda,
                    peak_bf16_tflops=peak_bf16_tflops(props.name))
    else:
        info.update(gpu=None, peak_bf16_tflops=None)
    info["matmul_bf16_tflops"] = round(matmul_tflops(ctx, ctx.scale.matmul), 1)
    return info


def matmul_tflops(ctx: Context, n: int) -> float:
    """bf16 n x n x n matrix products on random data, TFLOP/s: what this card delivers at best, beside its data sheet."""
    a = torch.randn(n, n, device=ctx.device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=ctx.device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    ctx.sync()
    started, reps = time.perf_counter(), 10
    for _ in range(reps):
        a @ b
    ctx.sync()
    return 2 * n**3 * reps / (time.perf_counter() - started) / 1e12


# --- measuring ---------------------------------------------------------------------------------------


def training_flops(step: Callable[[], None]) -> int:
    """FLOPs of one training step (forward, loss and backward), as torch.utils.flop_counter.FlopCounterMode counts
    them: matrix products and convolutions (and their gradients) only, 2 per multiply-add; the backward's actual
    operations are counted, not assumed to be 2x the forward. Elementwise work (norms, activations) is not counted."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


def mfu(flops_per_image: float, images_per_s: float, peak_tflops: float | None) -> float | None:
    """Model FLOPs utilisation: the FLOPs the model needs per second over what the card can do."""
    return None if not peak_tflops else flops_per_image * images_per_s / (peak_tflops * 1e12)


class StepClock(Callback):
    """Times the steps of a Trainer run: steady-state speed leaves out the first steps of each epoch (workers
    starting, first batches loading), which a short benchmark epoch would otherwise over-weight.

    The Trainer reads each step's loss (a NaN check) before `on_batch_end`, so the GPU is done with the step then."""

    def __init__(self) -> None:
        self.epochs: list[list[tuple[float, int]]] = []  # per epoch: (time after the step, samples in it)
        self.records: list[dict[str, Any]] = []

    def on_fit_start(self, trainer: Trainer, phase: str, epochs: int, steps_per_epoch: int) -> None:
        self.epochs.append([(time.perf_counter(), 0)])

    def on_batch_end(self, trainer: Trainer, step: int, batch_size: int) -> None:
        self.epochs[-1].append((time.perf_counter(), batch_size))

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        self.records.append(record)
        self.epochs.append([(time.perf_counter(), 0)])

    def steady(self, skip: int) -> float:
        """Samples per second over the steps after the first `skip` of every epoch (all steps if that leaves none)."""
        samples, seconds = 0, 0.0
        for steps in self.epochs:
            if len(steps) <= 1:
                continue
            first = min(skip, len(steps) - 2)
            samples += sum(n for _, n in steps[first + 1 :])
            seconds += steps[-1][0] - steps[first][0]
        return samples / seconds if seconds else 0.0


def rounded(values: dict[str, Any], digits: int = 4) -> dict[str, Any]:
    return {k: round(v, digits) if isinstance(v, float) else v for k, v in values.items()}


def as_dict(scale: Scale) -> dict[str, Any]:
    return asdict(scale)
