"""The sound front end as the first layer of a network: waveform (B, C, T) -> log-mel spectrogram or MFCC (B, C, F, frames).

Inside the model, in PyTorch, so a checkpoint (and an exported ONNX file) takes raw samples and needs nothing else
to predict, and the settings (`FrontEndConfig`) travel with the weights in the checkpoint's metadata.

The mel filter bank and the DCT are written here (a few lines each) because the libraries that have them are not
deepfit's to depend on: torchaudio pins torch, librosa would bring numba for two matrices. The mel scale is HTK's
(mel = 2595 log10(1 + f / 700)) with triangular filters of peak 1, as torchaudio's `MelSpectrogram` defaults;
the DCT is the orthonormal DCT-II, as in `scipy.fft.dct(norm="ortho")`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from deepfit.errors import ConfigError


@dataclass(frozen=True)
class FrontEndConfig:
    """How samples become the picture the network sees; stored with the weights."""

    sample_rate: int = 16000
    window_ms: float = 25.0  # analysis window (Hann)
    hop_ms: float = 10.0  # step between frames
    n_mels: int = 64
    fmin: float = 0.0
    fmax: float | None = None  # default: the Nyquist frequency, sample_rate / 2
    n_mfcc: int = 0  # 0: the log-mel spectrogram itself; N: its first N cepstral coefficients (MFCC)
    top_db: float = 80.0  # quieter than the clip's loudest bin by more than this is floored (dB)

    def __post_init__(self) -> None:
        if self.sample_rate < 1000:
            raise ConfigError(f"a sample rate of {self.sample_rate} Hz is too low for a sound front end; use 8000 or more")
        fmax = self.top_frequency
        if not 0 <= self.fmin < fmax <= self.sample_rate / 2:
            raise ConfigError(f"mel band {self.fmin:g}-{fmax:g} Hz: it must lie within 0-{self.sample_rate / 2:g} Hz "
                              f"(half the sample rate of {self.sample_rate} Hz), fmin below fmax")
        if self.n_mels < 8 or self.n_mfcc < 0 or self.n_mfcc > self.n_mels:
            raise ConfigError(f"n_mels={self.n_mels}, n_mfcc={self.n_mfcc}: use at least 8 mel bands and at most as "
                              "many MFCCs as mel bands")
        if self.hop_ms <= 0 or self.window_ms < self.hop_ms:
            raise ConfigError(f"window {self.window_ms:g} ms, hop {self.hop_ms:g} ms: the hop must be positive and no "
                              "longer than the window")

    @property
    def top_frequency(self) -> float:
        return self.fmax if self.fmax is not None else self.sample_rate / 2

    @property
    def win_length(self) -> int:
        return round(self.sample_rate * self.window_ms / 1000)

    @property
    def hop_length(self) -> int:
        return max(1, round(self.sample_rate * self.hop_ms / 1000))

    @property
    def n_fft(self) -> int:
        return 2 ** math.ceil(math.log2(self.win_length))  # the next power of two: a fast FFT, finer bins

    @property
    def bins(self) -> int:
        """Rows of the picture: mel bands, or MFCCs."""
        return self.n_mfcc or self.n_mels

    def frames(self, samples: int) -> int:
        """Columns of the picture for a clip of `samples` (the STFT is centred: one frame per hop, plus one)."""
        return samples // self.hop_length + 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FrontEndConfig:
        return cls(**values)


def hz_to_mel(hz: torch.Tensor) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + hz / 700.0)


def mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filters(n_freqs: int, sample_rate: int, n_mels: int, fmin: float, fmax: float) -> torch.Tensor:
    """(n_freqs, n_mels) triangular filters, equally spaced on the mel scale, each peaking at 1 at its centre."""
    freqs = torch.linspace(0, sample_rate / 2, n_freqs, dtype=torch.float64)  # (F,) the FFT bins' frequencies
    edges = mel_to_hz(torch.linspace(float(hz_to_mel(torch.tensor(fmin))), float(hz_to_mel(torch.tensor(fmax))),
                                     n_mels + 2, dtype=torch.float64))  # (M + 2,) lower edge, centre, upper edge
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]  # (M,) each
    rising = (freqs[:, None] - lower) / (centre - lower)  # (F, M)
    falling = (upper - freqs[:, None]) / (upper - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).float()


def dct_matrix(n_mels: int, n_mfcc: int) -> torch.Tensor:
    """(n_mels, n_mfcc) orthonormal DCT-II: log-mel (.., M) @ it -> the first n_mfcc cepstral coefficients."""
    m = torch.arange(n_mels, dtype=torch.float64)
    k = torch.arange(n_mfcc, dtype=torch.float64)
    basis = torch.cos(math.pi / n_mels * (m[:, None] + 0.5) * k[None, :]) * math.sqrt(2.0 / n_mels)
    basis[:, 0] /= math.sqrt(2.0)
    return basis.float()


class LogMel(nn.Module):
    """(B, C, T) or (B, T) samples in [-1, 1] -> (B, C, bins, frames) log-mel spectrogram in dB (or MFCC).

    Computed in fp32 whatever the autocast (an FFT in bf16 would lose the quiet bins); the filter bank, window and DCT
    are rebuilt from the config, not stored, so the state dict holds only weights that are learned."""

    def __init__(self, config: FrontEndConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("window", torch.hann_window(config.win_length), persistent=False)
        n_freqs = config.n_fft // 2 + 1
        self.register_buffer("filters", mel_filters(n_freqs, config.sample_rate, config.n_mels, config.fmin,
                                                    config.top_frequency), persistent=False)  # (F, M)
        self.register_buffer("dct", dct_matrix(config.n_mels, config.n_mfcc) if config.n_mfcc else torch.empty(0),
                             persistent=False)  # (M, N)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        c = self.config
        if wave.ndim == 2:
            wave = wave[:, None]  # (B, 1, T)
        batch, channels, samples = wave.shape
        with torch.autocast(wave.device.type, enabled=False):
            flat = wave.reshape(batch * channels, samples).float()  # (B*C, T)
            # ONNX has no complex type: its export takes the STFT as (real, imaginary) pairs, the same numbers
            complex_out = not torch.onnx.is_in_onnx_export()
            spec = torch.stft(flat, c.n_fft, c.hop_length, c.win_length, self.window, center=True, pad_mode="constant",
                              return_complex=complex_out)  # (B*C, F, frames), or (B*C, F, frames, 2)
            power = spec.real.square() + spec.imag.square() if complex_out else spec.square().sum(-1)
            mel = torch.matmul(power.transpose(1, 2), self.filters)  # (B*C, frames, M)
            db = 10.0 * torch.log10(mel.clamp(min=1e-10))
            db = torch.maximum(db, db.amax(dim=(1, 2), keepdim=True) - c.top_db)  # floor each clip at top_db below its peak
            if c.n_mfcc:
                db = torch.matmul(db, self.dct)  # (B*C, frames, N)
            return db.transpose(1, 2).reshape(batch, channels, c.bins, -1)  # (B, C, bins, frames)
