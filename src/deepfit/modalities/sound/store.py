"""Clips decoded once into memory as 16-bit samples, and batches of them for the engine (a `BatchSource`).

Each clip is cut (from its middle) or padded (with silence on both sides) to a fixed length, so a batch is one
(B, C, T) tensor: 16-bit like the PCM most recordings are, half the memory of floats, converted on the device by
the batch transform (augment.py). A training store keeps `margin` more samples on each side, which the transform's
random crop uses to shift clips in time. Files are decoded on threads: libsndfile and soxr release Python's lock.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from deepfit.errors import DataError
from deepfit.log import logger
from deepfit.modalities.base import BadFile
from deepfit.modalities.sound.io import AudioInfo, audio_info, fit_length, is_silent, read_audio

PCM_SCALE = 32767.0  # stored int16 sample = round(float sample * PCM_SCALE)


def default_clip_seconds(durations: Sequence[float]) -> float:
    """A clip length that holds nine clips in ten whole: the 90th percentile of the durations, rounded up to a tenth of
    a second, between 0.5 s and 10 s."""
    if not durations:
        return 1.0
    return float(min(10.0, max(0.5, math.ceil(float(np.percentile(durations, 90)) * 10) / 10)))


class SoundStore:
    """(N, C, T + 2 * margin) int16 samples and (N,) labels in memory; each clip centred, so the middle T samples
    are what evaluation sees and the margins hold what a training crop may shift in."""

    def __init__(self, clips: torch.Tensor, labels: torch.Tensor, paths: list[Path], sample_rate: int, margin: int) -> None:
        self.clips, self.labels, self.paths = clips, labels, paths  # (N, C, T') int16, (N,) int64
        self.sample_rate, self.margin = sample_rate, margin

    @property
    def in_memory(self) -> bool:
        return True

    def __len__(self) -> int:
        return len(self.labels)

    def num_batches(self, batch_size: int) -> int:
        return math.ceil(len(self) / batch_size)

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
                order: torch.Tensor | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(clips (B, C, T') int16, labels (B,), indices (B,)) over `order` (default: all, shuffled or in sequence)."""
        if order is None:
            order = torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            yield self.clips[idx], self.labels[idx], idx

    @classmethod
    def load(cls, paths: Sequence[Path], labels: Sequence[int], sample_rate: int, samples: int, *, channels: int = 1,
             margin: int = 0, workers: int = 2, what: str = "clips",
             noted: dict[str, list[Path]] | None = None) -> tuple[SoundStore, list[BadFile]]:
        """Decode every file (unreadable ones are returned, not stored); warn, naming them, about silent clips and
        clips shorter than `samples`, which are padded with silence (or, with `noted`, add them to its "silent" and
        "short" lists for the caller to warn about once)."""
        length = samples + 2 * margin

        def one(path: Path) -> np.ndarray | BadFile:
            try:
                wave = read_audio(path, sample_rate, channels=channels)  # (C, T)
            except DataError as e:
                return BadFile(path, str(e).removeprefix(f"{path}: "))
            return wave

        with ThreadPoolExecutor(max(1, workers)) as pool:
            decoded = list(pool.map(one, paths))
        good = [i for i, d in enumerate(decoded) if not isinstance(d, BadFile)]
        bad = [d for d in decoded if isinstance(d, BadFile)]
        clips = torch.zeros(len(good), channels, length, dtype=torch.int16)
        silent, short = [], []
        for row, i in enumerate(good):
            wave = decoded[i]
            assert isinstance(wave, np.ndarray)
            if is_silent(wave):
                silent.append(paths[i])
            if wave.shape[1] < samples:
                short.append(paths[i])
            # centred in the stored length: the middle `samples` are the clip as evaluation and prediction see it
            kept = fit_length(wave, length)
            clips[row] = torch.from_numpy(np.clip(np.round(kept * PCM_SCALE), -32768, 32767).astype(np.int16))
        if noted is not None:
            noted.setdefault("silent", []).extend(silent)
            noted.setdefault("short", []).extend(short)
        else:
            warn_clips(silent, short, samples / sample_rate, what)
        store = cls(clips, torch.tensor([labels[i] for i in good], dtype=torch.long), [paths[i] for i in good], sample_rate, margin)
        return store, bad


def warn_clips(silent: list[Path], short: list[Path], seconds: float, what: str = "clips") -> None:
    _warn_some(silent, f"{what} are silent (peak below -80 dBFS) and teach nothing: check them")
    _warn_some(short, f"{what} are shorter than the clip length of {seconds:g} s and are padded with silence")


def _warn_some(paths: list[Path], text: str) -> None:
    if paths:
        shown = ", ".join(str(p) for p in paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
        logger.warning(f"{len(paths)} {text}: {shown}")


def clip_batches(paths: Sequence[Path], chunks: Sequence[Sequence[int]], sample_rate: int, samples: int, *,
                 channels: int = 1, workers: int = 2) -> Iterator[tuple[list[int], list[tuple[int, str]], torch.Tensor]]:
    """For each chunk of indices into `paths`: (indices decoded, (index, reason) of the unreadable ones, their clips
    (B, C, samples) float in [-1, 1]), decoded as training decodes them (through 16 bits, centred), a chunk at a time
    so a long list is never held in memory at once."""
    noted: dict[str, list[Path]] = {}
    for chunk in chunks:
        store, bad = SoundStore.load([paths[i] for i in chunk], [0] * len(chunk), sample_rate, samples, channels=channels,
                                     workers=workers, noted=noted)
        reasons = {b.path: b.reason for b in bad}
        good = [i for i in chunk if paths[i] not in reasons]
        yield good, [(i, reasons[paths[i]]) for i in chunk if paths[i] in reasons], store.clips.float() / PCM_SCALE
    warn_clips(noted.get("silent", []), noted.get("short", []), samples / sample_rate)  # once, not once per chunk


def headers(paths: Sequence[Path]) -> list[AudioInfo]:
    """The header of each readable file (unreadable ones are left out here and reported when decoded)."""
    out = []
    for path in paths:
        try:
            out.append(audio_info(path))
        except DataError:
            continue
    return out


def durations(paths: Sequence[Path]) -> list[float]:
    """Seconds of each readable file, from its header."""
    return [info.seconds for info in headers(paths)]
