"""Pretrained text encoders from Hugging Face `transformers`, by name or from a folder: `--model hf:NAME_OR_FOLDER`.

BERT, RoBERTa, MiniLM, DistilBERT, DeBERTa and their kin, pretrained on large corpora, with the tokenizer they were
pretrained with (its vocabulary, lower-casing and [CLS]/[SEP] marks). `hf:sentence-transformers/all-MiniLM-L6-v2` is
downloaded once into the Hugging Face cache, as `transformers` does (offline, `HF_HUB_OFFLINE=1` uses that cache);
`hf:/path/to/folder` loads what `save_pretrained` wrote there.

A text becomes one vector as sentence-transformers makes it: the mean of the encoder's last hidden states over the real
tokens (masked mean pooling), or of the states after layer N (`layer`). The classifier adds dropout and one linear
layer. The encoder's configuration and its tokenizer (as `tokenizers` JSON) travel in the checkpoint's sidecar, so a
trained run is rebuilt, then its weights loaded, with no download and no folder.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from deepfit.errors import ConfigError
from deepfit.models.hub import build_encoder, encoder_source, unreachable

# the audio encoders (models/audio_encoders.py) take waveforms, not token ids
NOT_TEXT = ("wav2vec2", "wav2vec2-conformer", "hubert", "wavlm", "data2vec-audio", "unispeech", "unispeech-sat", "sew",
            "sew-d", "whisper", "audio-spectrogram-transformer", "vit", "clip_vision_model")


@dataclass(frozen=True)
class TextEncoderInfo:
    """What deepfit needs of a text encoder before its weights: its tokenizer and how to rebuild it."""

    tokenizer: Any  # a `tokenizers.Tokenizer`, padding and truncation off (deepfit pads each batch itself)
    config: dict[str, Any]  # the transformers configuration (model_type and sizes)
    max_positions: int  # the longest text, in tokens, the encoder has positions for


def text_encoder_info(model: str) -> TextEncoderInfo:
    """The encoder's configuration and tokenizer, read without loading its weights."""
    from transformers import AutoConfig, AutoTokenizer

    source = encoder_source(model)
    try:
        config = AutoConfig.from_pretrained(source)
        if config.model_type in NOT_TEXT:
            raise ConfigError(f"{source} is a {config.model_type!r} network, which does not read text: use a text "
                              "encoder such as BERT, RoBERTa or MiniLM (or deepfit's own bag, rnn, transformer)")
        wrapped = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise unreachable(source, e, "text") from e
    tokenizer = getattr(wrapped, "backend_tokenizer", None)
    if tokenizer is None:
        raise ConfigError(f"{source} has only a slow (Python) tokenizer; deepfit needs a fast one (tokenizer.json): "
                          "load it with transformers and save_pretrained it again to write one")
    tokenizer.no_padding()
    tokenizer.no_truncation()
    positions = int(getattr(config, "max_position_embeddings", 0) or 512)
    if config.model_type in ("roberta", "xlm-roberta", "camembert"):  # their positions start after the padding index
        positions -= 2
    return TextEncoderInfo(tokenizer, config.to_dict(), positions)


@contextmanager
def quiet_loading() -> Iterator[None]:
    """transformers' table of the pooler weights left out, and its progress bar, kept off the user's screen."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def load_text_encoder(model: str) -> nn.Module:
    """The pretrained encoder, weights and all (its pooler, unused here, left out)."""
    from transformers import AutoModel

    source = encoder_source(model)
    try:
        with quiet_loading():
            try:
                return AutoModel.from_pretrained(source, add_pooling_layer=False)
            except TypeError:  # a kind with no pooler to leave out
                return AutoModel.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise unreachable(source, e, "text") from e


def build_text_encoder(config: dict[str, Any]) -> nn.Module:
    """The encoder's architecture from its stored configuration, with random weights (a checkpoint's are loaded after)."""
    with quiet_loading():
        return build_encoder(config, add_pooling_layer=False)


def masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, L, H), (B, L) -> (B, H): the mean over the real tokens only."""
    weights = mask.to(states.dtype)[..., None]
    return (states * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class SentenceEncoder(nn.Module):
    """{"input_ids": (B, L), "attention_mask": (B, L)} -> the masked mean of a layer's states (B, H).
    `layer` None: the last hidden states; N: the states after the N-th transformer layer (0: the embeddings)."""

    def __init__(self, encoder: nn.Module, layer: int | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        depth = int(encoder.config.num_hidden_layers)
        if layer is not None and not 0 <= layer <= depth:
            raise ConfigError(f"the encoder has layers 0 (its embeddings) to {depth}; --layer {layer} is not one of them")
        self.layer = layer

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        mask = batch["attention_mask"]
        out = self.encoder(input_ids=batch["input_ids"], attention_mask=mask.long(), output_hidden_states=self.layer is not None)
        states = out.last_hidden_state if self.layer is None else out.hidden_states[self.layer]  # (B, L, H)
        return masked_mean(states, mask)


class TextEncoderClassifier(nn.Module):
    """Token ids -> encoder -> masked mean of the last states (B, H) -> dropout -> linear -> logits (B, classes)."""

    def __init__(self, encoder: nn.Module, num_classes: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.embed = SentenceEncoder(encoder)
        self.num_classes, self.num_features = num_classes, int(encoder.config.hidden_size)
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(self.num_features, num_classes)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.embed(batch)  # (B, H)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.fc(self.head_drop(self.forward_features(batch)))
