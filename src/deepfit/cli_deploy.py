"""The `deepfit export`, `deepfit benchmark` and `deepfit explain` commands, and the options `predict` takes for
backends and video: a thin layer over workflows/export.py, speed.py, explain.py and video.py, beside cli.py."""

from __future__ import annotations

import argparse
from typing import Any

from deepfit.deploy.agreement import agreement_words
from deepfit.deploy.graph import DEFAULT_OPSET


def add_deploy_commands(sub: Any) -> list[argparse.ArgumentParser]:
    """The export and benchmark subcommands (returned, for the verbosity flags every command gets)."""
    x = sub.add_parser("export", help="export a run's model to ONNX (checked against PyTorch on its test split), "
                       "optionally with an int8 copy")
    x.add_argument("run_dir", help="the run folder that `deepfit train` wrote")
    x.add_argument("--format", default="onnx", choices=["onnx"])
    x.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    x.add_argument("--dynamic-batch", action="store_true", help="any batch size (default: one sample a call)")
    x.add_argument("--quantize", choices=["int8"], help="also write an int8 copy (model.int8.onnx), with its accuracy "
                   "and speed next to the fp32 file's")
    x.add_argument("--output", help="the .onnx file to write (default RUN_DIR/model.onnx); never overwritten")
    x.add_argument("--samples", type=int, default=32, help="test samples the export is checked on (default 32)")
    x.add_argument("--checkpoint", default="best", choices=["best", "last"])
    x.add_argument("--data-root", metavar="NEW", help="where the run's data is now, if it moved")

    b = sub.add_parser("benchmark", help="latency and throughput of a run's model: PyTorch, ONNX Runtime and int8")
    b.add_argument("run_dir", help="the run folder that `deepfit train` wrote")
    b.add_argument("--batch", type=int, default=8, help="samples a call for the throughput (default 8)")
    b.add_argument("--repeats", type=int, default=10, help="calls timed per round (default 10)")
    b.add_argument("--rounds", type=int, default=3, help="rounds, the backends taking turns (default 3)")
    b.add_argument("--checkpoint", default="best", choices=["best", "last"])

    e = sub.add_parser("explain", help="where the model looked: a heat map per image (per object, per region), over a "
                       "sound's spectrogram, or a score per token of a text")
    e.add_argument("run_dir", help="the run folder that `deepfit train` wrote, or a checkpoint in it")
    e.add_argument("paths", nargs="*", help="image (or sound, or .txt) files, folders or glob patterns")
    e.add_argument("--text", action="append", help="text classifiers: a text to explain (repeat the flag for more)")
    e.add_argument("--method", help="images, sounds: gradcam (images' default), gradcam++, hirescam (sounds' default), "
                   "xgradcam, layercam, eigencam, scorecam (classifiers; slow on wide layers); texts: occlusion (default), "
                   "integrated-gradients")
    e.add_argument("--class", dest="target", metavar="NAME", help="the class to explain (default: the predicted one; "
                   "detection and segmentation: only objects or regions of this class)")
    e.add_argument("--layer", help="the layer the map is drawn from (default: the last one that sees the whole input; "
                   "a wrong name lists those that can be used)")
    e.add_argument("--max-objects", type=int, default=5, help="detection, segmentation: objects (regions) explained per "
                   "image, the most confident (largest) first (default 5)")
    e.add_argument("--conf", type=float, default=0.25, help="detection: the least score of an object explained (default 0.25)")
    e.add_argument("--output", help="the folder for the pictures and explanations.json (default RUN_DIR/explanations, "
                   "or -2, -3, ... when it exists); never overwritten")
    e.add_argument("--checkpoint", default="best", choices=["best", "last"])
    e.add_argument("--device", default="auto")
    return [x, b, e]


def add_predict_options(p: argparse.ArgumentParser) -> None:
    """`deepfit predict` options for the backend and for video, webcams and streams."""
    p.add_argument("--backend", default="torch", help="torch (default); onnx or int8: the run's exported model.onnx or "
                   "model.int8.onnx in ONNX Runtime (see `deepfit export`); or the path of an exported .onnx file")
    p.add_argument("--source", action="append", help="a video source: webcam:N, an rtsp:// (or http://) stream URL, a "
                   "video file or a folder of frames (video files among the paths are found by themselves)")
    p.add_argument("--every", type=int, default=1, help="video: predict every N-th frame (default every frame)")
    p.add_argument("--max-fps", type=float, help="video: at most this many frames a second of video")
    p.add_argument("--max-frames", type=int, help="video: stop after this many predicted frames (a webcam or stream "
                   "otherwise runs until it ends or Ctrl-C)")


def cmd_export(args: argparse.Namespace) -> list[str]:
    from deepfit.workflows.export import export

    made = export(args.run_dir, output=args.output, format=args.format, opset=args.opset, dynamic_batch=args.dynamic_batch,
                  quantize=args.quantize, samples=args.samples, checkpoint=args.checkpoint, data_root=args.data_root)
    parity = made.figures["parity"]
    lines = [f"wrote {made.model}: {agreement_words(parity)} on {parity['samples']} {parity['split']} samples; figures in "
             f"{made.report}"]
    if made.int8:
        q = made.figures["int8"]
        accuracy = f"accuracy {q['accuracy']:.2%} (fp32 {parity['accuracy']['onnx']:.2%}), " if "accuracy" in q else ""
        lines.append(f"wrote {made.int8}: {accuracy}{agreement_words(q)}, {q['speedup_over_onnx']:.2f}x the fp32 file's "
                     f"speed, {q['bytes']['int8'] / 1e6:.2f} MB")
    return lines


def cmd_benchmark(args: argparse.Namespace) -> list[Any]:
    from rich.table import Table

    from deepfit.workflows.speed import benchmark

    speeds = benchmark(args.run_dir, batch=args.batch, repeats=args.repeats, rounds=args.rounds, checkpoint=args.checkpoint)
    table = Table(title=f"{args.run_dir} on this machine (CPU threads as each backend chooses)")
    for column in ("backend", "latency, batch 1", f"throughput, batch {args.batch}", "vs torch"):
        table.add_column(column, justify="left" if column == "backend" else "right")
    base = speeds[0].throughput
    for s in speeds:
        table.add_row(s.backend, f"{s.latency_ms:.2f} ms", f"{s.throughput:,.1f} samples/s", f"{s.throughput / base:.2f}x" if base else "")
    return [table]


def cmd_explain(args: argparse.Namespace) -> list[str]:
    from deepfit.workflows.explain import explain

    made, folder = explain(args.run_dir, args.paths, texts=args.text, output=args.output, method=args.method,
                           target=args.target, layer=args.layer, max_objects=args.max_objects, conf=args.conf,
                           checkpoint=args.checkpoint, device=args.device)
    lines = [f"{e.source}: {e.target} {e.probability:.1%}" + (f" (predicted {e.predicted})" if e.predicted != e.target else "")
             for e in made]
    how = f"{made[0].method} on layer {made[0].layer}" if made else "nothing"
    return [*lines, f"{len(made)} explanations ({how}) written to {folder}"]
