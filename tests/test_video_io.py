"""Video input and output (modalities/image/video.py): files, folders of frames, cameras and URLs read as frames,
frames written as video files. Everything is generated here: no network, no camera."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepfit.errors import ConfigError, DataError
from deepfit.modalities.image.video import (
    VideoWriter,
    is_video_source,
    open_frames,
    write_test_video,
)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "deepfit"]


@pytest.mark.parametrize("suffix", [".mp4", ".avi", ".mkv"])
def test_written_video_reads_back(tmp_path: Path, suffix: str) -> None:
    path = write_test_video(tmp_path / f"square{suffix}", 30)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # the temporary .part file was renamed
    with open_frames(path) as source:
        assert source.name == str(path) and source.size == (64, 48) and source.fps == pytest.approx(10.0)
        frames = list(source)
    assert [f.index for f in frames] == list(range(30))
    assert all(f.image.shape == (48, 64, 3) and f.image.dtype == np.uint8 for f in frames)
    times = [f.time for f in frames]
    assert times[0] == 0.0 and all(b > a for a, b in zip(times[:-1], times[1:], strict=True))
    assert times[-1] == pytest.approx(2.9, abs=0.01)
    assert source.frames_read == 30 and not source.ended_early
    assert not np.array_equal(frames[0].image, frames[5].image)  # the square moved
    assert frames[0].image.max() > 150 and np.median(frames[0].image) < 60  # a bright square on a dark background


def test_every_and_max_fps_pick_frames_by_index_and_source_time(tmp_path: Path) -> None:
    path = write_test_video(tmp_path / "v.mp4", 30)  # 10 fps: frame i is at i / 10 s
    assert [f.index for f in open_frames(path, every=3)] == list(range(0, 30, 3))
    assert [f.index for f in open_frames(path, max_fps=2.5)] == list(range(0, 30, 4))  # >= 0.4 s apart
    # every=3 offers 0, 0.3, 0.6, 0.9, 1.2 s...; max_fps then keeps those >= 0.4 s after the last one kept.
    assert [f.index for f in open_frames(path, every=3, max_fps=2.5)] == [0, 6, 12, 18, 24]
    source = open_frames(path, every=10)
    assert [f.time for f in source] == pytest.approx([0.0, 1.0, 2.0], abs=0.01)
    assert source.frames_read == 30  # skipped frames are decoded too
    for bad in ({"every": 0}, {"every": 1.5}, {"max_fps": 0}, {"max_fps": -1.0}):
        with pytest.raises(ConfigError):
            open_frames(path, **bad)  # type: ignore[arg-type]


def test_a_folder_of_frames_in_natural_order_skips_an_unreadable_image(tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    for i in range(12):
        Image.new("RGB", (20, 10), (i * 20, 0, 0)).save(tmp_path / f"frame{i}.png")
    (tmp_path / "frame4.png").write_bytes(b"not a png at all")
    (tmp_path / "notes.txt").write_text("not a frame")
    with caplog.at_level(logging.WARNING, logger="deepfit"), open_frames(tmp_path, fps=5) as source:
        frames = list(source)
    assert source.fps == 5 and source.name == str(tmp_path)
    assert [f.index for f in frames] == [0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11]  # frame10 after frame9, frame4 skipped
    assert [int(f.image[0, 0, 0]) for f in frames] == [f.index * 20 for f in frames]
    assert [f.time for f in frames] == pytest.approx([f.index / 5 for f in frames])
    assert frames[0].image.shape == (10, 20, 3) and frames[0].image.dtype == np.uint8
    assert len(warnings_of(caplog)) == 1 and "frame4.png" in warnings_of(caplog)[0]
    assert [f.index for f in open_frames(tmp_path, every=5)] == [0, 5, 10]


def test_sources_that_cannot_be_opened_fail_at_open(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="video not found"):
        open_frames(tmp_path / "missing.mp4")
    bad = tmp_path / "bad.mp4"
    bad.write_text("this is text, not a video\n" * 50)
    with pytest.raises(DataError, match="not a video PyAV can decode") as info:
        open_frames(bad)
    assert str(bad) in str(info.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files"):
        open_frames(tmp_path / "empty")


@pytest.mark.parametrize("suffix", [".mkv", ".avi"])
def test_a_truncated_video_ends_early_with_one_warning(tmp_path: Path, suffix: str,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    path = write_test_video(tmp_path / f"whole{suffix}", 60)
    cut = tmp_path / f"cut{suffix}"
    data = path.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.6)])
    # These formats decode progressively and simply end where the bytes do; the header tells the file was longer.
    with caplog.at_level(logging.WARNING, logger="deepfit"):
        source = open_frames(cut)
        frames = list(source)
    assert 0 < len(frames) < 60 and source.frames_read == len(frames) and source.ended_early
    assert len(warnings_of(caplog)) == 1 and str(cut) in warnings_of(caplog)[0]


def test_a_decode_error_mid_way_stops_cleanly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_test_video(tmp_path / "whole.mp4", 60)
    data = bytearray(path.read_bytes())
    start, end = int(len(data) * 0.3), int(len(data) * 0.4)  # frame data: the mp4 index is at the end of the file
    data[start:end] = bytes((k * 37 + 11) % 256 for k in range(end - start))
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="deepfit"):
        source = open_frames(broken)
        frames = list(source)  # must not raise
    assert 0 < len(frames) < 60 and source.ended_early
    assert len(warnings_of(caplog)) == 1 and "broken.mp4" in warnings_of(caplog)[0]


def test_breaking_out_early_reads_no_further_and_closes(tmp_path: Path) -> None:
    source = open_frames(write_test_video(tmp_path / "v.mp4", 30))
    for frame in source:
        if frame.index == 2:
            break
    assert source.frames_read < 30
    assert source._closed and source._container is None  # the generator's finally ran when the loop let it go
    with pytest.raises(RuntimeError):
        iter(source)


def test_realtime_paces_a_file_to_its_clock(tmp_path: Path) -> None:
    path = write_test_video(tmp_path / "v.mp4", 6)  # 0.5 s at 10 fps
    start = time.monotonic()
    assert len(list(open_frames(path, realtime=True))) == 6
    assert time.monotonic() - start >= 0.45


@pytest.mark.skipif(not sys.platform.startswith("linux") or Path("/dev/video7").exists(), reason="needs no video7")
def test_a_missing_camera_is_named() -> None:
    with pytest.raises(DataError, match="not found") as info:
        open_frames("webcam:7")
    assert "webcam:7" in str(info.value) and "/dev/video7" in str(info.value)


def test_a_url_that_refuses_fails_fast_without_its_password() -> None:
    start = time.monotonic()
    with pytest.raises(DataError) as info:
        open_frames("rtsp://admin:secret@127.0.0.1:9/stream")  # port 9 (discard) is closed here
    assert time.monotonic() - start < 15
    assert "rtsp://admin:***@127.0.0.1:9/stream" in str(info.value) and "secret" not in str(info.value)


def test_is_video_source() -> None:
    for yes in ("clip.MP4", Path("a/b.mkv"), "webcam", "webcam:1", "rtsp://cam/1", "https://x.org/v", "udp://@:1234"):
        assert is_video_source(yes), yes
    for no in ("photo.jpg", "folder", "webcamera", "ftp://x/y.txt", Path("notes.txt")):
        assert not is_video_source(no), no


def test_writer_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "out.mp4"
    path.write_bytes(b"precious")
    with pytest.raises(ConfigError, match="never overwrites"):
        VideoWriter(path, 10)
    assert path.read_bytes() == b"precious" and sorted(tmp_path.iterdir()) == [path]
    with VideoWriter(path, 10, overwrite=True) as writer:
        writer.write(np.zeros((16, 16, 3), np.uint8))
    assert path.read_bytes() != b"precious" and len(list(open_frames(path))) == 1


def test_writer_closed_after_no_frame_creates_nothing(tmp_path: Path) -> None:
    writer = VideoWriter(tmp_path / "sub" / "none.mp4", 10)
    assert writer.close() == tmp_path / "sub" / "none.mp4" and writer.close() == writer.path  # idempotent
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_writer_pads_odd_sizes_resizes_later_frames_and_keeps_fractional_fps(tmp_path: Path) -> None:
    path = tmp_path / "odd.mp4"
    with VideoWriter(path, 29.97) as writer:
        for i in range(5):
            writer.write(np.full((47, 63, 3), 40 * i, np.uint8))
        writer.write(np.zeros((20, 30, 3), np.uint8))  # another size: resized to 63x47 (then padded)
        with pytest.raises(DataError, match="uint8"):
            writer.write(np.zeros((47, 63), np.float32))
    assert writer.frames_written == 6
    source = open_frames(path)
    frames = list(source)
    assert source.size == (64, 48) and {f.image.shape for f in frames} == {(48, 64, 3)}  # padded to even sides
    assert source.fps == pytest.approx(29.97, abs=0.01) and len(frames) == 6


def test_writer_closes_a_playable_file_on_an_exception(tmp_path: Path) -> None:
    path = tmp_path / "crash.mkv"
    with pytest.raises(KeyError), VideoWriter(path, 10) as writer:
        for _ in range(4):
            writer.write(np.full((32, 32, 3), 200, np.uint8))
        raise KeyError("boom")
    assert [len(list(open_frames(path)))] == [4] and sorted(tmp_path.iterdir()) == [path]


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmRSS from /proc (Linux)")
def test_memory_stays_flat_over_a_long_video(tmp_path: Path) -> None:
    path = write_test_video(tmp_path / "long.mp4", 2000, size=(320, 240), fps=25)
    source = open_frames(path)
    peak, before = 0.0, 0.0
    for frame in source:
        if frame.index == 100:  # after decoder threads and buffers have settled
            before = rss_mb()
        elif frame.index % 100 == 0:
            peak = max(peak, rss_mb())
    assert source.frames_read == 2000 and not source.ended_early
    assert peak - before < 50, f"resident memory grew by {peak - before:.0f} MB over 2,000 frames"
