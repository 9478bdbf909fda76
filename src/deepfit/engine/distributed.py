"""Several processes, one training run: PyTorch's own DistributedDataParallel, launched by torchrun.

    torchrun --nproc-per-node 4 -m deepfit.cli train DATA ...          (one machine, 4 GPUs)
    torchrun --nnodes 2 --node-rank R --master-addr HOST --master-port 29500 --nproc-per-node 8 -m deepfit.cli train ...

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; deepfit reads them, joins the process group (NCCL on
GPUs, gloo on CPUs), gives each rank its slice of every batch, averages gradients through DDP, sums
metrics over ranks, and lets only rank 0 write files and show progress. Nothing here runs in a
single-process run.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from deepfit.errors import ConfigError, DeepfitError, TrainingError

# How long a rank waits for the others at a collective before it reports them as hung.
DEFAULT_TIMEOUT_S = 600
# What the messages of failed collectives (a peer that hung, died or cannot be reached) contain.
_COMMUNICATION_WORDS = ("timed out", "timeout", "connection", "socket", "peer", "gloo", "nccl", "rendezvous")


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def from_environment() -> Dist:
    """The process's place in a torchrun launch; a plain `deepfit train` is rank 0 of 1."""
    try:
        return Dist(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError as e:
        raise ConfigError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers (torchrun sets them): {e}") from e


def timeout_seconds() -> float:
    return float(os.environ.get("DEEPFIT_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))


def _hung(what: str, error: BaseException) -> TrainingError:
    return TrainingError(
        f"distributed training: {what} waited more than {timeout_seconds():.0f} s for the other ranks ({type(error).__name__}: "
        f"{str(error)[:200]}). Check that every rank was started (torchrun --nproc-per-node / --nnodes), that none of "
        "them crashed (see its log), that MASTER_ADDR and MASTER_PORT are reachable from every node, and that every "
        "rank sees the same data; DEEPFIT_DIST_TIMEOUT sets the wait in seconds"
    )


@contextlib.contextmanager
def collective(what: str) -> Iterator[None]:
    """Turn a timed-out or broken collective into an error that says what to check, not a silent freeze."""
    try:
        yield
    except DeepfitError:
        raise
    except RuntimeError as e:  # torch.distributed's errors are RuntimeErrors; so are ordinary bugs, left as they are
        text = str(e).lower()
        if isinstance(e, getattr(dist, "DistError", ())) or any(w in text for w in _COMMUNICATION_WORDS):
            raise _hung(what, e) from e
        raise


def init(info: Dist, device: torch.device) -> torch.device:
    """Join the process group and return this rank's device (cuda:LOCAL_RANK on GPUs)."""
    if not info.enabled:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        with collective("joining the process group"):
            dist.init_process_group(
                backend, rank=info.rank, world_size=info.world, timeout=datetime.timedelta(seconds=timeout_seconds()),
            )
    return device


def all_sum(values: list[float] | torch.Tensor, device: torch.device) -> torch.Tensor:
    """Element-wise sum over ranks (float64 on the training device; NCCL needs CUDA tensors)."""
    t = torch.as_tensor(values, dtype=torch.float64, device=device).clone()
    with collective("summing metrics"):
        dist.all_reduce(t)
    return t


def gather(value: Any) -> list[Any]:
    """Every rank's value (any picklable object), in rank order, on every rank."""
    out: list[Any] = [None] * dist.get_world_size()
    with collective("collecting validation results"):
        dist.all_gather_object(out, value)
    return out


def broadcast(value: Any) -> Any:
    """Rank 0's value (any picklable object), on every rank."""
    box = [value]
    with collective("sharing the run folder"):
        dist.broadcast_object_list(box, src=0)
    return box[0]


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The user's module inside DDP and torch.compile wrappers."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):
            model = model._orig_mod
        else:
            return model
