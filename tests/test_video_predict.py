"""Prediction on video, folders of frames and streams with a trained classifier (detectors and segmenters are run
on video beside the runs their own tests train): the annotated video, the per-frame tables, model.stream, flat
memory over 10,000 frames, and the mistakes a user can make."""

from __future__ import annotations

import csv
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import deepfit
from deepfit.cli import main
from deepfit.errors import DataError
from deepfit.modalities.image.video import open_frames, write_test_video


def _frames_in(video: Path) -> int:
    with open_frames(video) as frames:
        return sum(1 for _ in frames)


def test_a_video_gives_an_annotated_video_and_per_frame_tables(run_copy: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    clip = write_test_video(tmp_path / "clip.mp4", 30, (64, 48))
    out = tmp_path / "out"
    assert main(["predict", str(run_copy), str(clip), "--every", "3", "--output", str(out)]) == 0
    assert "clip.mp4: 10 frames" in capsys.readouterr().out
    rows = list(csv.DictReader((out / "clip.csv").open()))
    assert [int(r["frame"]) for r in rows] == list(range(0, 30, 3))
    assert {r["label"] for r in rows} <= {"2", "10", "ring"} and all(0 < float(r["probability"]) <= 1 for r in rows)
    records = [json.loads(line) for line in (out / "clip.jsonl").read_text().splitlines()]
    assert len(records) == 10 and records[1]["time"] == pytest.approx(0.3) and len(records[0]["top"]) == 3
    assert _frames_in(out / "clip.mp4") == 10
    with open_frames(out / "clip.mp4") as frames:
        first = next(iter(frames)).image
    assert first.shape == (48, 64, 3) and first[:4].std() > 0  # the label's band is drawn across the top
    before = (out / "clip.csv").read_bytes()
    assert main(["predict", str(run_copy), str(clip), "--output", str(out)]) == 2  # never overwritten
    assert "never overwrites" in capsys.readouterr().err and (out / "clip.csv").read_bytes() == before


def test_model_stream_yields_results_as_frames_arrive(run_copy: Path, tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(12):
        Image.fromarray(np.full((20, 24, 3), 20 * i, np.uint8)).save(folder / f"f{i}.png")
    clf = deepfit.load(run_copy)
    results = list(clf.stream(folder, every=2, max_frames=4, top_k=2))
    assert [r.index for r in results] == [0, 2, 4, 6] and results[1].time == pytest.approx(2 / 25)
    assert results[0].image.shape == (20, 24, 3) and len(results[0].result.top) == 2
    with pytest.raises(deepfit.errors.ConfigError, match="--conf is not an option"):
        next(clf.stream(folder, conf=0.5))


# slow: 30 s on 2 cores; test_video_io.py's long-video memory test stays in the default suite
@pytest.mark.slow
def test_memory_stays_flat_over_ten_thousand_frames(run_copy: Path, tmp_path: Path) -> None:
    status = Path("/proc/self/status")
    if not status.is_file():
        pytest.skip("reads resident memory from /proc")
    frames = 10_000
    long = write_test_video(tmp_path / "long.mp4", frames, (32, 24), fps=100)
    from deepfit.workflows.predict import predict_videos

    def rss_mb() -> float:
        line = next(line for line in status.read_text().splitlines() if line.startswith("VmRSS"))
        return int(line.split()[1]) / 1024

    predict_videos(run_copy, [write_test_video(tmp_path / "warm.mp4", 200, (32, 24))], tmp_path / "warm")
    base, peak, done = rss_mb(), [0.0], threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        lines = predict_videos(run_copy, [long], tmp_path / "out")
    finally:
        done.set()
        watcher.join()
    assert f"{frames} frames" in lines[0]
    assert sum(1 for _ in (tmp_path / "out" / "long.jsonl").open()) == frames
    assert peak[0] - base < 100, f"resident memory grew by {peak[0] - base:.0f} MB"


def test_a_stream_that_breaks_off_keeps_what_was_seen(run_copy: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    clip = write_test_video(tmp_path / "cut.mkv", 60, (64, 48))
    clip.write_bytes(clip.read_bytes()[: int(clip.stat().st_size * 0.6)])
    assert main(["predict", str(run_copy), str(clip), "--output", str(tmp_path / "out")]) == 0
    said = capsys.readouterr().out
    assert "broke off" in said
    kept = int(said.split(": ", 1)[1].split(" frames")[0])
    assert 0 < kept < 60 and _frames_in(tmp_path / "out" / "cut.mp4") == kept
    assert len((tmp_path / "out" / "cut.csv").read_text().splitlines()) == kept + 1


def test_bad_video_input_is_one_line_and_writes_nothing(run_copy: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    fake = tmp_path / "notes.mp4"
    fake.write_text("this is not a video\n")
    out = tmp_path / "out"
    assert main(["predict", str(run_copy), str(fake), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "notes.mp4 is not a video" in err and err.count("\n") == 1 and not out.exists()
    if not Path("/dev/video9").exists():
        assert main(["predict", str(run_copy), "--source", "webcam:9", "--output", str(out)]) == 2
        assert "camera webcam:9 not found" in capsys.readouterr().err and not out.exists()
    assert main(["predict", str(run_copy), str(tmp_path), "--every", "2"]) == 2
    assert "--every, --max-fps and --max-frames are for video" in capsys.readouterr().err
    with pytest.raises(DataError, match="video not found"):
        next(deepfit.load(run_copy).stream(tmp_path / "missing.mp4"))
