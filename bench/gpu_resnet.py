"""ResNet-50 training at 224 px in bf16: images/s and model FLOPs utilisation, from synthetic tensors to JPEG files.

1. synthetic: random float tensors already on the GPU and a bare PyTorch step (forward, loss, backward,
   SGD): the compute ceiling, whose FLOPs are counted on one step (see gpu_common.training_flops); again with
   cudnn.benchmark on (deepfit leaves it off), to show what autotuning would add.
2. deepfit, in memory: deepfit's Trainer and batch augmentation (random resized crop from 256 px storage to
   224, flip, normalise, on the GPU) over uint8 images held in memory, as `deepfit train` keeps a data set that fits.
3. deepfit, JPEG: the same over real photos decoded every epoch by deepfit's streamed store (DataLoader
   workers, PIL), as `deepfit train` does for a data set too large for memory; and that loader alone.
4. GPU decoding: the same photos decoded by nvJPEG (torchvision.io.decode_jpeg on the device), alone and
   feeding the same Trainer: the fix where step 3 shows the CPU decoding to be the bottleneck.

Speeds are steady-state: the first `resnet_warmup` steps of each run are not counted.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deepfit.engine.trainer import Trainer
from deepfit.modalities.image.augment import BatchTransform
from deepfit.modalities.image.store import ImageStore, default_workers
from deepfit.models.factory import IMAGENET_MEAN, IMAGENET_STD, create_model
from deepfit.tasks.classify.objective import ClassificationTask
from gpu_common import Context, StepClock, mfu, rounded, training_flops

STORAGE = 256  # the stored size a 224 px model's data is decoded to (crop_pct 0.875)
CLASSES = 1000  # the ImageNet head, so the FLOPs are those of the standard ResNet-50


def _model(ctx: Context) -> nn.Module:
    torch.manual_seed(0)
    return create_model(ctx.scale.resnet_model, CLASSES).model.to(ctx.device, memory_format=torch.channels_last)


def _optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-5)


def _precision(ctx: Context) -> torch.autocast:
    return torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=ctx.cuda)  # fp32 on a CPU, as deepfit


def synthetic(ctx: Context) -> tuple[float, int]:
    """(images/s of the bare step on ready tensors, FLOPs of one step)."""
    s = ctx.scale
    model = _model(ctx)
    opt = _optimizer(model)
    x = torch.randn(s.resnet_batch, 3, s.resnet_size, s.resnet_size, device=ctx.device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, CLASSES, (s.resnet_batch,), device=ctx.device)

    def step() -> None:
        with _precision(ctx):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    flops = training_flops(step)
    for _ in range(s.resnet_warmup):
        step()
    ctx.sync()
    started = time.perf_counter()
    for _ in range(s.resnet_steps):
        step()
    ctx.sync()
    return s.resnet_batch * s.resnet_steps / (time.perf_counter() - started), flops


def through_trainer(ctx: Context, source: Any) -> dict[str, float]:
    """Steady images/s of deepfit's Trainer over `source` (in-memory, streamed or GPU-decoded uint8 batches) for one
    epoch of warm-up + timed steps, and the share of the epoch spent waiting for batches."""
    s = ctx.scale
    model = _model(ctx)
    clock = StepClock()
    trainer = Trainer(model, ClassificationTask(CLASSES), device=ctx.device, precision="bf16" if ctx.cuda else "fp32",
                      channels_last=True, callbacks=[clock], generator=torch.Generator().manual_seed(0))
    transform = BatchTransform(s.resnet_size, IMAGENET_MEAN, IMAGENET_STD, "light", channels_last=True)
    trainer.fit(source, None, epochs=1, batch_size=s.resnet_batch, optimizer=_optimizer(model), scheduler=None,
                train_transform=transform, eval_transform=transform)
    record = clock.records[-1]
    return {"images_per_s": clock.steady(s.resnet_warmup), "data_wait": record["data_wait"]}


def _images(ctx: Context) -> int:
    return (ctx.scale.resnet_warmup + ctx.scale.resnet_steps) * ctx.scale.resnet_batch


def repeated(photos: list[Path], n: int) -> list[Path]:
    """`n` paths cycling through the photos: an epoch of the length the measurement needs (the OS caches the files,
    so what is measured is decoding, as on a data set on a fast disk)."""
    return [photos[i % len(photos)] for i in range(n)]


def baseline_jpegs(photos: list[Path]) -> list[Path]:
    """The photos nvJPEG's batched decoding takes (baseline RGB JPEGs; a grey, CMYK or progressive one would need
    another path), so that the CPU and GPU decoders are timed on the same files."""
    from PIL import Image

    kept = []
    for path in photos:
        with Image.open(path) as image:
            if image.format == "JPEG" and image.mode == "RGB" and not image.info.get("progressive"):
                kept.append(path)
    return kept


class JpegOnDevice:
    """A BatchSource (engine/trainer.py) of JPEG files decoded on the device by nvJPEG, resized and centre-cropped there
    to the storage square: what deepfit's store does with PIL in CPU processes, without the CPU."""

    per_sample_augment = False

    def __init__(self, paths: list[Path], labels: torch.Tensor, size: int, device: torch.device) -> None:
        self.files = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in paths]
        self.labels, self.size, self.device = labels, size, device

    def __len__(self) -> int:
        return len(self.files)

    def num_batches(self, batch_size: int) -> int:
        return -(-len(self) // batch_size)

    def decode(self, indices: list[int]) -> torch.Tensor:
        from torchvision.io import ImageReadMode, decode_jpeg

        images = decode_jpeg([self.files[i] for i in indices], mode=ImageReadMode.RGB, device=self.device)
        return torch.stack([square(image, self.size) for image in images])

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
                order: torch.Tensor | None = None) -> Any:
        order = torch.arange(len(self)) if order is None else order
        for chunk in order.split(batch_size):
            yield self.decode(chunk.tolist()), self.labels[chunk], chunk


