"""Feature extraction on sound: what turns each clip into a vector for `deepfit features` and `deepfit compare`.

    --model handmade (or mfcc)    MFCC statistics (tasks/classify/sound_model.py `MFCCStatistics`): the classical
                                  baseline, as speech and environmental-sound studies use it before deep learning
    --model RUN_FOLDER            a trained deepfit sound network, cut at `--layer` (default: the embedding its
                                  classifier sees): features of a network trained on other recordings
    --model NAME --weights FILE   an image network (ImageNet weights) on log-mel pictures: its per-frequency
                                  normalisation is measured on training clips first (see `_measure_norm`)

Every extractor takes raw samples, so the run that `deepfit features` saves predicts from a recording with nothing
else, like a trained sound classifier.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from deepfit.config import FeaturesConfig
from deepfit.data.sources import LabeledFile
from deepfit.errors import ConfigError
from deepfit.log import logger
from deepfit.modalities.sound.store import PCM_SCALE, SoundStore
from deepfit.models.features import PRE_LOGITS, FeatureExtractor
from deepfit.models.hub import hf_weights_identity, is_hf
from deepfit.runs.folder import resolve_checkpoint
from deepfit.tasks.classify.model import load_trained
from deepfit.tasks.classify.sound import SoundSpec, build_sound_model, encoder_rate, plan
from deepfit.tasks.classify.sound_model import OWN_SOUND_MODELS, MFCCStatistics, SoundClassifier
from deepfit.workflows.extraction import (
    HANDMADE,
    Backbone,
    check_handmade_options,
    weights_identity,
)

MFCC_NAMES = (HANDMADE, "mfcc")
MFCC_FRONTEND = {"n_mels": 40, "n_mfcc": 20}  # the usual classical setting: 20 coefficients from 40 mel bands
MFCC_VERSION = 1  # bump when MFCCStatistics changes: cached vectors of the old definition must not be served
NORM_CLIPS = 512  # training clips that measure an image network's per-frequency normalisation


def sound_backbone(config: FeaturesConfig, num_classes: int, train: list[LabeledFile]) -> Backbone:
    """The feature extractor `config.model` names, for sound; `train`: the training split, which alone sets the clip
    length and sample rate (when not given) and an image network's normalisation."""
    if config.model in MFCC_NAMES:
        check_handmade_options(config)
        spec = _spec(config, "mfcc", num_classes, train, {**MFCC_FRONTEND, **config.frontend})
        backbone = {"source": "mfcc"}
        identity = {"backbone": backbone, "version": MFCC_VERSION, "sound": _without_classes(spec)}
        return Backbone(MFCCStatistics(spec.frontend_config), backbone, PRE_LOGITS, None, None, identity, spec.to_dict())
    if Path(config.model).exists():
        return _run_backbone(config)
    if is_hf(config.model):
        return _encoder_backbone(config, num_classes, train)
    if config.model in OWN_SOUND_MODELS:
        raise ConfigError(f"features of an untrained {config.model} are random numbers: train one first (deepfit train DATA "
                          f"--model {config.model}) and pass its run folder as --model, or use --model handmade")
    if not (config.pretrained or config.weights):
        raise ConfigError(f"features of an untrained {config.model} are random numbers: pass --weights FILE (e.g. ImageNet "
                          "weights in .safetensors) or --pretrained, a trained sound run's folder, or --model handmade")
    spec = _spec(config, config.model, num_classes, train, dict(config.frontend))
    model, origin, image_spec = build_sound_model(spec, pretrained=config.pretrained, weights=config.weights)
    _measure_norm(model, train, spec)
    extractor = FeatureExtractor(model.eval(), config.layer)  # an unknown layer fails here, listing the names
    backbone = {"source": "sound", "sound": spec.to_dict(), "model": image_spec.to_dict()}
    norm = model.norm.running_mean.numpy().tobytes() + model.norm.running_var.numpy().tobytes()
    identity = {
        "backbone": {"sound": _without_classes(spec), "model": {k: v for k, v in image_spec.to_dict().items() if k != "num_classes"}},
        "weights": weights_identity(config.weights, image_spec.source, image_spec.name), "layer": extractor.layer,
        "norm": hashlib.blake2b(norm, digest_size=12).hexdigest(),  # measured on this training split
    }
    return Backbone(extractor, backbone, extractor.layer, None, origin, identity, spec.to_dict())


