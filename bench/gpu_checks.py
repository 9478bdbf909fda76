"""What only CUDA exercises: bf16 autocast, recovery from a real out-of-memory error, and the CUDA-only tests.

On the CPU (--smoke) the same code runs with what the CPU offers: autocast is checked where deepfit would not
choose it, the out-of-memory error is raised by the model itself (there is no GPU memory to exhaust), and the
CUDA tests are only collected, which checks that `pytest -m cuda` still finds them.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from typing import Any

import torch
from torch import nn

from deepfit.engine.device import autocast, resolve_precision
from deepfit.engine.trainer import Trainer
from deepfit.log import logger
from deepfit.tasks.classify.objective import ClassificationTask
from gpu_common import REPO, Context


class OneBatch:
    """A BatchSource (engine/trainer.py) of tensors already on the device, in batches of the order it is given."""

    per_sample_augment = False

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def num_batches(self, batch_size: int) -> int:
        return -(-len(self) // batch_size)

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
                order: torch.Tensor | None = None) -> Any:
        order = torch.arange(len(self)) if order is None else order
        for chunk in order.split(batch_size):
            index = chunk.to(self.x.device)
            yield self.x[index], self.y[index], chunk


def _identity(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    return x


def _train(ctx: Context, model: nn.Module, data: OneBatch, batch: int, epochs: int, precision: str, lr: float) -> Trainer:
    trainer = Trainer(model, ClassificationTask(int(data.y.max()) + 1), device=ctx.device, precision=precision,
                      generator=torch.Generator().manual_seed(0))
    trainer.fit(data, None, epochs=epochs, batch_size=batch, optimizer=torch.optim.SGD(model.parameters(), lr=lr),
                scheduler=None, train_transform=_identity, eval_transform=_identity)
    return trainer


def bf16_check(ctx: Context) -> dict[str, Any]:
    """deepfit picks bf16 on CUDA; under its autocast convolutions run in bf16 and the loss in fp32; bf16 logits agree
    with fp32 ones; and a small network trained in bf16 learns."""
    from deepfit.models.small import ConvNet

    torch.manual_seed(0)
    model = ConvNet(10, depth=2, width=16).to(ctx.device, memory_format=torch.channels_last)
    x = torch.randn(256, 3, 32, 32, device=ctx.device).contiguous(memory_format=torch.channels_last)
    y = (x[:, 0].mean((1, 2)) > 0).long() + 2 * (x[:, 1].mean((1, 2)) > 0).long()  # a rule the net can learn
    with torch.no_grad():
        reference = model(x).float()
        with autocast(ctx.device, "bf16"):
            logits = model(x)
            loss = ClassificationTask(10).loss(logits, y)
    cosine = float(nn.functional.cosine_similarity(logits.float().flatten(), reference.flatten(), dim=0))
    chosen = resolve_precision("auto", ctx.device)
    trainer = _train(ctx, model, OneBatch(x, y), 64, 1, "bf16", 0.05)
    first = float(trainer.running.summary()[0])
    trainer = _train(ctx, model, OneBatch(x, y), 64, 8, "bf16", 0.05)
    last = float(trainer.running.summary()[0])
    result = {"auto_precision": chosen, "logits_dtype": str(logits.dtype), "loss_dtype": str(loss.dtype),
              "cosine_to_fp32": round(cosine, 5), "loss_first_epoch": round(first, 4), "loss_after_9_epochs": round(last, 4)}
    result["ok"] = (chosen == ("bf16" if ctx.cuda else "fp32") and logits.dtype == torch.bfloat16
                    and loss.dtype == torch.float32 and cosine > 0.99 and last < 0.8 * first)
    return result


class _FailsAbove(nn.Module):
    """Raises the error CUDA raises when a batch is larger than `limit`: the smoke run's stand-in for a full GPU."""

    def __init__(self, inner: nn.Module, limit: int) -> None:
        super().__init__()
        self.inner, self.limit = inner, limit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) > self.limit:
            raise torch.OutOfMemoryError(f"simulated out of memory: batch of {len(x)} above {self.limit}")
        return self.inner(x)


OOM_INPUTS = 64  # narrow inputs, wide hidden layers: the activations, not the batch's copy, fill the memory


def _mlp(hidden: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(OOM_INPUTS, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, 10))


