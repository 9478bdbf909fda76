"""Predicting on video, webcams and streams, written once for every image task.

A source (a video file, a folder of frames, webcam:N, an rtsp:// or http:// URL) is decoded one frame at a time
(`modalities/image/video.py`); the task says how to predict one frame, how to draw its result on it and what of it
goes in the per-frame table (`Task.frame`, `Task.draw_frame`, `Task.frame_record`). `stream` is the generator under
both `model.stream(source)` and `deepfit predict RUN video.mp4`, which also writes the annotated video and a
per-frame CSV and JSON Lines file as it goes: nothing is kept per frame, so memory stays flat however long the
stream, and a stream that breaks off or a Ctrl-C leaves complete files of what was seen.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepfit.errors import ConfigError
from deepfit.log import logger
from deepfit.modalities.image.video import VideoWriter, is_video_source, open_frames


@dataclass
class FrameResult:
    index: int  # the frame's index in the source
    time: float  # seconds from the start of the source
    image: np.ndarray  # (H, W, 3) uint8 RGB, the frame as decoded
    result: Any  # what the task's predictor gives for one image (a Prediction, Detections, a class-index mask)


@dataclass
class WindowResult:
    index: int  # the window's number in the sound
    time: float  # seconds from the start of the sound to the window's start
    seconds: float  # the window's length
    result: Any  # the sound classifier's Prediction for the window


def stream(task: Any, predictor: Any, source: str | Path, *, every: int = 1, max_fps: float | None = None,
           max_frames: int | None = None, options: dict[str, Any] | None = None) -> Iterator[FrameResult | WindowResult]:
    """Per-frame results of a source, as the frames arrive (see the module's docstring); for a sound classifier,
    per-window results of a microphone ("mic"), a stream URL or any file's sound, windows every `hop` seconds."""
    check_takes_video(task, predictor, max_frames)
    if modality_of(task, predictor) == "sound":
        yield from sound_windows(predictor, source, max_frames=max_frames, **(options or {}))
        return
    with open_frames(source, every=every, max_fps=max_fps) as frames:
        yield from _results(task, predictor, frames, max_frames, options)


def modality_of(task: Any, predictor: Any) -> str:
    """What the predictor takes: a classifier says (image, sound or text); other tasks' predictors take their task's."""
    return getattr(predictor, "modality", task.modality)


def check_takes_video(task: Any, predictor: Any, max_frames: int | None) -> None:
    if modality_of(task, predictor) not in ("image", "sound"):
        raise ConfigError(f"video, webcams and streams are for image and sound models; this {task.name} run takes "
                          f"{modality_of(task, predictor)}")
    if max_frames is not None and max_frames < 1:
        raise ConfigError(f"--max-frames must be at least 1, not {max_frames}")


def sound_windows(predictor: Any, source: str | Path, *, max_frames: int | None = None, top_k: int = 3,
                  hop: float | None = None, text_column: list[str] | None = None,
                  encoding: str | None = None) -> Iterator[WindowResult]:
    """Each window of the model's clip length, every `hop` seconds (default half a clip), classified as it completes."""
    from deepfit.modalities.sound.stream import open_audio, sliding_windows
    from deepfit.tasks.classify.predict import to_prediction

    if text_column or encoding:
        raise ConfigError("--text-column and --encoding are for text classifiers")
    spec = predictor.spec
    step = max(1, round((hop or spec.samples / spec.sample_rate / 2) * spec.sample_rate))
    pieces = open_audio(source, spec.sample_rate, spec.channels)
    for n, (start, window) in enumerate(sliding_windows(pieces, spec.samples, step, spec.channels)):
        if max_frames is not None and n >= max_frames:
            break
        probs = predictor.logits(torch.from_numpy(np.ascontiguousarray(window))[None]).softmax(1)[0].numpy()
        yield WindowResult(n, start / spec.sample_rate, spec.samples / spec.sample_rate,
                           to_prediction(predictor.classes, str(source), probs, top_k))


def _results(task: Any, predictor: Any, frames: Iterator[Any], max_frames: int | None,
             options: dict[str, Any] | None) -> Iterator[FrameResult]:
    for n, frame in enumerate(frames):
        if max_frames is not None and n >= max_frames:
            break
        yield FrameResult(frame.index, frame.time, frame.image, task.frame(predictor, frame.image, **(options or {})))


def stem_of(source: str | Path) -> str:
    """A file name for a source's outputs: the video's or folder's name, webcam0, mic, or the stream's host."""
    text = str(source)
    if text.startswith(("webcam", "mic")):
        kind, _, device = text.partition(":")
        return kind + re.sub(r"[^\w.-]", "_", device or ("0" if kind == "webcam" else ""))
    if "://" in text:
        host = text.split("://", 1)[1].rsplit("@", 1)[-1].split("/", 1)[0]
        return "stream-" + re.sub(r"[^\w.-]", "_", host)
    return Path(text).stem or Path(text).name


def predict_video(task: Any, predictor: Any, sources: list[str | Path], output: Path, *, every: int = 1,
                  max_fps: float | None = None, max_frames: int | None = None, options: dict[str, Any] | None = None) -> list[str]:
    """For each source: STEM.mp4 (the frames drawn with their results), STEM.csv and STEM.jsonl (a row per predicted
    frame) in `output`. Returns a line per source for the CLI."""
    check_takes_video(task, predictor, max_frames)
    targets = {str(s): [output / f"{stem_of(s)}{suffix}" for suffix in (".mp4", ".csv", ".jsonl")] for s in sources}
    names = [t for paths in targets.values() for t in paths]
    clash = next((t for t in names if t.exists()), None) or next((t for t in names if names.count(t) > 1), None)
    if clash is not None:
        raise ConfigError(f"{clash} exists or would be written twice: deepfit never overwrites a file; pass another --output")
    lines = []
    for source in sources:
        video, table, jsonl = targets[str(source)]
        if modality_of(task, predictor) == "sound":
            lines.append(_sound_source(task, predictor, source, table, jsonl, max_frames, options))
            continue
        lines.append(_one_source(task, predictor, source, video, table, jsonl, every, max_fps, max_frames, options))
    return lines


class Tables:
    """The per-frame (or per-window) CSV and JSON Lines files, a record at a time; made at the first record, so a source
    that gives none leaves no file. The CSV's columns are the first record's keys, its lists and dicts JSON."""

    def __init__(self, table: Path, jsonl: Path) -> None:
        self.paths, self.files, self.rows, self.count = (table, jsonl), None, None, 0

    def write(self, record: dict[str, Any]) -> None:
        if self.files is None:
            self.paths[0].parent.mkdir(parents=True, exist_ok=True)
            self.files = [open(p, "w", newline="", encoding="utf-8") for p in self.paths]  # noqa: SIM115 - closed by close()
            self.rows = csv.DictWriter(self.files[0], fieldnames=list(record), lineterminator="\n")
            self.rows.writeheader()
        self.rows.writerow({k: json.dumps(v) if isinstance(v, list | dict) else v for k, v in record.items()})
        self.files[1].write(json.dumps(record) + "\n")
        self.count += 1

    def __enter__(self) -> Tables:
        return self

    def __exit__(self, *exc: object) -> None:
        for f in self.files or []:
            f.close()


def _one_source(task: Any, predictor: Any, source: str | Path, video: Path, table: Path, jsonl: Path, every: int,
                max_fps: float | None, max_frames: int | None, options: dict[str, Any] | None) -> str:
    stopped = ""
    with open_frames(source, every=every, max_fps=max_fps) as frames:  # a source that cannot be read: before any file
        # the annotated video plays in real time: the source's rate, over the frames skipped
        rate = frames.fps / every if not max_fps else min(frames.fps / every, max_fps)
        with VideoWriter(video, rate) as writer, Tables(table, jsonl) as tables:
            try:
                for item in _results(task, predictor, frames, max_frames, options):
                    tables.write({"frame": item.index, "time": round(item.time, 3), **task.frame_record(predictor, item.result)})
                    writer.write(task.draw_frame(predictor, item.image, item.result))
            except KeyboardInterrupt:  # a webcam or stream runs until stopped: what was seen is kept, complete
                stopped = " (stopped by Ctrl-C)"
        ended = " (the source broke off: what came before is kept)" if frames.ended_early else ""
    logger.info(f"{source}: {tables.count} frames predicted{stopped}{ended}")
    return f"{source}: {tables.count} frames{stopped}{ended}; {video.name}, {table.name} and {jsonl.name} in {video.parent}"


def _sound_source(task: Any, predictor: Any, source: str | Path, table: Path, jsonl: Path, max_frames: int | None,
                  options: dict[str, Any] | None) -> str:
    stopped = ""
    with Tables(table, jsonl) as tables:
        try:
            for item in stream(task, predictor, source, max_frames=max_frames, options=options):
                tables.write({"window": item.index, "start": round(item.time, 3), "end": round(item.time + item.seconds, 3),
                              **task.frame_record(predictor, item.result)})
        except KeyboardInterrupt:
            stopped = " (stopped by Ctrl-C)"
    return f"{source}: {tables.count} windows{stopped}; {table.name} and {jsonl.name} in {table.parent}"


def video_inputs(paths: list[str], sources: list[str] | None) -> tuple[list[str], list[str]]:
    """(video and stream sources, other inputs) among the paths of `deepfit predict` and its --source values."""
    from deepfit.modalities.sound.stream import is_sound_stream

    videos = [str(p) for p in paths if is_video_source(p) or is_sound_stream(p)]
    return [*videos, *(sources or [])], [p for p in paths if str(p) not in videos]
