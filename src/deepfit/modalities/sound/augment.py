"""Sound augmentation on whole batches, on the training device: stored int16 clips -> float waveforms (B, C, T).

Training draws, per clip, from the trainer's generator (kept in the resumable state, so a resumed epoch repeats
them): a time shift (a crop anywhere in the stored margins), a gain, and with `noise` a piece of a background
recording mixed in at a random signal-to-noise ratio. Evaluation takes the middle of each clip, unchanged.
SpecAugment's masks act on the spectrogram, inside the network (tasks/classify/sound_model.py); mixup acts on labels
too, in the objective.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from deepfit.modalities.sound.store import PCM_SCALE


@dataclass(frozen=True)
class SoundAugment:
    """What the training transform does; all off gives the evaluation transform."""

    shift: bool = True  # crop anywhere in the stored margins (a time shift of up to the margin either way)
    gain_db: float = 6.0  # louder or quieter by up to this many dB
    noise_probability: float = 0.0  # share of clips that get background noise (needs a noise bank)
    snr_db: tuple[float, float] = (5.0, 30.0)  # signal-to-noise ratio drawn from this range, in dB


class SoundBatchTransform:
    """(B, C, T + 2 * margin) int16 on the device -> (B, C, T) float32 in [-1, 1] (more with gain), augmented in training.

    `noise` is a (K, L) float bank of background recordings at the clips' sample rate, L >= T (see `noise_bank`)."""

    def __init__(self, samples: int, margin: int, augment: SoundAugment | None = None, noise: torch.Tensor | None = None) -> None:
        self.samples, self.margin, self.augment, self.noise = samples, margin, augment, noise

    def __call__(self, clips: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        wave = clips.float() / PCM_SCALE  # (B, C, T')
        a = self.augment
        if a is None or generator is None:  # evaluation: the middle of every clip
            return wave[..., self.margin : self.margin + self.samples]
        batch = wave.shape[0]

        def draw(*shape: int) -> torch.Tensor:  # uniform [0, 1) from the trainer's generator (on the CPU), then moved
            return torch.rand(*shape, generator=generator).to(wave.device)

        offsets = (draw(batch) * (2 * self.margin + 1)).long().clamp(max=2 * self.margin) if a.shift and self.margin else \
            torch.full((batch,), self.margin, device=wave.device)
        at = offsets[:, None] + torch.arange(self.samples, device=wave.device)  # (B, T)
        wave = wave.gather(2, at[:, None, :].expand(-1, wave.shape[1], -1))  # (B, C, T)
        if a.gain_db:
            wave = wave * 10.0 ** ((draw(batch, 1, 1) * 2 - 1) * a.gain_db / 20)
        if a.noise_probability and self.noise is not None and len(self.noise):
            wave = self._mix_noise(wave, draw)
        return wave

    def _mix_noise(self, wave: torch.Tensor, draw) -> torch.Tensor:  # noqa: ANN001
        a, bank = self.augment, self.noise.to(wave.device)  # (K, L)
        assert a is not None
        batch, length = wave.shape[0], bank.shape[1]
        which = (draw(batch) * len(bank)).long().clamp(max=len(bank) - 1)
        start = (draw(batch) * (length - self.samples + 1)).long().clamp(max=length - self.samples)
        at = start[:, None] + torch.arange(self.samples, device=wave.device)  # (B, T)
        noise = bank[which[:, None], at][:, None]  # (B, 1, T)
        snr = a.snr_db[0] + draw(batch, 1, 1) * (a.snr_db[1] - a.snr_db[0])
        signal_power = wave.square().mean(dim=(1, 2), keepdim=True)
        noise_power = noise.square().mean(dim=(1, 2), keepdim=True).clamp(min=1e-10)
        scale = (signal_power / (noise_power * 10.0 ** (snr / 10))).sqrt()
        use = (draw(batch, 1, 1) < a.noise_probability).float()
        return wave + use * scale * noise


def noise_bank(recordings: list[torch.Tensor], samples: int) -> torch.Tensor:
    """(K, L) mono noise pieces from recordings at the clips' rate ((C, T) each): each mixed to mono and repeated
    until it is at least `samples` long, then all cut to the shortest, so any crop of `samples` fits."""
    pieces = []
    for r in recordings:
        mono = r.float().mean(0)  # (T,)
        if mono.abs().max() == 0:
            continue  # silence adds nothing
        repeats = -(-samples // len(mono))
        pieces.append(mono.repeat(repeats))
    if not pieces:
        return torch.zeros(0, samples)
    length = min(len(p) for p in pieces)
    return torch.stack([p[:length] for p in pieces])
