"""Frames from video files, cameras, stream URLs and folders of images, and RGB frames written to video, with PyAV.

Frames flow through generators one at a time and none is kept, so memory stays flat however long the stream."""

from __future__ import annotations

import itertools
import math
import os
import sys
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image

from deepfit.data.catalog import natural_key
from deepfit.data.media import IMAGE_EXTENSIONS
from deepfit.errors import ConfigError, DataError
from deepfit.log import logger
from deepfit.modalities.image.store import open_rgb

VIDEO_SUFFIXES: frozenset[str] = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv",
                                            ".flv"})
_URL_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "srt")
_TIMEOUT_S = 10.0  # how long a camera or stream may take to open, or to send the next packet
_AV_ERRORS = (av.FFmpegError, OSError)  # PyAV's I/O errors are OSErrors too
_Raw = Generator[tuple[int, float, Callable[[], "np.ndarray | None"]], None, None]  # (index, time, decode)
_WRITE_CODECS = {".mp4": "libx264", ".m4v": "libx264", ".mov": "libx264", ".mkv": "libx264", ".avi": "mpeg4",
                 ".webm": "libvpx-vp9"}


def _camera(source: str | Path) -> str | None:
    """The device part of 'webcam:N' ('0' for plain 'webcam'); None for any other source."""
    ok = isinstance(source, str) and (source == "webcam" or source.startswith("webcam:"))
    return (str(source)[7:] or "0") if ok else None


def _is_url(source: str | Path) -> bool:  # strings only: Path("rtsp://host") has already folded the "//"
    return isinstance(source, str) and "://" in source and source.partition("://")[0].lower() in _URL_SCHEMES


def is_video_source(source: str | Path) -> bool:
    """True for a video file (by suffix), 'webcam:N' / 'webcam' (N=0), a URL (rtsp://, rtmp://, http(s)://, udp://,
    tcp://, srt://)."""
    return _camera(source) is not None or _is_url(source) or Path(source).suffix.lower() in VIDEO_SUFFIXES


def _redact(url: str) -> str:
    """The URL with its password, if any, replaced by *** (rtsp://user:***@host/...)."""
    scheme, sep, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    user, at, host = netloc.rpartition("@")
    return f"{scheme}{sep}{user.split(':')[0]}:***@{host}{slash}{path}" if at and ":" in user else url


def _reason(e: BaseException, url: str) -> str:
    if isinstance(e, av.error.ExitError):  # PyAV's `timeout` interrupted a read
        return f"no data for {_TIMEOUT_S:g} s"
    # strerror leaves out the file name PyAV appends, which for a URL would carry its password.
    return (getattr(e, "strerror", None) or str(e) or type(e).__name__).replace(url, _redact(url))[:200]


@dataclass
class Frame:
    index: int  # the frame's index in the source (0-based, counting skipped frames too)
    time: float  # seconds from the start of the source
    image: np.ndarray  # (H, W, 3) uint8 RGB


