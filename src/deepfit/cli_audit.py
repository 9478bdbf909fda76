"""The `deepfit data audit` command: what in a data set would make results wrong or optimistic (workflows/audit.py)."""

from __future__ import annotations

import argparse
from typing import Any

from deepfit.audit.duplicates import NEAR_BITS, NEAR_COSINE
from deepfit.cli_options import add_task_options, task_option_names


def add_audit_command(data_sub: Any) -> argparse.ArgumentParser:
    a = data_sub.add_parser("audit", help="duplicates and leaks across splits, likely label errors, outliers, imbalance, bad "
                            "boxes and masks: an HTML page and CSVs (nothing in DATA is changed)")
    a.add_argument("data", help="the labelled data, as `deepfit train` reads it")
    a.add_argument("--task", help="read DATA as this task's data (default: found from its layout)")
    a.add_argument("--model", help="the network whose embeddings find near copies, label errors and outliers: a timm / "
                   "torchvision name, hf:NAME, or a trained run's folder (the run's own network); default: hand-made "
                   "features (colour and gradient histograms, MFCC statistics, TF-IDF)")
    a.add_argument("--weights", help="local weights of --model (offline)")
    a.add_argument("--pretrained", action="store_true", help="the official weights of --model, by name (needs internet once)")
    a.add_argument("--run", help="detection, instance segmentation: a detector trained on these classes, whose predictions "
                   "on the images it never trained on judge their boxes (cleanlab's object-detection label quality)")
    a.add_argument("--layer", help="the layer whose output is the embedding (default: the pre-logits one)")
    a.add_argument("--near-bits", type=int, default=NEAR_BITS,
                   help=f"images whose perceptual hashes differ in at most this many of 64 bits are near copies (default {NEAR_BITS})")
    a.add_argument("--near-cosine", type=float, default=NEAR_COSINE,
                   help=f"embeddings at least this similar (cosine, centred) are near copies (default {NEAR_COSINE})")
    a.add_argument("--write-clean", metavar="LIST", help="also write a CSV of the examples to keep (path or text, label, "
                   "split): later copies across splits, likely label errors and items with bad objects left out")
    a.add_argument("--output", default="runs", help="folder in which the audit folder is made (default: runs)")
    a.add_argument("--name", help="the audit folder's name (default: audit-<date>-<time>)")
    a.add_argument("--seed", type=int, default=0, help="the split's seed, as for `deepfit train` (default 0)")
    a.add_argument("--val-fraction", type=float, default=0.15, help="as for `deepfit train`, when DATA has no split")
    a.add_argument("--test-fraction", type=float, default=0.15, help="as for `deepfit train`, when DATA has no split")
    a.add_argument("--modality", choices=("auto", "image", "sound", "text"), default="auto", help="classification: what the inputs are")
    a.add_argument("--device", default="auto")
    add_task_options(a, "data", "how the data is read (each option is for the tasks it names)")
    return a


def cmd_audit(args: argparse.Namespace) -> list[str]:
    from deepfit.workflows.audit import audit_data

    options = {k: v for k, v in vars(args).items() if k in task_option_names("data")}
    found = audit_data(args.data, task=args.task, model=args.model, weights=args.weights, pretrained=args.pretrained,
                       layer=args.layer, run=args.run, near_bits=args.near_bits, near_cosine=args.near_cosine, write_clean=args.write_clean,
                       output=args.output, name=args.name, seed=args.seed, val_fraction=args.val_fraction,
                       test_fraction=args.test_fraction, modality=args.modality, device=args.device, data_options=options)
    lines = [found.headline()]
    if found.clean is not None:
        lines.append(f"examples to keep: {found.clean}")
    return lines
