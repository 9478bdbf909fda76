"""Scoring a trained run on its test split (or another labelled set) and writing the report.

The test split is meant to be used once: every evaluation is logged in `evaluations.jsonl`, and
scoring the test split again says so, because choosing between models on it turns it into a
validation set and its numbers stop being honest.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepfit.data.sources import Catalog, LabeledFile
from deepfit.errors import DataError
from deepfit.fileio import atomic_write_text
from deepfit.log import logger
from deepfit.modalities.base import BadFile, check_unreadable
from deepfit.modalities.image.store import ImageStore
from deepfit.report.confusion import plot_confusion_matrix, write_confusion_csv
from deepfit.report.gallery import EXAMPLES_PER_CLASS, ClassExamples
from deepfit.report.trust import one_class_note, worst_first
from deepfit.tasks.classify.explain_report import worst_explainer
from deepfit.tasks.classify.objective import classification_metrics
from deepfit.tasks.classify.predict import Predictor
from deepfit.tasks.classify.report import WorstPrediction, write_html_report
from deepfit.tasks.details import run_details

WORST_SHOWN = 16


@dataclass
class Evaluation:
    metrics: dict[str, Any]
    report: Path
    folder: Path  # where the report, plots and predictions were written
    split: str  # "test", "val" (no test split) or "external"


def check_known_classes(catalog: Catalog, classes: list[str], data: str | Path) -> None:
    """Another data set may hold fewer classes than the model knows, never one it was not trained on."""
    unknown = sorted(set(catalog.classes) - set(classes))
    if unknown:
        example = next(f.path for f in catalog.files if f.label == unknown[0])
        raise DataError(
            f"{data} has classes the model was not trained on: {', '.join(unknown)} (e.g. {example}); "
            f"the model knows {', '.join(classes)}"
        )


def _val_fallback_note(meta: dict[str, Any]) -> str:
    if meta.get("features", {}).get("selection"):  # a classical model: tuned by cross-validation on train only
        return (
            "No separate test split: these numbers are measured on the validation split. It was not used to fit "
            "or tune this model (its settings were chosen by cross-validation on the training split), so it is "
            "an unseen set; give the data a test/ folder to keep it that way when comparing models."
        )
    return (
        "No separate test split: these numbers are measured on the validation split, which also chose the "
        "best epoch, so they are optimistic. Give the data a test/ folder (or let deepfit split it) for an "
        "honest estimate."
    )


def _log_evaluation(run_dir: Path, entry: dict[str, Any]) -> int:
    """Append to evaluations.jsonl; return how often this split was scored before."""
    log = run_dir / "evaluations.jsonl"
    previous = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []
    with log.open("a") as f:
        f.write(json.dumps(entry) + "\n")
    return sum(1 for e in previous if e.get("split") == entry["split"] and e.get("data") == entry.get("data"))


def score_files(
    run_dir: Path, predictor: Predictor, split: str, files: list[LabeledFile], *, data: str | Path | None = None,
    checkpoint: str = "best", batch_size: int = 64,
) -> Evaluation:
    """Decode `files`, predict them, and report (see `report_evaluation`); unreadable files are left out, with a
    warning, and too many of them is an error."""
    if "text" in predictor.trained.meta:
        from deepfit.tasks.classify.text import score_texts, text_card

        paths, y_true, probs = score_texts(predictor, files, batch_size)  # type: ignore[arg-type]
        texts = {str(f.path): f.text for f in files}  # type: ignore[attr-defined]
        return report_evaluation(run_dir, predictor.trained.meta, split=split, paths=paths, y_true=y_true, probs=probs,
                                 bad=[], data=data, checkpoint=checkpoint, picture=text_card(files),  # type: ignore[arg-type]
                                 explain=worst_explainer(predictor, texts))
    if "sound" in predictor.trained.meta:
        from deepfit.tasks.classify.sound import score_clips

        paths, y_true, probs, clips_bad = score_clips(predictor, files, split, batch_size)  # type: ignore[arg-type]
        return report_evaluation(run_dir, predictor.trained.meta, split=split, paths=paths, y_true=y_true, probs=probs,
                                 bad=clips_bad, data=data, checkpoint=checkpoint, explain=worst_explainer(predictor))
    classes = predictor.classes
    index = {c: i for i, c in enumerate(classes)}
    store, bad = ImageStore.load(
        [f.path for f in files], [index[f.label] for f in files], predictor.trained.preprocessing.resize_size,
        what=f"{split} images", max_bad_fraction=1.0,
    )
    check_unreadable(bad, len(files), f"{split} images", "image")

    logits, targets = [], []
    for images, labels, _ in store.batches(batch_size, shuffle=False):
        logits.append(predictor.logits(images))
        targets.append(labels)
    probs = torch.cat(logits).softmax(1).numpy()
    y_true = torch.cat(targets).numpy()
    return report_evaluation(
        run_dir, predictor.trained.meta, split=split, paths=store.paths, y_true=y_true, probs=probs, bad=bad,
        data=data, checkpoint=checkpoint, tta=predictor.tta, explain=worst_explainer(predictor),
    )


def report_evaluation(
    run_dir: Path,
    meta: dict[str, Any],
    *,
    split: str,
    paths: list[Path],
    y_true: np.ndarray,
    probs: np.ndarray,
    bad: list[BadFile],
    data: str | Path | None = None,
    checkpoint: str = "best",
    tta: bool = False,
    picture: Any = None,
    explain: Callable[[list[str]], dict[str, str]] | None = None,
) -> Evaluation:
    """Metrics, plots, prediction CSV and the HTML report for one scored split; logged in evaluations.jsonl. `explain`
    gives the HTML of the explanation of each worst prediction shown, by path (explain_report.py)."""
    classes = list(meta["classes"])
    noun = "clips" if "sound" in meta else "texts" if "text" in meta else "images"
    metrics = classification_metrics(y_true, probs, classes, intervals=True)
    notes = [_val_fallback_note(meta)] if split == "val" else []
    y_pred = probs.argmax(1)
    collapsed = one_class_note(np.bincount(y_pred, minlength=len(classes)), np.bincount(y_true, minlength=len(classes)),
                               classes, what=f"{split} {noun}")
    notes += [collapsed] if collapsed else []
    folder = run_dir if data is None else run_dir / f"eval-{Path(data).stem}"
    folder.mkdir(parents=True, exist_ok=True)
    times_before = _log_evaluation(
        run_dir, {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "split": split, "data": str(data) if data else None,
                  "checkpoint": checkpoint, "accuracy": metrics["accuracy"]},
    )
    if split == "test" and times_before:
        notes.append(
            f"The test split has been scored {times_before} time(s) before. If you changed anything because of "
            "those scores, it is no longer an unseen test set."
        )
        logger.warning(notes[-1])

    confusion = np.array(metrics["confusion"])
    images = {"Confusion matrix": plot_confusion_matrix(confusion, classes, folder / "confusion_matrix.png")}
    write_confusion_csv(confusion, classes, folder / "confusion_matrix.csv")
    _write_predictions_csv(folder / f"{split}_predictions.csv", paths, y_true, probs, classes)
    atomic_write_text(folder / f"{split}_metrics.json", json.dumps(metrics, indent=2) + "\n")

    summary = {
        "Run": str(run_dir),
        "Model": f"{meta['model']['source']}:{meta['model']['name']}",
        "Started from": meta.get("pretrained_from") or "random initialisation (trained from scratch)",
    }
    if "features" in meta:
        summary["Started from"] = meta.get("pretrained_from") or "no learned weights (hand-made features)"
        summary["Features"] = f"layer {meta['features']['layer']}"
        summary["Classifier"] = meta["features"]["description"]
        summary["Validation accuracy"] = _pct(meta.get("val_acc"))
    else:
        summary["Checkpoint"] = f"{checkpoint} (epoch {meta.get('epoch')}, validation accuracy {_pct(meta.get('val_acc'))})"
    summary |= {
        "Scored on": f"{split} split, {len(paths)} {noun}" + (f" from {data}" if data else ""),
        "Test-time augmentation": "flip" if tta else "none",
        "Date": time.strftime("%Y-%m-%d %H:%M"),
    }
    if bad:
        notes.append(f"{len(bad)} unreadable {noun} were left out: " + ", ".join(str(b.path) for b in bad[:5]))
    if "sound" in meta:  # each worst clip's card: its spectrogram and a player (the class examples are pictures only)
        from deepfit.tasks.classify.sound import SoundSpec
        from deepfit.tasks.classify.sound_report import clip_media

        spec = SoundSpec(**meta["sound"])
        picture = clip_media(spec.frontend_config, spec.samples, spec.channels)
    details = run_details(run_dir, folder, meta, notes=notes,
                          examples=[] if picture else _examples(paths, y_true, probs, classes),
                          image_size=(meta.get("preprocessing") or {}).get("image_size"))
    worst = _worst(paths, y_true, probs, classes)
    report = write_html_report(
        folder / "report.html", title=f"deepfit evaluation: {run_dir.name}", summary=summary, metrics=metrics,
        class_names=classes, images=images, worst=worst, details=details, picture=picture,
        explanations=explain([w.path for w in worst]) if explain is not None and worst else None,
    )
    logger.info(
        f"{split} accuracy {metrics['accuracy']:.2%}, balanced accuracy {metrics['balanced_accuracy']:.2%} "
        f"on {len(paths)} {noun}; report: {report}"
    )
    return Evaluation(metrics, report, folder, split)


def _pct(value: Any) -> str:
    return f"{value:.2%}" if isinstance(value, float) else "n/a"


def _worst(paths: list[Path], y_true: np.ndarray, probs: np.ndarray, classes: list[str]) -> list[WorstPrediction]:
    """The images the model got most wrong: the misclassified ones, lowest probability given to the true class first
    (the least sure correct ones only when nothing is misclassified)."""
    true_prob = probs[np.arange(len(y_true)), y_true]
    pred = probs.argmax(1)
    order, _ = worst_first(true_prob.tolist(), (pred != y_true).tolist(), WORST_SHOWN)
    return [
        WorstPrediction(str(paths[i]), classes[y_true[i]], classes[pred[i]], float(probs[i, pred[i]]), float(true_prob[i]))
        for i in order
    ]


def _examples(paths: list[Path], y_true: np.ndarray, probs: np.ndarray, classes: list[str]) -> list[ClassExamples]:
    """Up to EXAMPLES_PER_CLASS images of every class: correctly predicted ones first, the surest first."""
    true_prob = probs[np.arange(len(y_true)), y_true]
    right = probs.argmax(1) == y_true
    examples = []
    for k, name in enumerate(classes):
        members = sorted(np.flatnonzero(y_true == k), key=lambda i: (not right[i], -true_prob[i], i))
        examples.append((name, [(f"{Path(paths[i]).name} ({true_prob[i]:.0%} {name})", str(paths[i]))
                                for i in members[:EXAMPLES_PER_CLASS]]))
    return examples


def _write_predictions_csv(path: Path, paths: list[Path], y_true: np.ndarray, probs: np.ndarray, classes: list[str]) -> None:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["path", "true", "predicted", "confidence", *[f"p_{c}" for c in classes]])
    for p, t, row in zip(paths, y_true, probs, strict=True):
        writer.writerow([p, classes[t], classes[int(row.argmax())], f"{row.max():.6f}", *[f"{v:.6f}" for v in row]])
    atomic_write_text(path, out.getvalue())
