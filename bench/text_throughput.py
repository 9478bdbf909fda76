"""Text training throughput: `deepfit train` against a plain, hand-written PyTorch loop, in one run; and the padding
that length bucketing saves.

Both train the same network (deepfit's `rnn` by default, a bidirectional GRU with attention pooling; `--model bag` for
the bag of n-grams; built by `build_text_model` from the spec deepfit chose for the run) from scratch on the same SMS
messages (../shared/data/sms_spam.tsv, `--texts`: the first N of the file), tokenized once by the BPE tokenizer
deepfit trained on them (the run's own, loaded from its config.json; tokenizing is timed on neither side), with the
same batch size, the same batches (length buckets: `TextStore.arrange_order` on a random order, each batch padded to
its longest text by `TextStore.pad`), optimizer (AdamW, weight decay on weights only, warm-up then cosine), loss
(label smoothing 0.1) and precision (fp32). Only the training steps are timed; the first epoch of each run is warm-up
and not counted (unless there is a single epoch). Runs alternate, deepfit then plain, `--repeats` times, so drift in
the machine's speed hits both alike. The padding an epoch carries with and without length buckets is counted over 10
random orders of the training messages (`TextStore.padded_tokens`).

    uv run python bench/text_throughput.py [--model rnn] [--texts 5574] [--epochs 3] [--repeats 3]
    uv run python bench/text_throughput.py --smoke   # generated texts, seconds, writes nothing to BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from deepfit.config import TrainConfig
from deepfit.modalities.text.store import BUCKET_BATCHES, TextStore
from deepfit.modalities.text.tokenizer import encode, from_json
from deepfit.tasks.classify.text import TextSpec
from deepfit.tasks.classify.text_model import TEXT_MODELS, build_text_model
from deepfit.workflows.train import train

from common import SHARED, plain_training, record

NAME = "text-throughput"  # the section of BENCHMARKS.md
BATCH = 64  # deepfit's default batch for text (config.MODALITY_DEFAULTS)
LR, WEIGHT_DECAY, LABEL_SMOOTHING = 1e-3, 0.05, 0.1  # deepfit's defaults (config.py)
ORDERS = 10  # random epoch orders over which the padding is counted
SMS = SHARED / "data" / "sms_spam.tsv"


def counted(speeds: list[float]) -> list[float]:
    """The epochs measured: all but the first (warm-up), unless there is only one."""
    return speeds[1:] if len(speeds) > 1 else speeds


def deepfit_speed(data: Path, model: str, epochs: int, workdir: Path) -> tuple[float, Path]:
    """(training samples/s from the run's metrics.csv, the run folder)."""
    config = TrainConfig(task="classify", modality="text", model=model, epochs=epochs, batch_size=BATCH,
                         val_fraction=0.0, test_fraction=0.0, precision="fp32", output=str(workdir / "runs"))
    run = train(data, config).run_dir
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    return statistics.mean(counted([float(r["samples_per_s"]) for r in rows])), run


def same_data(run: Path) -> tuple[TextSpec, TextStore]:
    """The network spec deepfit chose (vocabulary, maximum length, network) and its training texts as token ids, by the
    tokenizer the run trained, the labels indexed as deepfit indexed them, in the order of its split."""
    saved = json.loads((run / "config.json").read_text())
    spec = TextSpec(**saved["text"])
    rows = [r for r in csv.DictReader((run / "split.csv").open(encoding="utf-8")) if r["split"] == "train"]
    index = {c: i for i, c in enumerate(saved["classes"])}
    ids, _ = encode(from_json(spec.tokenizer), [r["text"] for r in rows], spec.max_length)
    return spec, TextStore(ids, [index[r["label"]] for r in rows], [Path(r["source"]) for r in rows])


def plain_speed(spec: TextSpec, store: TextStore, epochs: int) -> float:
    """The reference: what a careful user writes by hand with PyTorch alone, on deepfit's network class and batches."""
    torch.manual_seed(0)
    model = build_text_model(spec.model, spec.num_classes, spec.vocab_size, spec.max_length, spec.model_args,
                             spec.drop_rate)
    opt, sched, loss_fn = plain_training(model, lr=LR, weight_decay=WEIGHT_DECAY, label_smoothing=LABEL_SMOOTHING,
                                         steps_per_epoch=math.ceil(len(store) / BATCH), epochs=epochs)
    speeds = []
    for _ in range(epochs):
        model.train()
        # length buckets, as deepfit arranges an epoch; drawn before the clock starts, as deepfit's engine does
        order = store.arrange_order(torch.randperm(len(store)), BATCH)
        start = time.perf_counter()
        for idx in order.split(BATCH):
            batch = store.pad(idx)  # {"input_ids": (B, L), "attention_mask": (B, L)}, L the batch's longest text
            loss = loss_fn(model(batch), store.labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        speeds.append(len(store) / (time.perf_counter() - start))
    return statistics.mean(counted(speeds))


def padding(store: TextStore, orders: int = ORDERS) -> dict[str, float]:
    """Tokens an epoch, the mean over `orders` random orders: real ones, and the padding of batches of the random order
    as it is and of the same order arranged in length buckets."""
    generator = torch.Generator().manual_seed(0)
    plain, bucketed = [], []
    for _ in range(orders):
        order = torch.randperm(len(store), generator=generator)
        plain.append(store.padded_tokens(order, BATCH))
        bucketed.append(store.padded_tokens(store.arrange_order(order, BATCH), BATCH))
    return {"tokens": int(store.lengths.sum()), "random": statistics.mean(plain), "bucketed": statistics.mean(bucketed)}


def messages(folder: Path, texts: int | None) -> Path:
    """The SMS collection, or its first `texts` messages as a TSV of the same format in `folder`."""
    if not SMS.exists():
        raise SystemExit(f"{SMS} not found: the benchmark needs the shared data beside the repository")
    lines = SMS.read_bytes().split(b"\n")  # a line per message (a TSV has no quoting), the header first
    if texts is None or texts >= len([line for line in lines if line.strip()]) - 1:
        return SMS
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sms.tsv").write_bytes(b"\n".join(lines[: texts + 1]) + b"\n")
    return folder / "sms.tsv"


def generated(folder: Path, per_class: int = 48) -> Path:
    """An SMS-like TSV (Label, SMS) of made-up messages, 1 to 60 words, one set of words per class (--smoke)."""
    rng = np.random.default_rng(0)
    words = {"ham": ["ok", "see", "you", "at", "home", "later", "lunch", "call", "me", "when", "free"],
             "spam": ["win", "free", "prize", "now", "claim", "cash", "txt", "reply", "urgent", "offer"]}
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["Label\tSMS\n"]
    for i in range(2 * per_class):
        label = "ham" if i % 2 else "spam"
        length = int(np.clip(rng.lognormal(2.3, 0.8), 1, 60))
        rows.append(f"{label}\t{' '.join(rng.choice(words[label], length))}\n")
    (folder / "sms.tsv").write_text("".join(rows), encoding="utf-8")
    return folder / "sms.tsv"


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="rnn", choices=TEXT_MODELS, help="deepfit text network (default rnn; bag's "
                        "hashed n-gram table, 17M parameters, makes the optimizer step most of the work)")
    parser.add_argument("--texts", type=int, default=None, help="the first N messages of sms_spam.tsv (default: all 5,574)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per run, the first not counted (default 3; smoke 2)")
    parser.add_argument("--repeats", type=int, default=None, help="alternating repeats (default 3; smoke 1)")
    parser.add_argument("--smoke", action="store_true", help="a few generated texts: seconds, BENCHMARKS.md untouched")
    parser.add_argument("--out", type=Path, default=None, help="the Markdown file to write the section into (default: "
                        "the repository's BENCHMARKS.md; with --smoke, none unless given)")
    args = parser.parse_args(argv)
    epochs = args.epochs or (2 if args.smoke else 3)
    repeats = args.repeats or (1 if args.smoke else 3)
    ours, ref = [], []
    with tempfile.TemporaryDirectory() as tmp:
        # the data beside, not around, the runs: deepfit never writes into the data's folder
        data = generated(Path(tmp) / "data") if args.smoke else messages(Path(tmp) / "data", args.texts)
        same: tuple[TextSpec, TextStore] | None = None
        for _ in range(repeats):  # alternate, so drift in machine speed hits both alike
            speed, run = deepfit_speed(data, args.model, epochs, Path(tmp))
            ours.append(speed)
            same = same or same_data(run)  # tokenized once, by the first run's tokenizer, on its training split
            ref.append(plain_speed(*same, epochs))
            print(f"deepfit {ours[-1]:.1f} samples/s, plain loop {ref[-1]:.1f} samples/s", flush=True)
    assert same is not None
    spec, store = same
    ratio = statistics.mean(ours) / statistics.mean(ref)
    pad = padding(store)
    saved = 1 - pad["bucketed"] / pad["random"] if pad["random"] else 0.0
    print(f"ratio deepfit / plain: {ratio:.3f}; padding an epoch {pad['random']:,.0f} tokens in random batches, "
          f"{pad['bucketed']:,.0f} in length buckets ({saved:.1%} saved)", flush=True)
    result = {"deepfit": ours, "plain": ref, "ratio": ratio, "texts": len(store), "epochs": epochs, "repeats": repeats,
              "model": args.model, "padding": pad, "padding_saved": saved}
    if args.smoke and args.out is None:
        return result
    counted_text = "the first not counted" if epochs > 1 else "all counted"
    model = build_text_model(spec.model, spec.num_classes, spec.vocab_size, spec.max_length, spec.model_args)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    source = "generated messages (--smoke)" if args.smoke else f"SMS Spam Collection messages (the first {len(store)} of the file)"
    tokens, random_pad, bucket_pad = pad["tokens"], pad["random"], pad["bucketed"]
    record(
        NAME, "Text training throughput: deepfit vs a plain PyTorch loop (SMS spam, CPU)",
        f"""
Same model (`{spec.model}`, {params:.2f}M parameters), from scratch, batch {BATCH}, fp32, AdamW (lr {LR:g}, weight decay
{WEIGHT_DECAY:g} on weights, one epoch of warm-up then cosine), label smoothing {LABEL_SMOOTHING:g}; {len(store)} {source},
tokenized once (not timed) by the {spec.vocab_size}-piece BPE tokenizer deepfit trained on them, at most {spec.max_length}
tokens a text; the same batches on both sides: length buckets (texts sorted by length within each stretch of
{BUCKET_BATCHES} batches of a random order), each batch padded to its longest text. {epochs} epoch{"s" if epochs > 1 else ""} per run, {counted_text},
{repeats} alternating repeats. Only the training steps are timed, on both sides.

| loop | samples/s (mean of repeats) | each repeat |
|---|---|---|
| deepfit `train` | {statistics.mean(ours):.1f} | {', '.join(f'{v:.1f}' for v in ours)} |
| plain PyTorch loop | {statistics.mean(ref):.1f} | {', '.join(f'{v:.1f}' for v in ref)} |

**Ratio deepfit / plain: {ratio:.3f}** (target >= 0.95; each repeat {', '.join(f'{a / b:.3f}' for a, b in zip(ours, ref, strict=True))}).

Padding an epoch (batches of {BATCH}, mean over {ORDERS} random orders), beside {tokens:,} real tokens:

| batches | padding tokens an epoch | share of the tokens fed |
|---|---|---|
| the random order as it is | {random_pad:,.0f} | {random_pad / (tokens + random_pad):.1%} |
| length buckets (deepfit) | {bucket_pad:,.0f} | {bucket_pad / (tokens + bucket_pad):.1%} |

**Length buckets save {random_pad - bucket_pad:,.0f} padding tokens an epoch ({saved:.1%} of the padding).**
""",
        path=args.out,
    )
    return result


if __name__ == "__main__":
    main()