class _Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def oom_check(ctx: Context) -> dict[str, Any]:
    """One SGD step on a batch whose step needs about 4x the memory of a quarter of it, with the GPU filled so that
    only a quarter fits: deepfit's Trainer must catch the out-of-memory error, split the batch and accumulate, and
    end with the weights of the same step taken whole (fp32, so the two differ only by summation order)."""
    s = ctx.scale
    x = torch.randn(s.oom_batch, OOM_INPUTS, device=ctx.device)
    y = torch.randint(0, 10, (s.oom_batch,), device=ctx.device)
    data = OneBatch(x, y)
    start = {k: v.clone() for k, v in _mlp(s.oom_hidden).state_dict().items()}

    reference = _mlp(s.oom_hidden).to(ctx.device)
    if ctx.cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(ctx.device)
    base = torch.cuda.memory_allocated(ctx.device) if ctx.cuda else 0
    _train(ctx, reference, data, s.oom_batch, 1, "fp32", 0.1)
    result: dict[str, Any] = {"batch": s.oom_batch, "hidden": s.oom_hidden, "simulated": not ctx.cuda}
    filler = None
    if ctx.cuda:
        result["whole_step_gib"] = round((torch.cuda.max_memory_allocated(ctx.device) - base) / 2**30, 2)
        quarter = _mlp(s.oom_hidden).to(ctx.device)
        torch.cuda.reset_peak_memory_stats(ctx.device)
        base = torch.cuda.memory_allocated(ctx.device)
        _train(ctx, quarter, OneBatch(x[: s.oom_batch // 4], y[: s.oom_batch // 4]), s.oom_batch // 4, 1, "fp32", 0.1)
        need = torch.cuda.max_memory_allocated(ctx.device) - base
        del quarter
        model: nn.Module = _mlp(s.oom_hidden).to(ctx.device)  # before the filler: its weights are not in `need`
        torch.cuda.empty_cache()  # cached blocks back to the driver, so the filler takes all but `room`
        room = int(1.5 * need)  # a quarter's step fits, half a batch's (about twice a quarter's) does not
        free = torch.cuda.mem_get_info(ctx.device)[0]
        filler = torch.empty(free - room, dtype=torch.uint8, device=ctx.device)
        result.update(quarter_step_gib=round(need / 2**30, 2), free_gib_while_filled=round(room / 2**30, 2))
    else:
        model = _FailsAbove(_mlp(s.oom_hidden), s.oom_batch // 4)
    captured = _Captured()
    logger.addHandler(captured)
    try:
        trainer = _train(ctx, model, data, s.oom_batch, 1, "fp32", 0.1)
    finally:
        logger.removeHandler(captured)
        del filler
        if ctx.cuda:
            torch.cuda.empty_cache()
    trained = model.inner if isinstance(model, _FailsAbove) else model
    moved = [(a - start[k].to(ctx.device), b - start[k].to(ctx.device))
             for (k, a), b in zip(trained.state_dict().items(), reference.state_dict().values(), strict=True)]
    error = max(float((a - b).abs().max() / b.abs().max().clamp(min=1e-12)) for a, b in moved)
    result.update(micro_batches=trainer.micro_batches, warnings=captured.lines[:4], update_relative_error=error,
                  ok=trainer.micro_batches >= 2 and bool(captured.lines) and error < 1e-3)
    return result


def cuda_tests(ctx: Context) -> dict[str, Any]:
    """`pytest -m cuda` over the test files that mark tests so (only collected without a GPU)."""
    marked = re.compile(r"^@pytest\.mark\.cuda\b", re.M)
    files = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").glob("test_*.py") if marked.search(p.read_text()))
    command = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", *files]
    if not ctx.cuda:
        command.append("--collect-only")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
           "DEEPFIT_OFFLINE": "1"}
    if ctx.data.shared is not None:  # the tests' fixtures read ../shared, or this
        env["DEEPFIT_SHARED"] = str(ctx.data.shared.resolve())
    try:  # pytest's own time limit, inside the section's: its output until then is kept
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=max(10.0, ctx.section_left() - 5))
    except subprocess.TimeoutExpired as e:
        output = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        return {"command": " ".join(command[1:]), "files": files, "returncode": None, "summary": "timed out",
                "output": output[-3000:]}
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    summary = lines[-1] if lines else ""
    counts = {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|skipped|deselected|errors?)", summary)}
    collected = re.search(r"(\d+)/\d+ tests? collected|^(\d+) tests? collected", summary)
    result = {"command": " ".join(command[1:]), "files": files, "returncode": done.returncode, "summary": summary, **counts}
    if collected:
        result["collected"] = int(collected.group(1) or collected.group(2))
    if done.returncode:
        result["output"] = (done.stdout + done.stderr)[-3000:]
    return result


def checks_section(ctx: Context, result: dict) -> None:
    for name, check in (("bf16", bf16_check), ("oom", oom_check)):
        try:
            result[name] = check(ctx)
        except Exception as e:  # noqa: BLE001 - one check failing leaves the other's figures
            result[name] = {"ok": False, "error": f"{type(e).__name__}: {str(e)[:1000]}"}
        ctx.save()


def tests_section(ctx: Context, result: dict) -> None:
    result.update(cuda_tests(ctx))
