"""Sound: decoding and resampling (io.py), the log-mel / MFCC front end that is a network's first layer (frontend.py),
labels and groups from file names (labels.py), and the `SOUND` modality object through which tasks find sound files
and coerce what a user holds (a path, an array with its sample rate, a tensor) into a waveform tensor."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepfit.data.media import Media
from deepfit.errors import DataError
from deepfit.modalities.base import expand_paths
from deepfit.modalities.sound.io import SOUND_EXTENSIONS, convert, read_audio


def is_samples_with_rate(item: Any) -> bool:
    """Whether `item` is one (samples, sample rate) pair, as opposed to a list of two inputs."""
    return isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], int | np.integer)


@dataclass(frozen=True)
class SoundModality:
    name: str = "sound"
    noun: str = "sound files"
    extensions: frozenset[str] = SOUND_EXTENSIONS

    def load(self, item: Any, sample_rate: int = 16000, channels: int | None = 1) -> torch.Tensor:
        """A path, an (array, sample rate) pair, or samples already at `sample_rate` ((T,) or (C, T) array or tensor)
        -> (C, T) float32 at `sample_rate`, `channels` as `io.mix` makes them."""
        if isinstance(item, str | Path):
            return torch.from_numpy(read_audio(item, sample_rate, channels=channels))
        rate = sample_rate
        if is_samples_with_rate(item):
            item, rate = item
        wave = item.detach().cpu().numpy() if isinstance(item, torch.Tensor) else np.asarray(item)
        if wave.ndim not in (1, 2) or wave.size == 0 or not np.issubdtype(wave.dtype, np.number):
            raise DataError(f"sound samples must be a non-empty (T,) or (C, T) array of numbers, got shape {wave.shape} "
                            f"of {wave.dtype}")
        if np.issubdtype(wave.dtype, np.integer):  # integer PCM: scale to [-1, 1] as the file readers do
            wave = wave / float(np.iinfo(wave.dtype).max + 1)
        wave = np.atleast_2d(wave).astype(np.float32)  # (C, T)
        return torch.from_numpy(convert(wave.T, int(rate), sample_rate, channels, "the samples given"))

    def expand(self, items: Iterable[str | Path]) -> list[Path]:
        return expand_paths(items, self.extensions, self.noun)

    @property
    def media(self) -> Media:
        """What data discovery looks for (data/sources.py `discover(media=...)`)."""
        return Media(self.extensions, self.noun, "sound file")


SOUND = SoundModality()