def square(image: torch.Tensor, size: int) -> torch.Tensor:
    """(3, H, W) uint8 -> (3, size, size): short side resized to `size` (antialiased), centre crop, as deepfit stores."""
    h, w = image.shape[-2:]
    if min(h, w) != size:
        scale = size / min(h, w)
        shape = (max(size, round(h * scale)), max(size, round(w * scale)))
        image = F.interpolate(image[None].float(), size=shape, mode="bilinear", antialias=True)[0].round().clamp(0, 255).byte()
        h, w = shape
    top, left = (h - size) // 2, (w - size) // 2
    return image[:, top : top + size, left : left + size]


def resnet_section(ctx: Context, result: dict) -> None:
    s = ctx.scale
    peak = ctx.results["env"].get("peak_bf16_tflops")
    measured_peak = ctx.results["env"].get("matmul_bf16_tflops")
    result.update(model=s.resnet_model, image_size=s.resnet_size, batch=s.resnet_batch, timed_steps=s.resnet_steps,
                  precision="bf16" if ctx.cuda else "fp32", peak_tflops=peak, matmul_tflops=measured_peak)

    def entry(images_per_s: float, **extra: Any) -> dict[str, Any]:
        return rounded({"images_per_s": images_per_s, "mfu": mfu(result["flops_per_image"], images_per_s, peak),
                        "mfu_of_matmul": mfu(result["flops_per_image"], images_per_s, measured_peak), **extra})

    speed, flops = synthetic(ctx)
    result["flops_per_image"] = flops / s.resnet_batch
    result["synthetic"] = entry(speed)
    ctx.save()
    if ctx.cuda:  # what cuDNN's autotuning would add; deepfit does not turn it on
        torch.backends.cudnn.benchmark = True
        try:
            result["synthetic_cudnn_benchmark"] = entry(synthetic(ctx)[0])
        finally:
            torch.backends.cudnn.benchmark = False
        ctx.save()

    n = _images(ctx)
    tile = torch.randint(0, 256, (64, 3, STORAGE, STORAGE), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    images = tile.repeat(-(-n // 64), 1, 1, 1)[:n]  # random pixels, made in a copy rather than drawn one by one
    in_memory = ImageStore([Path(f"synthetic/{i}.jpg") for i in range(n)], [0] * n, STORAGE, images)
    result["deepfit_in_memory"] = entry(**through_trainer(ctx, in_memory))
    del images, in_memory
    ctx.save()

    photos = baseline_jpegs(ctx.data.photos)
    result["photos"] = len(photos)
    paths = repeated(photos, n)
    labels = [int(p.parent.name == "bees") for p in paths]
    streamed = ImageStore(paths, labels, STORAGE, None)  # images=None: decoded by DataLoader workers every epoch
    result["workers"] = default_workers()
    result["deepfit_jpeg"] = entry(**through_trainer(ctx, streamed))
    result["data_path_ratio"] = round(result["deepfit_jpeg"]["images_per_s"] / result["synthetic"]["images_per_s"], 3)
    ctx.save()

    # the CPU loader alone, and nvJPEG alone: which one can feed the GPU
    count = min(n, 8 * s.resnet_batch)
    started = time.perf_counter()
    seen = sum(len(batch[1]) for batch in streamed.batches(s.resnet_batch, order=torch.arange(count)))
    result["cpu_decode_images_per_s"] = round(seen / (time.perf_counter() - started), 1)
    del streamed
    on_device = JpegOnDevice(paths, torch.tensor(labels), STORAGE, ctx.device)
    on_device.decode(list(range(min(s.resnet_batch, n))))  # nvJPEG's first call sets it up
    ctx.sync()
    started = time.perf_counter()
    for chunk in torch.arange(count).split(s.resnet_batch):
        on_device.decode(chunk.tolist())
    ctx.sync()
    result["gpu_decode_images_per_s"] = round(count / (time.perf_counter() - started), 1)
    result["deepfit_gpu_decode"] = entry(**through_trainer(ctx, on_device))
    result["gpu_decode_ratio"] = round(result["deepfit_gpu_decode"]["images_per_s"] / result["synthetic"]["images_per_s"], 3)
