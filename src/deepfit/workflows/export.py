"""`deepfit export RUN`, written once for every task: the run's predictor -> an ONNX file, proven on the test split.

The predictor says what its graph is (`Graph`: raw inputs in, normalisation and resizing inside) and how to turn a
source (an image path, a sound file, a text) into the graph's inputs. Here the graph is exported to a temporary
file, run in ONNX Runtime beside PyTorch on samples of the run's test split, and kept only when the two agree
(export.json has the figures); `--quantize int8` adds an int8 copy with its agreement, accuracy and speed.
Nothing is overwritten, and an export that fails or disagrees leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepfit.deploy.graph import DEFAULT_OPSET, Graph, OnnxRunner, Outputs, export_onnx, quantize_int8
from deepfit.errors import ConfigError, DataError, DeepfitError
from deepfit.fileio import atomic_write_text
from deepfit.log import logger, setup_logging
from deepfit.registry import get_task
from deepfit.runs.folder import read_run_config, resolve_checkpoint, run_folder, saved_task
from deepfit.runs.session import relocate
from deepfit.workflows.evaluate import held_out

FORMATS = ("onnx",)
QUANTIZE = ("int8",)


@dataclass
class Export:
    model: Path  # the .onnx file
    report: Path  # export.json
    figures: dict[str, Any]  # what export.json holds
    int8: Path | None = None


def export_paths(run: Path, output: str | Path | None) -> tuple[Path, Path, Path]:
    """(model, report, int8 copy): model.onnx, export.json and model.int8.onnx in the run, or beside `output`."""
    target = Path(output) if output else run / "model.onnx"
    if target.suffix.lower() != ".onnx":
        raise ConfigError(f"--output {target}: an ONNX file name ends in .onnx")
    report = target.parent / "export.json" if target.name == "model.onnx" else target.with_suffix(".export.json")
    return target, report, target.with_name(target.stem + ".int8.onnx")


def checkpoint_digest(path: Path) -> str:
    """sha256 of the weights file: an export names the exact weights it was made from (a later resume changes them)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sample_sources(items: list, count: int) -> list:
    """Up to `count` items spread evenly over a split (its order mixes classes less than its start does)."""
    if count < 1:
        raise ConfigError(f"--samples must be at least 1, not {count}")
    picks = np.unique(np.linspace(0, len(items) - 1, min(count, len(items))).round().astype(int)) if items else []
    return [items[i] for i in picks]


def source_of(item: Any) -> Any:
    """What a predictor takes for a labelled item: a text item's text, any other item's file."""
    return item.text if hasattr(item, "text") else item.path


@dataclass
class HeldOut:
    """Samples of a run's held-out split, as an export is checked (and a benchmark timed) on them."""

    data: Any  # the task's Data (its classes)
    splits: dict[str, list]
    split: str  # "test", or "val" when the run has no test split
    items: list  # up to `count` of the split's items, spread over it
    inputs: list[tuple[torch.Tensor, ...]]  # each item as the predictor's graph takes it


def held_out_samples(task: Any, predictor: Any, saved: dict[str, Any], run: Path, count: int) -> HeldOut:
    data, splits = task.reread(saved, run)
    split, items = held_out(splits, run.name)
    chosen = sample_sources(items, count)
    inputs = predictor.graph_inputs([source_of(it) for it in chosen])
    if not inputs:
        raise DataError(f"no readable {split} samples in {run} to check the export on")
    return HeldOut(data, splits, split, chosen, inputs)


def run_all(fn: Any, inputs: list[tuple]) -> tuple[list[Outputs], float]:
    """Outputs of every input, and the median seconds per call (after one warm-up call)."""
    if inputs:
        fn(*inputs[0])
    outs, times = [], []
    for args in inputs:
        start = time.perf_counter()
        outs.append(fn(*args))
        times.append(time.perf_counter() - start)
    return outs, float(np.median(times)) if times else 0.0


def accuracy(items: list, outputs: list[Outputs], classes: list[str]) -> float | None:
    """Top-1 accuracy of class scores against the items' labels (classifiers only; None for other tasks); outputs
    beyond the items (the batch-of-two check) are not counted."""
    if not items or not all(hasattr(it, "label") for it in items) or outputs[0][0].ndim != 2:
        return None
    index = {c: i for i, c in enumerate(classes)}
    return float(np.mean([int(o[0].argmax(-1)[0]) == index[it.label] for it, o in zip(items, outputs, strict=False)]))


