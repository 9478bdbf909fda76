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
import hashlib
import io
import json
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepfit.config import FeaturesConfig
from deepfit.data.sources import Catalog, LabeledFile, discover
from deepfit.data.split import file_digest, resolve_splits, save_split
from deepfit.engine.checkpoint import save_checkpoint
from deepfit.engine.device import autocast, resolve_device, resolve_precision
from deepfit.errors import ConfigError, DataError
from deepfit.fileio import atomic_write, atomic_write_text, cache_dir
from deepfit.log import logger, setup_logging
from deepfit.modalities.image.augment import BatchTransform
from deepfit.modalities.image.store import BadFile, check_unreadable, decode_batches, default_workers
from deepfit.models.factory import ModelSpec, Preprocessing, create_model, is_convolutional
from deepfit.models.features import PRE_LOGITS, FeatureClassifier, FeatureExtractor
from deepfit.models.handmade import HANDMADE_IMAGE_SIZE, HandmadeFeatures
from deepfit.runs.folder import CHECKPOINT_FORMAT, check_output_outside_data, new_run_dir
from deepfit.tasks.classify.evaluate import Evaluation, report_evaluation
from deepfit.tasks.classify.train import report_duplicates, seed_everything, write_skipped
from deepfit.workflows.classical import FittedClassifier, fit_classifier

HANDMADE = "handmade"
# Bump when the hand-made features change: their cached vectors must not be served for the new definition.
HANDMADE_VERSION = 1


# --- the feature extractor -----------------------------------------------------------------------


@dataclass
class Backbone:
    """What turns images into vectors, with what it needs: preprocessing, and an identity for the cache."""

    module: nn.Module  # (B, 3, H, W) normalised images -> (B, D) float
    spec: dict[str, Any]  # how to rebuild it (the "backbone" entry of a FeatureClassifier's ModelSpec)
    layer: str
    preprocessing: Preprocessing
    pretrained_from: str | None
    identity: dict[str, Any]  # everything the features depend on, except the image

    @property
    def name(self) -> str:
        return self.spec.get("name", HANDMADE)


def load_backbone(config: FeaturesConfig, num_classes: int) -> Backbone:
    if config.model == HANDMADE:
        given = [flag for flag, value in (("--layer", config.layer not in (None, PRE_LOGITS)), ("--weights", config.weights),
                                           ("--pretrained", config.pretrained), ("--model-args", config.model_args)) if value]
        if given:
            raise ConfigError(f"the hand-made features have no layers, weights or options: leave out {', '.join(given)}")
        size = config.image_size or HANDMADE_IMAGE_SIZE
        prep = Preprocessing(image_size=size, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), crop_pct=1.0)
        spec = {"source": HANDMADE, "args": {}}
        return Backbone(HandmadeFeatures(), spec, PRE_LOGITS, prep, None, {"backbone": spec, "version": HANDMADE_VERSION})
    if not (config.pretrained or config.weights):
        raise ConfigError(
            f"features of an untrained {config.model} are random numbers: pass --weights FILE (e.g. ImageNet weights "
            "in .safetensors) or --pretrained, or use --model handmade for the classical features"
        )
    created = create_model(
        config.model, num_classes, pretrained=config.pretrained, weights=config.weights,
        model_args=config.model_args, image_size=config.image_size,
    )
    extractor = FeatureExtractor(created.model, config.layer)  # an unknown layer fails here, listing the names
    spec = created.spec.to_dict()
    if config.weights:
        weights_id = "file:" + file_digest(Path(config.weights))
    else:
        weights_id = f"official:{created.spec.source}:{created.spec.name}:{_library_version(created.spec.source)}"
    # num_classes only sizes the (unused) classifier: features of the same network agree across data sets
    identity = {"backbone": {k: v for k, v in spec.items() if k != "num_classes"}, "weights": weights_id, "layer": extractor.layer}
    return Backbone(extractor, spec, extractor.layer, created.preprocessing, created.pretrained_source, identity)