def _spec(config: FeaturesConfig, model: str, num_classes: int, train: list[LabeledFile], frontend: dict) -> SoundSpec:
    rate, seconds = plan(encoder_rate(model, config.sample_rate), config.clip_seconds, train)
    spec = SoundSpec(model, num_classes, rate, max(1, round(rate * seconds)), config.channels or 1, frontend,
                     dict(config.model_args))
    spec.frontend_config  # noqa: B018 - checks the front-end settings before any decoding
    return spec


def _without_classes(spec: SoundSpec) -> dict:
    """A spec as the cache sees it: features of one extractor agree whatever the data's classes."""
    return {k: v for k, v in spec.to_dict().items() if k != "num_classes"}


def _encoder_backbone(config: FeaturesConfig, num_classes: int, train: list[LabeledFile]) -> Backbone:
    """A pretrained Hugging Face audio encoder (`hf:NAME_OR_FOLDER`), its frames' mean (or a layer's output)."""
    if config.weights or config.pretrained or config.frontend or config.model_args:
        raise ConfigError(f"{config.model} brings its own weights and takes the waveform: leave out --weights, "
                          "--pretrained, --frontend and --model-args")
    spec = _spec(config, config.model, num_classes, train, {})
    model, origin, encoder = build_sound_model(spec)
    extractor = FeatureExtractor(model.eval(), config.layer)
    backbone = {"source": "sound", "sound": spec.to_dict(), "model": encoder.to_dict()}
    identity = {"backbone": {"sound": _without_classes(spec), "model": encoder.model_args},
                "weights": hf_weights_identity(config.model), "layer": extractor.layer}
    return Backbone(extractor, backbone, extractor.layer, None, origin, identity, spec.to_dict())


def _run_backbone(config: FeaturesConfig) -> Backbone:
    """A trained deepfit sound run (its folder or checkpoint) cut at `config.layer`."""
    checkpoint = resolve_checkpoint(config.model, "best")
    trained = load_trained(checkpoint)
    if "sound" not in trained.meta or trained.meta["model"]["source"] == "features":
        raise ConfigError(f"{config.model} is not a trained sound network (it is a "
                          f"{'feature + classifier run' if 'sound' in trained.meta else 'run on images'}): pass a run of "
                          "`deepfit train` on sound, an image network with --weights, or --model handmade")
    spec = SoundSpec(**trained.meta["sound"])
    given = [(flag, value, own) for flag, value, own in (
        ("--sample-rate", config.sample_rate, spec.sample_rate), ("--clip-seconds", config.clip_seconds, spec.samples / spec.sample_rate),
        ("--channels", config.channels, spec.channels)) if value is not None and value != own]
    if given or config.frontend or config.weights or config.pretrained or config.model_args:
        shown = ", ".join(f"{flag} {value} (the network's is {own:g})" for flag, value, own in given) or \
            "--frontend, --weights, --pretrained or --model-args"
        raise ConfigError(f"the network of {config.model} hears clips as it was trained to: leave out {shown}")
    extractor = FeatureExtractor(trained.model, config.layer)
    backbone = {"source": "sound", "sound": spec.to_dict(), "model": trained.meta["model"]}
    identity = {"backbone": backbone, "weights": weights_identity(str(checkpoint), "", ""), "layer": extractor.layer}
    logger.info(f"features of the {spec.model} trained in {checkpoint.parent} at layer {extractor.layer!r} "
                f"({spec.sample_rate} Hz, clips of {spec.samples / spec.sample_rate:g} s)")
    return Backbone(extractor, backbone, extractor.layer, None, str(checkpoint), identity, spec.to_dict())


@torch.no_grad()
def _measure_norm(model: SoundClassifier, train: list[LabeledFile], spec: SoundSpec) -> None:
    """Set the per-frequency batch norm before the image network to the mean and variance of each mel band over (up to)
    NORM_CLIPS training clips. Untrained, it would hand the network raw decibels (about -80 to +20) instead of the
    roughly unit-scaled inputs its ImageNet weights expect, and its features would be poor; the test split is not used."""
    step = max(1, len(train) // NORM_CLIPS)
    paths = [f.path for f in train[::step][:NORM_CLIPS]]
    store, _ = SoundStore.load(paths, [0] * len(paths), spec.sample_rate, spec.samples, channels=spec.channels,
                               what="clips measuring the normalisation")
    norm = model.norm
    norm.reset_running_stats()
    norm.momentum = None  # a cumulative average over every batch, not an exponential one
    model.eval()
    norm.train()
    for clips, _, _ in store.batches(64):
        model.picture(clips.float() / PCM_SCALE)
    norm.momentum = 0.1
    model.eval()