def export(run_dir: str | Path, *, output: str | Path | None = None, format: str = "onnx", opset: int = DEFAULT_OPSET,
           dynamic_batch: bool = False, quantize: str | None = None, samples: int = 32, checkpoint: str = "best",
           data_root: str | Path | None = None) -> Export:
    """Export a run's model to ONNX, check it against PyTorch on its test split, write model.onnx and export.json."""
    setup_logging()
    if format not in FORMATS:
        raise ConfigError(f"--format {format}: deepfit exports {', '.join(FORMATS)}")
    if quantize is not None and quantize not in QUANTIZE:
        raise ConfigError(f"--quantize {quantize}: deepfit quantises to {', '.join(QUANTIZE)}")
    run = run_folder(run_dir).resolve()
    saved = relocate(read_run_config(run), data_root)
    target, report, int8 = export_paths(run, output)
    for path in (target, report, *([int8] if quantize else [])):
        if path.exists():
            raise ConfigError(f"{path} exists: deepfit never overwrites a file; pass --output elsewhere, or move it away")
    task = get_task(saved_task(saved))
    weights = resolve_checkpoint(run, checkpoint)
    predictor = task.predictor(task.load(weights), "cpu")
    if not hasattr(predictor, "export_graph"):
        raise ConfigError(f"runs of --task {task.name} cannot be exported yet")
    graph: Graph = predictor.export_graph()
    held = held_out_samples(task, predictor, saved, run, samples)
    data, splits, split, chosen, inputs = held.data, held.splits, held.split, held.items, held.inputs
    metadata = {"task": task.name, "classes": list(data.classes), "run": run.name, "checkpoint": weights.name,
                "weights_sha256": checkpoint_digest(weights), "model": saved.get("model"),
                "modality": getattr(predictor, "modality", task.modality)}
    written: list[Path] = []
    try:
        tmp = target.with_name(f".{target.name}.tmp")
        target.parent.mkdir(parents=True, exist_ok=True)
        written.append(tmp)
        logger.info(f"exporting {run.name} ({saved.get('model')}) to ONNX opset {opset}")
        export_onnx(graph, inputs[0], tmp, metadata=metadata, opset=opset, dynamic_batch=dynamic_batch)
        if dynamic_batch and graph.batch_axis:  # a batch of two as well: shapes traced at batch 1 would fail it
            inputs = [*inputs, tuple(torch.cat([t, t]) for t in inputs[0])]
        reference, torch_s = run_all(graph, inputs)
        runner = OnnxRunner(tmp)
        try:
            outputs, onnx_s = run_all(runner, inputs)
        except Exception as e:  # noqa: BLE001 - ONNX Runtime's errors: a graph that cannot run these inputs
            raise DeepfitError(f"the ONNX export of {run.name} fails on its {split} samples in ONNX Runtime "
                               f"({' '.join(str(e).split())[:300]}); nothing was written") from e
        figures: dict[str, Any] = {"split": split, **graph.agreement(reference, outputs),
                                   "seconds_per_sample": {"torch": torch_s, "onnx": onnx_s}}
        problem = graph.accepts(figures)
        if problem:
            raise DeepfitError(f"the ONNX export of {run.name} disagrees with its PyTorch model on {len(inputs)} {split} "
                               f"samples: {problem}; nothing was written")
        base = accuracy(chosen, reference, data.classes)
        if base is not None:
            figures["accuracy"] = {"torch": base, "onnx": accuracy(chosen, outputs, data.classes)}
        record: dict[str, Any] = {**metadata, "format": "onnx", "opset": opset, "dynamic_batch": dynamic_batch,
                                  "file": target.name, "inputs": graph.inputs, "outputs": graph.outputs, "parity": figures}
        if quantize:
            int8_tmp = int8.with_name(f".{int8.name}.tmp")
            written.append(int8_tmp)
            record["int8"] = _quantize(task, predictor, graph, splits, tmp, int8_tmp, chosen, inputs, reference, onnx_s,
                                       data.classes, samples)
            record["int8"]["file"] = int8.name
        for name, text in graph.files.items():
            atomic_write_text(target.with_name(f"{target.stem}.{name}"), text)
        tmp.replace(target)
        if quantize:
            int8_tmp.replace(int8)
        atomic_write_text(report, json.dumps(record, indent=2) + "\n")
    finally:
        for path in written:
            path.unlink(missing_ok=True)
    return Export(target, report, record, int8 if quantize else None)


def _quantize(task: Any, predictor: Any, graph: Graph, splits: dict[str, list], source: Path, target: Path,
              chosen: list, inputs: list[tuple], reference: list[Outputs], fp32_s: float, classes: list[str],
              samples: int) -> dict[str, Any]:
    """int8 copy of `source`, calibrated on training samples; its agreement with PyTorch, accuracy and speed on the
    same test samples as the fp32 export."""
    calibration = predictor.graph_inputs([source_of(it) for it in sample_sources(splits.get("train") or [], samples)])
    method = quantize_int8(source, target, calibration, list(graph.inputs))
    outputs, int8_s = run_all(OnnxRunner(target), inputs)
    figures: dict[str, Any] = {"method": method, **graph.agreement(reference, outputs),
                               "seconds_per_sample": {"onnx": fp32_s, "int8": int8_s},
                               "speedup_over_onnx": fp32_s / int8_s if int8_s else None,
                               "bytes": {"onnx": source.stat().st_size, "int8": target.stat().st_size}}
    acc = accuracy(chosen, outputs, classes)
    if acc is not None:
        figures["accuracy"] = acc
    return figures