def _library_version(source: str) -> str:
    import timm
    import torchvision

    return timm.__version__ if source == "timm" else torchvision.__version__


# --- the cache -----------------------------------------------------------------------------------


class FeatureCache:
    """Feature vectors on disk, one folder per extractor identity, looked up by file-content digest.

    Each extraction adds one shard (digests + vectors, .npz) written atomically, so concurrent or
    interrupted runs never leave a half-written file that a later run would trust.
    """

    def __init__(self, identity: dict[str, Any], root: Path | None = None) -> None:
        key = hashlib.blake2b(json.dumps(identity, sort_keys=True).encode(), digest_size=12).hexdigest()
        self.folder = (root or cache_dir() / "features") / key
        self.identity = identity

    def lookup(self, digests: Sequence[str]) -> dict[str, np.ndarray]:
        wanted, found = set(digests), {}
        for shard in sorted(self.folder.glob("shard-*.npz")):
            try:
                with np.load(shard) as data:
                    names, vectors = data["digests"], data["features"]
                    for i, d in enumerate(names.tolist()):
                        if d in wanted and d not in found:
                            found[d] = vectors[i]
            except (OSError, ValueError, KeyError) as e:  # a damaged shard is ignored: its images are extracted again
                logger.warning(f"ignoring unreadable feature cache file {shard}: {e}")
        return found

    def add(self, digests: Sequence[str], vectors: np.ndarray) -> None:
        if not len(digests):
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        identity = self.folder / "identity.json"
        if not identity.exists():
            atomic_write_text(identity, json.dumps(self.identity, indent=2, sort_keys=True) + "\n")
        shard = self.folder / f"shard-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:8]}.npz"

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a bare path
                np.savez(f, digests=np.array(list(digests)), features=vectors.astype(np.float32))

        atomic_write(shard, write)


# --- extraction ----------------------------------------------------------------------------------


@dataclass
class Extraction:
    features: np.ndarray  # (N, D) float32, rows for the files that could be read, in the order given
    kept: list[int]  # index (into the paths given) of each row
    bad: list[BadFile]
    reused: int  # rows served from the cache
    seconds: float  # wall time of the extraction proper (decoding + network), without the cache lookup


def extract(
    backbone: Backbone,
    paths: Sequence[Path],
    *,
    device: torch.device,
    precision: str = "fp32",
    batch_size: int = 64,
    workers: int | None = None,
    cache: FeatureCache | None = None,
) -> Extraction:
    """Features of `paths`: from the cache when there, else decoded and extracted batch by batch."""
    paths = [Path(p) for p in paths]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"file not found: {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    digests = [file_digest(p) for p in paths] if cache is not None else []
    found = cache.lookup(digests) if cache is not None else {}
    todo = [i for i in range(len(paths)) if not found or digests[i] not in found]
    vectors: dict[int, np.ndarray] = {i: found[digests[i]] for i in range(len(paths)) if found and digests[i] in found}
    bad: list[BadFile] = []
    start = time.perf_counter()
    if todo:
        # channels-last: 1.8x faster for EfficientNet-Lite0 on a 2-core CPU (depthwise convolutions), and the
        # layout cuDNN prefers on GPU
        channels_last = is_convolutional(backbone.module)
        module = backbone.module.to(device).eval()
        if channels_last:
            module = module.to(memory_format=torch.channels_last)
        prep = backbone.preprocessing
        transform = BatchTransform(prep.image_size, prep.mean, prep.std, "none", channels_last=channels_last)
        chunks = [todo[s : s + batch_size] for s in range(0, len(todo), batch_size)]
        workers = default_workers() if workers is None else workers
        with _progress(len(todo), f"extracting features ({backbone.name}, {backbone.layer})") as advance:
            for batch in decode_batches(paths, prep.resize_size, chunks, workers):
                bad += [BadFile(paths[i], reason) for i, reason in batch.errors]
                if batch.indices:
                    out = extract_batch(module, transform, batch.images, device, precision)
                    vectors.update(zip(batch.indices, out, strict=True))
                advance(len(batch.indices) + len(batch.errors))
        if cache is not None:
            new = [i for i in todo if i in vectors]
            cache.add([digests[i] for i in new], np.stack([vectors[i] for i in new]) if new else np.zeros((0, 0)))
    seconds = time.perf_counter() - start
    kept = sorted(vectors)
    features = np.stack([vectors[i] for i in kept]).astype(np.float32, copy=False) if kept else np.zeros((0, 0), np.float32)
    reused = len(paths) - len(todo)
    if todo:
        rate = (len(todo) - len(bad)) / max(seconds, 1e-9)
        logger.info(
            f"features of {len(paths)} images: {reused} reused from the cache, {len(todo) - len(bad)} extracted "
            f"in {seconds:.1f} s ({rate:.0f} images/s)"
        )
    else:
        logger.info(f"features of {len(paths)} images: all reused from the cache, none extracted")
    return Extraction(features, kept, bad, reused, seconds)


