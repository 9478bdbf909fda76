"""Classification on the sound modality: what the classify task does differently when its inputs are recordings.

The task (task.py) reads, splits, trains, evaluates and predicts as for images; here are the sound parts: choosing
the sample rate and clip length from the data, decoding every split into clip stores (modalities/sound/store.py),
building the network with its front end inside (sound_model.py), rebuilding it from a checkpoint, and predicting.
A checkpoint's sidecar keeps `sound` (sample rate, clip length, channels, front end, network), so a trained model
takes raw samples and needs nothing else.
"""

from __future__ import annotations

import difflib
from collections import Counter
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepfit.config import TrainConfig
from deepfit.data.media import IMAGE_EXTENSIONS, IMAGES
from deepfit.data.sources import Catalog, LabeledFile, discover
from deepfit.deploy.agreement import logit_accepted, logit_agreement
from deepfit.deploy.graph import Graph
from deepfit.engine.device import autocast
from deepfit.errors import ConfigError, DataError
from deepfit.log import logger
from deepfit.modalities.base import check_unreadable
from deepfit.modalities.sound import SOUND, is_samples_with_rate
from deepfit.modalities.sound.augment import SoundAugment, SoundBatchTransform, noise_bank
from deepfit.modalities.sound.frontend import FrontEndConfig
from deepfit.modalities.sound.io import SOUND_EXTENSIONS, audio_info, fit_length
from deepfit.modalities.sound.store import SoundStore, default_clip_seconds, headers
from deepfit.models.audio_encoders import WaveformClassifier, encoder_info, load_encoder
from deepfit.models.factory import ModelSpec, build_feature_classifier, build_model, create_model
from deepfit.models.features import FeatureExtractor
from deepfit.models.hub import HF_PREFIX, build_encoder, is_hf
from deepfit.models.weights import freeze_folded_norms
from deepfit.tasks.base import ModelPredictor, Setup
from deepfit.tasks.classify.objective import ClassificationTask
from deepfit.tasks.classify.predict import Prediction, to_prediction
from deepfit.tasks.classify.sound_model import (
    OWN_SOUND_MODELS,
    MFCCStatistics,
    SoundClassifier,
    SpecAugment,
    build_body,
)
from deepfit.tasks.classify.timeline import Timeline, label_recording, plot_timeline, write_windows_csv

MAX_DEFAULT_RATE = 16000  # above this, speech and most environmental sounds gain little for their cost
SHIFT_SHARE = 0.1  # a training clip may be shifted in time by up to this share of its length either way


@dataclass(frozen=True)
class SoundSpec:
    """Everything needed to rebuild a sound classifier (weights come separately); the sidecar's `sound`."""

    model: str  # soundcnn, crnn, or an image network's name
    num_classes: int
    sample_rate: int
    samples: int  # clip length in samples
    channels: int
    frontend: dict[str, Any]
    model_args: dict[str, Any]
    drop_rate: float = 0.0

    @property
    def frontend_config(self) -> FrontEndConfig:
        known = [f.name for f in fields(FrontEndConfig) if f.name != "sample_rate"]
        for key in self.frontend:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"--frontend has no setting {key!r}{hint}; settings: {', '.join(known)} "
                                  "(the sample rate is --sample-rate)")
        return FrontEndConfig(**{**self.frontend, "sample_rate": self.sample_rate})

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def build_sound_model(spec: SoundSpec, *, pretrained: bool = False, weights: str | None = None,
                      augment: bool = False) -> tuple[nn.Module, str | None, ModelSpec | None]:
    """(the network, where its pretrained weights came from, the spec of the image network or audio encoder inside)."""
    front = spec.frontend_config
    if is_hf(spec.model):  # a pretrained waveform encoder: no spectrogram, so no SpecAugment
        if weights:
            raise ConfigError(f"{spec.model} brings its own pretrained weights: leave out --weights")
        info = encoder_info(spec.model)
        model = WaveformClassifier(load_encoder(spec.model), spec.num_classes, normalize=info.normalize,
                                   drop_rate=spec.drop_rate)
        encoder = ModelSpec("transformers", spec.model, spec.num_classes, spec.drop_rate,
                            {"config": info.config, "normalize": info.normalize})
        return model, spec.model.removeprefix(HF_PREFIX), encoder
    spec_augment = SpecAugment() if augment else None
    if spec.model in OWN_SOUND_MODELS:
        body, chans = build_body(spec.model, spec.num_classes, front, spec.channels, model_args=spec.model_args,
                                 drop_rate=spec.drop_rate)
        return SoundClassifier(front, body, channels=spec.channels, body_chans=chans, spec_augment=spec_augment), None, None
    created = create_model(spec.model, spec.num_classes, pretrained=pretrained, weights=weights, drop_rate=spec.drop_rate,
                           model_args=spec.model_args)
    model = SoundClassifier(front, created.model, channels=spec.channels, body_chans=3, spec_augment=spec_augment)
    return model, created.pretrained_source, created.spec


