"""A trained model as one ONNX graph that takes what a user has, and ONNX Runtime running it like the PyTorch model.

Each task's predictor says what its graph is (`Graph`): a module from raw inputs (uint8 images, waveforms, token
ids) to the outputs its predictions are made from, with normalisation and resizing inside. This module turns a
Graph into an .onnx file with deepfit's metadata in it (`export_onnx`), runs such a file (`OnnxRunner`, which the
predictors call where they would call their module), and quantises it to int8 (`quantize_int8`).

The TorchScript-based exporter (`dynamo=False`) is used: torchvision's detectors (dynamic numbers of boxes, NMS,
RoI align) export through it and run in ONNX Runtime; the newer torch.export-based one cannot trace their
data-dependent shapes, and needs onnxscript besides.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepfit.errors import ConfigError, DeepfitError
from deepfit.version import __version__

DEFAULT_OPSET = 17
METADATA_KEY = "deepfit"  # the ONNX metadata entry holding deepfit's JSON (task, classes, inputs, ...)

Outputs = tuple[torch.Tensor, ...]  # one graph call's outputs, in the order of Graph.outputs


@dataclass
class Graph:
    """What a predictor exports: `module(*inputs) -> output tensor(s)`, fp32, on the CPU, in eval mode.

    inputs     name -> what a user gives there, in the order of the module's arguments
    outputs    names of the outputs, in order
    dynamic    name -> {axis: name} of the axes that may vary (batch, height, width, length)
    agreement  (reference outputs, other outputs) per sample -> figures (max_abs_diff, top1_agreement, ...)
    accepts    figures -> None if the other outputs agree with the reference, else what is wrong (one line)
    info       more metadata (thresholds, preprocessing) for a user of the file alone
    files      name -> text of files written beside the .onnx (the tokenizer a text graph's ids come from)
    """

    module: nn.Module
    inputs: dict[str, str]
    outputs: list[str]
    dynamic: dict[str, dict[int, str]]
    agreement: Callable[[list[Outputs], list[Outputs]], dict[str, float]]
    accepts: Callable[[dict[str, float]], str | None]
    info: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    batch_axis: bool = True  # every input's first axis is the batch (False: one sample a call, e.g. detectors)

    def __post_init__(self) -> None:
        # a wrapper module starts in training mode, and the exporter restores the mode it found, recursively:
        # left so, the network's batch norms would update their statistics on every later call
        self.module.eval()

    def __call__(self, *inputs: torch.Tensor) -> Outputs:
        with torch.inference_mode():
            out = self.module(*inputs)
        return tuple(out) if isinstance(out, tuple | list) else (out,)


def export_onnx(graph: Graph, example: Sequence[torch.Tensor], path: Path, *, metadata: dict[str, Any],
                opset: int = DEFAULT_OPSET, dynamic_batch: bool = False) -> None:
    """Write `graph` to `path` (an .onnx file) traced on `example`, with `metadata` under METADATA_KEY. The batch axis
    is dynamic only with `dynamic_batch` (a fixed batch of 1 lets ONNX Runtime plan more); other dynamic axes
    (image size, text length) always are. An operator ONNX cannot express is a ConfigError naming it."""
    import onnx

    dynamic = {name: {a: n for a, n in axes.items() if dynamic_batch or a != 0 or not graph.batch_axis}
               for name, axes in graph.dynamic.items()}
    fastpath = torch.backends.mha.get_fastpath_enabled()
    try:
        # nn.TransformerEncoderLayer's fused inference kernel has no ONNX form; its plain operations have
        torch.backends.mha.set_fastpath_enabled(False)
        with warnings.catch_warnings(), torch.no_grad():
            # the tracer's notes (shapes read as Python numbers, the exporter's own deprecation) are not the user's
            warnings.simplefilter("ignore")
            torch.onnx.export(graph.module, tuple(example), str(path), dynamo=False, opset_version=opset,
                              input_names=list(graph.inputs), output_names=graph.outputs,
                              dynamic_axes={k: v for k, v in dynamic.items() if v} or None, do_constant_folding=True)
    except Exception as e:  # noqa: BLE001 - the exporter raises many types; each becomes one line naming the cause
        raise ConfigError(f"cannot export to ONNX: {unsupported_operator(e)}") from e
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    model = onnx.load(str(path))
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(
        {**metadata, "inputs": graph.inputs, "outputs": graph.outputs, "batch_axis": graph.batch_axis,
         "dynamic_batch": dynamic_batch, "opset": opset, "deepfit_version": __version__, **graph.info})
    onnx.save(model, str(path))


def unsupported_operator(error: Exception) -> str:
    """One line from an exporter error: the operator it could not export, when it names one."""
    text = str(error)
    match = re.search(r"operator '?([\w:.]+)'?", text)
    if match and "not supported" in text:
        return (f"the operator {match.group(1)} has no ONNX form in torch's exporter at this opset; try a higher "
                f"--opset, or a model without it")
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)
    return f"{type(error).__name__}: {first[:300]}"


def read_metadata(path: str | Path) -> dict[str, Any]:
    """deepfit's metadata of an exported file; an error if it has none (not a deepfit export)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf's decode errors: not an ONNX file
        raise DeepfitError(f"{path} is not an ONNX file ({type(e).__name__}); export one with `deepfit export RUN`") from e
    props = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY not in props:
        raise DeepfitError(f"{path} was not exported by deepfit (no '{METADATA_KEY}' metadata): export the run again")
    return json.loads(props[METADATA_KEY])


class OnnxRunner:
    """An .onnx file in ONNX Runtime, called like the Graph module it was exported from: tensors in, a tuple of
    tensors out. A file exported with a fixed batch of 1 is run one sample at a time."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        self.meta = read_metadata(self.path)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3  # errors only: ORT's warnings about unused initialisers are not the user's
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        self.names = [i.name for i in self.session.get_inputs()]
        first = self.session.get_inputs()[0].shape
        self.one_at_a_time = bool(self.meta.get("batch_axis", True)) and first and first[0] == 1

    def __call__(self, *inputs: torch.Tensor) -> Outputs:
        arrays = [t.detach().cpu().numpy() for t in inputs]
        if self.one_at_a_time and len(arrays[0]) != 1:
            parts = [self.session.run(None, {n: a[i : i + 1] for n, a in zip(self.names, arrays, strict=True)})
                     for i in range(len(arrays[0]))]
            if not parts:
                return tuple(torch.zeros(0) for _ in self.session.get_outputs())
            return tuple(torch.from_numpy(np.concatenate(outs)) for outs in zip(*parts, strict=True))
        outs = self.session.run(None, dict(zip(self.names, arrays, strict=True)))
        return tuple(torch.from_numpy(o) for o in outs)


def quantize_int8(source: Path, target: Path, calibration: list[Sequence[torch.Tensor]], names: list[str]) -> str:
    """An int8 copy of `source` at `target`: static quantisation (QDQ, weights per channel), the activations' ranges
    calibrated on `calibration` samples (training images, never the test split), where the graph has convolutions;
    dynamic quantisation of the weights (MatMul, Gemm) where it has none (text encoders, whose activation ranges
    vary too much per text to fix). Returns the method used, in words."""
    import onnx

    convolutions = any(n.op_type == "Conv" for n in onnx.load(str(source), load_external_data=False).graph.node)
    # the quantiser advises its own pre-processing through the root logger on every call: not the user's concern
    logging.disable(logging.WARNING)
    try:
        return _quantize(source, target, calibration, names, convolutions)
    finally:
        logging.disable(logging.NOTSET)


def _quantize(source: Path, target: Path, calibration: list[Sequence[torch.Tensor]], names: list[str],
              convolutions: bool) -> str:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not convolutions or not calibration:
            quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)
            return "dynamic int8 (weights int8, activations quantised per call)"

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.items = iter(calibration)

            def get_next(self) -> dict[str, np.ndarray] | None:
                item = next(self.items, None)
                return None if item is None else {n: t.numpy() for n, t in zip(names, item, strict=True)}

        quantize_static(str(source), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["Conv", "Gemm", "MatMul"])
    return f"static int8 (QDQ, weights per channel, activations calibrated on {len(calibration)} training samples)"
