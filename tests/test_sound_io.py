"""Reading sound: every format and sample width, resampling that does not alias, channels, long files in pieces,
the bad files a user may have, and labels and groups from file names. Sounds are made by the tests."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from deepfit.data.named import compile_pattern, label_files
from deepfit.errors import ConfigError, DataError
from deepfit.modalities.sound import SOUND
from deepfit.modalities.sound.io import audio_info, fit_length, is_silent, read_audio, read_in_pieces
from deepfit.registry import get_modality


def tone(hz: float, rate: int, seconds: float = 0.5, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def peak_hz(wave: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / rate)[spectrum.argmax()])


@pytest.mark.parametrize(
    ("suffix", "subtype"),
    [(".wav", "PCM_U8"), (".wav", "PCM_16"), (".wav", "PCM_24"), (".wav", "PCM_32"), (".wav", "FLOAT"),
     (".flac", "PCM_16"), (".ogg", "VORBIS"), (".mp3", "MPEG_LAYER_III")],
)
def test_every_format_and_sample_width_reads_as_floats_in_unit_range(suffix: str, subtype: str, tmp_path: Path) -> None:
    path = tmp_path / f"a{suffix}"
    soundfile.write(path, tone(440, 16000), 16000, subtype=subtype)
    wave = read_audio(path, 16000)
    assert wave.dtype == np.float32 and wave.shape[0] == 1
    assert abs(wave.shape[1] - 8000) < 2000  # lossy coders may add a little padding
    assert 0.3 < np.abs(wave).max() < 0.7
    assert peak_hz(wave[0], 16000) == pytest.approx(440, abs=10)


def test_resampling_keeps_the_band_and_removes_what_the_new_rate_cannot_hold(tmp_path: Path) -> None:
    path = tmp_path / "mix.wav"
    soundfile.write(path, tone(1000, 44100) + tone(6000, 44100), 44100, subtype="FLOAT")
    wave = read_audio(path, 8000)[0]  # Nyquist 4 kHz: the 6 kHz tone must go, not fold back to 2 kHz
    assert len(wave) == 4000
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    freqs = np.fft.rfftfreq(len(wave), 1 / 8000)
    at = lambda hz: spectrum[np.abs(freqs - hz).argmin()]  # noqa: E731
    assert peak_hz(wave, 8000) == pytest.approx(1000, abs=5)
    assert at(2000) < at(1000) / 100  # a naive resampler would put the 6 kHz tone at 2 kHz


def test_channels_are_mixed_kept_or_repeated_and_a_mismatch_names_the_file(tmp_path: Path) -> None:
    stereo = np.stack([tone(440, 8000), np.zeros(4000, np.float32)], axis=1)  # (T, 2)
    path = tmp_path / "stereo.wav"
    soundfile.write(path, stereo, 8000, subtype="FLOAT")
    assert np.allclose(read_audio(path, 8000)[0], stereo.mean(1))
    assert read_audio(path, 8000, channels=2).shape == (2, 4000)
    assert read_audio(path, 8000, channels=None).shape == (2, 4000)
    mono = tmp_path / "mono.wav"
    soundfile.write(mono, stereo[:, 0], 8000, subtype="FLOAT")
    both = read_audio(mono, 8000, channels=2)
    assert both.shape == (2, 4000) and np.array_equal(both[0], both[1])
    three = tmp_path / "three.wav"
    soundfile.write(three, np.zeros((800, 3), np.float32), 8000)
    with pytest.raises(DataError, match=r"three\.wav: has 3 channels.*--channels 1"):
        read_audio(three, 8000, channels=2)


def test_bad_files_are_named_with_what_to_do(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    empty = tmp_path / "empty.wav"
    empty.touch()
    with pytest.raises(DataError, match=r"empty\.wav: the file is empty"):
        read_audio(empty, 8000)
    text = tmp_path / "notes.wav"
    text.write_text("this is not a recording\n")
    with pytest.raises(DataError, match=r"notes\.wav: not a readable sound file"):
        audio_info(text)
    header_only = tmp_path / "header.wav"
    soundfile.write(header_only, np.zeros(0, np.float32), 8000)
    with pytest.raises(DataError, match=r"header\.wav: the file holds no samples"):
        read_audio(header_only, 8000)
    nan = tmp_path / "nan.wav"
    soundfile.write(nan, np.array([0.1, np.nan, 0.2] * 100, np.float32), 8000, subtype="FLOAT")
    with pytest.raises(DataError, match=r"nan\.wav: the samples hold NaN"):
        read_audio(nan, 8000)
    whole = tmp_path / "whole.wav"
    soundfile.write(whole, tone(440, 8000), 8000, subtype="PCM_16")
    cut = tmp_path / "cut.wav"
    cut.write_bytes(whole.read_bytes()[:5000])
    with caplog.at_level(logging.WARNING, logger="deepfit"):
        wave = read_audio(cut, 8000)
    assert 0 < wave.shape[1] < 4000
    assert "cut.wav: the file is truncated" in caplog.text
    assert whole.stat().st_size > 5000  # nothing was modified


def test_a_long_recording_is_read_in_pieces_that_join_seamlessly(tmp_path: Path) -> None:
    path = tmp_path / "long.flac"
    wave = tone(300, 22050, seconds=3.3)
    soundfile.write(path, wave, 22050)
    pieces = list(read_in_pieces(path, 22050, 1.0))
    assert [p.shape[1] for p in pieces] == [22050, 22050, 22050, len(wave) - 3 * 22050]
    assert np.allclose(np.concatenate(pieces, axis=1), read_audio(path, 22050), atol=1e-4)
    resampled = np.concatenate(list(read_in_pieces(path, 16000, 1.0)), axis=1)
    whole = read_audio(path, 16000)
    assert abs(resampled.shape[1] - whole.shape[1]) <= 2
    n = min(resampled.shape[1], whole.shape[1])
    assert np.abs(resampled[:, 200 : n - 200] - whole[:, 200 : n - 200]).max() < 1e-2  # no clicks at the joints


def test_clips_are_cut_from_the_middle_or_padded_with_silence_around_them() -> None:
    wave = np.arange(10, dtype=np.float32)[None]  # (1, 10)
    assert fit_length(wave, 4).tolist() == [[3, 4, 5, 6]]
    assert fit_length(wave, 4, offset=0).tolist() == [[0, 1, 2, 3]]
    assert fit_length(wave, 13).tolist() == [[0, *range(10), 0, 0]]
    assert is_silent(np.zeros((1, 100), np.float32)) and not is_silent(wave)


def test_the_modality_takes_paths_arrays_with_their_rate_and_tensors(tmp_path: Path) -> None:
    assert get_modality("sound") is SOUND
    path = tmp_path / "a.wav"
    soundfile.write(path, tone(440, 8000), 8000, subtype="PCM_16")
    from_path = SOUND.load(path, sample_rate=16000)
    assert from_path.shape == (1, 8000) and from_path.dtype == torch.float32
    pcm = (tone(440, 8000) * 32767).astype(np.int16)
    from_pcm = SOUND.load((pcm, 8000), sample_rate=16000)  # integer samples at their own rate
    assert from_pcm.shape == (1, 8000) and float(from_pcm.abs().max()) == pytest.approx(0.5, abs=0.01)
    assert SOUND.load(torch.zeros(2, 160), sample_rate=16000).shape == (1, 160)  # mixed to mono
    assert SOUND.expand([tmp_path]) == [path]
    with pytest.raises(DataError, match="non-empty"):
        SOUND.load(np.zeros((2, 3, 4)), sample_rate=16000)


FSDD_PATTERN = r"(?P<label>\d)_(?P<group>[a-z]+)_\d+\.wav"


def test_labels_and_groups_come_from_file_names(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    names = ["7_jackson_32.wav", "0_theo_1.wav", "readme.wav"]
    with caplog.at_level(logging.WARNING, logger="deepfit"):
        files = label_files([tmp_path / n for n in names], FSDD_PATTERN, tmp_path)
    assert [(f.label, f.group) for f in files] == [("7", "jackson"), ("0", "theo")]
    assert "1 of 3 files do not match" in caplog.text and "readme.wav" in caplog.text
    with pytest.raises(ConfigError, match="no \\(\\?P<label>"):
        compile_pattern(r"(?P<digit>\d)_.*")
    with pytest.raises(ConfigError, match="speaker"):
        compile_pattern(r"(?P<label>\d)_(?P<speaker>[a-z]+)")
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        compile_pattern(r"(?P<label>\d")
    with pytest.raises(ConfigError, match="no file name matches"):
        label_files([tmp_path / "x.wav"], FSDD_PATTERN, tmp_path)