def rebuild(meta: dict[str, Any]) -> nn.Module:
    """The network of a checkpoint's sidecar, with random weights (the caller loads them)."""
    spec = SoundSpec(**meta["sound"])
    if meta["model"]["source"] == "features":  # `deepfit features` on sound: a feature extractor + a classical head
        args = meta["model"]["model_args"]
        inner = args["backbone"]  # {"source": "mfcc"}, or the network's own sidecar entries
        features = (MFCCStatistics(spec.frontend_config) if inner["source"] == "mfcc"
                    else FeatureExtractor(rebuild({"sound": inner["sound"], "model": inner["model"]}), args["layer"]))
        return build_feature_classifier(ModelSpec(**meta["model"]), features)
    if spec.model in OWN_SOUND_MODELS:
        return build_sound_model(spec)[0]
    if meta["model"]["source"] == "transformers":  # the encoder rebuilt from its stored configuration: no download
        args = meta["model"]["model_args"]
        return WaveformClassifier(build_encoder(args["config"]), spec.num_classes, normalize=args["normalize"],
                                  drop_rate=spec.drop_rate)
    body = build_model(ModelSpec(**meta["model"]))
    return SoundClassifier(spec.frontend_config, body, channels=spec.channels, body_chans=3)


def _heard(spec: SoundSpec) -> str:
    if is_hf(spec.model):
        return "the waveform"
    return f"{'MFCC' if spec.frontend.get('n_mfcc') else 'log-mel'} pictures"


def encoder_rate(model: str | None, rate: int | None) -> int | None:
    """The sample rate a pretrained audio encoder was trained at (asking for another is an error), else `rate`."""
    if not is_hf(model):
        return rate
    own = encoder_info(model).sample_rate
    if rate is not None and rate != own:
        raise ConfigError(f"{model} hears {own} Hz, as it was pretrained: leave out --sample-rate {rate}")
    return own


def plan(rate: int | None, seconds: float | None, train: list[LabeledFile]) -> tuple[int, float]:
    """(sample rate, clip seconds): those given, or chosen from the training clips and said in the log."""
    # each header read once, when either is to be chosen; a sample of this size settles both
    infos = headers([f.path for f in train[:2000]]) if rate is None or seconds is None else []
    if rate is None:
        rates = Counter(info.sample_rate for info in infos)
        if not rates:
            raise DataError("none of the training files could be read as sound; check them with deepfit data check")
        rate = min(MAX_DEFAULT_RATE, rates.most_common(1)[0][0])
        logger.info(f"sample rate {rate} Hz (the clips' most common rate, at most {MAX_DEFAULT_RATE}; --sample-rate sets it)")
    if seconds is None:
        seconds = default_clip_seconds([info.seconds for info in infos])
        logger.info(f"clip length {seconds:g} s (9 in 10 training clips fit whole; --clip-seconds sets it)")
    return rate, seconds