class FrameSource:
    """The frames of one source, decoded one at a time: iterate it once, in a `with` block or then close() it.
    `frames_read` counts frames decoded so far, those `every` / `max_fps` skip included; `size` is None for folders."""

    def __init__(self, name: str, fps: float, size: tuple[int, int] | None, pick: dict[str, Any],
                 container: Any = None) -> None:
        self.name, self.fps, self.size, self._container = name, fps, size, container
        self.frames_read, self.ended_early, self._started, self._closed = 0, False, False, False
        self._every, self._max_fps, self._pace = pick["every"], pick["max_fps"], pick["pace"]
        self._raw: _Raw = (x for x in ())

    def __iter__(self) -> Iterator[Frame]:
        if self._started:
            raise RuntimeError(f"{self.name} was already read: call open_frames() again to read it again")
        self._started = True
        return self._frames()

    def _frames(self) -> Iterator[Frame]:
        last, clock, gap = -math.inf, None, 1.0 / self._max_fps if self._max_fps else 0.0
        try:
            for index, t, load in self._raw:
                # The epsilon keeps a frame exactly 1/max_fps after the last one despite rounding in pts * time_base.
                if index % self._every or (gap and t < last + gap - 1e-6) or (image := load()) is None:
                    continue
                last = t
                if self._pace:  # realtime file or folder: no faster than its own clock, as a camera would give it
                    clock = time.monotonic() - t if clock is None else clock
                    time.sleep(max(0.0, clock + t - time.monotonic()))
                yield Frame(index, t, image)
        finally:  # also when the consumer breaks out early and the generator is closed
            self.close()

    def _video(self, decoded: Iterator[Any], expected: int) -> _Raw:
        origin = None
        while not self._closed:
            try:
                frame = next(decoded)
            except StopIteration:  # a truncated file ends without an error: its header tells how long it should be
                if self.frames_read < 0.95 * expected - 2:
                    self._broke(f"{expected} frames announced: truncated?")
                return
            except _AV_ERRORS as e:
                return self._broke(_reason(e, self.name))
            index, self.frames_read = self.frames_read, self.frames_read + 1
            t = frame.time if frame.time is not None else index / self.fps
            origin = t if origin is None else origin  # streams rarely start at 0: time counts from the first frame
            yield index, max(0.0, t - origin), lambda f=frame: f.to_ndarray(format="rgb24")

    def _broke(self, reason: str) -> None:
        self.ended_early = True
        logger.warning(f"{self.name} broke off after {self.frames_read} frames ({reason}): the frames before were used")

    def _image(self, path: Path) -> np.ndarray | None:
        try:
            image = np.asarray(open_rgb(path))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            return logger.warning(f"{path} cannot be read as an image ({type(e).__name__}: {str(e)[:120]}): skipped")
        self.frames_read += 1
        return image

    def close(self) -> None:
        self._closed, container, self._container = True, self._container, None
        self._raw.close()  # lets go of the decoder before its container closes
        if container is not None:
            container.close()

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_frames(source: str | Path, *, every: int = 1, max_fps: float | None = None, fps: float = 25.0,
                realtime: bool | None = None) -> FrameSource:
    """Frames of a video file, a folder of images (natural order, `fps` apart), 'webcam:N' or a stream URL.

    `every=N` keeps frames 0, N, 2N...; `max_fps` at most that many per second of source time. `realtime=None` reads
    files and folders as fast as it can and live sources with low-latency settings; True also paces files and
    folders to their own clock; False turns the low-latency settings off. Opening errors are raised here."""
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ConfigError(f"every={every!r} must be a whole number >= 1 (1 keeps every frame)")
    if not (max_fps is None or max_fps > 0) or not fps > 0:
        raise ConfigError(f"max_fps={max_fps!r} and fps={fps!r} must be above 0 (max_fps None keeps every frame)")
    device, url = _camera(source), _is_url(source)
    pick = {"every": every, "max_fps": max_fps, "pace": bool(realtime) and not (device or url)}
    fast = {"fflags": "nobuffer"} if (device or url) and realtime is not False else {}  # less latency
    if device is not None:
        return _open_camera(device, fps, fast, pick)
    if url:
        # rw_timeout (µs) bounds each read of any protocol; rtsp, a demuxer, has its own socket `timeout` (µs too;
        # over TCP, as UDP gets lost through NAT). Not rtmp's `timeout`: it would make it listen for a publisher.
        opts = {"rw_timeout": str(int(_TIMEOUT_S * 1e6)), **fast}
        if str(source).lower().startswith("rtsp"):
            opts.update(rtsp_transport="tcp", timeout=str(int(_TIMEOUT_S * 1e6)))
        fail = f"{_redact(str(source))} could not be opened ({{}}): check the address, and that the stream is on"
        return _open_video(str(source), _redact(str(source)), fps, pick, fail, options=opts)
    path = Path(source)
    if path.is_dir():
        files = sorted((p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                        and not p.name.startswith(".")), key=lambda p: natural_key(p.name))
        if not files:
            raise DataError(f"{path} has no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}): give a folder of "
                            "frames, a video file, 'webcam:N' or a stream URL")
        frames = FrameSource(str(path), fps, None, pick)
        frames._raw = ((i, i / fps, lambda p=p: frames._image(p)) for i, p in enumerate(files))
        return frames
    if not path.exists():
        raise DataError(f"video not found: {path}")
    return _open_video(str(path), str(path), fps, pick,
                       f"{path} is not a video PyAV can decode ({{}}): give an .mp4/.avi/.mkv/... file")


