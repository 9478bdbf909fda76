"""Feature extraction: a pretrained network (or hand-made features) turns each image, or each sound clip, into a vector.

Features are cached on disk under a key made of the model, its weights, the layer, the
preprocessing and the precision, one vector per file *content* (a blake2b digest): a second
classifier on the same data extracts nothing, and an image whose bytes changed is extracted again.
Images are decoded batch by batch in worker processes and never held all at once. The feature set
is used from Python (`FeatureSet`) or exported as .npz / .parquet.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepfit.config import FeaturesConfig
from deepfit.data.sources import LabeledFile
from deepfit.data.split import file_digest
from deepfit.engine.device import autocast, resolve_precision
from deepfit.errors import ConfigError, DataError
from deepfit.fileio import atomic_write, atomic_write_text, cache_dir
from deepfit.log import logger
from deepfit.modalities.base import BadFile, check_unreadable
from deepfit.modalities.image.augment import BatchTransform
from deepfit.modalities.image.store import decode_batches, default_workers
from deepfit.modalities.sound.store import clip_batches
from deepfit.models.factory import Preprocessing, create_model, is_convolutional
from deepfit.models.features import PRE_LOGITS, FeatureExtractor
from deepfit.models.handmade import HANDMADE_IMAGE_SIZE, HandmadeFeatures
from deepfit.runs.folder import check_output_outside_data

HANDMADE = "handmade"
# Bump when the hand-made features change: their cached vectors must not be served for the new definition.
HANDMADE_VERSION = 1


# --- the feature extractor -----------------------------------------------------------------------


@dataclass
class Backbone:
    """What turns images (or sound) into vectors, with what it needs: preprocessing, and an identity for the cache."""

    module: nn.Module  # (B, 3, H, W) normalised images, or (B, C, T) samples -> (B, D) float
    spec: dict[str, Any]  # how to rebuild it (the "backbone" entry of a FeatureClassifier's ModelSpec)
    layer: str
    preprocessing: Preprocessing | None  # images: resize, crop, normalisation; None for sound
    pretrained_from: str | None
    identity: dict[str, Any]  # everything the features depend on, except the input
    sound: dict[str, Any] | None = None  # sound: the SoundSpec its clips are decoded by (rate, length, channels)
    text: dict[str, Any] | None = None  # text: the TextSpec its texts are read by (tokenizer, length), saved with the run
    vocabulary: Any = None  # TF-IDF: the n-grams and idf fitted on the training texts (modalities/text/ngrams.py)

    @property
    def name(self) -> str:
        return self.spec.get("name") or self.spec.get("model", {}).get("name") or HANDMADE

    @property
    def modality(self) -> str:
        return "sound" if self.sound is not None else "text" if self.text is not None else "image"

    @property
    def inputs(self) -> dict[str, Any]:
        """How inputs are prepared for it (for the cache key and the run's config)."""
        if self.text is not None:
            return {"text": {k: v for k, v in self.text.items() if k not in ("tokenizer", "num_classes")}}
        return {"sound": self.sound} if self.sound is not None else self.preprocessing.to_dict()


def check_handmade_options(config: FeaturesConfig) -> None:
    """Hand-made features have no layers, weights or options: any given is an error, not silently unused."""
    given = [flag for flag, value in (("--layer", config.layer not in (None, PRE_LOGITS)), ("--weights", config.weights),
                                       ("--pretrained", config.pretrained), ("--model-args", config.model_args)) if value]
    if given:
        raise ConfigError(f"the hand-made features have no layers, weights or options: leave out {', '.join(given)}")


def weights_identity(weights: str | None, source: str, name: str) -> str:
    """What the cache knows of a network's weights: a local file by its content, official weights by library version."""
    if weights:
        return "file:" + file_digest(Path(weights))
    import timm
    import torchvision

    return f"official:{source}:{name}:{timm.__version__ if source == 'timm' else torchvision.__version__}"


def load_backbone(config: FeaturesConfig, num_classes: int) -> Backbone:
    if config.model == HANDMADE:
        check_handmade_options(config)
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
    weights_id = weights_identity(config.weights, created.spec.source, created.spec.name)
    # num_classes only sizes the (unused) classifier: features of the same network agree across data sets
    identity = {"backbone": {k: v for k, v in spec.items() if k != "num_classes"}, "weights": weights_id, "layer": extractor.layer}
    return Backbone(extractor, spec, extractor.layer, created.preprocessing, created.pretrained_source, identity)


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
        chunks = [todo[s : s + batch_size] for s in range(0, len(todo), batch_size)]
        workers = default_workers() if workers is None else workers
        with _progress(len(todo), f"extracting features ({backbone.name}, {backbone.layer})") as advance:
            for indices, errors, out in _batches(backbone, module, paths, chunks, workers, device, precision, channels_last):
                bad += [BadFile(paths[i], reason) for i, reason in errors]
                vectors.update(zip(indices, out, strict=True))
                advance(len(indices) + len(errors))
        if cache is not None:
            new = [i for i in todo if i in vectors]
            cache.add([digests[i] for i in new], np.stack([vectors[i] for i in new]) if new else np.zeros((0, 0)))
    seconds = time.perf_counter() - start
    kept = sorted(vectors)
    features = np.stack([vectors[i] for i in kept]).astype(np.float32, copy=False) if kept else np.zeros((0, 0), np.float32)
    reused = len(paths) - len(todo)
    noun = "clips" if backbone.sound is not None else "images"
    if todo:
        rate = (len(todo) - len(bad)) / max(seconds, 1e-9)
        logger.info(
            f"features of {len(paths)} {noun}: {reused} reused from the cache, {len(todo) - len(bad)} extracted "
            f"in {seconds:.1f} s ({rate:.0f} {noun}/s)"
        )
    else:
        logger.info(f"features of {len(paths)} {noun}: all reused from the cache, none extracted")
    return Extraction(features, kept, bad, reused, seconds)


def _batches(backbone: Backbone, module: nn.Module, paths: list[Path], chunks: list[list[int]], workers: int,
             device: torch.device, precision: str, channels_last: bool) -> Iterator[tuple[list[int], list[tuple[int, str]], np.ndarray]]:
    """(indices, (index, reason) of unreadable files, their features) per chunk: images decoded in worker processes,
    sound on threads, each as its training decodes it."""
    if backbone.sound is not None:
        spec = backbone.sound
        for indices, errors, clips in clip_batches(paths, chunks, spec["sample_rate"], spec["samples"],
                                                   channels=spec["channels"], workers=workers):
            yield indices, errors, _forward(module, clips.to(device), device, precision) if indices else np.zeros((0, 0))
        return
    prep = backbone.preprocessing
    transform = BatchTransform(prep.image_size, prep.mean, prep.std, "none", channels_last=channels_last)
    for batch in decode_batches(paths, prep.resize_size, chunks, workers):
        out = extract_batch(module, transform, batch.images, device, precision) if batch.indices else np.zeros((0, 0))
        yield batch.indices, batch.errors, out


@torch.inference_mode()
def _forward(module: nn.Module, x: torch.Tensor, device: torch.device, precision: str) -> np.ndarray:
    with autocast(device, precision):
        return module(x).float().cpu().numpy()


def extract_batch(
    module: nn.Module, transform: BatchTransform, images: torch.Tensor, device: torch.device, precision: str
) -> np.ndarray:
    """(B, 3, S, S) uint8 storage batch -> (B, D) float32 features, in the device's preferred precision."""
    with torch.inference_mode():
        x = transform(images.to(device, non_blocking=True))
    return _forward(module, x, device, precision)


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
    preprocessing: Preprocessing | None  # images; None for sound (see `sound`)
    skipped: list[BadFile] = field(default_factory=list)
    reused: int = 0
    seconds: float = 0.0
    sound: dict[str, Any] | None = None  # sound: sample rate, clip length, channels, front end the clips were read with
    text: dict[str, Any] | None = None  # text: the TextSpec the texts were read by (the features of TF-IDF are sparse)

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


def extract_cached(backbone: Backbone, paths: Sequence[Path], config: FeaturesConfig, device: torch.device) -> Extraction:
    """`extract` in the precision `auto` picks for the device, reusing the disk cache when `config.cache` says so."""
    precision = resolve_precision("auto", device)
    cache = FeatureCache({**backbone.identity, "preprocessing": backbone.inputs, "precision": precision}) if config.cache else None
    return extract(backbone, paths, device=device, precision=precision, batch_size=config.batch_size, workers=config.workers,
                   cache=cache)


def feature_set(
    backbone: Backbone, files: list[LabeledFile], classes: list[str], config: FeaturesConfig, device: torch.device
) -> FeatureSet:
    """Extract (or reuse) the features of labelled files; unreadable ones are left out, too many is an error."""
    result = extract_cached(backbone, [f.path for f in files], config, device)
    noun = ("sound files", "sound file") if backbone.sound is not None else ("images", "image")
    check_unreadable(result.bad, len(files), *noun)
    index = {c: i for i, c in enumerate(classes)}
    kept = [files[i] for i in result.kept]
    return FeatureSet(
        result.features, [f.path for f in kept], np.array([index[f.label] for f in kept], dtype=np.int64),
        [f.split or "train" for f in kept], classes, backbone.name, backbone.layer, backbone.preprocessing,
        result.bad, result.reused, result.seconds, backbone.sound,
    )


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
        "preprocessing": features.preprocessing.to_dict() if features.preprocessing else None, "sound": features.sound,
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