def prepare(config: TrainConfig, classes: list[str], splits: dict[str, list[LabeledFile]], resumed: dict[str, Any] | None,
            weight: torch.Tensor | None = None) -> Setup:
    """Stores, transforms, network and objective (`weight`: the loss's class weights) of a sound classification run
    (new, or resumed from config.json)."""
    if resumed is not None:
        spec = SoundSpec(**resumed["sound"])
    else:
        rate, seconds = plan(encoder_rate(config.model, config.sample_rate), config.clip_seconds, splits["train"])
        spec = SoundSpec(config.model or "soundcnn", len(classes), rate, max(1, round(rate * seconds)), config.channels,
                         dict(config.frontend), dict(config.model_args), config.dropout)
    spec.frontend_config  # noqa: B018 - checks the front-end settings before any decoding
    index = {c: i for i, c in enumerate(classes)}
    margin = round(spec.samples * SHIFT_SHARE) if config.augment != "none" else 0
    stores, bad = {}, []
    for name, files in splits.items():
        if not files:
            continue
        stores[name], bad_here = SoundStore.load([f.path for f in files], [index[f.label] for f in files], spec.sample_rate,
                                                 spec.samples, channels=spec.channels, margin=margin if name == "train" else 0,
                                                 workers=config.workers or 2, what=f"{name} clips")
        bad += bad_here
    check_unreadable(bad, sum(len(f) for f in splits.values()), "sound files", "sound file")
    noise = None
    if config.noise:
        paths = SOUND.expand([config.noise])
        noise = noise_bank([SOUND.load(p, spec.sample_rate) for p in paths], spec.samples)
        logger.info(f"{len(noise)} background recordings from {config.noise} are mixed into a third of the training clips")
    new = resumed is None
    if not new and "encoder" in resumed:  # a resumed audio encoder: rebuilt from its stored configuration, no download
        model, origin = rebuild({"sound": resumed["sound"], "model": resumed["encoder"]}), None
        image_spec = ModelSpec(**resumed["encoder"])
    else:
        model, origin, image_spec = build_sound_model(spec, pretrained=config.pretrained and new,
                                                      weights=config.weights if new else None, augment=config.augment != "none")
    augment = SoundAugment(noise_probability=1 / 3 if noise is not None else 0.0) if config.augment != "none" else None
    own = ModelSpec("deepfit", spec.model, spec.num_classes, spec.drop_rate, spec.model_args)
    meta = {"sound": spec.to_dict(), "model": (image_spec or own).to_dict(), "modality": "sound"}
    params = sum(p.numel() for p in model.parameters()) / 1e6
    skipped = {b.path for b in bad}
    return Setup(
        model=model, objective=ClassificationTask(len(classes), config.label_smoothing, config.mixup, weight), train=stores["train"],
        val=stores.get("val"), transform=SoundBatchTransform(spec.samples, margin, augment, noise),
        eval_transform=SoundBatchTransform(spec.samples, 0), meta=meta,
        record={"modality": "sound", "sound": spec.to_dict(), **({"encoder": meta["model"]} if is_hf(spec.model) else {})},
        summary=(f"model {spec.model} on {_heard(spec)} ({params:.2f}M parameters), {spec.sample_rate} Hz, clips of "
                 f"{spec.samples / spec.sample_rate:g} s"),
        pretrained_from=origin,
        # batch norms whose statistics were folded into pretrained weights stay frozen on resume, as in the first run
        on_resume=(lambda: freeze_folded_norms(model)) if config.transfer else None,
        splits={n: [f for f in files if f.path not in skipped] for n, files in splits.items()} if bad else None,
    )