def _open_camera(device: str, fps: float, fast: dict[str, str], pick: dict[str, Any]) -> FrameSource:
    """Best effort on macOS (avfoundation, by index) and Windows (dshow, by name: webcam:<name>)."""
    name, file, fmt = f"webcam:{device}", (f"/dev/video{device}" if device.isdigit() else device), "v4l2"
    if sys.platform in ("darwin", "win32"):
        file, fmt = (device, "avfoundation") if sys.platform == "darwin" else (f"video={device}", "dshow")
    elif not Path(file).exists():
        raise DataError(f"camera {name} not found ({file} does not exist): plug one in, or give a video file, "
                        "a folder of frames or a stream URL")
    fail = f"camera {name} ({file}) could not be opened: {{}}; is another program using it?"
    return _open_video(file, name, fps, pick, fail, format=fmt, options=fast)


def _open_video(file: str, name: str, fps: float, pick: dict[str, Any], fail: str, **av_args: Any) -> FrameSource:
    """Open `file` with PyAV and decode its first frame now, so that a source that cannot work fails here."""
    container = None
    try:
        container = av.open(file, timeout=_TIMEOUT_S, **av_args)
        stream = container.streams.video[0]  # IndexError: no video stream
        stream.thread_type = "AUTO"  # frame and slice threads: several times faster on large frames
        decoded = container.decode(stream)
        first = next(decoded)  # StopIteration: no frame
    except (*_AV_ERRORS, IndexError, StopIteration) as e:
        if container is not None:
            container.close()
        reason = {IndexError: "it has no video stream", StopIteration: "it has no frames"}.get(type(e))
        raise DataError(fail.format(reason or _reason(e, file))) from e
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    # Some streams report nonsense rates (0, or a 90 kHz clock): then the `fps` given stands in.
    rate_fps = float(rate) if rate and 0 < float(rate) <= 1000 else fps
    size = (stream.width, stream.height) if stream.width and stream.height else None
    frames = FrameSource(name, rate_fps, size, pick, container)
    expected = stream.frames or round((container.duration or 0) / 1e6 * rate_fps)
    frames._raw = frames._video(itertools.chain([first], decoded), expected)
    return frames


