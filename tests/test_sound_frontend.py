"""The sound front end as a network layer: shapes, where a tone lands, the DCT, fp32 under autocast, and settings
checked with messages that say what to use."""

from __future__ import annotations

import math

import pytest
import torch

from deepfit.errors import ConfigError
from deepfit.modalities.sound.frontend import (
    FrontEndConfig,
    LogMel,
    dct_matrix,
    hz_to_mel,
    mel_filters,
    mel_to_hz,
)


def _tone(hz: float, rate: int, samples: int) -> torch.Tensor:
    return 0.5 * torch.sin(2 * math.pi * hz * torch.arange(samples) / rate)


def test_shapes_follow_the_config() -> None:
    config = FrontEndConfig(sample_rate=8000, window_ms=32, hop_ms=10, n_mels=40)
    assert (config.win_length, config.hop_length, config.n_fft) == (256, 80, 256)
    out = LogMel(config)(torch.zeros(3, 2, 8000))  # (B, C, T): one second of silence, stereo
    assert out.shape == (3, 2, 40, config.frames(8000)) == (3, 2, 40, 101)
    assert LogMel(config)(torch.zeros(3, 8000)).shape == (3, 1, 40, 101)  # (B, T) counts as one channel
    mfcc = LogMel(FrontEndConfig(sample_rate=8000, n_mels=40, n_mfcc=13))(torch.zeros(1, 1, 4000))
    assert mfcc.shape[2] == 13


def test_a_tone_lands_in_the_band_whose_centre_is_nearest() -> None:
    config = FrontEndConfig(sample_rate=16000, n_mels=64)
    layer = LogMel(config)
    edges = mel_to_hz(torch.linspace(float(hz_to_mel(torch.tensor(0.0))), float(hz_to_mel(torch.tensor(8000.0))), 66))
    centres = edges[1:-1]
    for hz in (300.0, 1000.0, 4000.0):
        picture = layer(_tone(hz, 16000, 16000)[None])[0, 0]  # (M, frames)
        band = int(picture.mean(1).argmax())
        assert int((centres - hz).abs().argmin()) == band, hz


def test_filters_are_triangles_of_peak_one_and_the_dct_is_orthonormal() -> None:
    filters = mel_filters(257, 16000, 40, 0.0, 8000.0)  # (F, M)
    assert filters.shape == (257, 40)
    assert float(filters.max()) <= 1.0 + 1e-6 and float(filters.min()) >= 0.0
    assert (filters.amax(0) > 0.5).all()  # every band sees some FFT bin
    dct = dct_matrix(40, 40)
    assert torch.allclose(dct.T @ dct, torch.eye(40), atol=1e-5)


def test_the_picture_is_computed_in_fp32_under_bf16_autocast() -> None:
    layer = LogMel(FrontEndConfig(sample_rate=8000))
    wave = _tone(440, 8000, 4000)[None, None].bfloat16()  # as a bf16 layer before would hand it on
    plain = layer(wave.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = layer(wave)
    assert mixed.dtype == torch.float32
    assert torch.allclose(plain, mixed, atol=1e-4)  # the FFT, filters and log ran in fp32, not bf16


def test_quiet_bins_are_floored_below_the_peak() -> None:
    out = LogMel(FrontEndConfig(sample_rate=8000, top_db=60))(_tone(440, 8000, 4000)[None])
    assert float(out.amax() - out.amin()) == pytest.approx(60, abs=1e-3)


def test_settings_are_checked_and_round_trip() -> None:
    with pytest.raises(ConfigError, match="half the sample rate"):
        FrontEndConfig(sample_rate=8000, fmax=6000)
    with pytest.raises(ConfigError, match="too low"):
        FrontEndConfig(sample_rate=500)
    with pytest.raises(ConfigError, match="MFCCs"):
        FrontEndConfig(n_mels=20, n_mfcc=30)
    with pytest.raises(ConfigError, match="hop"):
        FrontEndConfig(window_ms=10, hop_ms=20)
    config = FrontEndConfig(sample_rate=22050, n_mels=96, fmin=20, fmax=8000, n_mfcc=20)
    assert FrontEndConfig.from_dict(config.to_dict()) == config
    assert LogMel(config).state_dict() == {}  # nothing to learn: rebuilt from the settings stored with the weights