class SoundPredictor(ModelPredictor):
    """A trained sound classifier ready for inference: paths, (samples, rate) pairs, arrays or tensors in."""

    tta = False
    modality = "sound"  # the files `predict` and `deepfit predict` look for in folders

    def __init__(self, trained: Any, device: str = "auto") -> None:
        super().__init__(trained, device)
        self.classes = trained.classes
        self.spec = SoundSpec(**trained.meta["sound"])

    def clip(self, item: Any) -> torch.Tensor:
        """One input -> (C, T) float clip of the model's length (its middle, or padded around)."""
        wave = SOUND.load(item, self.spec.sample_rate, self.spec.channels).numpy()
        return torch.from_numpy(np.ascontiguousarray(fit_length(wave, self.spec.samples)))

    @torch.inference_mode()
    def logits(self, clips: torch.Tensor) -> torch.Tensor:
        """(B, C, T) float clips -> (B, classes) float32 logits on the CPU."""
        if self.runner is not None:
            return self.runner(clips.float())[0].float()
        with autocast(self.device, self.precision):
            return self.model(clips.to(self.device)).float().cpu()

    def export_graph(self) -> Graph:
        """Raw waveforms -> logits: the spectrogram front end is inside the network."""
        s = self.spec
        return Graph(self.model, {"waveforms": f"(B, {s.channels}, {s.samples}) float32 samples in [-1, 1] at {s.sample_rate} Hz"},
                     ["logits"], {"waveforms": {0: "batch"}, "logits": {0: "batch"}}, logit_agreement, logit_accepted,
                     info={"sample_rate": s.sample_rate, "channels": s.channels, "samples": s.samples})

    def graph_inputs(self, sources: list[Any]) -> list[tuple[torch.Tensor, ...]]:
        return [(self.clip(s)[None],) for s in sources]

    def predict_proba(self, inputs: Any, batch_size: int = 64) -> np.ndarray:
        """(N, classes) probabilities, columns in the order of `self.classes`."""
        items = _as_list(inputs)
        chunks = [self.logits(torch.stack([self.clip(i) for i in items[s : s + batch_size]])).softmax(1)
                  for s in range(0, len(items), batch_size)]
        return torch.cat(chunks).numpy() if chunks else np.zeros((0, len(self.classes)), dtype=np.float32)

    def predict(self, inputs: Any, top_k: int = 3, batch_size: int = 64, hop: float | None = None) -> list[Prediction]:
        items = _as_list(inputs)
        if items and all(isinstance(i, str | Path) for i in items):  # files: long recordings in windows, errors raised
            predictions, failed = self.predict_files([Path(i) for i in items], top_k, batch_size, hop)
            if failed:
                raise DataError(failed[0][1])
            return predictions
        probs = self.predict_proba(items, batch_size)
        return [to_prediction(self.classes, str(it) if isinstance(it, str | Path) else f"<clip {i}>", p, top_k)
                for i, (it, p) in enumerate(zip(items, probs, strict=True))]

    def predict_files(self, paths: list[Path], top_k: int = 3, batch_size: int = 64,
                      hop: float | None = None) -> tuple[list[Prediction], list[tuple[Path, str]]]:
        """Like predict, but an unreadable file is skipped with a warning and returned, not raised. A recording longer
        than 1.5 clips is labelled in windows starting every `hop` seconds (default: half a clip), read in pieces; its
        prediction is the mean over its windows, which are kept in `self.timelines`."""
        results, failed = [], []
        self.timelines: list[Timeline] = []
        clip_seconds = self.spec.samples / self.spec.sample_rate
        for start in range(0, len(paths), batch_size):
            clips, kept = [], []
            for path in paths[start : start + batch_size]:
                try:
                    if audio_info(path).seconds > 1.5 * clip_seconds:
                        timeline = label_recording(path, lambda x: self.logits(x).softmax(1).numpy(), self.spec.sample_rate,
                                                   self.spec.samples, hop or clip_seconds / 2, self.spec.channels, batch_size)
                        self.timelines.append(timeline)
                        results.append(to_prediction(self.classes, str(path), timeline.mean, top_k))
                        continue
                    clips.append(self.clip(path))
                    kept.append(path)
                except DataError as e:
                    logger.warning(f"skipped unreadable sound file: {e}")
                    failed.append((path, str(e)))
            if clips:
                probs = self.logits(torch.stack(clips)).softmax(1).numpy()
                results += [to_prediction(self.classes, str(p), pr, top_k) for p, pr in zip(kept, probs, strict=True)]
        return results, failed


def score_clips(predictor: SoundPredictor, files: list[LabeledFile], split: str,
                batch_size: int = 64) -> tuple[list[Path], np.ndarray, np.ndarray, list]:
    """(paths scored, true class indices, probabilities, unreadable files) of labelled clips, decoded as in training."""
    index = {c: i for i, c in enumerate(predictor.classes)}
    spec = predictor.spec
    store, bad = SoundStore.load([f.path for f in files], [index[f.label] for f in files], spec.sample_rate, spec.samples,
                                 channels=spec.channels, what=f"{split} clips")
    check_unreadable(bad, len(files), f"{split} sound files", "sound file")
    transform = SoundBatchTransform(spec.samples, 0)
    logits, targets = [], []
    for clips, labels, _ in store.batches(batch_size):
        logits.append(predictor.logits(transform(clips, None)))
        targets.append(labels)
    probs = torch.cat(logits).softmax(1).numpy() if logits else np.zeros((0, len(predictor.classes)), np.float32)
    y_true = torch.cat(targets).numpy() if targets else np.zeros(0, np.int64)
    return store.paths, y_true, probs, bad