class VideoWriter:
    """Writes RGB frames to a video file: H.264 ('libx264', yuv420p) in .mp4/.mkv/.mov when the PyAV wheel has the
    encoder, else 'mpeg4'; .avi -> 'mpeg4'; .webm -> 'libvpx-vp9' if present else error.

    Frames go to a hidden `.NAME.partSUFFIX` beside `path`, renamed to `path` by close(), so that a crash never leaves
    a half-written file under the real name. Closed after no frame at all, it creates nothing."""

    def __init__(self, path: str | Path, fps: float, *, overwrite: bool = False) -> None:
        self.path, self.frames_written, suffix = Path(path), 0, Path(path).suffix.lower()
        if suffix not in _WRITE_CODECS or not fps > 0:
            raise ConfigError(f"cannot write {self.path} at fps={fps!r}: give fps above 0 and a file ending in "
                              f"{', '.join(sorted(_WRITE_CODECS))}")
        codec = _WRITE_CODECS[suffix]
        codec = "mpeg4" if codec == "libx264" and codec not in av.codecs_available else codec
        if codec not in av.codecs_available:
            raise ConfigError(f"this PyAV build cannot encode {suffix} files (no {codec}): write an .mp4 instead")
        if self.path.exists() and not overwrite:
            raise ConfigError(f"{self.path} exists: deepfit never overwrites a file; choose another --output")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # The real suffix stays last so that PyAV picks the muxer from it.
        self._tmp = self.path.with_name(f".{self.path.stem}.part{self.path.suffix}")
        self._codec, self._rate = codec, Fraction(fps).limit_denominator(1001)
        self._container: Any = None
        self._stream: Any = None
        self._size, self._closed, self._resized = (0, 0), False, False

    def write(self, image: np.ndarray) -> None:
        """Add one (H, W, 3) uint8 RGB frame. The first fixes the size (odd sides padded by one pixel, as yuv420p
        needs even ones); later frames of another size are resized to it."""
        if self._closed:
            raise RuntimeError(f"{self.path} is already closed")
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise DataError(f"cannot write a frame of shape {image.shape} and dtype {image.dtype} to {self.path}: "
                            "give (H, W, 3) uint8 RGB")
        h, w = image.shape[:2]
        if self._stream is None:
            self._start(w, h)
        elif (w, h) != self._size:
            if not self._resized:  # once: a stream that changes size once will usually go on doing so
                logger.warning(f"frames for {self.path} change size ({w}x{h} after {self._size}): resized to the first")
            self._resized = True
            image = np.asarray(Image.fromarray(image).resize(self._size, Image.Resampling.BILINEAR))
        pad = ((0, self._stream.height - self._size[1]), (0, self._stream.width - self._size[0]), (0, 0))
        image = np.pad(image, pad, mode="edge")  # odd sides: the edge once more, rather than a black line
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        frame.pts, frame.time_base = self.frames_written, 1 / self._rate
        self._container.mux(self._stream.encode(frame))
        self.frames_written += 1

    def _start(self, w: int, h: int) -> None:
        self._size, self._container = (w, h), av.open(str(self._tmp), "w")
        options = {"preset": "veryfast", "crf": "23"} if self._codec == "libx264" else {}  # keeps up with decoding
        self._stream = stream = self._container.add_stream(self._codec, rate=self._rate, options=options)
        stream.width, stream.height, stream.pix_fmt = w + w % 2, h + h % 2, "yuv420p"
        if self._codec == "mpeg4":  # its default 200 kb/s blurs anything larger than a thumbnail
            stream.bit_rate = max(1_000_000, int(w * h * float(self._rate) * 0.25))

    def close(self) -> Path:
        """Flush the encoder and move the video to `path`; idempotent. Returns `path`, not created after 0 frames."""
        if self._closed:
            return self.path
        self._closed = True
        try:
            if self._container is not None:
                with self._container:  # closed even when flushing fails
                    self._container.mux(self._stream.encode(None))
            if self.frames_written:
                os.replace(self._tmp, self.path)
        finally:
            self._tmp.unlink(missing_ok=True)  # still there only after an error, or after 0 frames
        return self.path

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()  # also on an exception, so that what was written stays a playable file


def write_test_video(path: str | Path, frames: int, size: tuple[int, int] = (64, 48), fps: float = 10.0, *,
                     pattern: str = "moving-square") -> Path:
    """A small synthetic video (a bright square moving over a dark background) — for tests and benchmarks, no camera
    needed."""
    if pattern != "moving-square":
        raise ConfigError(f"unknown test video pattern {pattern!r}: the one there is is 'moving-square'")
    (w, h), side = size, max(2, min(size) // 4)
    with VideoWriter(path, fps) as writer:
        for i in range(frames):
            image = np.full((h, w, 3), 24, np.uint8)
            x, y = (abs((k % (2 * s)) - s) for k, s in ((2 * i, max(1, w - side)), (i, max(1, h - side))))  # bounce
            image[y:y + side, x:x + side] = (240, 220, 60)
            writer.write(image)
    return Path(path)
