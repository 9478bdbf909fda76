"""RoIAlign on every CPU core: the pooling of Faster and Mask R-CNN's heads, split over threads.

torchvision's CPU kernels of RoIAlign (`torchvision::roi_align` and its backward) run on one thread. Training
Mask R-CNN on a 2-core CPU spent about a quarter of each step in the backward kernel alone (measured with
torch.profiler: 406 ms a call, 4 calls a step of 6 s), with the second core idle, so the whole run used about
one and a half cores. The kernels release the GIL, and each region of interest is pooled on its own, so the
regions split into one contiguous share per thread: the forward results are concatenated, the gradients with
respect to the feature map summed. The shares are fixed by the thread count, so a run repeats bit for bit.

`use_all_cores(model)` turns a detector's `MultiScaleRoIAlign` poolers into `ThreadedRoIAlign`, which pools
exactly as torchvision's does (its level mapping, its code) with this RoIAlign on the CPU. It holds no state,
so checkpoints are unchanged. `THREADED = False` turns it off (the benchmark compares both).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.ops import MultiScaleRoIAlign, poolers
from torchvision.ops import roi_align as torchvision_roi_align

THREADED = True
MIN_ROIS_PER_THREAD = 32  # below this, starting threads costs more than it saves
_pools: dict[int, ThreadPoolExecutor] = {}
_swap = threading.Lock()


def _pool(threads: int) -> ThreadPoolExecutor:
    if threads not in _pools:
        _pools[threads] = ThreadPoolExecutor(threads, thread_name_prefix="deepfit-roi")
    return _pools[threads]


def _shares(n: int, threads: int) -> list[int]:
    """Contiguous shares of n regions, as even as they go: [3, 3, 2] for 8 over 3."""
    return [n // threads + (i < n % threads) for i in range(threads)]


class _ThreadedRoIAlign(torch.autograd.Function):
    """torchvision's RoIAlign CPU kernels, forward and backward, each over a share of the regions per thread."""

    @staticmethod
    def forward(ctx: Any, features: Tensor, rois: Tensor, scale: float, height: int, width: int, ratio: int,
                aligned: bool, threads: int) -> Tensor:
        shares = _shares(len(rois), threads)
        parts = list(_pool(threads).map(
            lambda r: torch.ops.torchvision.roi_align(features, r, scale, height, width, ratio, aligned), rois.split(shares)))
        ctx.save_for_backward(rois)
        ctx.args = (scale, height, width, *features.shape, ratio, aligned)
        ctx.shares = shares
        return torch.cat(parts)  # (K, C, height, width)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        (rois,) = ctx.saved_tensors
        scale, height, width, n, c, h, w, ratio, aligned = ctx.args

        def one(share: tuple[Tensor, Tensor]) -> Tensor:  # (N, C, H, W): this share's gradient of the features
            g, r = share
            return torch.ops.torchvision._roi_align_backward(g.contiguous(), r, scale, height, width, n, c, h, w, ratio, aligned)

        parts = list(_pool(len(ctx.shares)).map(one, zip(grad.split(ctx.shares), rois.split(ctx.shares), strict=True)))
        total = parts[0]
        for part in parts[1:]:  # summed in a fixed order, so the result is the same every run
            total = total + part
        return total, None, None, None, None, None, None, None


def roi_align(features: Tensor, rois: Tensor, output_size: Any, spatial_scale: float = 1.0, sampling_ratio: int = -1,
              aligned: bool = False) -> Tensor:
    """torchvision.ops.roi_align with `rois` given as (K, 5) (batch index, x1, y1, x2, y2); over threads on the CPU."""
    if features.device.type == "cpu" and features.dtype in (torch.bfloat16, torch.float16):
        # torchvision's CPU kernels have no bf16 version, and on the CPU no autocast rule casts for them: pool in fp32,
        # as its CUDA autocast rule does, and hand back the features' type
        return roi_align(features.float(), rois.float(), output_size, spatial_scale, sampling_ratio, aligned).to(features.dtype)
    threads = min(torch.get_num_threads(), len(rois) // MIN_ROIS_PER_THREAD)
    if (not THREADED or threads < 2 or features.device.type != "cpu" or not isinstance(rois, Tensor)
            or features.dtype != rois.dtype or torch.jit.is_scripting() or torch.jit.is_tracing()):
        return torchvision_roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned)
    height, width = (output_size, output_size) if isinstance(output_size, int) else output_size
    return _ThreadedRoIAlign.apply(features, rois, spatial_scale, height, width, sampling_ratio, aligned, threads)


class ThreadedRoIAlign(MultiScaleRoIAlign):
    """torchvision's multi-scale pooler, whose RoIAlign runs on every core on the CPU."""

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        # torchvision's pooler calls the module-level `roi_align` of torchvision.ops.poolers and offers no other hook:
        # it is swapped for the threaded one for the length of this call (a lock keeps concurrent calls apart).
        with _swap:
            original = poolers.roi_align
            poolers.roi_align = roi_align
            try:
                return super().forward(x, boxes, image_shapes)
            finally:
                poolers.roi_align = original


def use_all_cores(model: nn.Module) -> nn.Module:
    """The model with its MultiScaleRoIAlign poolers pooling over threads on the CPU (no weights change)."""
    for module in model.modules():
        if type(module) is MultiScaleRoIAlign:
            module.__class__ = ThreadedRoIAlign
    return model