def _as_list(inputs: Any) -> list:
    """One input (a path, a (samples, rate) pair, a (T,) or (C, T) array or tensor) or a list of them -> a list."""
    if isinstance(inputs, str | Path) or is_samples_with_rate(inputs):
        return [inputs]
    if isinstance(inputs, np.ndarray | torch.Tensor):
        return list(inputs) if inputs.ndim == 3 else [inputs]  # a (B, C, T) batch is B clips
    return list(inputs)


def sound_files(data: str | Path) -> bool:
    """Whether DATA (a folder, a CSV or a file) holds sound files rather than images: the first file of either kind
    found decides."""
    path = Path(data).expanduser()
    if path.is_file():
        if path.suffix.lower() in SOUND_EXTENSIONS:
            return True
        try:
            text = path.read_text(errors="replace")[:65536]
        except OSError:
            return False
        suffixes = [Path(w.strip().strip('"')).suffix.lower() for line in text.splitlines()[1:50] for w in line.replace("\t", ",").split(",")]
        return any(s in SOUND_EXTENSIONS for s in suffixes) and not any(s in IMAGE_EXTENSIONS for s in suffixes)
    for file in path.rglob("*") if path.is_dir() else []:
        suffix = file.suffix.lower()
        if suffix in SOUND_EXTENSIONS or suffix in IMAGE_EXTENSIONS:
            return suffix in SOUND_EXTENSIONS
    return False


def is_sound_catalog(catalog: Catalog) -> bool:
    """Whether an already discovered catalog lists sound files (its first file decides)."""
    return bool(catalog.files) and catalog.files[0].path.suffix.lower() in SOUND.extensions


def discover_labelled(data: str | Path | Catalog, modality: str = "auto", **discovery: Any) -> tuple[Catalog, bool]:
    """(the labelled files of DATA, whether they are sound): sound or images as `modality` says, or, for "auto",
    as the files DATA holds say. `discovery`: path_column, label_column, label_pattern (data/sources.py)."""
    if isinstance(data, Catalog):
        return data, modality == "sound" or (modality == "auto" and is_sound_catalog(data))
    sound = modality == "sound" or (modality == "auto" and sound_files(data))
    return discover(data, **discovery, media=SOUND.media if sound else IMAGES), sound


def describe_clips(paths: list[Path], sample: int = 2000) -> tuple[list[str], list[str]]:
    """`deepfit data check` lines about recordings (durations, sample rates, channels, from the headers of up to
    `sample` files), and the unreadable ones among them."""
    seconds, rates, channels, unreadable = [], Counter(), Counter(), []
    for path in paths[:sample]:
        try:
            info = audio_info(path)
        except DataError as e:
            unreadable.append(str(e))
            continue
        seconds.append(info.seconds)
        rates[info.sample_rate] += 1
        channels[info.channels] += 1
    lines = []
    if seconds:
        q = np.percentile(seconds, [0, 50, 90, 100])
        lines.append(f"durations ({len(seconds)} clips): shortest {q[0]:.2f} s, median {q[1]:.2f} s, 90% within {q[2]:.2f} s, "
                     f"longest {q[3]:.2f} s; the default clip length would be {default_clip_seconds(seconds):g} s")
        lines.append("sample rates: " + ", ".join(f"{r} Hz ({n})" for r, n in rates.most_common()))
        lines.append("channels: " + ", ".join(f"{c} ({n})" for c, n in channels.most_common()))
    return lines, unreadable


def write_timelines(timelines: list[Timeline], classes: list[str], target: Path) -> str:
    """Beside the predictions file: every window's probabilities (NAME_windows.csv) and a timeline picture per long
    recording (NAME_timeline_RECORDING.png), never overwriting; returns the line to show."""
    csv_path = target.with_name(f"{target.stem}_windows.csv")
    pictures = [target.with_name(f"{target.stem}_timeline_{t.source.stem}.png") for t in timelines]
    existing = [p for p in [csv_path, *pictures] if p.exists()]
    if existing:
        raise ConfigError(f"{existing[0]} already exists: deepfit does not overwrite; pass another --output")
    write_windows_csv(timelines, classes, csv_path)
    for timeline, picture in zip(timelines, pictures, strict=True):
        plot_timeline(timeline, classes, picture)
    windows = sum(len(t.starts) for t in timelines)
    return f"{len(timelines)} long recordings labelled in {windows} windows: {csv_path} and timeline pictures beside it"
