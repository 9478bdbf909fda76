"""Feature extraction: a pretrained network (or hand-made features) turns each image into a vector,
and a classical model is fitted on the vectors.

    deepfit features DATA --model NAME --weights FILE --classifier svm     -> a run folder
    deepfit features DATA --model NAME --weights FILE --export feats.npz   -> the feature matrix

Features are cached on disk under a key made of the model, its weights, the layer, the
preprocessing and the precision, one vector per file *content* (a blake2b digest): a second
classifier on the same data extracts nothing, and an image whose bytes changed is extracted again.
Images are decoded batch by batch in worker processes and never held all at once.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from deepfit.config import FeaturesConfig
from deepfit.data.sources import Catalog, LabeledFile
from deepfit.data.split import resolve_splits, save_split
from deepfit.engine.checkpoint import save_checkpoint
from deepfit.engine.device import resolve_device
from deepfit.errors import ConfigError
from deepfit.fileio import atomic_write_text
from deepfit.log import logger, setup_logging
from deepfit.models.factory import ModelSpec
from deepfit.models.features import FeatureClassifier
from deepfit.runs.folder import CHECKPOINT_FORMAT, check_output_outside_data, new_run_dir
from deepfit.runs.session import seed_everything
from deepfit.tasks.classify.data import report_duplicates, write_skipped
from deepfit.tasks.classify.evaluate import Evaluation, report_evaluation
from deepfit.tasks.classify.explain_report import run_explainer
from deepfit.tasks.classify.sound import is_sound_catalog
from deepfit.tasks.classify.text import (
    cross_split_texts,
    is_text,
    read_labelled,
    save_text_split,
    text_card,
    write_leaks,
)
from deepfit.workflows.classical import FittedClassifier, fit_classifier, head_probabilities
from deepfit.workflows.extraction import (
    Backbone,
    FeatureSet,
    check_export_path,
    export_features,
    feature_set,
    load_backbone,
)
from deepfit.workflows.sound_features import sound_backbone
from deepfit.workflows.text_features import TFIDF_NAMES, text_backbone, text_feature_set


@dataclass
class _Extracted:
    catalog: Catalog
    splits: dict[str, list[LabeledFile]]
    backbone: Backbone
    features: FeatureSet


def _extract_all(data: str | Path, config: FeaturesConfig, catalog: Catalog | None, output: str | None = None) -> _Extracted:
    """Split as `deepfit train` would (same seed, same split), check where files will go before any work,
    then extract (or reuse) the features of every split and export them when asked."""
    catalog = catalog or read_labelled(data, config.modality)
    sound, text = is_sound_catalog(catalog), is_text(catalog)
    splits = resolve_splits(catalog, config.val_fraction, config.test_fraction, config.seed)
    if output is not None:
        check_output_outside_data(output, catalog.root)
    if config.export:
        if text and config.model in TFIDF_NAMES:
            raise ConfigError("TF-IDF features are sparse (tens of thousands of n-grams a text): --export writes dense "
                              "matrices; fit a classifier on them instead, or export a network's embeddings")
        check_export_path(Path(config.export), catalog.root)
    noun = "clips" if sound else "texts" if text else "images"
    logger.info(f"{len(catalog.classes)} classes, {', '.join(f'{len(v)} {k}' for k, v in splits.items())} {noun} ({catalog.layout})")
    files = [f for name in ("train", "val", "test") for f in splits[name]]
    device = resolve_device(config.device)
    if text:
        backbone = text_backbone(config, len(catalog.classes), splits["train"])
        features = text_feature_set(backbone, files, catalog.classes, config, device)
    else:
        if sound:
            backbone = sound_backbone(config, len(catalog.classes), splits["train"])
        else:
            backbone = load_backbone(config, len(catalog.classes))
        features = feature_set(backbone, files, catalog.classes, config, device)
    if config.export:
        export_features(features, Path(config.export), catalog.root)
    return _Extracted(catalog, splits, backbone, features)


def extract_features(data: str | Path, config: FeaturesConfig, *, catalog: Catalog | None = None) -> FeatureSet:
    """The feature matrix of a labelled data set, split as `deepfit train` would split it with the same seed."""
    setup_logging()
    return _extract_all(data, config, catalog).features


# --- features + classical model = a run ----------------------------------------------------------


@dataclass
class FeaturesResult:
    run_dir: Path | None  # None when only the features were exported
    features: FeatureSet
    classifier: FittedClassifier | None
    evaluation: Evaluation | None
    val_accuracy: float | None


def fit_features(data: str | Path, config: FeaturesConfig, *, catalog: Catalog | None = None) -> FeaturesResult:
    """Extract features, fit the classical model on the training split, score it, and save a run folder."""
    setup_logging()
    seed_everything(config.seed)
    extracted = _extract_all(data, config, catalog, output=config.output)
    catalog, splits, backbone, features = extracted.catalog, extracted.splits, extracted.backbone, extracted.features
    classes = catalog.classes
    modality = backbone.modality
    noun = {"sound": "clips", "text": "texts"}.get(modality, "images")
    kind = config.fit_classifier
    if kind is None:
        return FeaturesResult(None, features, None, None, None)

    x_train, y_train = features.split("train")
    fitted = fit_classifier(kind, x_train, y_train, classes, folds=config.cv_folds, seed=config.seed)
    logger.info(f"classifier: {fitted.describe()}")
    model = FeatureClassifier(backbone.module, fitted.head).cpu().eval()
    val_acc = _accuracy(fitted.head, *features.split("val"))
    texts = {f.path: f for files in splits.values() for f in files} if backbone.text else {}

    run_dir = new_run_dir(config.output, config.name or f"{backbone.name.replace('/', '_').replace(':', '-')}-{kind}-{time.strftime('%Y%m%d-%H%M%S')}", backbone.name)
    logger.info(f"run folder: {run_dir}")
    readable = splits  # the split saved with the run leaves out the unreadable files; `splits` keeps them for the report
    if features.skipped:
        skipped = {b.path for b in features.skipped}
        readable = {name: [f for f in files if f.path not in skipped] for name, files in splits.items()}
    if backbone.text:  # the texts themselves go into split.csv: the run needs its data for nothing else
        save_text_split(readable, run_dir / "split.csv")
    else:
        save_split(readable, run_dir / "split.csv", catalog.root)
    resolved = {
        **config.to_dict(), "classifier": kind, "data": str(Path(data).resolve()), "data_root": str(catalog.root),
        "classes": classes, "preprocessing": backbone.inputs, "device": str(resolve_device(config.device)),
        "command": sys.argv, **({"modality": modality} if modality != "image" else {}),
    }
    atomic_write_text(run_dir / "config.json", json.dumps(resolved, indent=2) + "\n")
    if backbone.text:
        write_leaks(cross_split_texts(readable), run_dir)
    else:
        report_duplicates(readable, run_dir)
    write_skipped(features.skipped, run_dir)
    _write_cv_results(fitted, run_dir / "cv_results.csv")

    spec = ModelSpec(
        source="features", name=backbone.name, num_classes=len(classes),
        model_args={
            "backbone": backbone.spec, "layer": backbone.layer, "head": kind if kind in ("knn", "rbf") else "linear",
            "dim": int(x_train.shape[1]), "k": int(fitted.params.get("k", 0)),
            "bank_size": int(fitted.head.support.shape[0] if kind == "rbf" else x_train.shape[0]),  # vectors the head keeps
        },
    )
    if modality == "image":
        inputs = {"preprocessing": backbone.preprocessing.to_dict()}
    else:  # the sidecar's "sound" or "text": how a clip or a text is read
        inputs = {modality: getattr(backbone, modality), "modality": modality}
    meta = {
        "format": CHECKPOINT_FORMAT, "task": "classify", "model": spec.to_dict(), "classes": classes, **inputs,
        "pretrained_from": backbone.pretrained_from, "config": _train_config_view(config, modality), "epoch": None, "val_acc": val_acc,
        "features": {
            "layer": backbone.layer, "classifier": kind, "params": fitted.params, "cv_accuracy": fitted.cv_accuracy,
            "cv_folds": fitted.folds, "description": fitted.describe(), "selection": "cross-validation on the training split",
        },
    }
    save_checkpoint(run_dir / "best.safetensors", model, meta)

    split = "test" if len(features.paths_of("test")) else "val"
    x_eval, y_eval = features.split(split)
    if not len(y_eval):
        logger.warning(
            f"no test or validation {noun} to score the classifier on: {run_dir} holds no report; give the data a "
            "test/ folder or keep --test-fraction / --val-fraction above 0 to measure it"
        )
        return FeaturesResult(run_dir, features, fitted, None, val_acc)
    probs = head_probabilities(fitted.head, x_eval)
    paths = features.paths_of(split)
    evaluation = report_evaluation(
        run_dir, meta, split=split, paths=paths, y_true=y_eval, probs=probs,
        bad=[b for b in features.skipped if b.path in {f.path for f in splits.get(split, [])}],
        picture=text_card([texts[p] for p in paths]) if texts else None,
        explain=run_explainer(run_dir, config.device, {str(p): texts[p].text for p in paths} if texts else None),
    )
    return FeaturesResult(run_dir, features, fitted, evaluation, val_acc)


def _accuracy(head: nn.Module, x: Any, y: np.ndarray) -> float | None:
    if not len(y):
        return None
    return float((head_probabilities(head, x).argmax(1) == y).mean())


def _train_config_view(config: FeaturesConfig, modality: str) -> dict[str, Any]:
    """The TrainConfig-shaped part of the options, so `deepfit.load()` treats the run like any other."""
    from deepfit.config import TrainConfig

    given: dict[str, Any] = {
        "modality": "sound", "sample_rate": config.sample_rate, "clip_seconds": config.clip_seconds,
        "channels": config.channels or 1, "frontend": dict(config.frontend),
    } if modality == "sound" else {"modality": "text", "max_length": config.max_length} if modality == "text" else {}
    return TrainConfig(
        model=config.model, pretrained=config.pretrained, weights=config.weights, model_args=dict(config.model_args),
        image_size=config.image_size, val_fraction=config.val_fraction, test_fraction=config.test_fraction,
        batch_size=config.batch_size, device=config.device, seed=config.seed, output=config.output, name=config.name, **given,
    ).to_dict()


def _write_cv_results(fitted: FittedClassifier, path: Path) -> None:
    if not fitted.candidates:
        return
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(fitted.candidates[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(fitted.candidates)
    atomic_write_text(path, out.getvalue())
