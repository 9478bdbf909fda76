"""Pretrained audio networks from Hugging Face `transformers`, by name or from a folder: `--model hf:NAME_OR_FOLDER`.

wav2vec 2.0, HuBERT, WavLM, data2vec-audio, UniSpeech(-SAT) and SEW(-D) are encoders of the raw waveform (no
spectrogram), pretrained on thousands of hours of speech. `hf:facebook/wav2vec2-base` is downloaded once into the
Hugging Face cache, as `transformers` does (offline, `HF_HUB_OFFLINE=1` uses that cache); `hf:/path/to/folder` loads
what `save_pretrained` wrote there (config.json, the weights, and preprocessor_config.json with the sample rate).

The classifier averages the encoder's frames and adds one linear layer. The encoder's configuration travels in the
checkpoint's sidecar, so a trained run is rebuilt (then its weights loaded) with no download and no folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from deepfit.errors import ConfigError
from deepfit.log import logger
from deepfit.models.hub import encoder_source, unreachable

# model types whose encoder takes the waveform as `input_values` (B, T); the audio spectrogram transformer, whose
# `input_values` are filter banks, and speech-to-text models are not among them
WAVEFORM_ENCODERS = ("wav2vec2", "wav2vec2-conformer", "hubert", "wavlm", "data2vec-audio", "unispeech", "unispeech-sat",
                     "sew", "sew-d")
DEFAULT_RATE = 16000  # every encoder above was pretrained at 16 kHz; used when a folder has no preprocessor config


@dataclass(frozen=True)
class EncoderInfo:
    """What deepfit needs of an audio encoder before its weights: how to feed it, and how to rebuild it."""

    sample_rate: int
    normalize: bool  # each clip to zero mean and unit variance first, as its feature extractor does
    config: dict[str, Any]  # the transformers configuration (model_type and sizes)


def encoder_info(model: str) -> EncoderInfo:
    """The encoder's configuration and input settings, read without loading its weights."""
    from transformers import AutoConfig, AutoFeatureExtractor

    source = encoder_source(model)
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise unreachable(source, e, "audio") from e
    if config.model_type not in WAVEFORM_ENCODERS:
        raise ConfigError(f"{source} is a {config.model_type!r} network, not an encoder of waveforms; deepfit takes "
                          f"audio networks of types {', '.join(WAVEFORM_ENCODERS)} (or use an image network on spectrograms)")
    try:
        extractor = AutoFeatureExtractor.from_pretrained(source)
        rate, normalize = int(extractor.sampling_rate), bool(getattr(extractor, "do_normalize", True))
    except (OSError, ValueError, AttributeError):
        rate, normalize = DEFAULT_RATE, True
        logger.warning(f"{source} has no preprocessor config: feeding it {rate} Hz clips normalised per clip, as its kind "
                       "was pretrained")
    return EncoderInfo(rate, normalize, config.to_dict())


def load_encoder(model: str) -> nn.Module:
    """The pretrained encoder, weights and all."""
    from transformers import AutoModel

    source = encoder_source(model)
    try:
        return AutoModel.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise unreachable(source, e, "audio") from e


class WaveformClassifier(nn.Module):
    """Samples (B, C, T) -> mono -> (optionally) per-clip standardisation -> encoder frames (B, frames, H) -> their
    mean -> dropout -> linear -> logits (B, classes)."""

    def __init__(self, encoder: nn.Module, num_classes: int, *, normalize: bool = True, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.encoder = encoder
        self.normalize = normalize
        self.num_classes, self.num_features = num_classes, int(encoder.config.hidden_size)
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(self.num_features, num_classes)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward_features(self, wave: torch.Tensor) -> torch.Tensor:  # (B, C, T)
        x = wave.float().mean(1)  # (B, T): the encoders were pretrained on mono speech
        if self.normalize:
            x = (x - x.mean(1, keepdim=True)) / torch.sqrt(x.var(1, keepdim=True) + 1e-7)
        return self.encoder(input_values=x).last_hidden_state.mean(1)  # (B, H)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.fc(self.head_drop(self.forward_features(wave)))
