"""`deepfit serve` under load on the 2-core CPU: requests/s and p50/p95 latency of one image classifier, with and
without request batching, on the PyTorch and the ONNX Runtime backends.

    uv run python bench/serve.py [--run DIR] [--requests 240] [--concurrency 16] [--rounds 3]

The classifier is tf_efficientnet_lite0 (shared ImageNet weights) fine-tuned 1 epoch on hymenoptera (trained into
--run, or reused from it; exported to ONNX there when it has no model.onnx). Each configuration is a `deepfit serve`
process on 127.0.0.1; the client (this process, `--concurrency` threads over keep-alive connections) posts one
hymenoptera JPEG per request. Configurations take turns, `--rounds` times; the table gives medians over the rounds.
The server and the client share the two cores, as they would on a laptop serving itself.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from deepfit.config import TrainConfig
from deepfit.workflows.export import export
from deepfit.workflows.train import train

from common import SHARED, record, unpack

CONFIGS = {"torch, batched": ["--backend", "torch"], "torch, one at a time": ["--backend", "torch", "--no-batching"],
           "onnx, batched": ["--backend", "onnx"], "onnx, one at a time": ["--backend", "onnx", "--no-batching"]}


def classifier(folder: Path) -> Path:
    run = folder / "serve-cls"
    if not (run / "best.safetensors").is_file():
        train(unpack("hymenoptera.tar", "hymenoptera"), TrainConfig(
            model="tf_efficientnet_lite0", weights=str(SHARED / "weights" / "tf_efficientnet_lite0.safetensors"), epochs=1,
            name="serve-cls", output=str(folder), workers=2))
    if not (run / "model.onnx").is_file():
        export(run)
    return run


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load(run: Path, flags: list[str], image: bytes, requests: int, concurrency: int) -> dict[str, float]:
    port = _port()
    server = subprocess.Popen([sys.executable, "-m", "deepfit.cli", "serve", str(run), "--port", str(port), "--quiet", *flags])
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            if server.poll() is not None:
                raise SystemExit(f"the server stopped (exit {server.returncode}): see its messages above")
            try:
                if httpx.get(url + "/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        predict = f"{url}/v1/models/{run.name}/predict"
        with httpx.Client(limits=httpx.Limits(max_connections=concurrency), timeout=120) as client, \
                ThreadPoolExecutor(concurrency) as pool:

            def one(_: int) -> tuple[int, float]:
                started = time.perf_counter()
                code = client.post(predict, content=image).status_code
                return code, time.perf_counter() - started

            list(pool.map(one, range(2 * concurrency)))  # warm up: first batches, thread pools, caches
            started = time.perf_counter()
            results = list(pool.map(one, range(requests)))
            wall = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(timeout=30)
    ok = sorted(seconds for code, seconds in results if code == 200)
    return {"rps": requests / wall, "p50": 1000 * statistics.median(ok), "p95": 1000 * ok[int(0.95 * (len(ok) - 1))],
            "ok": len(ok) / requests}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", help="a folder to keep the trained classifier in and reuse it from (default: temporary)")
    parser.add_argument("--requests", type=int, default=240)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = classifier(Path(args.run) if args.run else Path(tmp))
        image = next((unpack("hymenoptera.tar", "hymenoptera") / "val" / "bees").glob("*.jpg")).read_bytes()
        figures: dict[str, list[dict[str, float]]] = {name: [] for name in CONFIGS}
        for round_ in range(args.rounds):
            for name, flags in CONFIGS.items():
                figures[name].append(load(run, flags, image, args.requests, args.concurrency))
                print(round_, name, figures[name][-1], flush=True)
    median = {name: {k: statistics.median(r[k] for r in rounds) for k in rounds[0]} for name, rounds in figures.items()}
    base = median["torch, one at a time"]["rps"]
    rows = "\n".join(f"| {name} | {m['rps']:.1f} | {m['rps'] / base:.2f}x | {m['p50']:.0f} ms | {m['p95']:.0f} ms | {m['ok']:.0%} |"
                     for name, m in median.items())
    body = (f"One tf_efficientnet_lite0 classifier (224 px, fine-tuned 1 epoch on hymenoptera) behind `deepfit serve` on "
            f"127.0.0.1; {args.requests} requests of one {len(image) / 1000:.0f} kB JPEG each at concurrency "
            f"{args.concurrency}, client and server sharing the 2 cores; medians of {args.rounds} alternated rounds.\n\n"
            "| server | requests/s | vs torch one at a time | p50 latency | p95 latency | answered 200 |\n"
            "|---|---|---|---|---|---|\n" + rows)
    record("serve", "Prediction server: requests/s and latency (CPU)", body)


if __name__ == "__main__":
    main()
