"""Sound clips in memory and their batch augmentation: centred clips, unreadable, silent and short files named, time
shifts inside the margins, gains and background noise at the asked signal-to-noise ratio, repeatable from the seed."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from deepfit.errors import DataError
from deepfit.modalities.base import BadFile, check_unreadable
from deepfit.modalities.sound.augment import SoundAugment, SoundBatchTransform, noise_bank
from deepfit.modalities.sound.store import (
    SoundStore,
    default_clip_seconds,
    durations,
)


def _write(path: Path, wave: np.ndarray, rate: int = 8000) -> Path:
    soundfile.write(path, wave, rate, subtype="PCM_16")
    return path


def test_clips_are_stored_centred_and_bad_silent_and_short_ones_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ramp = np.linspace(-0.5, 0.5, 1200, dtype=np.float32)
    paths = [_write(tmp_path / "long.wav", ramp), _write(tmp_path / "short.wav", ramp[:400]),
             _write(tmp_path / "silent.wav", np.zeros(1000, np.float32))]
    (tmp_path / "text.wav").write_text("not sound")
    paths.append(tmp_path / "text.wav")
    with caplog.at_level(logging.WARNING, logger="deepfit"):
        store, bad = SoundStore.load(paths, [0, 1, 2, 3], 8000, samples=800, margin=100, workers=2)
    assert [b.path.name for b in bad] == ["text.wav"] and "not a readable sound file" in bad[0].reason
    assert len(store) == 3 and store.clips.shape == (3, 1, 1000) and store.clips.dtype == torch.int16
    assert store.labels.tolist() == [0, 1, 2]
    long = store.clips[0, 0].float() / 32767
    assert torch.allclose(long, torch.from_numpy(ramp[100:1100]), atol=1e-4)  # the middle 1000 of 1200
    short = store.clips[1, 0]
    assert (short[:300] == 0).all() and (short[700:] == 0).all() and (short[300:700] != 0).any()  # padded both sides
    assert "1 clips are silent" in caplog.text and "silent.wav" in caplog.text
    assert "shorter than the clip length of 0.1 s" in caplog.text and "short.wav" in caplog.text
    images, labels, idx = next(store.batches(2, order=torch.tensor([2, 0])))
    assert images.shape == (2, 1, 1000) and labels.tolist() == [2, 0] and idx.tolist() == [2, 0]
    assert durations(paths) == pytest.approx([0.15, 0.05, 0.125])


def test_too_many_unreadable_files_stop_the_run_with_their_names() -> None:
    bad = [BadFile(Path(f"b{i}.wav"), "not a readable sound file") for i in range(2)]
    with pytest.raises(DataError, match=r"2 of 10 sound files \(20%\) cannot be read.*b0\.wav"):
        check_unreadable(bad, 10, "sound files")
    check_unreadable(bad[:1], 100, "sound files", "sound file")  # 1%: warned, not fatal


def test_default_clip_length_holds_nine_clips_in_ten() -> None:
    assert default_clip_seconds([0.3] * 5 + [0.74] * 90 + [2.0] * 5) == 0.8
    assert default_clip_seconds([0.1] * 10) == 0.5 and default_clip_seconds([60.0]) == 10.0 and default_clip_seconds([]) == 1.0


def test_evaluation_takes_the_middle_and_training_shifts_within_the_margins() -> None:
    clips = torch.arange(3 * 20, dtype=torch.int16).reshape(3, 1, 20) * 100  # (B, C, T + 2 * margin), margin 5
    evaluate = SoundBatchTransform(10, 5)
    assert torch.equal(evaluate(clips, None), clips[..., 5:15].float() / 32767)
    train = SoundBatchTransform(10, 5, SoundAugment(shift=True, gain_db=0.0))
    out = train(clips, torch.Generator().manual_seed(0))
    assert out.shape == (3, 1, 10)
    starts = []
    for row, clip in zip(out, clips, strict=True):
        start = int(round(float(row[0, 0]) * 32767)) // 100 - int(clip[0, 0]) // 100
        assert torch.allclose(row, clip[..., start : start + 10].float() / 32767)  # a contiguous window
        starts.append(start)
    assert all(0 <= s <= 10 for s in starts)
    assert torch.equal(out, train(clips, torch.Generator().manual_seed(0)))  # repeatable from the seed
    outs = {tuple(train(clips, torch.Generator().manual_seed(s))[:, 0, 0].tolist()) for s in range(5)}
    assert len(outs) > 1


def test_gain_stays_within_its_range() -> None:
    clips = torch.full((64, 1, 10), 10000, dtype=torch.int16)
    out = SoundBatchTransform(10, 0, SoundAugment(shift=False, gain_db=6.0))(clips, torch.Generator().manual_seed(0))
    db = 20 * torch.log10(out[:, 0, 0] / (10000 / 32767))
    assert float(db.min()) >= -6.0 - 1e-4 and float(db.max()) <= 6.0 + 1e-4 and float(db.std()) > 1.0


def test_background_noise_is_mixed_at_the_asked_signal_to_noise_ratio() -> None:
    t = torch.arange(800) / 8000
    signal = (0.3 * torch.sin(2 * math.pi * 440 * t) * 32767).to(torch.int16).expand(8, 1, 800)
    bank = noise_bank([torch.randn(1, 300) * 0.1, torch.zeros(1, 500), torch.randn(2, 2000) * 0.05], samples=800)
    assert bank.shape == (2, 900)  # the silent recording left out; the short one repeated past 800, then both cut
    augment = SoundAugment(shift=False, gain_db=0.0, noise_probability=1.0, snr_db=(10.0, 10.0))
    out = SoundBatchTransform(800, 0, augment, noise=bank)(signal.clone(), torch.Generator().manual_seed(0))
    clean = signal.float() / 32767
    snr = 10 * torch.log10(clean.square().mean(dim=(1, 2)) / (out - clean).square().mean(dim=(1, 2)))
    assert torch.allclose(snr, torch.full_like(snr, 10.0), atol=0.01)
    none = SoundAugment(shift=False, gain_db=0.0, noise_probability=0.0)
    assert torch.equal(SoundBatchTransform(800, 0, none, noise=bank)(signal, torch.Generator().manual_seed(0)), clean)
