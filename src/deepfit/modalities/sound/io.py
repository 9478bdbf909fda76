"""Reading sound files: decode (libsndfile, through soundfile), mix or keep channels, resample (soxr), cut or pad.

soundfile bundles libsndfile with its codecs (WAV of any integer or float width, FLAC, OGG/Vorbis/Opus, MP3), so
nothing depends on a system library or on torchaudio, whose I/O is being retired and whose releases pin torch.
soxr is the SoX resampler, a proper band-limited one: a naive interpolation would fold frequencies above the new
Nyquist limit back into the band the model hears.

Every failure is a `DataError` that names the file and says what to do; nothing here ever writes a file.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import soxr

from deepfit.errors import DataError
from deepfit.log import logger

SOUND_EXTENSIONS: frozenset[str] = frozenset(
    {".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc", ".au", ".w64", ".rf64", ".caf"}
)
# Below this peak level (about -80 dBFS) a clip holds no sound worth learning from.
SILENCE_PEAK = 1e-4


@dataclass(frozen=True)
class AudioInfo:
    """What a sound file's header says, read without decoding it."""

    path: Path
    sample_rate: int
    channels: int
    frames: int

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


def _unreadable(path: Path, error: Exception) -> DataError:
    if path.exists() and path.stat().st_size == 0:
        return DataError(f"{path}: the file is empty (0 bytes); remove it or replace it with the recording")
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    return DataError(f"{path}: not a readable sound file ({reason}); check that it is WAV, FLAC, OGG or MP3 and not "
                     "truncated, or remove it")


def audio_info(path: str | Path) -> AudioInfo:
    """The sample rate, channel count and length of a sound file, from its header."""
    path = Path(path)
    try:
        info = soundfile.info(str(path))
    except (RuntimeError, soundfile.LibsndfileError, OSError) as e:
        raise _unreadable(path, e) from None
    if info.frames <= 0 or info.samplerate <= 0:
        raise DataError(f"{path}: the file holds no samples; remove it or replace it with the recording")
    _warn_if_truncated(path)
    return AudioInfo(path, int(info.samplerate), int(info.channels), int(info.frames))


def _warn_if_truncated(path: Path) -> None:
    """A WAV cut short (an interrupted copy) still opens: libsndfile reads the samples that are there. Its RIFF
    header says how long it should be, so say what is missing."""
    with path.open("rb") as f:
        head = f.read(12)
    if len(head) == 12 and head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        declared, actual = int.from_bytes(head[4:8], "little") + 8, path.stat().st_size
        if declared > actual and declared != 0xFFFFFFFF + 8:  # 0xFFFFFFFF: a streamed WAV of unknown length
            logger.warning(f"{path}: the file is truncated ({actual} of the {declared} bytes its header declares); "
                           "using the part that is there, replace the file to use all of it")


def mix(wave: np.ndarray, channels: int | None, where: str) -> np.ndarray:
    """(T, C) float samples -> (T, C'): C' = `channels` (1: the mean of all channels, as a mono microphone would have
    heard them; more: a mono file repeated, or the file's own channels) or the file's own count when None. Checks
    the samples are finite; `where` names the source in errors."""
    if not np.isfinite(wave).all():
        raise DataError(f"{where}: the samples hold NaN or infinite values; re-export the recording")
    have = wave.shape[1]
    if channels == 1 and have > 1:
        return wave.mean(axis=1, keepdims=True)
    if channels is not None and channels != have:
        if have != 1:
            raise DataError(f"{where}: has {have} channels, and {channels} were asked for (--channels); use --channels 1 "
                            f"to mix them to mono, or --channels {have}")
        return np.repeat(wave, channels, axis=1)
    return wave


def convert(wave: np.ndarray, rate: int, sample_rate: int, channels: int | None, where: str) -> np.ndarray:
    """(T, C) float samples at `rate` -> (C', T') float32 at `sample_rate`, channels as `mix` makes them."""
    wave = mix(wave, channels, where)
    if rate != sample_rate:
        wave = soxr.resample(wave, rate, sample_rate, quality="HQ")
    return np.ascontiguousarray(wave.T, dtype=np.float32)  # (C, T)


def read_audio(path: str | Path, sample_rate: int, *, channels: int | None = 1, start: float = 0.0,
               seconds: float | None = None) -> np.ndarray:
    """The samples of a sound file (or of `seconds` of it from `start`), as (C, T) float32 in [-1, 1] at `sample_rate`."""
    path = Path(path)
    info = audio_info(path)
    first = int(round(start * info.sample_rate))
    count = -1 if seconds is None else max(1, int(round(seconds * info.sample_rate)))
    try:
        wave, rate = soundfile.read(str(path), dtype="float32", always_2d=True, start=first, frames=count)  # (T, C)
    except (RuntimeError, soundfile.LibsndfileError, OSError) as e:
        raise _unreadable(path, e) from None
    if len(wave) == 0:
        raise DataError(f"{path}: no samples at {start:g} s (the recording is {info.seconds:.2f} s long)")
    return convert(wave, rate, sample_rate, channels, str(path))


def read_in_pieces(path: str | Path, sample_rate: int, seconds: float, *, channels: int | None = 1) -> Iterator[np.ndarray]:
    """A long recording as consecutive pieces of about `seconds` (the last may be shorter), each (C, T) at
    `sample_rate`: memory stays that of one piece, however long the file. soxr's stream resampler keeps its filter
    state from piece to piece, so the joints are seamless."""
    path = Path(path)
    info = audio_info(path)
    frames = max(1, int(round(seconds * info.sample_rate)))
    stream = None
    try:
        for i, block in enumerate(soundfile.blocks(str(path), blocksize=frames, dtype="float32", always_2d=True)):
            block = mix(block, channels, f"{path} at {i * seconds:g} s")  # (T, C)
            if info.sample_rate != sample_rate:
                if stream is None:
                    stream = soxr.ResampleStream(info.sample_rate, sample_rate, block.shape[1], dtype="float32", quality="HQ")
                block = stream.resample_chunk(block, last=(i + 1) * frames >= info.frames)
            yield np.ascontiguousarray(block.T, dtype=np.float32)  # (C, T)
    except (RuntimeError, soundfile.LibsndfileError) as e:
        raise _unreadable(path, e) from None


def fit_length(wave: np.ndarray, length: int, offset: int | None = None) -> np.ndarray:
    """(C, T) -> (C, length), the clip in the middle: a longer clip is cut (from `offset`, by default so that its middle
    is kept), a shorter one padded with silence on both sides."""
    have = wave.shape[-1]
    if have > length:
        start = (have - length) // 2 if offset is None else min(max(0, offset), have - length)
        return wave[..., start : start + length]
    if have < length:
        left = (length - have) // 2
        return np.pad(wave, [(0, 0)] * (wave.ndim - 1) + [(left, length - have - left)])
    return wave


def is_silent(wave: np.ndarray) -> bool:
    return float(np.abs(wave).max(initial=0.0)) < SILENCE_PEAK
