"""CIFAR-10 from scratch on a CPU budget: test accuracy of the `cifar` preset after ~10 minutes of training.

Trains on the 50,000 training images (2% held out for validation), then scores the 10,000 test
images once. The budget is met by `--time-budget 10`: the one-cycle schedule runs over the 10 minutes,
measured while training, and the run stops on time with the rate decayed (`--epochs N` trains N epochs
instead, as before the budget existed). The time actually spent training is reported next to the accuracy.

    uv run python bench/cifar10_budget.py [--minutes 10 | --epochs N] [--ema DECAY] [--widths W1 W2 W3]
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time

from deepfit.presets import apply_preset
from deepfit.workflows.evaluate import evaluate
from deepfit.workflows.train import train

from common import record, unpack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget (default 10)")
    parser.add_argument("--epochs", type=int, default=None, help="train this many epochs instead of a time budget")
    parser.add_argument("--ema", type=float, default=None, help="weight averaging decay (default: the preset's)")
    parser.add_argument("--widths", type=int, nargs=3, default=None, help="fastnet's stage widths (default: the preset's)")
    parser.add_argument("--output", default=None, help="keep the run here (default: a temporary folder)")
    args = parser.parse_args()
    data = unpack("cifar10.tar.gz", "cifar10")
    with tempfile.TemporaryDirectory() as tmp:
        plan = {"epochs": args.epochs} if args.epochs else {"time_budget": args.minutes}
        plan |= {"ema": args.ema} if args.ema is not None else {}
        plan |= {"model_args": {"widths": args.widths}} if args.widths else {}
        config = apply_preset("cifar", {**plan, "val_fraction": 0.02, "output": args.output or tmp})
        started = time.perf_counter()
        result = train(data, config)
        wall = time.perf_counter() - started
        rows = list(csv.DictReader((result.run_dir / "metrics.csv").open()))
        saved = json.loads((result.run_dir / "config.json").read_text())
        spent, precision = saved.get("budget_result"), saved["precision"]
        train_seconds = spent["seconds_used"] if spent else sum(float(r["seconds"]) for r in rows)
        length = f"a {args.minutes:g}-minute budget ({len(rows)} epochs)" if spent else f"{args.epochs} epochs"
        evaluation = evaluate(result.run_dir)
    acc = evaluation.metrics["accuracy"]
    record(
        "cifar10_budget", "CIFAR-10 from scratch on the CPU budget (`--preset cifar`)",
        f"""
Model `fastnet` (widths {config.model_args.get('widths', [32, 64, 128])}), {length}, batch {config.batch_size}, SGD-Nesterov lr {config.lr},
{precision} (precision auto), one-cycle schedule, label smoothing {config.label_smoothing}, weight averaging {config.ema or 'off'}, patch-whitening stem, translate+flip augmentation,
test-time augmentation (mirror and ±1 px shifts).

| figure | value |
|---|---|
| test accuracy (10,000 images, scored once) | **{acc:.2%}** (target >= 88%, aim 91%) |
| best validation accuracy (1,000 held-out train images) | {result.best_val_acc:.2%} |
| training time (steps, validation and checkpoints) | {train_seconds:.0f} s |
| wall time of `train` incl. decoding 60,000 JPEGs | {wall:.0f} s |
""",
    )


if __name__ == "__main__":
    main()
