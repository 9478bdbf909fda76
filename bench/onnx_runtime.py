"""ONNX Runtime against PyTorch eager on the CPU, with the export's parity figures, and video frames/s end to end.

Three small runs are trained first, briefly (what matters here is the network, not its accuracy), each from the
shared ImageNet weights:
  classifier  tf_efficientnet_lite0 on hymenoptera, 224 px, 1 epoch
  detector    fasterrcnn:tv/mobilenet_v2 on coco128, 320 px, 1 epoch
  segmenter   unet:tv/mobilenet_v2 on the membrane images, 256 px crops, 2 epochs
Each is exported with `deepfit export --dynamic-batch --quantize int8` (parity on its test or validation split:
top-1, box mAP against PyTorch's boxes, pixel agreement), then timed by `deepfit benchmark`'s code: batch 1 latency
and batch 8 throughput of the same graph in PyTorch eager (fp32), ONNX Runtime (fp32) and ONNX Runtime int8, the
backends taking turns round by round. A briefly trained detector scores few boxes above the usual 0.05: its parity
is measured on a second export that keeps every box (threshold 0), hundreds of boxes; its speed on the usual export
(threshold 0.05: ONNX's NonMaxSuppression over every class's thousand proposals at threshold 0 is several times
slower than torchvision's batched NMS, and no one predicts at threshold 0).

Video: a 640 x 480, 300-frame clip the script writes, predicted end to end (decode, predict, draw, encode, CSV and
JSON Lines) by `deepfit predict RUN clip.mp4` with the torch and the onnx backend, alternated, median of --repeats.

    uv run python bench/onnx_runtime.py [--repeats 3] [--rounds 3] [--runs DIR]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from deepfit.config import TrainConfig
from deepfit.deploy.agreement import agreement_words
from deepfit.modalities.image.video import write_test_video
from deepfit.workflows.export import export
from deepfit.workflows.predict import predict_videos
from deepfit.workflows.speed import benchmark
from deepfit.workflows.train import train

from common import SHARED, record, unpack
from segmentation import membrane_split

WEIGHTS = SHARED / "weights"


def train_runs(output: Path) -> dict[str, Path]:
    """The three runs, trained into `output` (or reused from it: --runs keeps them between invocations)."""
    names = {"cls": "classifier (tf_efficientnet_lite0, 224 px)", "det": "detector (fasterrcnn:tv/mobilenet_v2, 320 px)",
             "seg": "segmenter (unet:tv/mobilenet_v2, 512 px images)"}
    if all((output / n / "best.safetensors").is_file() for n in names):
        return {title: output / n for n, title in names.items()}
    runs = {}
    common = {"output": str(output), "workers": 2}
    runs["classifier (tf_efficientnet_lite0, 224 px)"] = train(unpack("hymenoptera.tar", "hymenoptera"), TrainConfig(
        model="tf_efficientnet_lite0", weights=str(WEIGHTS / "tf_efficientnet_lite0.safetensors"), epochs=1, name="cls",
        **common)).run_dir
    runs["detector (fasterrcnn:tv/mobilenet_v2, 320 px)"] = train(unpack("coco128.tar", "coco128") / "object_detection", TrainConfig(
        task="detect", model="fasterrcnn:tv/mobilenet_v2", weights=str(WEIGHTS / "mobilenet_v2.safetensors"),
        image_size=320, epochs=1, name="det", **common)).run_dir
    runs["segmenter (unet:tv/mobilenet_v2, 512 px images)"] = train(membrane_split(), TrainConfig(
        task="segment", model="unet:tv/mobilenet_v2", weights=str(WEIGHTS / "mobilenet_v2.safetensors"), epochs=2,
        val_fraction=0.0, name="seg", **common)).run_dir
    return runs


def video_fps(run: Path, clip: Path, backend: str, out: Path) -> float:
    started = time.perf_counter()
    predict_videos(run, [clip], out, backend=backend, conf=0.25) if "det" in run.name else predict_videos(
        run, [clip], out, backend=backend)
    return 300 / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", help="a folder to keep the trained runs in and reuse them from (default: temporary)")
    args = parser.parse_args()
    import deepfit.tasks.detect.predict as detect_predict

    with tempfile.TemporaryDirectory() as tmp:
        runs = train_runs(Path(args.runs) if args.runs else Path(tmp) / "runs")
        rows, video_rows = [], []
        for name, run in runs.items():
            for old in (*run.glob("model*.onnx"), *run.glob("*export.json"), *run.glob("model*.json")):
                old.unlink()  # a previous invocation's exports (--runs)
            made = export(run, dynamic_batch=True, quantize="int8", samples=16)
            if "detector" in name:  # parity over every box (see the docstring); speed with the usual 0.05
                detect_predict.EXPORT_CONF = 0.0
                every_box = export(run, output=Path(tmp) / "every-box.onnx", dynamic_batch=True, quantize="int8", samples=16)
                detect_predict.EXPORT_CONF = 0.05
                made.figures["parity"], made.figures["int8"] = every_box.figures["parity"], every_box.figures["int8"]
            speeds = {s.backend: s for s in benchmark(run, batch=8, repeats=10, rounds=args.rounds, samples=8)}
            eager, ort, int8 = speeds["torch (eager)"], speeds["onnxruntime"], speeds["onnxruntime int8"]
            q = made.figures["int8"]
            rows.append(
                f"| {name} | {agreement_words(made.figures['parity'])} | {eager.latency_ms:.1f} | {ort.latency_ms:.1f} "
                f"(**{eager.latency_ms / ort.latency_ms:.2f}x**) | {int8.latency_ms:.1f} ({eager.latency_ms / int8.latency_ms:.2f}x) "
                f"| {eager.throughput:.1f} | {ort.throughput:.1f} ({ort.throughput / eager.throughput:.2f}x) | "
                f"{int8.throughput:.1f} ({int8.throughput / eager.throughput:.2f}x) | {agreement_words(q)}"
                + (f", accuracy {q['accuracy']:.1%} vs {made.figures['parity']['accuracy']['onnx']:.1%}" if "accuracy" in q else "")
                + " |")
            if "segmenter" in name:
                continue
            clip = write_test_video(Path(tmp) / f"clip-{run.name}.mp4", 300, (640, 480), fps=30)
            fps: dict[str, list[float]] = {"torch": [], "onnx": []}
            for r in range(args.repeats):
                for backend in ("torch", "onnx") if r % 2 == 0 else ("onnx", "torch"):
                    fps[backend].append(video_fps(run, clip, backend, Path(tmp) / f"video-{run.name}-{backend}-{r}"))
            t, o = statistics.median(fps["torch"]), statistics.median(fps["onnx"])
            video_rows.append(f"| {name} | {t:.1f} | {o:.1f} ({o / t:.2f}x) |")
    body = (
        "Same graph (uint8 input, preprocessing inside) in PyTorch eager fp32 and in ONNX Runtime 1.32 (fp32, and the "
        "int8 copy: static QDQ quantisation calibrated on 16 training images); latency = median ms of one sample a "
        "call, throughput = samples/s at batch 8 (the detector's graph takes one image a call: 8 calls); the backends "
        f"alternate over {args.rounds} rounds. Parity: the export's own check on 16 samples of the run's test (or "
        "validation) split, as written to export.json.\n\n"
        "| model | fp32 export parity | eager ms | ONNX Runtime ms | int8 ms | eager /s | ONNX Runtime /s | int8 /s | int8 agreement |\n"
        "|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        f"Video end to end (`deepfit predict RUN clip.mp4`: decode, predict, draw, encode H.264, per-frame CSV and JSON "
        f"Lines), 300 frames of 640 x 480, frames/s, median of {args.repeats} alternated runs:\n\n"
        "| model | torch backend | onnx backend |\n|---|---|---|\n" + "\n".join(video_rows) + "\n"
    )
    record("onnx-runtime", "ONNX Runtime against PyTorch eager, and video end to end (CPU)", body)


if __name__ == "__main__":
    main()
