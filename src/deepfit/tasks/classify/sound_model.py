"""Sound classifiers: waveform (B, C, T) in, class logits out, with the front end as the network's first layer.

    samples -> log-mel or MFCC (modalities/sound/frontend.py) -> batch norm per frequency bin -> SpecAugment
    (training only) -> a network on the (B, C, bins, frames) picture -> logits

The network on the picture is any of:
- `soundcnn`: deepfit's designable CNN (models/small.py `ConvNet`: depth, width, activation, dropout, batch norm),
  pooled over time only, so it knows where in frequency a pattern is;
- `crnn`: convolutional-recurrent, convolutions over time and frequency, then a bidirectional GRU or LSTM over time;
- any timm or torchvision image network by name, from scratch or with ImageNet weights: the one-channel picture is
  repeated to the three colour channels it was trained on, so its first layer is used as it is.

Normalising each frequency bin by batch norm (as PANNs do) replaces the dataset mean and std images are normalised
with: loudness differs far more between bins than between clips.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from deepfit.errors import ConfigError
from deepfit.modalities.sound.frontend import FrontEndConfig, LogMel
from deepfit.models.factory import check_model_args
from deepfit.models.small import ConvNet, make_activation
from deepfit.models.weights import classifier_module

OWN_SOUND_MODELS = ("soundcnn", "crnn")


@dataclass(frozen=True)
class SpecAugment:
    """SpecAugment (Park et al., 2019): stripes of the picture blanked in training, so the network cannot lean on one
    moment or one band. Widths are at most `time_width` of the frames and `freq_width` bins."""

    time_masks: int = 2
    time_width: float = 0.1
    freq_masks: int = 2
    freq_width: int = 8

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SpecAugmentLayer(nn.Module):
    """Active in training only; draws from torch's global generator, which the trainer seeds and keeps in its
    resumable state, so a resumed run masks the same stripes."""

    def __init__(self, config: SpecAugment) -> None:
        super().__init__()
        self.config = config

    def _stripes(self, x: torch.Tensor, dim: int, count: int, widest: int) -> torch.Tensor:
        size = x.shape[dim]
        widest = max(0, min(widest, size - 1))
        if not count or not widest:
            return torch.zeros(x.shape[0], size, dtype=torch.bool, device=x.device)
        width = torch.randint(0, widest + 1, (x.shape[0], count), device=x.device)  # (B, count)
        start = (torch.rand(x.shape[0], count, device=x.device) * (size - width)).long()  # (B, count)
        at = torch.arange(size, device=x.device)[None, None]  # (1, 1, size)
        return ((at >= start[..., None]) & (at < (start + width)[..., None])).any(1)  # (B, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, F, frames)
        c = self.config
        if not self.training or not (c.time_masks or c.freq_masks):
            return x
        freq = self._stripes(x, 2, c.freq_masks, c.freq_width)[:, None, :, None]  # (B, 1, F, 1)
        time = self._stripes(x, 3, c.time_masks, round(c.time_width * x.shape[3]))[:, None, None, :]  # (B, 1, 1, frames)
        return x.masked_fill(freq | time, 0.0)  # 0: the mean of the normalised picture


class SoundCNN(ConvNet):
    """deepfit's designable CNN (models/small.py `ConvNet`: depth, width, activation, dropout, batch norm) with a pooling
    that keeps the frequency axis: the mean and max over time of every (channel, frequency row), then the linear layer.
    An image CNN's global pooling would forget where in frequency a pattern was, and a small network's receptive field
    cannot see it either: a low tone and a high one would look the same."""

    def __init__(self, num_classes: int, in_chans: int = 1, bins: int = 64, depth: int = 3, width: int = 32,
                 widths: list[int] | None = None, convs_per_stage: int = 2, activation: str = "relu",
                 batch_norm: bool = True, drop_rate: float = 0.0) -> None:
        super().__init__(num_classes, in_chans, depth, width, widths, convs_per_stage, activation, batch_norm, drop_rate)
        pools = (len(widths) if widths else depth) - 1
        rows = bins // 2**pools
        if rows < 1:
            raise ConfigError(f"soundcnn: {pools} poolings halve {bins} frequency bins to nothing; use a smaller depth")
        self.num_features = self.num_features * rows * 2
        self.fc = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, F, frames)
        x = self.features(x)  # (B, C', F', frames')
        return torch.cat([x.mean(3), x.amax(3)], dim=1).flatten(1)  # (B, 2 * C' * F')


class CRNN(nn.Module):
    """Conv blocks (pooling frequency by 2 each, time by 2 in the first two), a bidirectional GRU or LSTM over the
    frames, the mean and max of its outputs over time, dropout, linear."""

    def __init__(self, num_classes: int, in_chans: int = 1, bins: int = 64, depth: int = 3, width: int = 32,
                 rnn: str = "gru", hidden: int = 64, activation: str = "relu", drop_rate: float = 0.0) -> None:
        super().__init__()
        if rnn not in ("gru", "lstm"):
            raise ConfigError(f"crnn: rnn={rnn!r}; use gru or lstm")
        layers: list[nn.Module] = []
        c_in = in_chans
        for stage in range(depth):
            c_out = width * 2 ** min(stage, 2)
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), make_activation(activation),
                       nn.MaxPool2d((2, 2 if stage < 2 else 1))]
            c_in = c_out
        self.conv = nn.Sequential(*layers)
        rows = bins // 2**depth
        if rows < 1:
            raise ConfigError(f"crnn: depth {depth} halves {bins} frequency bins to nothing; use depth <= {bins.bit_length() - 1}")
        self.rnn = (nn.GRU if rnn == "gru" else nn.LSTM)(c_in * rows, hidden, batch_first=True, bidirectional=True)
        self.num_classes, self.num_features = num_classes, 4 * hidden
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(self.num_features, num_classes)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, F, frames)
        x = self.conv(x)  # (B, C', F', frames')
        x = x.flatten(1, 2).transpose(1, 2)  # (B, frames', C' * F')
        x, _ = self.rnn(x)  # (B, frames', 2 * hidden)
        return torch.cat([x.mean(1), x.amax(1)], dim=1)  # (B, 4 * hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.head_drop(self.forward_features(x)))


class SoundClassifier(nn.Module):
    """Front end, per-bin normalisation, SpecAugment, then `body`, a network on (B, body_chans, bins, frames)."""

    def __init__(self, frontend: FrontEndConfig, body: nn.Module, *, channels: int = 1, body_chans: int = 1,
                 spec_augment: SpecAugment | None = None) -> None:
        super().__init__()
        self.frontend = LogMel(frontend)
        self.norm = nn.BatchNorm2d(frontend.bins)
        self.augment = SpecAugmentLayer(spec_augment or SpecAugment(0, 0.0, 0, 0))
        self.body = body
        self.channels, self.body_chans = channels, body_chans

    def get_classifier(self) -> nn.Module:
        """What transfer learning trains first: the body's classifier, and the per-bin normalisation, which is new too
        (frozen, it would keep its initial statistics and hand the pretrained body unnormalised decibels)."""
        return nn.ModuleList([self.norm, classifier_module(self.body)])

    def picture(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, C, T) samples -> (B, body_chans, bins, frames): what the body sees (before SpecAugment)."""
        x = self.frontend(wave)  # (B, C, bins, frames)
        x = self.norm(x.transpose(1, 2)).transpose(1, 2)  # batch norm with the bins as its channels
        if x.shape[1] != self.body_chans:  # a mono picture for an RGB network: repeated, as a grey photo would be
            x = x.mean(1, keepdim=True).expand(-1, self.body_chans, -1, -1)
        return x

    def forward(self, wave: torch.Tensor) -> torch.Tensor:  # (B, C, T)
        return self.body(self.augment(self.picture(wave)))  # (B, num_classes)


