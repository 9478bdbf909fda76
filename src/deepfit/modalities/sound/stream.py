"""Sound as it arrives: a microphone, a stream URL, or the sound track of any file FFmpeg reads, decoded with PyAV
(the library deepfit reads video with) into pieces at the model's rate, and cut into sliding windows.

soundfile (modalities/sound/io.py) reads sound files; it cannot listen to a device or a network stream, nor read the
sound of a video, which FFmpeg (inside PyAV's wheel) does. PyAV's resampler converts rate and channels on the way.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from deepfit.errors import DataError
from deepfit.log import logger

_TIMEOUT_S = 10.0
_URL_SCHEMES = ("rtsp", "rtmp", "http", "https", "udp", "tcp", "srt")


def is_sound_stream(source: str | Path) -> bool:
    """'mic' / 'mic:DEVICE', or a stream URL."""
    text = str(source)
    return isinstance(source, str) and (text == "mic" or text.startswith("mic:")
                                        or text.partition("://")[0].lower() in _URL_SCHEMES and "://" in text)


def _device(source: str) -> tuple[str, str | None]:
    """(what av.open opens, its input format) of a source; a microphone through the platform's capture API."""
    if not (source == "mic" or source.startswith("mic:")):
        return source, None
    name = source.partition(":")[2]
    if sys.platform == "darwin":
        return f":{name or '0'}", "avfoundation"
    if sys.platform == "win32":
        return f"audio={name}", "dshow"
    return name or "default", "alsa"  # PyAV's wheel reads ALSA devices (PulseAudio and PipeWire serve them too)


def open_audio(source: str | Path, sample_rate: int, channels: int = 1) -> Iterator[np.ndarray]:
    """Pieces (C, T) float32 at `sample_rate` of a source, as they are decoded. Opened now: a source that cannot be
    opened, or has no sound, is a DataError here, not at the first piece; one that breaks off ends the pieces with a
    warning."""
    import av

    file, fmt = _device(str(source))
    try:
        with _quiet_stderr(fmt is not None):
            container = av.open(file, format=fmt, timeout=_TIMEOUT_S)
    except (av.FFmpegError, OSError, ValueError) as e:  # ValueError: this FFmpeg lacks the capture format
        what = "microphone" if fmt else "sound source"
        raise DataError(f"{what} {source} could not be opened ({getattr(e, 'strerror', None) or e}): check that it "
                        f"exists and that no other program holds it") from None
    if not container.streams.audio:
        container.close()
        raise DataError(f"{source} has no sound track: give a sound file, a stream with sound, or mic")
    return _pieces(container, str(source), sample_rate, channels)


@contextlib.contextmanager
def _quiet_stderr(quiet: bool) -> Iterator[None]:
    """The capture library (ALSA) prints its own lines on the process's stderr when a device is missing: hidden, as
    deepfit's one-line error says what happened."""
    if not quiet:
        yield
        return
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _pieces(container: Any, name: str, sample_rate: int, channels: int) -> Iterator[np.ndarray]:
    import av

    resampler = av.AudioResampler(format="fltp", layout="mono" if channels == 1 else "stereo", rate=sample_rate)
    try:
        for frame in container.decode(container.streams.audio[0]):
            for out in resampler.resample(frame):
                yield out.to_ndarray().astype(np.float32, copy=False)  # (C, n)
        for out in resampler.resample(None):  # what the resampler still holds
            yield out.to_ndarray().astype(np.float32, copy=False)
    except (av.FFmpegError, OSError) as e:
        logger.warning(f"{name} broke off ({getattr(e, 'strerror', None) or e}): the windows before it are kept")
    finally:
        container.close()


def sliding_windows(pieces: Iterator[np.ndarray], samples: int, hop: int, channels: int) -> Iterator[tuple[int, np.ndarray]]:
    """(first sample, (C, samples) window) of consecutive pieces, one every `hop` samples, the last ending at the end of
    the sound (a sound shorter than one window: padded with silence). Memory stays that of about one window."""
    buffer = np.zeros((channels, 0), np.float32)
    offset = 0  # the sound's sample at buffer[:, 0]
    next_start, last_start = 0, None
    for piece in pieces:
        buffer = np.concatenate([buffer, piece], axis=1)
        while next_start + samples <= offset + buffer.shape[1]:
            at = next_start - offset
            yield next_start, buffer[:, at : at + samples]
            last_start, next_start = next_start, next_start + hop
        drop = max(0, min(next_start - offset, buffer.shape[1] - samples))  # keep the last window's worth for the tail
        buffer, offset = buffer[:, drop:], offset + drop
    end = offset + buffer.shape[1]
    if last_start is None or last_start + samples < end:  # the tail (or a sound shorter than one window)
        start = max(0, end - samples)
        tail = buffer[:, start - offset :]
        if tail.shape[1] < samples:
            tail = np.pad(tail, [(0, 0), (0, samples - tail.shape[1])])
        yield start, tail
