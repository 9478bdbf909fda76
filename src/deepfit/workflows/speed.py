"""`deepfit benchmark RUN`: how fast the run's model is on this machine, in PyTorch and in ONNX Runtime (fp32, int8).

Written once for every task over the predictor's export graph: the same inputs (samples of the run's test split)
go through the graph module in PyTorch (eager, fp32), the exported file and its int8 copy in ONNX Runtime. Latency
is one sample a call; throughput is a batch a call (detectors, whose graph takes one image, run the batch as that
many calls). The backends take turns round by round, so a busy machine slows them alike.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepfit.deploy.graph import OnnxRunner, read_metadata
from deepfit.errors import ConfigError
from deepfit.log import logger, setup_logging
from deepfit.runs.folder import read_run_config, resolve_checkpoint, run_folder
from deepfit.workflows.export import export, export_paths, held_out_samples


@dataclass
class Speed:
    backend: str  # "torch (eager)", "onnxruntime", "onnxruntime int8"
    latency_ms: float  # median milliseconds for one sample
    throughput: float  # samples per second at `batch`
    batch: int


def batched(inputs: list[tuple[torch.Tensor, ...]], batch: int, batch_axis: bool) -> tuple[list[tuple], int]:
    """Calls that process `batch` samples: one stacked call (texts padded to the longest with 0, which the mask marks as
    padding), or `batch` single calls where the graph takes one sample."""
    picked = [inputs[i % len(inputs)] for i in range(batch)]
    if not batch_axis:
        return picked, 1
    parts = []
    for k in range(len(picked[0])):
        longest = max(p[k].shape[-1] for p in picked) if picked[0][k].ndim == 2 and picked[0][k].dtype == torch.long else None
        tensors = [torch.nn.functional.pad(p[k], (0, longest - p[k].shape[-1])) if longest else p[k] for p in picked]
        parts.append(torch.cat(tensors))
    return [tuple(parts)], batch


def median_seconds(fn: Callable[..., Any], calls: list[tuple], repeats: int) -> float:
    """Median seconds of running all `calls` once, over `repeats` runs."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for args in calls:
            fn(*args)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def benchmark(run_dir: str | Path, *, batch: int = 8, repeats: int = 10, rounds: int = 3, checkpoint: str = "best",
              samples: int = 8) -> list[Speed]:
    """Latency (batch 1) and throughput (`batch`) of the run's model in PyTorch eager, ONNX Runtime and int8. The run's
    own model.onnx and model.int8.onnx are measured when they exist with a dynamic batch; otherwise they are exported
    (and checked) into a temporary folder first."""
    setup_logging()
    if batch < 1 or repeats < 1 or rounds < 1:
        raise ConfigError("--batch, --repeats and --rounds must be at least 1")
    from deepfit.workflows.predict import load_predictor

    run = run_folder(run_dir).resolve()
    saved = read_run_config(run)
    resolve_checkpoint(run, checkpoint)
    with tempfile.TemporaryDirectory(prefix="deepfit-bench-") as tmp:
        model, _, int8 = export_paths(run, None)
        if not (model.is_file() and int8.is_file() and read_metadata(model).get("dynamic_batch")):
            logger.info(f"{run.name} has no model.onnx and model.int8.onnx exported with --dynamic-batch: exporting them "
                        f"to a temporary folder")
            made = export(run, output=Path(tmp) / "model.onnx", quantize="int8", samples=samples, checkpoint=checkpoint,
                          dynamic_batch=True)
            model, int8 = made.model, made.int8
        task, predictor = load_predictor(run, checkpoint, "cpu")
        graph = predictor.export_graph()
        inputs = held_out_samples(task, predictor, saved, run, samples).inputs
        backends = {"torch (eager)": graph, "onnxruntime": OnnxRunner(model), "onnxruntime int8": OnnxRunner(int8)}
        single = inputs[:1]
        many, per_call = batched(inputs, batch, graph.batch_axis and not backends["onnxruntime"].one_at_a_time)
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in backends}
        for fn in backends.values():  # warm-up: first calls plan memory and pick kernels
            median_seconds(fn, single + many, 1)
        for _ in range(rounds):
            for name, fn in backends.items():
                results[name].append((median_seconds(fn, single, repeats), median_seconds(fn, many, max(1, repeats // 2))))
    out = []
    for name, times in results.items():
        latency = float(np.median([t[0] for t in times]))
        seconds = float(np.median([t[1] for t in times]))
        out.append(Speed(name, 1000 * latency, batch / seconds if per_call else 0.0, batch))
    return out
