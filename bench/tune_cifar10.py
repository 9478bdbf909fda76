"""A CIFAR-10 slice on the CPU: deepfit's default options against the options `deepfit tune` found, each trained for the
same final budget and scored once on the same test images.

    uv run python bench/tune_cifar10.py [--trials 10] [--trial-minutes 1] [--final-minutes 4] [--smoke]

The slice: 5,000 training images (500 a class; 10% of them held out for validation) and 2,000 test images (200 a
class) of CIFAR-10, 32x32, deepfit's small `cnn` from scratch. The search runs --trials trials of --trial-minutes
each (`--time-budget`), with deepfit's default space for this task (learning rate, weight decay, batch size,
augmentation, dropout, the cnn's width) and its median pruner; trials are scored on the validation images only. Then
two runs of --final-minutes each, the default options and the best trial's, are scored once on the test images.
About 10 + 2 x 4 minutes of training and a few of reading the images: under 25 minutes on 2 CPU cores. `--smoke`
runs a tiny version in seconds (nothing is recorded).
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

from deepfit.config import TrainConfig, field_names
from deepfit.workflows.evaluate import evaluate
from deepfit.workflows.train import train
from deepfit.workflows.tune import tune

from common import record, unpack

BASE = {"model": "cnn", "image_size": 32}  # deepfit's defaults otherwise: adamw 1e-3, weight decay 0.05, batch 64, light


def write_slice(root: Path, target: Path, train_images: int, test_images: int, val_share: float = 0.1) -> Path:
    """A CSV (path, label, split) of the first images of each class: its train and val splits from CIFAR-10's training
    images, its test split from its test images."""
    classes = sorted(p.name for p in (root / "train").iterdir())
    rows = []
    for c in classes:
        pool = sorted((root / "train" / c).glob("*.jpg"))[:train_images // len(classes)]
        held = round(len(pool) * val_share)
        rows += [(p, c, "val" if i < held else "train") for i, p in enumerate(pool)]
        rows += [(p, c, "test") for p in sorted((root / "test" / c).glob("*.jpg"))[:test_images // len(classes)]]
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split"])
        writer.writerows((str(p), c, s) for p, c, s in rows)
    return target


def final_run(data: Path, config: TrainConfig) -> tuple[float, float, float]:
    """(best validation accuracy, test accuracy, seconds of training) of one run of `config`, scored once."""
    result = train(data, config)
    saved = json.loads((result.run_dir / "config.json").read_text())
    seconds = saved.get("budget_result", {}).get("seconds_used", float("nan"))
    return result.best_score or float("nan"), float(evaluate(result.run_dir).metrics["accuracy"]), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--trial-minutes", type=float, default=1.0, help="training budget of each trial (default 1)")
    parser.add_argument("--final-minutes", type=float, default=4.0, help="training budget of each final run (default 4)")
    parser.add_argument("--train-images", type=int, default=5000)
    parser.add_argument("--test-images", type=int, default=2000)
    parser.add_argument("--smoke", action="store_true", help="a few seconds on a few hundred images; records nothing")
    args = parser.parse_args()
    if args.smoke:
        args.trials, args.trial_minutes, args.final_minutes, args.train_images, args.test_images = 3, 0.05, 0.05, 500, 200
    cifar = unpack("cifar10.tar.gz", "cifar10")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        data = write_slice(cifar, Path(tmp) / "slice" / "slice.csv", args.train_images, args.test_images)
        searched = time.perf_counter()
        result = tune(data, trials=args.trials, **BASE, time_budget=args.trial_minutes, output=str(Path(tmp) / "runs"),
                      name="search")
        search_minutes = (time.perf_counter() - searched) / 60
        rows = list(csv.DictReader((result.tune_dir / "trials.csv").open()))
        best = json.loads((result.tune_dir / "best.json").read_text())
        tuned_options = {k: v for k, v in json.loads((Path(best["run_dir"]) / "config.json").read_text()).items()
                         if k in field_names(TrainConfig)}
        finals = {}
        for label, config in (("default options", TrainConfig(**BASE)), ("tuned options", TrainConfig.from_dict(tuned_options))):
            config = config.replace(time_budget=args.final_minutes, output=str(Path(tmp) / "runs"), name=label.split()[0])
            finals[label] = final_run(data, config)
            print(f"{label}: validation {finals[label][0]:.2%}, test {finals[label][1]:.2%}", flush=True)
    total = (time.perf_counter() - started) / 60
    states = [r["state"] for r in rows]
    table = "\n".join(f"| {label} | {val:.2%} | **{test:.2%}** | {seconds:.0f} s |" for label, (val, test, seconds) in finals.items())
    tried = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in best["options"].items())
    body = f"""
{args.train_images:,} CIFAR-10 training images ({args.train_images // 10:,} of them held out for validation) and
{args.test_images:,} test images, 32x32, deepfit's `cnn` from scratch (`--model cnn --image-size 32`, every other option
deepfit's default). `deepfit tune`: {args.trials} trials of `--time-budget {args.trial_minutes:g}` with the default
space (learning rate 1e-4..1e-2 log, weight decay 1e-4..0.3 log, batch 32/64/128, augmentation none/light/strong,
dropout 0..0.5, width 16/32/64), TPE and the median pruner, scored on the validation images only:
{states.count('complete')} completed, {states.count('pruned')} pruned, {states.count('failed')} failed, in
{search_minutes:.1f} minutes. Best trial {best['trial']} (validation {best['value']:.2%}): {tried}.
Then each set of options trained once for `--time-budget {args.final_minutes:g}` and scored once on the test images:

| options | best validation accuracy | test accuracy ({args.test_images:,} images) | training time |
|---|---|---|---|
{table}

Accuracy gained by the search: {100 * (finals['tuned options'][1] - finals['default options'][1]):+.2f} points on the test
images. Trials of {args.trial_minutes:g} minute(s) favour what learns fastest at first (a search judges options at its
trials' length, not at the final run's), so a search should be run at about the final budget when that can be afforded.

The whole benchmark took {total:.1f} minutes (reading the images for every run included). One run of each: on this
small test set a difference under about 2 points is within the noise of one split and one seed.
"""
    if args.smoke:
        print(body)
        return
    record("tune_cifar10", "Hyperparameter search on a CIFAR-10 slice (`deepfit tune`)", body)


if __name__ == "__main__":
    main()
