"""`deepfit compare`: on *this* data, does deep learning pay off, and would more data help?

Every approach is trained on the same growing, nested fractions of the training split (10%, 25%,
50%, 100% by default: each subset contains the smaller ones, and every class keeps at least one
image) and scored on the same test split:

    hand-made features + rbf            the classical baseline: colour and gradient histograms for images,
                                        MFCC statistics for sound, with a kernel (RBF) SVM as classical
                                        pipelines use them; on text TF-IDF of word and character n-grams + a
                                        linear SVM, refitted on each fraction (`baseline_classifier`)
    <model> features + classifier       a pretrained network as a fixed feature extractor (on sound: an image
                                        network on spectrograms; on text: hf:NAME sentence embeddings; or a
                                        trained run's folder)
    <model> fine-tuned                  the `finetune` preset (head first, then the whole network)
    cnn from scratch                    optional (--scratch): a small network with no pretraining (soundcnn on
                                        sound, the bag of n-grams on text)

Sound clips are all read at one sample rate and clip length, chosen once from the whole training split.

Wall time is what producing the model took on this machine: for feature approaches, extracting the
training images' features (measured incrementally, fraction by fraction, with no cache) plus fitting
the classifier; for trained networks, the whole `train` call. Scoring the test split is not counted.
The test split is the data's own test split, or its validation split when it has no test split, or
a stratified `test_fraction` of unsplit data; the validation split is not used otherwise.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import random
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepfit.config import CLASSIFIERS, FeaturesConfig
from deepfit.data.sources import Catalog, LabeledFile
from deepfit.data.split import stratified_split
from deepfit.engine.device import resolve_device, resolve_precision
from deepfit.errors import ConfigError, DataError
from deepfit.fileio import atomic_write_text
from deepfit.log import logger, setup_logging
from deepfit.presets import apply_preset
from deepfit.report.stats import standard_error
from deepfit.runs.folder import check_output_outside_data, new_run_dir
from deepfit.tasks.classify.objective import classification_metrics
from deepfit.tasks.classify.report import plot_learning_curves, write_comparison_report
from deepfit.tasks.classify.sound import is_sound_catalog, plan
from deepfit.tasks.classify.text import is_text, read_labelled
from deepfit.workflows.classical import fit_classifier
from deepfit.workflows.evaluate import evaluate
from deepfit.workflows.extraction import HANDMADE, Backbone, extract, load_backbone
from deepfit.workflows.sound_features import sound_backbone
from deepfit.workflows.text_features import fraction_scores
from deepfit.workflows.train import train

DEFAULT_FRACTIONS = (0.1, 0.25, 0.5, 1.0)
DEFAULT_TEXT_ENCODER = "hf:sentence-transformers/all-MiniLM-L6-v2"  # small (22.7M), fast on a CPU, strong embeddings


@dataclass
class CompareResult:
    folder: Path
    rows: list[dict[str, Any]]  # approach, kind, fraction, train_images, accuracy, balanced_accuracy, seconds
    verdict: list[str]
    report: Path
    test_images: int


@dataclass
class _Data:
    classes: list[str]
    root: Path
    train: list[LabeledFile]
    test: list[LabeledFile]
    notes: list[str] = field(default_factory=list)


def parse_model(text: str) -> tuple[str, str | None]:
    """'NAME' or 'NAME=WEIGHTS_FILE' -> (name, weights or None)."""
    name, _, weights = text.partition("=")
    if not name:
        raise ConfigError(f"--models expects NAME or NAME=WEIGHTS_FILE, got {text!r}")
    return name, weights or None


def nested_fractions(files: list[LabeledFile], fractions: Sequence[float], seed: int) -> dict[float, list[LabeledFile]]:
    """Stratified subsets, each containing the smaller ones; every class keeps at least one image."""
    by_class: dict[str, list[LabeledFile]] = defaultdict(list)
    for f in sorted(files, key=LabeledFile.sort_key):
        by_class[f.label].append(f)
    for label, members in by_class.items():
        random.Random(f"{seed}:{label}:fractions").shuffle(members)
    return {
        frac: sorted(
            [f for members in by_class.values() for f in members[: max(1, round(frac * len(members)))]],
            key=LabeledFile.sort_key,
        )
        for frac in sorted(fractions)
    }


def _split_for_comparison(catalog: Catalog, test_fraction: float, seed: int, noun: str) -> _Data:
    notes = []
    if catalog.has_splits:
        by_split: dict[str, list[LabeledFile]] = defaultdict(list)
        for f in catalog.files:
            by_split[f.split or "train"].append(f)
        test = by_split.get("test") or by_split.get("val", [])
        if not by_split.get("test") and test:
            notes.append("the data has no test split: its validation split is the test set of this comparison")
        train_files = by_split.get("train", [])
    else:
        parts = stratified_split(catalog.files, 0.0, test_fraction, seed)
        train_files, test = parts["train"], parts["test"]
        notes.append(f"the data has no splits: a stratified {test_fraction:.0%} of each class is the test set")
    if not test:
        raise DataError(f"nothing to compare on: the data has no test (or validation) {noun}; add a test/ folder")
    if not train_files:
        raise DataError(f"the data has no training {noun}")
    return _Data(catalog.classes, catalog.root, train_files, test, notes)


def _with_split(files: list[LabeledFile], split: str) -> list[LabeledFile]:
    return [dataclasses.replace(f, split=split) for f in files]  # (a text keeps its text)


def _feature_rows(
    backbone: Backbone, label: str, kind: str, data: _Data, subsets: dict[float, list[LabeledFile]],
    classifier: str, folds: int, seed: int, device: torch.device, batch_size: int, workers: int | None,
) -> list[dict[str, Any]]:
    """Features of the test split once; of the training fractions incrementally, timed; one fit per fraction."""
    precision = resolve_precision("auto", device)
    index = {c: i for i, c in enumerate(data.classes)}

    def features_of(files: list[LabeledFile]) -> tuple[np.ndarray, np.ndarray, float]:
        result = extract(backbone, [f.path for f in files], device=device, precision=precision, batch_size=batch_size, workers=workers)
        labels = np.array([index[files[i].label] for i in result.kept], dtype=np.int64)  # the readable files' rows
        return result.features, labels, result.seconds

    x_test, y_test, _ = features_of(data.test)
    rows, done, seconds = [], set(), 0.0
    x_parts, y_parts = [], []
    for frac, files in subsets.items():
        new = [f for f in files if f.path not in done]
        if new:
            x_new, y_new, spent = features_of(new)
            seconds += spent
            x_parts.append(x_new)
            y_parts.append(y_new)
            done.update(f.path for f in new)
        x_train, y_train = np.concatenate(x_parts), np.concatenate(y_parts)
        start = time.perf_counter()
        fitted = fit_classifier(classifier, x_train, y_train, data.classes, folds=folds, seed=seed)
        fit_seconds = time.perf_counter() - start
        with torch.inference_mode():
            probs = fitted.head(torch.from_numpy(x_test)).softmax(1).numpy()
        metrics = classification_metrics(y_test, probs, data.classes)
        rows.append(_row(label, kind, frac, len(y_train), metrics, seconds + fit_seconds))
        logger.info(f"compare: {label} on {frac:.0%} of the training split: {rows[-1]['accuracy']:.2%}")
    return rows


def _row(approach: str, kind: str, frac: float, n: int, metrics: dict[str, Any], seconds: float) -> dict[str, Any]:
    """One line of results.csv, from the metrics every approach is scored with (tasks/classification.py)."""
    return {
        "approach": approach, "kind": kind, "fraction": frac, "train_images": n, "accuracy": metrics["accuracy"],
        "balanced_accuracy": metrics["balanced_accuracy"], "seconds": round(seconds, 2),
    }


def _trained_rows(
    label: str, kind: str, options: dict[str, Any], preset: str | None, data: _Data, subsets: dict[float, list[LabeledFile]],
    runs: Path, device: str,
) -> list[dict[str, Any]]:
    """One `deepfit train` per fraction, with no validation split (all of the fraction trains; the last epoch is kept)."""
    rows = []
    test = _with_split(data.test, "test")
    for frac, files in subsets.items():
        catalog = Catalog(sorted(_with_split(files, "train") + test, key=LabeledFile.sort_key), data.classes, data.root, "comparison")
        config = apply_preset(preset, {**options, "val_fraction": 0.0, "output": str(runs), "device": device,
                                       "name": f"{label.replace(' ', '-').replace('/', '_')}-{round(frac * 100)}pct"})
        start = time.perf_counter()
        result = train(catalog, config)
        seconds = time.perf_counter() - start
        metrics = evaluate(result.run_dir, device=device).metrics
        rows.append(_row(label, kind, frac, len(files), metrics, seconds))
        logger.info(f"compare: {label} on {frac:.0%} of the training split: {metrics['accuracy']:.2%} ({seconds:.0f} s)")
    return rows


def compare(
    data: str | Path,
    *,
    models: Sequence[str] | None = None,
    pretrained: bool = False,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    classifier: str = "svm",
    baseline_classifier: str | None = None,
    finetune: bool = True,
    finetune_epochs: int | None = None,
    scratch: bool = False,
    scratch_epochs: int = 15,
    test_fraction: float = 0.2,
    cv_folds: int = 5,
    seed: int = 0,
    output: str | Path = "runs",
    name: str | None = None,
    device: str = "auto",
    batch_size: int = 32,
    workers: int | None = None,
    modality: str = "auto",
    catalog: Catalog | None = None,
) -> CompareResult:
    """Learning curves of every approach on the same test split, plots, a table and a plain-words verdict. `models`
    may be empty (the baseline, and --scratch); on sound or text, a model may be a trained run's folder (features only),
    and `hf:NAME_OR_FOLDER` a transformers encoder. `baseline_classifier`: default rbf (svm on text's TF-IDF)."""
    setup_logging()
    catalog = catalog or read_labelled(data, modality)
    sound, text = is_sound_catalog(catalog), is_text(catalog)
    baseline_classifier = baseline_classifier or ("svm" if text else "rbf")
    if models is None:
        models = (DEFAULT_TEXT_ENCODER,) if text else ("resnet18",)
    for flag, value in (("--classifier", classifier), ("--baseline-classifier", baseline_classifier)):
        if value not in CLASSIFIERS:
            raise ConfigError(f"{flag} must be one of {', '.join(CLASSIFIERS)}, not {value!r}")
    fractions = sorted({float(f) for f in fractions})
    if not fractions or fractions[0] <= 0 or fractions[-1] > 1:
        raise ConfigError(f"--fractions must lie in (0, 1], got {fractions}")
    parsed = [parse_model(m) for m in models]
    for model, weights in parsed:
        if not weights and not pretrained and not Path(model).is_dir() and not model.startswith("hf:"):
            raise ConfigError(f"--models {model}: give its weights as {model}=FILE, or pass --pretrained to download them")
        if weights and not Path(weights).is_file():
            raise ConfigError(f"weights file not found: {weights}")
    noun = "clips" if sound else "texts" if text else "images"
    data_split = _split_for_comparison(catalog, test_fraction, seed, noun)
    check_output_outside_data(output, catalog.root)
    subsets = nested_fractions(data_split.train, fractions, seed)
    folder = new_run_dir(output, name or f"compare-{time.strftime('%Y%m%d-%H%M%S')}", "compare")
    logger.info(
        f"comparing on {len(data_split.test)} test {noun}; training fractions "
        + ", ".join(f"{f:.0%} = {len(s)} {noun}" for f, s in subsets.items()) + f"; results in {folder}"
    )
    torch_device = resolve_device(device)
    # sound: one sample rate and clip length for every approach, chosen from the whole training split
    heard = dict(zip(("sample_rate", "clip_seconds"), plan(None, None, data_split.train), strict=True)) if sound else {}

    def backbone_of(config: FeaturesConfig) -> Backbone:
        n = len(data_split.classes)
        return sound_backbone(config, n, data_split.train) if sound else load_backbone(config, n)

    def feature_rows(config: FeaturesConfig, label: str, kind: str, chosen: str) -> list[dict[str, Any]]:
        if not text:
            return _feature_rows(backbone_of(config), label, kind, data_split, subsets, chosen, cv_folds, seed, torch_device,
                                 batch_size, workers)
        rows = []
        for frac, n, y_test, probs, seconds in fraction_scores(config, data_split.classes, subsets, data_split.test,
                                                               chosen, cv_folds, seed, torch_device):
            rows.append(_row(label, kind, frac, n, classification_metrics(y_test, probs, data_split.classes), seconds))
            logger.info(f"compare: {label} on {frac:.0%} of the training split: {rows[-1]['accuracy']:.2%}")
        return rows

    rows: list[dict[str, Any]] = []
    classical = "MFCC statistics" if sound else "TF-IDF n-grams" if text else "hand-made features"
    rows += feature_rows(FeaturesConfig(model=HANDMADE, batch_size=batch_size, **heard), f"{classical} + {baseline_classifier}",
                         "classical", baseline_classifier)
    sound_options = {"modality": "sound", **heard} if sound else {"modality": "text"} if text else {}
    for model, weights in parsed:
        run = Path(model).is_dir()  # a trained sound or text run: its features only (it is already trained)
        config = FeaturesConfig(model=model, weights=weights, pretrained=pretrained and not weights, batch_size=batch_size,
                                **({} if run else heard))
        label = Path(model).name if run or model.startswith("hf:") else model  # a folder by its name
        rows += feature_rows(config, f"{label} features + {classifier}", "features", classifier)
        if finetune and not run:
            options: dict[str, Any] = {"model": model, "weights": weights, "pretrained": pretrained and not weights,
                                       "workers": workers, **sound_options}
            if finetune_epochs:
                options["epochs"] = finetune_epochs
            rows += _trained_rows(f"{label} fine-tuned", "finetune", options, "finetune", data_split, subsets, folder / "runs", device)
    if scratch:
        own = {"model": "soundcnn" if sound else "bag", **sound_options} if sound or text else {"model": "cnn", "image_size": 64}
        options = {**own, "epochs": scratch_epochs, "workers": workers, "seed": seed}
        rows += _trained_rows(f"{own['model']} from scratch", "scratch", options, None, data_split, subsets, folder / "runs", device)

    n_test = len(data_split.test)
    lines = verdict(rows, n_test, noun)
    _write_rows(rows, folder / "results.csv")
    size_png, time_png = plot_learning_curves(rows, n_test, folder / "accuracy_vs_size.png", folder / "accuracy_vs_time.png")
    report = write_comparison_report(
        folder / "report.html", title=f"deepfit compare: {Path(data).name}", verdict=lines, rows=rows,
        images={"Test accuracy against training-set size": size_png, "Test accuracy against wall time": time_png},
        notes=data_split.notes + [
            f"All approaches are scored on the same {n_test} test {noun}; the error bars are one binomial standard error.",
            "Choosing an approach by these test scores makes its own test figure slightly optimistic: confirm the "
            "winner on data none of them has seen.",
        ],
    )
    for line in lines:
        logger.info(line)
    return CompareResult(folder, rows, lines, report, n_test)


def _write_rows(rows: list[dict[str, Any]], path: Path) -> None:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, out.getvalue())


