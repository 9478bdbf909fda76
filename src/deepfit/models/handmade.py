"""Hand-made image features: a colour histogram and HOG-like gradient-orientation histograms.

This is the classical "machine learning" baseline that deep features are compared against: an SVM
fitted on features a person designed, as was the state of the art before learned features. It is
written in plain torch rather than taken from scikit-image so that it needs no extra dependency and
runs batched, on CPU or GPU, through the same data pipeline, feature cache and classifier code as a
network cut at a layer. It has no trainable parameters and is deterministic.

Features, concatenated in this order:

- colour: a joint RGB histogram with `colour_bins`**3 bins, normalised to sum to 1 per image;
- gradient: HOG in the manner of Dalal & Triggs (2005) -- unsigned orientations of centred luma
  gradients, binned with linear interpolation between the two nearest bins and weighted by the
  gradient magnitude, summed per cell, then overlapping blocks of cells L2-Hys normalised.

Inputs are images (B, 3, H, W) with values in [0, 1], square, with H divisible by `cell`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from deepfit.errors import ConfigError

# The size the baseline resizes / crops images to: 8 x 8 cells of 8 px, as in the classic HOG setups.
HANDMADE_IMAGE_SIZE = 64

# ITU-R BT.601 luma weights: gradients of perceived brightness, not of one colour channel.
_LUMA = (0.299, 0.587, 0.114)
# Clipping of L2-Hys: no single orientation may dominate a block (Dalal & Triggs use 0.2).
_HYS_CLIP = 0.2
# Keeps the normalisation finite on flat blocks (they stay all zero) and is negligible otherwise.
_EPS = 1e-5


def _l2_normalise(v: torch.Tensor) -> torch.Tensor:
    return v / torch.sqrt((v * v).sum(dim=-1, keepdim=True) + _EPS**2)


class HandmadeFeatures(nn.Module):
    """Colour histogram + HOG-like gradient-orientation histograms: images (B, 3, H, W) in [0, 1] -> (B, D) float32."""

    def __init__(self, colour_bins: int = 4, orientations: int = 9, cell: int = 8, block: int = 2) -> None:
        super().__init__()
        for name, value in (("colour_bins", colour_bins), ("orientations", orientations), ("cell", cell),
                            ("block", block)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"handmade features: {name} must be a positive integer, not {value!r}")
        self.colour_bins = colour_bins
        self.orientations = orientations
        self.cell = cell
        self.block = block
        # Buffers, not parameters: they follow .to(device) and stay out of any optimiser.
        self.register_buffer("luma", torch.tensor(_LUMA, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("bin_ids", torch.arange(orientations).view(1, orientations, 1, 1), persistent=False)

    def extra_repr(self) -> str:
        return f"colour_bins={self.colour_bins}, orientations={self.orientations}, cell={self.cell}, block={self.block}"

    def _cells(self, image_size: int) -> int:
        """Cells per side, or a ConfigError (a ValueError) that says which sizes work."""
        if image_size % self.cell:
            raise ConfigError(
                f"handmade features need an image size divisible by the cell size {self.cell}, not {image_size} "
                f"(e.g. {HANDMADE_IMAGE_SIZE})"
            )
        cells = image_size // self.cell
        if cells < self.block:
            raise ConfigError(
                f"handmade features need at least {self.block} cells of {self.cell} px per side for one block, "
                f"so images of at least {self.block * self.cell} px, not {image_size}"
            )
        return cells

    def feature_dim(self, image_size: int) -> int:
        """D, the length of the feature vector for square images of `image_size` pixels."""
        blocks = self._cells(image_size) - self.block + 1
        return self.colour_bins**3 + blocks * blocks * self.block * self.block * self.orientations

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ConfigError(f"handmade features take RGB images (B, 3, H, W), not a tensor of shape {tuple(x.shape)}")
        if x.shape[2] != x.shape[3]:
            raise ConfigError(f"handmade features take square images, not {x.shape[2]}x{x.shape[3]}")
        self._cells(x.shape[2])
        x = x.float()
        return torch.cat([self._colour(x), self._gradient(x)], dim=1)

    def _colour(self, x: torch.Tensor) -> torch.Tensor:
        """Joint RGB histogram, (B, colour_bins**3), each row summing to 1."""
        b, n = x.shape[0], self.colour_bins
        # Hard binning; 1.0 belongs to the top bin, and clamping keeps slightly out-of-range values counted.
        level = (x.clamp(0.0, 1.0) * n).long().clamp_(max=n - 1)  # (B, 3, H, W)
        joint = (level[:, 0] * n + level[:, 1]) * n + level[:, 2]  # (B, H, W), in [0, n**3)
        # One bincount over the whole batch: image i's bins are offset by i * n**3. Integer counts are exact,
        # so the result does not depend on the order in which a GPU adds them.
        offset = torch.arange(b, device=x.device).view(b, 1, 1) * n**3
        counts = torch.bincount((joint + offset).flatten(), minlength=b * n**3).view(b, n**3)
        return counts.float() / (x.shape[2] * x.shape[3])

    def _gradient(self, x: torch.Tensor) -> torch.Tensor:
        """HOG: L2-Hys normalised blocks of per-cell orientation histograms, (B, blocks**2 * block**2 * orientations)."""
        b, o, c = x.shape[0], self.orientations, self.cell
        gray = (x * self.luma).sum(dim=1, keepdim=True)  # (B, 1, H, W)
        # Centred differences [-1, 0, 1]; replicate padding so the border shows no false edge.
        p = F.pad(gray, (1, 1, 1, 1), mode="replicate")  # (B, 1, H+2, W+2)
        gx = p[:, :, 1:-1, 2:] - p[:, :, 1:-1, :-2]  # (B, 1, H, W), change along x (columns)
        gy = p[:, :, 2:, 1:-1] - p[:, :, :-2, 1:-1]  # (B, 1, H, W), change along y (rows)
        magnitude = torch.sqrt(gx * gx + gy * gy)
        # Unsigned orientation in [0, pi): a dark-to-light edge and a light-to-dark one look the same.
        angle = torch.remainder(torch.atan2(gy, gx), math.pi)
        # Bin k is centred on k * pi / o, so bin 0 is the horizontal gradient (vertical edges). Each pixel's
        # magnitude is shared between the two nearest centres, wrapping from the last bin back to bin 0.
        position = angle * (o / math.pi)  # (B, 1, H, W), in [0, o]
        lower = torch.floor(position)
        upper_share = position - lower
        lower_bin = lower.long() % o
        upper_bin = (lower_bin + 1) % o
        # One-hot by comparison rather than scatter_add_: elementwise, hence deterministic on every device.
        votes = (self.bin_ids == lower_bin) * (magnitude * (1.0 - upper_share)) + (self.bin_ids == upper_bin) * (
            magnitude * upper_share
        )  # (B, o, H, W)
        hc = x.shape[2] // c
        cells = votes.view(b, o, hc, c, hc, c).sum(dim=(3, 5))  # (B, o, H/cell, W/cell)
        # Overlapping blocks, stride one cell: each cell is normalised in several contexts, as in Dalal & Triggs.
        blocks = cells.unfold(2, self.block, 1).unfold(3, self.block, 1)  # (B, o, nb, nb, block, block)
        blocks = blocks.permute(0, 2, 3, 4, 5, 1).reshape(b, -1, self.block * self.block * o)  # (B, nb*nb, block*block*o)
        # L2-Hys: normalise (invariance to contrast and brightness scale), clip, renormalise.
        blocks = _l2_normalise(_l2_normalise(blocks).clamp(max=_HYS_CLIP))
        return blocks.reshape(b, -1)
