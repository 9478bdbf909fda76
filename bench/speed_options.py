"""Training speed of the CIFAR-10 preset with each speed option, against the plain PyTorch loop, in one run.

    uv run python bench/speed_options.py [--images 10000] [--epochs 3]

Every variant trains deepfit's `fastnet` on the same CIFAR-10 images in memory with the `cifar` preset
(batch 256, SGD, translation + flip); the first epoch is warm-up (and, with --compile, compilation) and
is not counted. The reference is the plain loop of bench/throughput.py (fp32, channels-last).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from common import record, unpack
from throughput import deepfit_speed, plain_speed, subset

VARIANTS = {
    "default (fp32, channels-last)": {},
    "--no-channels-last": {"channels_last": False},
    "--accumulate 2": {"accumulate": 2},
    "--compile": {"compile": True},
    "--precision bf16 (CPU autocast)": {"precision": "bf16"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    items = subset(unpack("cifar10.tar.gz", "cifar10"), args.images)
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        plain = [plain_speed(items, args.epochs)]  # measured before and after the variants: drift shows in the spread
        for name, options in VARIANTS.items():
            results[name] = deepfit_speed(items, args.epochs, Path(tmp), **options)
            print(f"{name}: {results[name]:.0f} img/s (plain loop {plain[0]:.0f})", flush=True)
        plain.append(plain_speed(items, args.epochs))
    reference = sum(plain) / len(plain)
    rows = "\n".join(f"| deepfit, {name} | {v:.0f} | {v / reference:.2f} |" for name, v in results.items())
    record(
        "speed_options", "Training speed options on the CPU (CIFAR-10 preset)",
        f"""
`fastnet` with the `cifar` preset, batch 256, {len(items)} CIFAR-10 images in memory, {args.epochs} epochs per variant
(the first not counted), torch {torch.__version__} with {torch.get_num_threads()} threads. One run of each variant;
the spread of the two plain-loop runs shows this VM's run-to-run noise (see also the throughput section).

| loop | images/s | ratio to the plain loop |
|---|---|---|
| plain PyTorch loop (fp32, channels-last), mean of the runs before and after ({plain[0]:.0f}, {plain[1]:.0f}) | {reference:.0f} | 1.00 |
{rows}

deepfit's CPU default stays fp32 (bf16 is the default on CUDA only): CPUs without native bf16 run bf16 matrix
products several times slower, so check the bf16 row on your own machine before choosing it.
""",
    )


if __name__ == "__main__":
    main()