# --- the verdict ---------------------------------------------------------------------------------


def _noise(a: float, b: float, n: int) -> float:
    """One standard error of the difference between two accuracies on the same n images (`significance` asks for 2)."""
    return math.sqrt(standard_error(a, n) ** 2 + standard_error(b, n) ** 2)


def significance(a: float, b: float, n: int) -> int:
    """The one rule every sentence of the verdict uses: +1 when accuracy `a` is really above `b` on the same n test
    images (by more than twice the noise, about 2 sigma), -1 when really below, 0 when within noise."""
    gap, noise = a - b, 2 * _noise(a, b, n)
    return 1 if gap > noise else -1 if gap < -noise else 0


def verdict(rows: list[dict[str, Any]], n_test: int, noun: str = "images") -> list[str]:
    """Plain words: who wins at the full size, is a cheaper one as good, does deep learning pay, would more data help."""
    if not rows:
        return ["nothing was compared"]
    largest = max(r["fraction"] for r in rows)
    full = sorted((r for r in rows if r["fraction"] == largest), key=lambda r: (-r["accuracy"], r["seconds"]))
    best = full[0]
    n_train = best["train_images"]
    lines = [
        f"With all {n_train} training {noun}, {best['approach']} is the most accurate: {best['accuracy']:.1%} on "
        f"{n_test} test {noun} (± {standard_error(best['accuracy'], n_test):.1%})."
    ]
    cheaper = [r for r in full[1:] if r["seconds"] < best["seconds"] and significance(best["accuracy"], r["accuracy"], n_test) == 0]
    if cheaper:
        fast = min(cheaper, key=lambda r: r["seconds"])
        ratio = best["seconds"] / max(fast["seconds"], 1e-3)
        lines.append(
            f"{fast['approach']} scores {fast['accuracy']:.1%}, within measurement noise of the best, in {ratio:.0f}x "
            f"less time ({fast['seconds']:.0f} s against {best['seconds']:.0f} s): it is the better buy unless every point matters."
        )
    classical = [r for r in full if r["kind"] == "classical"]
    deep = [r for r in full if r["kind"] != "classical"]
    if classical and deep:
        base, top = classical[0], deep[0]
        gain, sign = top["accuracy"] - base["accuracy"], significance(top["accuracy"], base["accuracy"], n_test)
        if sign > 0:
            lines.append(
                f"Deep learning pays off on this data: {top['approach']} is {100 * gain:.1f} points above the classical "
                f"baseline ({base['approach']}, {base['accuracy']:.1%})."
            )
        elif sign < 0:
            lines.append(
                f"Deep learning does not pay off here: the classical baseline ({base['approach']}, {base['accuracy']:.1%}) "
                f"beats the best deep approach by {-100 * gain:.1f} points."
            )
        else:
            lines.append(
                f"Deep learning is not clearly better on this data: {top['approach']} and the classical baseline "
                f"({base['approach']}) differ by {100 * gain:+.1f} points, within measurement noise."
            )
    curve = sorted((r for r in rows if r["approach"] == best["approach"]), key=lambda r: r["fraction"])
    if len(curve) >= 2:
        before, after = curve[-2], curve[-1]
        gain, sign = after["accuracy"] - before["accuracy"], significance(after["accuracy"], before["accuracy"], n_test)
        step = f"from {before['train_images']} to {after['train_images']} training {noun}"
        if sign > 0:
            lines.append(
                f"More data would likely help: {best['approach']} gained {100 * gain:.1f} points {step} and the curve "
                "is still rising."
            )
        elif sign == 0:
            lines.append(
                f"The curve of {best['approach']} has flattened ({100 * gain:+.1f} points {step}, within noise): more "
                f"{noun} of the same kind are unlikely to help much; better labels, harder examples or a stronger "
                "model are the next levers."
            )
        else:
            lines.append(
                f"{best['approach']} scored {100 * -gain:.1f} points lower with more data ({step}): the test split is "
                "small or noisy, so read the curves with care."
            )
    return lines
