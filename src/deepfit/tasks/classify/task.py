"""Image classification as a task: one class per image, from class folders, split folders or a CSV.

From scratch: one phase over all weights, inputs normalised with the training images' own statistics.
Transfer learning (`--pretrained` or `--weights`): first the new head alone on a frozen backbone
(`head_epochs`), so the random head cannot wreck the pretrained features with large gradients; then the
whole network, the pretrained layers at a lower learning rate (`backbone_lr_scale`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.table import Table
from torch import nn

from deepfit.config import TrainConfig
from deepfit.data.formats.layout import holds_object_labels
from deepfit.data.media import IMAGES
from deepfit.data.sources import Catalog, discover
from deepfit.data.split import load_split, resolve_splits, save_split
from deepfit.engine.optim import param_groups
from deepfit.errors import ConfigError, DataError
from deepfit.log import logger
from deepfit.modalities.image.augment import SMALL_IMAGE, BatchTransform
from deepfit.modalities.sound import SOUND
from deepfit.modalities.text.io import read_texts
from deepfit.models.factory import Preprocessing, create_model, is_convolutional, list_models
from deepfit.models.weights import classifier_module, freeze_folded_norms
from deepfit.report.drawing import caption, class_color
from deepfit.runs.folder import run_folder
from deepfit.tasks.balance import IMBALANCED, label_counts, loss_weights
from deepfit.tasks.base import Data, Option, Setup, Task
from deepfit.tasks.classify.data import (
    channel_stats,
    load_split_stores,
    report_duplicates,
    summarize_catalog,
    write_skipped,
)
from deepfit.tasks.classify.evaluate import Evaluation, check_known_classes, score_files
from deepfit.tasks.classify.model import TrainedModel, load_trained
from deepfit.tasks.classify.objective import ClassificationTask
from deepfit.tasks.classify.predict import Prediction, Predictor, write_predictions
from deepfit.tasks.classify.sound import SoundPredictor, discover_labelled, write_timelines
from deepfit.tasks.classify.sound import prepare as prepare_sound
from deepfit.tasks.classify.sound_model import OWN_SOUND_MODELS
from deepfit.tasks.classify.text import TextPredictor, is_text, load_text_split, save_text_split
from deepfit.tasks.classify.text import prepare as prepare_text

# A linear head on frozen features tolerates, and in the few steps of a short phase needs, a higher
# learning rate than the whole network does.
HEAD_PHASE_LR_SCALE = 10.0


def plan_phases(config: TrainConfig) -> list[tuple[str, int]]:
    """[(phase, epochs)]: "train" from scratch; "head" then "full" for transfer learning."""
    if not config.transfer:
        return [("train", config.epochs)]
    head = min(config.head_epochs, config.epochs)
    if config.epochs == 1 and config.head_epochs >= 1:
        logger.warning("--epochs 1 with a head phase: only the new head is trained, the pretrained network stays frozen; "
                       "pass --epochs 2 or more to fine-tune the whole network")
    elif head >= config.epochs:
        head = config.epochs - 1
        logger.warning(f"--head-epochs {config.head_epochs} would use all {config.epochs} epochs on the head alone: "
                       f"training the head for {head} and the whole network for the last {config.epochs - head}")
    return [(name, n) for name, n in (("head", head), ("full", config.epochs - head)) if n > 0]


def phase_param_groups(model: nn.Module, phase: str, config: TrainConfig) -> list[dict]:
    """Freeze or unfreeze for the phase, and group the trainable parameters with their learning-rate scales."""
    head = classifier_module(model)
    head_ids = {id(p) for p in head.parameters()}
    for p in model.parameters():
        p.requires_grad = phase != "head" or id(p) in head_ids
    if phase == "head":
        return param_groups(head.named_parameters(), config.weight_decay, HEAD_PHASE_LR_SCALE)
    backbone = [(n, p) for n, p in model.named_parameters() if id(p) not in head_ids]
    scale = config.backbone_lr_scale if phase == "full" else 1.0
    return param_groups(backbone, config.weight_decay, scale) + param_groups(head.named_parameters(), config.weight_decay)


def check_every_class_trains(splits: dict[str, list], classes: list[str]) -> None:
    """A class whose every example was put in validation or test by the data's own split (a split column, split
    folders) cannot be learned, and its test score would be 0: an error naming the class and where its examples are."""
    trained = {f.label for f in splits.get("train", [])}
    absent = [c for c in classes if c not in trained]
    if absent:
        held = [f for name in ("val", "test") for f in splits.get(name, []) if f.label == absent[0]]
        where = ", ".join(f"{f.path} ({f.split})" for f in held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
        raise DataError(f"class {absent[0]!r} has no training examples, only {len(held)} in validation or test ({where})"
                        + (f"; so do {', '.join(map(repr, absent[1:]))}" if len(absent) > 1 else "")
                        + ": a classifier cannot learn a class it never saw; move some of them to the training split, or "
                        "remove the class")


class ClassifyTask(Task):
    name = "classify"
    title = "classification of images, sound or text"
    defaults = {"model": "resnet18", "batch_size": 64}
    score = "accuracy"
    loader, predictor_type = staticmethod(load_trained), Predictor
    data_options = (
        Option("path_column", "CSV data: the column holding image (or sound file) paths", str, None, ("image", "sound")),
        Option("label_column", "CSV data: the column holding labels"),
        Option("label_pattern", "labels (and groups, splits) from file names: a regular expression with named groups "
               "label, group (kept in one split), split, e.g. '(?P<label>[A-Za-z_]+)_\\d+\\.jpg'", str, None,
               ("image", "sound")),
        Option("text_column", "text data: the column(s) holding the text, joined when several (default: found by name)",
               list, None, "text"),
        Option("encoding", "text data: the files' encoding (default utf-8)", str, None, "text"),
    )
    evaluate_options = ("path_column", "label_column", "label_pattern", "text_column", "encoding")
    predict_options = (
        Option("top_k", "classes to list per image (default: 3)", int, 3),
        Option("hop", "sound: a recording longer than 1.5 clips is labelled in windows of the clip's length starting every "
               "HOP seconds (default: half a clip), written to *_windows.csv with a timeline picture", float, None, "sound"),
        Option("text_column", "text: the column(s) of a CSV/TSV/JSONL file to classify, joined when several (default: "
               "found by name)", list, None, "text"),
        Option("encoding", "text: the files' encoding (default utf-8)", str, None, "text"),
    )

    # --- data ------------------------------------------------------------------------------------------
    def read(self, data: str | Path | Catalog, config: TrainConfig, **options: Any) -> Data:
        """Class folders, split folders, a CSV or labelled file names, of images or sound files (`config.modality`, or
        the files DATA holds), or a table or folders of texts; an already discovered `Catalog` is taken as it is."""
        text_columns, encoding = options.pop("text_column", None), options.pop("encoding", None)
        if is_text(data, config.modality):
            catalog = data if isinstance(data, Catalog) else read_texts(data, text_columns, options.get("label_column"), encoding)
            return Data(catalog.root, catalog.classes, catalog, layout=catalog.layout, record={"modality": "text"},
                        location=catalog.root if isinstance(data, Catalog) else None)
        catalog, sound = discover_labelled(data, config.modality, **options)
        if isinstance(data, Catalog):
            return Data(data.root, data.classes, data, layout=data.layout, location=data.root,
                        record={"modality": "sound"} if sound else {})
        if sound and config.modality == "auto":
            logger.info(f"{data} holds sound files: sound classification with {config.model} on spectrograms"
                        + ("" if config.model in OWN_SOUND_MODELS else " (--modality sound picks deepfit's soundcnn)"))
        return Data(catalog.root, catalog.classes, catalog, layout=catalog.layout, record={"modality": "sound"} if sound else {})

    def split(self, data: Data, config: TrainConfig) -> dict[str, list]:
        splits = resolve_splits(data.source, config.val_fraction, config.test_fraction, config.seed)
        check_every_class_trains(splits, data.classes)
        return splits

    def save_split(self, data: Data, splits: dict[str, list], path: Path) -> None:
        if data.record.get("modality") == "text":
            save_text_split(splits, path)
        else:
            save_split(splits, path, data.root)

    def reread(self, saved: dict[str, Any], run_dir: Path) -> tuple[Data, dict[str, list]]:
        root = Path(saved["data_root"])
        record = {"modality": saved["modality"]} if saved.get("modality") in ("sound", "text") else {}
        if record.get("modality") == "text":  # the texts are in split.csv: the run needs nothing of the data
            return Data(root, list(saved["classes"]), None, record=record, layout="resumed"), load_text_split(run_dir / "split.csv")
        return Data(root, list(saved["classes"]), None, record=record, layout="resumed"), load_split(run_dir / "split.csv", root)

    def read_other(self, data: str | Path, trained: TrainedModel, **options: Any) -> tuple[Data, list]:
        if "text" in trained.meta:
            catalog = read_texts(data, options.get("text_column"), options.get("label_column"), options.get("encoding"))
        else:
            options = {k: v for k, v in options.items() if k not in ("text_column", "encoding")}
            catalog = discover(data, **options, media=SOUND.media if "sound" in trained.meta else IMAGES)
        check_known_classes(catalog, trained.classes, data)
        return Data(catalog.root, catalog.classes, catalog, layout=catalog.layout), catalog.files

    def describe(self, data: Data, splits: dict[str, list]) -> str:
        noun = {"sound": "clips", "text": "texts"}.get(data.record.get("modality", ""), "images")
        return f"{len(data.classes)} classes, {', '.join(f'{len(v)} {k}' for k, v in splits.items())} {noun} ({data.layout})"

    def class_counts(self, data: Data, items: list) -> np.ndarray:
        return label_counts([item.label for item in items], data.classes)

    # --- training --------------------------------------------------------------------------------------
    def phases(self, config: TrainConfig) -> list[tuple[str, int]]:
        return plan_phases(config)

    def param_groups(self, model: nn.Module, phase: str, config: TrainConfig) -> list[dict]:
        return phase_param_groups(model, phase, config)

    def prepare(self, config: TrainConfig, data: Data, splits: dict[str, list], device: Any, *,
                resumed: dict[str, Any] | None) -> Setup:
        classes, new = data.classes, resumed is None
        weight = loss_weights(self, config, data, splits["train"], device)
        if data.record.get("modality") == "sound":
            return prepare_sound(config, classes, splits, resumed, weight)
        if data.record.get("modality") == "text":
            return prepare_text(config, classes, splits, resumed, weight)
        created = create_model(
            config.model, len(classes), pretrained=config.pretrained and new, weights=config.weights if new else None,
            drop_rate=config.dropout, model_args=config.model_args, image_size=config.image_size,
        )
        model = created.model
        if resumed is not None:
            prep = Preprocessing.from_dict(resumed["preprocessing"])
        else:
            prep = created.preprocessing
            if not config.transfer and prep.image_size <= SMALL_IMAGE:
                # no pretrained evaluation crop to honour: keep the whole of a small image
                prep = dataclasses.replace(prep, crop_pct=1.0)

        stores, bad = load_split_stores(splits, classes, prep.resize_size, config)
        if bad:  # split.csv lists the images used: a skipped file must not reappear in `evaluate`'s test split
            skipped = {b.path for b in bad}
            splits = {name: [f for f in files if f.path not in skipped] for name, files in splits.items()}
        train_store, val_store = stores["train"], stores.get("val")
        if new and not config.transfer:  # from scratch, normalise with the data's own statistics
            prep = dataclasses.replace(prep, **dict(zip(("mean", "std"), channel_stats(train_store), strict=True)))
        channels_last = config.channels_last if config.channels_last is not None else is_convolutional(model)
        if new and not config.transfer and hasattr(model, "init_from_data"):  # data-dependent initialisation (fastnet)
            sample, _, _ = next(train_store.batches(1024, shuffle=True, generator=torch.Generator().manual_seed(config.seed)))
            model.init_from_data(BatchTransform(prep.image_size, prep.mean, prep.std, "none")(sample))

        def write(run_dir: Path) -> None:
            report_duplicates(splits, run_dir)
            write_skipped(bad, run_dir)

        params = sum(p.numel() for p in model.parameters()) / 1e6
        return Setup(
            model=model, objective=ClassificationTask(len(classes), config.label_smoothing, config.mixup, weight), train=train_store, val=val_store,
            transform=BatchTransform(prep.image_size, prep.mean, prep.std, config.augment, config.hflip, channels_last),
            eval_transform=BatchTransform(prep.image_size, prep.mean, prep.std, "none", channels_last=channels_last),
            meta={"model": created.spec.to_dict(), "preprocessing": prep.to_dict()},
            record={"preprocessing": prep.to_dict(), "channels_last": channels_last},
            summary=(f"model {created.spec.source}:{created.spec.name} ({params:.2f}M parameters), input {prep.image_size}px, "
                     f"images {'in memory' if train_store.in_memory else 'streamed from disk'}"),
            channels_last=channels_last, pretrained_from=created.pretrained_source, write=write,
            # batch norms whose statistics were folded into the weights stay frozen, as in the first run
            on_resume=(lambda: freeze_folded_norms(model)) if config.transfer else None,
            splits=splits if bad else None,
        )

    # --- using a trained model -------------------------------------------------------------------------
    def predictor(self, trained: TrainedModel, device: str = "auto") -> Predictor | SoundPredictor:
        if "text" in trained.meta:
            return TextPredictor(trained, device)
        return SoundPredictor(trained, device) if "sound" in trained.meta else Predictor(trained, device)

    def evaluate(self, run_dir: Path, predictor: Predictor, split: str, data: Data, items: list, *,
                 checkpoint: str, other: str | Path | None) -> Evaluation:
        return score_files(run_dir, predictor, split, items, data=other, checkpoint=checkpoint)

    def headline(self, evaluation: Evaluation) -> str:
        metrics = evaluation.metrics
        if float(metrics.get("imbalance") or 1.0) >= IMBALANCED:  # accuracy would flatter a model that favours large classes
            return (f"{evaluation.split} balanced accuracy {metrics['balanced_accuracy']:.2%}, macro F1 {metrics['macro_f1']:.3f} "
                    f"(classes imbalanced {metrics['imbalance']:.1f}:1; accuracy {metrics['accuracy']:.2%}); "
                    f"report: {evaluation.report}")
        return f"{evaluation.split} accuracy {metrics['accuracy']:.2%}; report: {evaluation.report}"

    def frame(self, predictor: Predictor, image: Any, *, top_k: int = 3, hop: float | None = None,
              text_column: list[str] | None = None, encoding: str | None = None) -> Prediction:
        if hop is not None or text_column or encoding:
            raise ConfigError("--hop, --text-column and --encoding are for sound and text, not video frames")
        return predictor.predict([image], top_k=top_k)[0]

    def draw_frame(self, predictor: Predictor, image: Any, result: Prediction) -> Any:
        return caption(image, f"{result.label} {result.probability:.0%}", class_color(predictor.classes.index(result.label)))

    def frame_record(self, predictor: Predictor, result: Prediction) -> dict[str, Any]:
        return {"label": result.label, "probability": round(result.probability, 6),
                "top": [[label, round(p, 6)] for label, p in result.top]}

    def explain(self, predictor: Predictor, items: list[Any], settings: Any) -> list[Any]:
        from deepfit.tasks.classify.explain import explain_clips, explain_images, explain_texts

        if isinstance(predictor, TextPredictor):
            return explain_texts(predictor, items, settings)
        return (explain_clips if isinstance(predictor, SoundPredictor) else explain_images)(predictor, items, settings)

    def predict_files(self, predictor: Predictor | SoundPredictor, paths: list[Path], output: Path | None, run_dir: Path, *,
                      top_k: int = 3, hop: float | None = None, text_column: list[str] | None = None,
                      encoding: str | None = None) -> list[Any]:
        """A table of the predictions, and predictions.csv (or .json) in the run folder or at `output`."""
        target = output or run_folder(run_dir) / "predictions.csv"
        if target.exists():
            raise ConfigError(f"{target} already exists: deepfit does not overwrite; pass another --output")
        if hop is not None and not isinstance(predictor, SoundPredictor):
            raise ConfigError("--hop is for sound classifiers: images are classified whole")
        given = {"hop": hop} if hop is not None else {}
        if isinstance(predictor, TextPredictor):
            given = {"text_column": text_column, "encoding": encoding or "utf-8"}
        elif text_column or encoding:
            raise ConfigError("--text-column and --encoding are for text classifiers")
        predictions, failed = predictor.predict_files(paths, top_k=top_k, **given)
        if failed and not predictions:
            shown = ", ".join(str(path) for path, _ in failed[:3]) + (f" and {len(failed) - 3} more" if len(failed) > 3 else "")
            what = {"sound": "sound", "text": "text"}.get(predictor.modality, "an image")
            raise DataError(f"none of the {len(failed)} inputs could be read as {what}: {shown}")
        one = {"sound": "clip", "text": "text"}.get(predictor.modality, "image")
        table = Table(title=f"{len(predictions)} {one}s")
        table.add_column(one, overflow="fold")
        table.add_column("class")
        table.add_column("probability", justify="right")
        table.add_column(f"top {top_k}")
        for p in predictions:
            others = ", ".join(f"{label} {prob:.1%}" for label, prob in p.top[1:])
            table.add_row(p.source, p.label, f"{p.probability:.1%}", others)
        out = write_predictions(predictions, target)
        shown: list[Any] = [table, f"predictions written to {out}" + (f"; {len(failed)} unreadable files skipped" if failed else "")]
        if getattr(predictor, "timelines", None):
            shown.append(write_timelines(predictor.timelines, predictor.classes, target))
        return shown

    # --- deepfit data check ----------------------------------------------------------------------------
    claim_order = 1  # after semantic masks (an images/ + masks/ pair would read as two classes), before object labels
    layouts = """deepfit reads classification data laid out as one of:
  class folders  DATA/<class>/**/NAME.jpg, or DATA/{train,val,test}/<class>/**/NAME.jpg
  CSV            a CSV/TSV with a header, path,label (paths relative to the CSV; an optional split column)
  file names     any files below DATA whose names hold the label: --label-pattern '(?P<label>...)...'"""

    def claims(self, data: str | Path, options: dict[str, Any]) -> bool:
        if is_text(data):
            return True
        if holds_object_labels(data) and not options.get("label_pattern"):
            return False
        try:
            discover_labelled(data, **{k: v for k, v in options.items() if k in ("path_column", "label_column", "label_pattern")})
        except DataError:
            return False
        return True

    def check_data(self, data: str | Path, *, path_column: str | None = None, label_column: str | None = None,
                   label_pattern: str | None = None, text_column: list[str] | None = None,
                   encoding: str | None = None) -> list[Any]:
        if is_text(data):
            return summarize_catalog(read_texts(data, text_column, label_column, encoding), text=True)
        catalog, sound = discover_labelled(data, path_column=path_column, label_column=label_column, label_pattern=label_pattern)
        return summarize_catalog(catalog, sound=sound)

    def model_names(self, pattern: str) -> dict[str, list[str]]:
        return list_models(pattern)


TASK = ClassifyTask()