class MFCCStatistics(nn.Module):
    """The classical sound features (`deepfit features --model handmade` on sound): per channel, each MFCC's mean and
    standard deviation over the clip's frames and the standard deviation of its change from frame to frame (how fast
    the timbre moves): (B, C, T) samples -> (B, 3 * C * n_mfcc) features."""

    def __init__(self, frontend: FrontEndConfig) -> None:
        super().__init__()
        if not frontend.n_mfcc:
            raise ConfigError("MFCC statistics need MFCCs: set n_mfcc in --frontend (e.g. n_mfcc=20)")
        self.mfcc = LogMel(frontend)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:  # (B, C, T)
        m = self.mfcc(wave)  # (B, C, n_mfcc, frames)
        return torch.cat([m.mean(3), m.std(3), m.diff(dim=3).std(3)], dim=2).flatten(1).float()


def build_body(name: str, num_classes: int, frontend: FrontEndConfig, channels: int, *, model_args: dict[str, Any],
               drop_rate: float) -> tuple[nn.Module, int]:
    """deepfit's own sound networks by name: (the body, the channels it takes)."""
    args = {k: v for k, v in model_args.items() if k not in ("in_chans", "bins")}  # the data's and the front end's
    if name == "soundcnn":
        check_model_args(SoundCNN, args, name)
        return SoundCNN(num_classes, in_chans=channels, bins=frontend.bins, drop_rate=drop_rate, **args), channels
    if name == "crnn":
        check_model_args(CRNN, args, name)
        return CRNN(num_classes, in_chans=channels, bins=frontend.bins, drop_rate=drop_rate, **args), channels
    raise ConfigError(f"unknown sound network {name!r}; deepfit's own are {', '.join(OWN_SOUND_MODELS)}, or name any "
                      "image network (deepfit models lists them)")
