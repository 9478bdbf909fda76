"""deepfit on a GPU, each figure against a reference measured in the same run; results as JSON.

    python3 bench/gpu.py --data .gpu/shared --out $OUT        # on the device machine: see bench/README.md
    uv run python bench/gpu.py --smoke --out /tmp/gpu-smoke    # on any CPU in about a minute, on generated data

Sections, each under its own time limit (the whole under --budget seconds, 8 minutes on one H100 with the
installation of the wheels), each recording its error instead of stopping the others:

    cifar10       time to 94% test accuracy: deepfit's `cifar` preset widened, a plain PyTorch loop, airbench94
    resnet50      ResNet-50 at 224 px in bf16: images/s and MFU, synthetic tensors, deepfit in memory, JPEG files
                  decoded by deepfit's loader, and nvJPEG decoding on the GPU
    detection     deepfit's engine vs a plain loop (Faster R-CNN, MobileNetV2 FPN)
    segmentation  deepfit's engine vs a plain loop (U-Net, MobileNetV2 encoder)
    checks        bf16 autocast, recovery from a real out-of-memory error
    cuda_tests    `pytest -m cuda`: the tests that are skipped without a GPU

gpu.json (written after every measurement, so a run cut short keeps its figures) goes to --out;
`uv run python bench/gpu_report.py gpu.json` turns it into the GPU section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STARTED = time.perf_counter()  # the budget counts from here: imports and unpacking are part of the 8 minutes
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO / "bench")]  # no installation needed: deepfit from the tree

import torch  # noqa: E402

from gpu_checks import checks_section, tests_section  # noqa: E402
from gpu_cifar import cifar_section  # noqa: E402
from gpu_common import FULL, SMOKE, Context, as_dict, environment, run_section  # noqa: E402
from gpu_data import generate, locate  # noqa: E402
from gpu_resnet import resnet_section  # noqa: E402
from gpu_tasks import detection_section, segmentation_section  # noqa: E402

# (name, function, time limit in seconds on one H100), in the order they run; see bench/README.md for the plan
SECTIONS = [
    ("cifar10", cifar_section, 200),
    ("resnet50", resnet_section, 60),
    ("detection", detection_section, 35),
    ("segmentation", segmentation_section, 30),
    ("checks", checks_section, 25),
    ("cuda_tests", tests_section, 60),
]
NAMES = [name for name, _, _ in SECTIONS]


def commit(data: Path | None) -> str:
    """The commit the tree was sent from: bench/gpu_prepare.sh writes it beside the data (the device gets no .git)."""
    if data is not None and (data / "commit.txt").is_file():
        return (data / "commit.txt").read_text().strip()
    try:
        done = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True)
        return done.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="a folder in the layout of ../shared (bench/gpu_prepare.sh makes .gpu/shared)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-out")), help="where gpu.json goes ($OUT)")
    parser.add_argument("--work", type=Path, help="scratch folder (default: /tmp/deepfit-gpu; a temporary one with --smoke)")
    parser.add_argument("--smoke", action="store_true", help="tiny generated data on the CPU: checks that every section runs")
    parser.add_argument("--only", help=f"comma-separated sections to run, of: {', '.join(NAMES)}")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds for the whole run, from the start of the script")
    parser.add_argument("--compile", choices=["auto", "on", "off"], help="torch.compile in the CIFAR runs (default: auto)")
    args = parser.parse_args(argv)
    only = NAMES if not args.only else args.only.split(",")
    if unknown := set(only) - set(NAMES):
        parser.error(f"unknown sections {', '.join(sorted(unknown))}; choose from {', '.join(NAMES)}")
    if not args.smoke and args.data is None:
        parser.error("--data is needed (or --smoke): a folder in the layout of ../shared, see bench/README.md")
    args.out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="deepfit-gpu-") as tmp:
        work = args.work or (Path(tmp) if args.smoke else Path("/tmp/deepfit-gpu"))
        os.environ.setdefault("DEEPFIT_CACHE", str(work / "cache"))  # deepfit's caches stay in the scratch folder
        os.environ.setdefault("DEEPFIT_OFFLINE", "1")  # nothing is fetched: the device machine has no network
        scale = SMOKE if args.smoke else FULL
        if args.smoke:  # one thread: on a CPU shared with other work, spinning thread pools slow the tiny steps many-fold
            torch.set_num_threads(1)
        if args.compile:
            scale = dataclasses.replace(scale, compile=args.compile)
        device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
        data = generate(work / "data") if args.smoke else locate(args.data, work / "data")
        ctx = Context(device=device, smoke=args.smoke, scale=scale, data=data, work=work, out=args.out,
                      deadline=STARTED + args.budget)
        ctx.results.update(schema=1, mode="smoke" if args.smoke else "full", command=" ".join(["python3", "bench/gpu.py", *sys.argv[1:]]),
                           commit=commit(args.data), started=time.strftime("%Y-%m-%dT%H:%M:%S%z"), budget_s=args.budget,
                           scale=as_dict(scale), sections={})
        try:
            ctx.results["env"] = environment(ctx)
        except Exception as e:  # noqa: BLE001 - a broken device is itself a finding: record it, let the sections say more
            ctx.results["env"] = {"device": str(device), "error": f"{type(e).__name__}: {e}"}
        ctx.results["setup_seconds"] = round(time.perf_counter() - STARTED, 1)
        ctx.save()
        for name, fn, limit in SECTIONS:
            if name in only:
                run_section(ctx, name, fn, limit)
        ctx.results["total_seconds"] = round(time.perf_counter() - STARTED, 1)
        ctx.save()
    failed = [n for n, r in ctx.results["sections"].items() if r["status"] != "ok"]
    print(f"wrote {args.out / 'gpu.json'} in {ctx.results['total_seconds']} s" + (f"; not ok: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
