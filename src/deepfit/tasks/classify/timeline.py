"""Long recordings labelled in sliding windows: per-window probabilities, their CSV, and a timeline picture.

A recording longer than the model's clip is read in pieces (modalities/sound/io.py `read_in_pieces`), so memory stays
that of a few windows however long the file; windows of the clip's length start every `hop` seconds, the last one
ending at the recording's end, and each is classified as a clip would be. The recording's own label is the class
with the highest mean probability over its windows.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from deepfit.fileio import atomic_write_text
from deepfit.modalities.sound.io import read_in_pieces
from deepfit.modalities.sound.stream import sliding_windows
from deepfit.report.drawing import class_color
from deepfit.report.plots import light_grid, save_figure

PIECE_SECONDS = 30.0  # how much of a recording is read at once


@dataclass
class Timeline:
    """The windows of one recording: (N,) start times in seconds and (N, classes) probabilities."""

    source: Path
    starts: np.ndarray
    probs: np.ndarray
    window_seconds: float

    @property
    def mean(self) -> np.ndarray:
        return self.probs.mean(0)


def windows(path: Path, sample_rate: int, samples: int, hop: int, channels: int) -> Iterator[tuple[int, np.ndarray]]:
    """(first sample, (C, samples) window) of a long recording, one every `hop` samples, the last ending at its end."""
    pieces = read_in_pieces(path, sample_rate, max(PIECE_SECONDS, 2 * samples / sample_rate), channels=channels)
    return sliding_windows(pieces, samples, hop, channels)


def label_recording(path: Path, classify: Callable[[torch.Tensor], np.ndarray], sample_rate: int, samples: int,
                    hop_seconds: float, channels: int = 1, batch_size: int = 64) -> Timeline:
    """Classify every window of a recording; `classify` takes (B, C, T) float windows and returns (B, classes) probabilities."""
    hop = max(1, round(hop_seconds * sample_rate))
    starts, probs, batch = [], [], []
    for start, window in windows(path, sample_rate, samples, hop, channels):
        starts.append(start / sample_rate)
        batch.append(torch.from_numpy(np.ascontiguousarray(window)))
        if len(batch) == batch_size:
            probs.append(classify(torch.stack(batch)))
            batch = []
    if batch:
        probs.append(classify(torch.stack(batch)))
    return Timeline(path, np.array(starts), np.concatenate(probs), samples / sample_rate)


def write_windows_csv(timelines: Sequence[Timeline], classes: Sequence[str], path: Path) -> Path:
    """One row per window: source, start and end in seconds, the top class, its probability, every class's."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["source", "start_s", "end_s", "label", "probability", *[f"p_{c}" for c in classes]])
    for t in timelines:
        for start, row in zip(t.starts, t.probs, strict=True):
            top = int(row.argmax())
            writer.writerow([t.source, f"{start:.3f}", f"{start + t.window_seconds:.3f}", classes[top], f"{row[top]:.6f}",
                             *[f"{v:.6f}" for v in row]])
    return atomic_write_text(path, out.getvalue())


def plot_timeline(timeline: Timeline, classes: Sequence[str], path: Path, shown: int = 6) -> Path:
    """Each class's probability over the recording (the `shown` most probable on average), one line each."""
    fig = Figure(figsize=(9, 3.2))
    ax = fig.add_subplot()
    order = np.argsort(-timeline.mean)[:shown]
    centres = timeline.starts + timeline.window_seconds / 2
    for k in order:
        ax.plot(centres, timeline.probs[:, k], label=classes[k], color=tuple(c / 255 for c in class_color(int(k))), linewidth=1.6)
    ax.set(xlabel="time (s), window centres", ylabel="probability", ylim=(0, 1.02), title=timeline.source.name)
    ax.legend(loc="upper right", fontsize=8, frameon=False)
    light_grid(ax)
    fig.tight_layout()
    return save_figure(fig, path, "timeline")