@torch.inference_mode()
def extract_batch(
    module: nn.Module, transform: BatchTransform, images: torch.Tensor, device: torch.device, precision: str
) -> np.ndarray:
    """(B, 3, S, S) uint8 storage batch -> (B, D) float32 features, in the device's preferred precision."""
    x = transform(images.to(device, non_blocking=True))
    with autocast(device, precision):
        return module(x).float().cpu().numpy()


class _progress:  # noqa: N801 - used as a context manager like a function
    """A transient rich progress bar on a terminal; nothing when output goes to a file or a pipe."""

    def __init__(self, total: int, what: str) -> None:
        self.total, self.what, self.bar = total, what, None

    def __enter__(self) -> Any:
        if sys.stderr.isatty() and self.total > 0:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn(self.what), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True)
            self.bar.start()
            task = self.bar.add_task(self.what, total=self.total)
            return lambda n: self.bar.update(task, advance=n)
        return lambda n: None

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


# --- the feature set, from Python and as a file --------------------------------------------------


@dataclass
class FeatureSet:
    """Features of a labelled data set: row i belongs to paths[i], labels[i] (an index into classes), splits[i]."""

    features: np.ndarray  # (N, D) float32
    paths: list[Path]
    labels: np.ndarray  # (N,) int64
    splits: list[str]  # "train" | "val" | "test"
    classes: list[str]
    model: str
    layer: str
    preprocessing: Preprocessing
    skipped: list[BadFile] = field(default_factory=list)
    reused: int = 0
    seconds: float = 0.0

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        if copy:  # np.array(features) asks for a copy: changing it must not change this set
            return self.features.astype(dtype or self.features.dtype, copy=True)
        return self.features if dtype is None else self.features.astype(dtype)

    def __len__(self) -> int:
        return len(self.paths)

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(features, labels) of one split."""
        if name not in ("train", "val", "test"):
            raise ConfigError(f"no split {name!r}: the splits are 'train', 'val' and 'test'")
        rows = np.array([s == name for s in self.splits], dtype=bool)
        return self.features[rows], self.labels[rows]

    def paths_of(self, name: str) -> list[Path]:
        return [p for p, s in zip(self.paths, self.splits, strict=True) if s == name]


def feature_set(
    backbone: Backbone, files: list[LabeledFile], classes: list[str], config: FeaturesConfig, device: torch.device
) -> FeatureSet:
    """Extract (or reuse) the features of labelled files; unreadable ones are left out, too many is an error."""
    precision = resolve_precision("auto", device)
    cache = FeatureCache({**backbone.identity, "preprocessing": backbone.preprocessing.to_dict(), "precision": precision}) if config.cache else None
    result = extract(
        backbone, [f.path for f in files], device=device, precision=precision, batch_size=config.batch_size,
        workers=config.workers, cache=cache,
    )
    check_unreadable(result.bad, len(files), "images")
    index = {c: i for i, c in enumerate(classes)}
    kept = [files[i] for i in result.kept]
    return FeatureSet(
        result.features, [f.path for f in kept], np.array([index[f.label] for f in kept], dtype=np.int64),
        [f.split or "train" for f in kept], classes, backbone.name, backbone.layer, backbone.preprocessing,
        result.bad, result.reused, result.seconds,
    )


@dataclass
class _Extracted:
    catalog: Catalog
    splits: dict[str, list[LabeledFile]]
    backbone: Backbone
    features: FeatureSet


def _extract_all(data: str | Path, config: FeaturesConfig, catalog: Catalog | None, output: str | None = None) -> _Extracted:
    """Split as `deepfit train` would (same seed, same split), check where files will go before any work,
    then extract (or reuse) the features of every split and export them when asked."""
    catalog = catalog or discover(data)
    splits = resolve_splits(catalog, config.val_fraction, config.test_fraction, config.seed)
    if output is not None:
        check_output_outside_data(output, catalog.root)
    if config.export:
        check_export_path(Path(config.export), catalog.root)
    logger.info(f"{len(catalog.classes)} classes, {', '.join(f'{len(v)} {k}' for k, v in splits.items())} images ({catalog.layout})")
    backbone = load_backbone(config, len(catalog.classes))
    files = [f for name in ("train", "val", "test") for f in splits[name]]
    features = feature_set(backbone, files, catalog.classes, config, resolve_device(config.device))
    if config.export:
        export_features(features, Path(config.export), catalog.root)
    return _Extracted(catalog, splits, backbone, features)


def extract_features(data: str | Path, config: FeaturesConfig, *, catalog: Catalog | None = None) -> FeatureSet:
    """The feature matrix of a labelled data set, split as `deepfit train` would split it with the same seed."""
    setup_logging()
    return _extract_all(data, config, catalog).features


def check_export_path(path: Path, data_root: Path | None = None) -> None:
    """Before any work: the export must not land in the data, nor replace an existing file."""
    if data_root is not None:
        check_output_outside_data(Path(path).parent, data_root)
    if Path(path).exists():
        raise ConfigError(f"{path} already exists; deepfit does not overwrite it: choose another name or delete it first")


def export_features(features: FeatureSet, path: Path, data_root: Path | None = None) -> Path:
    """Write the matrix with path, label and split per row: .npz (NumPy) or .parquet (one column per dimension)."""
    path = Path(path)
    check_export_path(path, data_root)
    meta = {
        "model": features.model, "layer": features.layer, "classes": features.classes,
        "preprocessing": features.preprocessing.to_dict(),
    }
    paths = [str(p) for p in features.paths]
    labels = [features.classes[i] for i in features.labels]
    if path.suffix.lower() == ".npz":

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez(
                    f, features=features.features, paths=np.array(paths), labels=np.array(labels),
                    label_index=features.labels, splits=np.array(features.splits), classes=np.array(features.classes),
                    meta=np.array(json.dumps(meta)),
                )

    elif path.suffix.lower() == ".parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError as e:
            raise ConfigError("writing .parquet needs pyarrow: `uv pip install 'deepfit[parquet]'`, or export to .npz") from e
        width = len(str(features.features.shape[1] - 1))
        columns = {"path": pa.array(paths), "label": pa.array(labels), "split": pa.array(features.splits)}
        columns |= {f"f{j:0{width}d}": pa.array(features.features[:, j]) for j in range(features.features.shape[1])}
        table = pa.table(columns).replace_schema_metadata({"deepfit": json.dumps(meta)})

        def write(tmp: Path) -> None:
            pq.write_table(table, str(tmp))

    else:
        raise ConfigError(f"cannot export to {path.name}: use a .npz or .parquet file name")
    atomic_write(path, write)
    logger.info(f"features written to {path} ({features.features.shape[0]} rows x {features.features.shape[1]} dimensions)")
    return path


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
    kind = config.fit_classifier
    if kind is None:
        return FeaturesResult(None, features, None, None, None)

    x_train, y_train = features.split("train")
    fitted = fit_classifier(kind, x_train, y_train, classes, folds=config.cv_folds, seed=config.seed)
    logger.info(f"classifier: {fitted.describe()}")
    model = FeatureClassifier(backbone.module, fitted.head).cpu().eval()
    val_acc = _accuracy(fitted.head, *features.split("val"))

    run_dir = new_run_dir(config.output, config.name or f"{backbone.name.replace('/', '_')}-{kind}-{time.strftime('%Y%m%d-%H%M%S')}", backbone.name)
    logger.info(f"run folder: {run_dir}")
    readable = splits  # the split saved with the run leaves out the unreadable files; `splits` keeps them for the report
    if features.skipped:
        skipped = {b.path for b in features.skipped}
        readable = {name: [f for f in files if f.path not in skipped] for name, files in splits.items()}
    save_split(readable, run_dir / "split.csv", catalog.root)
    resolved = {
        **config.to_dict(), "classifier": kind, "data": str(Path(data).resolve()), "data_root": str(catalog.root),
        "classes": classes, "preprocessing": backbone.preprocessing.to_dict(), "device": str(resolve_device(config.device)),
        "command": sys.argv,
    }
    atomic_write_text(run_dir / "config.json", json.dumps(resolved, indent=2) + "\n")
    report_duplicates(readable, run_dir)
    write_skipped(features.skipped, run_dir)
    _write_cv_results(fitted, run_dir / "cv_results.csv")

    spec = ModelSpec(
        source="features", name=backbone.name, num_classes=len(classes),
        model_args={
            "backbone": backbone.spec, "layer": backbone.layer, "head": "knn" if kind == "knn" else "linear",
            "dim": int(x_train.shape[1]), "bank_size": int(x_train.shape[0]), "k": int(fitted.params.get("k", 0)),
        },
    )
    meta = {
        "format": CHECKPOINT_FORMAT, "task": "classify", "model": spec.to_dict(), "classes": classes,
        "preprocessing": backbone.preprocessing.to_dict(), "pretrained_from": backbone.pretrained_from,
        "config": _train_config_view(config), "epoch": None, "val_acc": val_acc,
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
            f"no test or validation images to score the classifier on: {run_dir} holds no report; give the data a "
            "test/ folder or keep --test-fraction / --val-fraction above 0 to measure it"
        )
        return FeaturesResult(run_dir, features, fitted, None, val_acc)
    with torch.inference_mode():
        probs = fitted.head(torch.from_numpy(x_eval)).softmax(1).numpy()
    evaluation = report_evaluation(
        run_dir, meta, split=split, paths=features.paths_of(split), y_true=y_eval, probs=probs,
        bad=[b for b in features.skipped if b.path in {f.path for f in splits.get(split, [])}],
    )
    return FeaturesResult(run_dir, features, fitted, evaluation, val_acc)


def _accuracy(head: nn.Module, x: np.ndarray, y: np.ndarray) -> float | None:
    if not len(y):
        return None
    with torch.inference_mode():
        return float((head(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def _train_config_view(config: FeaturesConfig) -> dict[str, Any]:
    """The TrainConfig-shaped part of the options, so `deepfit.load()` treats the run like any other."""
    from deepfit.config import TrainConfig

    return TrainConfig(
        model=config.model, pretrained=config.pretrained, weights=config.weights, model_args=dict(config.model_args),
        image_size=config.image_size, val_fraction=config.val_fraction, test_fraction=config.test_fraction,
        batch_size=config.batch_size, device=config.device, seed=config.seed, output=config.output, name=config.name,
    ).to_dict()


def _write_cv_results(fitted: FittedClassifier, path: Path) -> None:
    if not fitted.candidates:
        return
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(fitted.candidates[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(fitted.candidates)
    atomic_write_text(path, out.getvalue())
