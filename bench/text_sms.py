"""Text classification on SMS spam: test accuracy, spam F1 and wall time of deepfit's text networks, next to the
classical reference in the same run (TF-IDF on word and character n-grams + a linear SVM, scikit-learn).

SMS Spam Collection (../shared/data/sms_spam.tsv): 5,574 messages, ham/spam (4,827 / 747). A stratified 80/20 split,
fixed by seed 0, is written as a CSV (text, label, split) in a temporary folder; every approach trains on the 80% (deepfit
holds 15% of it out for validation) and is scored once on the same 20%.

    uv run python bench/text_sms.py [--models bag rnn minilm] [--features tfidf minilm] [--epochs 5]

`minilm` is all-MiniLM-L6-v2 (../shared/weights), fine-tuned (`--model hf:FOLDER`: the head for one epoch, then the
whole encoder) or as sentence embeddings + logistic regression (`deepfit features`); `tfidf` under --features is
deepfit's own TF-IDF + linear SVM run (C chosen by cross-validation), beside the plain scikit-learn reference.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import numpy as np

from deepfit.api_features import fit_features
from deepfit.config import TrainConfig
from deepfit.data.split import stratified_split
from deepfit.modalities.text.io import read_texts
from deepfit.workflows.evaluate import evaluate
from deepfit.workflows.train import train

from common import SHARED, record

MINILM = SHARED / "weights" / "all-MiniLM-L6-v2"
OPTIONS = {"bag": {"lr": 0.01}, "rnn": {"lr": 0.003}, "transformer": {"lr": 0.001}, "minilm": {"lr": 0.001}}
NETWORKS = {"minilm": f"hf:{MINILM}"}
FEATURES = {"tfidf": ("tfidf", "svm"), "minilm": (f"hf:{MINILM}", "logreg")}


def write_split(folder: Path) -> Path:
    """sms.csv with a split column: a stratified 80/20 split of the messages, seed 0."""
    catalog = read_texts(SHARED / "data" / "sms_spam.tsv")
    parts = stratified_split(catalog.files, 0.0, 0.2, 0)
    target = folder / "sms.csv"
    with target.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label", "split"])
        for name, files in parts.items():
            writer.writerows([t.text, t.label, name] for t in files)
    return target


def spam_f1(y_true: list[str], y_pred: list[str]) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(y_true, y_pred, pos_label="spam"))


def tfidf_svm(split_csv: Path) -> tuple[float, float, float]:
    """(accuracy, spam F1, seconds): TF-IDF of words (1-2) and characters (2-5 within word bounds) + LinearSVC."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline, make_union
    from sklearn.svm import LinearSVC

    rows = list(csv.DictReader(split_csv.open(encoding="utf-8")))
    train_rows = [r for r in rows if r["split"] == "train"]
    test_rows = [r for r in rows if r["split"] == "test"]
    started = time.perf_counter()
    model = make_pipeline(
        make_union(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
                   TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True)),
        LinearSVC(C=1.0),
    ).fit([r["text"] for r in train_rows], [r["label"] for r in train_rows])
    predicted = model.predict([r["text"] for r in test_rows])
    seconds = time.perf_counter() - started
    truth = [r["label"] for r in test_rows]
    return float(np.mean(np.array(predicted) == np.array(truth))), spam_f1(truth, list(predicted)), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["bag", "rnn", "minilm"], help="deepfit text networks to train")
    parser.add_argument("--features", nargs="*", default=["tfidf", "minilm"], help="features + classical model runs")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--finetune-epochs", type=int, default=4, help="epochs of fine-tuning minilm (the first: the head)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "data").mkdir()
        split_csv = write_split(Path(tmp) / "data")  # beside, not around, the runs: deepfit never writes into the data
        for model in args.models:
            # fp32: the same figures on every CPU (bf16 of text networks on CPUs that have it is not measured here)
            epochs = args.finetune_epochs if model in NETWORKS else args.epochs
            config = TrainConfig(task="classify", modality="text", model=NETWORKS.get(model, model), epochs=epochs,
                                 precision="fp32", output=str(Path(tmp) / "runs"), **OPTIONS.get(model, {}))
            started = time.perf_counter()
            result = train(split_csv, config)
            wall = time.perf_counter() - started
            evaluation = evaluate(result.run_dir)
            predictions = list(csv.DictReader((result.run_dir / "test_predictions.csv").open()))
            f1 = spam_f1([p["true"] for p in predictions], [p["predicted"] for p in predictions])
            accuracy = evaluation.metrics["accuracy"]
            print(f"{model}: test accuracy {accuracy:.2%}, spam F1 {f1:.3f}, {wall:.0f} s", flush=True)
            lr = OPTIONS.get(model, {}).get("lr")
            how = (f"all-MiniLM-L6-v2 fine-tuned (`--model hf:FOLDER`), {epochs} epochs (1 head only), lr {lr:g}"
                   if model in NETWORKS else f"`{model}` from scratch, {epochs} epochs, lr {lr:g}")
            rows.append(f"| deepfit {how} | **{accuracy:.2%}** | {f1:.3f} | {wall:.0f} s |")
        for name in args.features:
            extractor, classifier = FEATURES[name]
            started = time.perf_counter()
            result = fit_features(split_csv, extractor, classifier=classifier, val_fraction=0.0, cache=False,
                                  output=str(Path(tmp) / "runs"))
            wall = time.perf_counter() - started
            predictions = list(csv.DictReader((result.run_dir / "test_predictions.csv").open()))
            f1 = spam_f1([p["true"] for p in predictions], [p["predicted"] for p in predictions])
            accuracy = result.evaluation.metrics["accuracy"]
            print(f"{name} features + {classifier}: test accuracy {accuracy:.2%}, spam F1 {f1:.3f}, {wall:.0f} s", flush=True)
            what = ("TF-IDF (words 1-2, characters 2-5) + linear SVM" if name == "tfidf"
                    else "all-MiniLM-L6-v2 sentence embeddings + logistic regression")
            rows.append(f"| deepfit `features` {what} ({result.classifier.describe()}) | **{accuracy:.2%}** | {f1:.3f} | "
                        f"{wall:.0f} s |")
        accuracy, f1, seconds = tfidf_svm(split_csv)
        print(f"tf-idf + svm: test accuracy {accuracy:.2%}, spam F1 {f1:.3f}, {seconds:.1f} s", flush=True)
        rows.append(f"| TF-IDF (words 1-2, characters 2-5) + linear SVM (scikit-learn), the classical reference | {accuracy:.2%} | {f1:.3f} | {seconds:.1f} s |")
        n_test = sum(1 for r in csv.DictReader(split_csv.open(encoding="utf-8")) if r["split"] == "test")
    record(
        "text-sms", "Text classification: SMS spam (CPU)",
        f"""
5,574 messages (ham 4,827, spam 747); a stratified 80/20 split fixed by seed 0, {n_test} test messages scored once.
deepfit trains with its text defaults (a BPE tokenizer of 8,000 pieces learned from the training messages, AdamW,
batches of 64 in length buckets), in fp32, and keeps the best epoch on a 15% validation split of the training messages; wall
time includes tokenizing. The random split keeps messages that occur more than once on both sides (deepfit's log
counts them), for every row alike: the figures are those of a random split of this data, as usually reported.

| approach | test accuracy | spam F1 | wall time |
|---|---|---|---|
{chr(10).join(rows)}

Fine-tuning MiniLM at deepfit's defaults (AdamW lr 1e-3 for the head, 0.1 of it for the encoder, label smoothing 0.1,
one head epoch) is the row above. Three other settings were measured on the same split while choosing it (test
accuracy, spam F1, each scored once): 4 epochs with `--backbone-lr-scale 0.3`, 98.92% (0.958); the same with
`--val-fraction 0.05`, 98.74% (0.953); `--backbone-lr-scale 0.5 --val-fraction 0.05`, 98.65% (0.948). None reaches
issue 16's target of 99.0% and spam F1 0.96, and picking among them by their test scores would make the winner's
figure optimistic, so the defaults stay. The embeddings' classifiers on this split: logistic regression 98.83%
(0.955), linear SVM 98.56% (0.945), RBF SVM 98.47% (0.940), 1-NN 97.58% (0.910). Fine-tuning's wall time is about
40 s for the head epoch (the encoder only runs forward) and 90-100 s for each full epoch, at 45 texts/s.
""",
    )


if __name__ == "__main__":
    main()
