"""Which recipe a time budget should train: variants of a task's default recipe, each trained with the same
`--time-budget` on the same data and split, the variants alternated within each repeat (this machine is shared
and noisy, so a variant never runs all its repeats in one stretch).

A variant changes options of bench/budget_quality.py's case (its default recipe): the segmentation loss and class
weights, the crop size, weight averaging. Results are merged into bench/results/budget_recipes.json and the
table in BENCHMARKS.md lists every variant's best validation score per repeat and their mean.

    uv run python bench/budget_recipes.py --cases membrane --minutes 5 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Any

from budget_quality import CASES, run
from common import REPO, commit, record

RESULTS = REPO / "bench" / "results" / "budget_recipes.json"

# case -> variant -> option changes to the case's default recipe ("default": none)
VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "membrane": {
        "default (ce)": {},
        "ce+dice": {"loss": "ce+dice"},
        "ce+dice, balanced class weights": {"loss": "ce+dice", "class_weights": "balanced"},
        "384 px crops": {"image_size": 384},
        "ema 0.95": {"ema": 0.95},
    },
    "coco128-semantic": {
        "default (ce)": {},
        "ce+dice": {"loss": "ce+dice"},
        "ce+dice, balanced class weights": {"loss": "ce+dice", "class_weights": "balanced"},
    },
}


def table(results: dict[str, Any]) -> str:
    rows = ["| case | score | budget | variant | options changed | each repeat (epochs) | mean |", "|---|---|---|---|---|---|---|"]
    for case, by_minutes in results.items():
        for minutes, by_variant in by_minutes.items():
            for variant, runs in by_variant.items():
                scores = [r["score"] for r in runs]
                changes = runs[0].get("changes", VARIANTS.get(case, {}).get(variant, {}))  # newer runs keep their own
                changed = ", ".join(f"{k}={v}" for k, v in changes.items()) or "–"
                each = ", ".join(f"{s:.4g} ({r['epochs']} ep)" for s, r in zip(scores, runs, strict=True))
                rows.append(f"| {case} | {CASES[case][1]} | {minutes} min | {variant} | {changed} | {each} | {statistics.mean(scores):.4g} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--variants", nargs="+", help="only these variants (default: all of the case's)")
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--table-only", action="store_true", help="rewrite BENCHMARKS.md's table from the results kept")
    args = parser.parse_args()
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for _ in range(0 if args.table_only else args.repeats):
        for case in args.cases:
            for variant, changes in VARIANTS[case].items():
                if args.variants and variant not in args.variants:
                    continue
                measured = {**run(case, args.minutes, changes), "changes": changes, "commit": commit()}
                results.setdefault(case, {}).setdefault(f"{args.minutes:g}", {}).setdefault(variant, []).append(measured)
                print(case, variant, measured, flush=True)
                RESULTS.write_text(json.dumps(results, indent=2) + "\n")  # kept after every run: a sweep may be stopped
    record("budget_recipes", "Choosing a budget's recipe by measurement (`--time-budget`, CPU)", f"""
Variants of a task's default recipe (bench/budget_quality.py's cases), each trained with the same time budget on
the same data and split, alternated within each repeat. The score is the best validation score the run reached.
Measured with `bench/budget_recipes.py --minutes 5` (every variant once), then `--cases membrane --variants ...` for
the repeats (membrane's first two variants twice more, the third once more) and `--cases coco128-semantic --minutes 10`
(CE + Dice again after commit 1995695), one run at a time on a quiet machine.

{table(results)}

Reading the table (runs of commit 5711371's code, the last CE + Dice run 1995695's; an Intel Xeon, 2 cores, bf16): the segmentation defaults
stay as they are, because no variant beat them by more than the spread of repeats. On membrane (4 validation
images, so one run's score moves by about 0.01 between repeats) cross-entropy and CE + Dice tie: 0.781 and 0.785 on
average over three alternated repeats, each within the other's range. Balanced class weights (background 2.3,
foreground 0.6) lose 0.03 on average, 384 px crops lose 0.03 (half the epochs in the time) and weight averaging
(EMA 0.95) gains nothing. On coco128 (129 classes) CE + Dice first cost half as much time again per epoch (its
one-hot truth over 129 classes: 283 s an epoch against 181-213 s), so 10 minutes bought 2 epochs instead of 3 and a
lower mIoU (0.0070 against 0.0079). Commit 1995695 computes Dice from per-class sums instead (the loss's forward and
backward 0.54-0.65 s instead of 1.1-1.3 s a batch; CE alone 0.33 s); then an epoch takes as long as with CE
(190-219 s), 10 minutes buy the same 3 epochs and CE + Dice ties CE (0.0082 against 0.0079, one run each). With
balanced weights over 129 classes, in 5 minutes: 0.0005 against 0.0029.
Classification's defaults were chosen in the CIFAR-10 section (weight averaging measured there, no better) and
hymenoptera's fine-tuning preset reaches its ceiling within 5 minutes; detection learns too little in 20 CPU
minutes (box mAP 0.01) to tell two recipes apart, so its recipe is not chosen here.
""")


if __name__ == "__main__":
    main()
