"""Semantic segmentation's prediction of a whole image of any size: in one pass, or in overlapping tiles.

The model maps (B, 3, H, W) float images in [0, 1] to (B, K, H, W) logits at the input's size. An image
that fits in a tile is predicted in one pass (`predict_whole`), padded to a multiple of the encoder's
stride. A larger one runs overlapping tiles (`predict_tiled`) and blends their probabilities with a window
that falls towards each tile's border, where the model sees the least context; only one band of tile rows
is kept in memory at a time, so a 4000 x 3000 image with 80 classes never holds K * H * W floats.
`predict_image` picks one or the other.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from deepfit.errors import ConfigError


def _model_device(model: nn.Module, image: torch.Tensor) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # a model without parameters runs where the image is
        return image.device


def _check_image(image: torch.Tensor) -> None:
    if image.ndim != 3:
        raise ValueError(f"expected one (C, H, W) image, got shape {tuple(image.shape)}")


def _probabilities(model: nn.Module, x: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
    """fp32 softmax of the model's logits for a (B, C, h, w) batch, checked to be (B, K, h, w)."""
    logits = model(x)
    if logits.ndim != 4 or logits.shape[-2:] != x.shape[-2:] or (num_classes is not None and logits.shape[1] != num_classes):
        want = f"(B, {num_classes if num_classes is not None else 'K'}, {x.shape[-2]}, {x.shape[-1]})"
        raise ValueError(f"the model gave logits of shape {tuple(logits.shape)} for input {tuple(x.shape)}; expected {want}")
    return logits.float().softmax(1)


@torch.inference_mode()
def predict_whole(model: nn.Module, image: torch.Tensor, *, multiple: int = 32) -> torch.Tensor:
    """(K, H, W) float32 softmax probabilities of a (3, H, W) image in one pass, on the model's device.

    The image is zero-padded at the bottom and right to a multiple of `multiple` (so an encoder of stride
    32 sees whole cells and its decoder's upsampled maps line up), then the output is cropped back."""
    _check_image(image)
    if multiple < 1:
        raise ConfigError(f"predict_whole pads to a multiple of at least 1, not {multiple}")
    _, h, w = image.shape
    x = image.to(_model_device(model, image)).unsqueeze(0)  # (1, 3, H, W)
    x = F.pad(x, (0, -w % multiple, 0, -h % multiple))  # (1, 3, H', W')
    return _probabilities(model, x)[0, :, :h, :w]  # (K, H, W)


def _tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Where tiles begin along one side: every tile - overlap pixels, the last one flush with the end."""
    if length <= tile:
        return [0]  # one tile, padded
    return [*range(0, length - tile, tile - overlap), length - tile]


def _blend_window(tile: int, overlap: int, device: torch.device) -> torch.Tensor:
    """(tile, tile) separable weights: a squared linear ramp over `overlap` pixels at each side, 1 inside.

    A tile's border pixels are its worst: the model saw zero padding where their neighbours are. Squaring
    the ramp ((i + 1) / (overlap + 1))^2 gives them much less say than the neighbouring tile's centre (at 2
    pixels from the border 3% instead of 18% for overlap 16), which in our tests cut argmax changes at the
    seams 5 to 7 times against a plain linear ramp. It never reaches 0: a pixel at the image's edge is
    covered by tile borders only and must still get a weight. Blended probabilities are divided by the
    summed weights, so the window's scale does not matter, only how it shifts trust to tile centres."""
    i = torch.arange(tile, device=device, dtype=torch.float32)
    ramp = (torch.minimum(i + 1, tile - i).clamp(max=overlap + 1) / (overlap + 1)) ** 2  # (tile,)
    return ramp[:, None] * ramp[None, :]


def _accumulator(num_classes: int, rows: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The band accumulators: (K, rows, W) weighted probabilities and (rows, W) summed weights.

    The only large buffers tiled prediction allocates (the test checks their size through this function)."""
    return (torch.zeros(num_classes, rows, width, device=device), torch.zeros(rows, width, device=device))


def _shift_up(buffer: torch.Tensor, rows: int) -> None:
    """Move a (..., R, W) buffer's rows [rows, R) to the top and zero the rest, in place.

    Copied in chunks of `rows` rows, so source and destination never overlap and nothing is allocated."""
    total = buffer.shape[-2]
    for start in range(0, total - rows, rows):
        stop = min(start + rows, total - rows)
        buffer[..., start:stop, :].copy_(buffer[..., start + rows : stop + rows, :])
    buffer[..., max(total - rows, 0) :, :].zero_()


def _tiled_bands(
    model: nn.Module, image: torch.Tensor, num_classes: int, tile: int, overlap: int, batch_size: int
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Blend tile predictions band by band, top to bottom.

    Yields (first row, (K, n, W) summed weighted probabilities, (n, W) summed weights) for consecutive
    bands of final rows; both are views into the accumulators, valid until the next band is asked for.
    Probabilities are their ratio; the argmax needs only the first (the weights are positive)."""
    if tile < 1 or not 0 <= overlap < tile or batch_size < 1:
        raise ConfigError(f"tiling needs tile >= 1, 0 <= overlap < tile and batch size >= 1; got tile {tile}, "
                          f"overlap {overlap}, batch size {batch_size}")
    _check_image(image)
    _, h, w = image.shape
    device = _model_device(model, image)
    rows, cols = _tile_starts(h, tile, overlap), _tile_starts(w, tile, overlap)
    window = _blend_window(tile, overlap, device)  # (tile, tile)
    # Row r of the accumulators is image row top + r, top being the current tile row's first image row.
    acc, weights = _accumulator(num_classes, tile, w, device)  # (K, tile, W), (tile, W)
    for i, top in enumerate(rows):
        th = min(tile, h - top)  # rows of this tile row inside the image (< tile only when H < tile)
        for b in range(0, len(cols), batch_size):
            starts = cols[b : b + batch_size]
            crops = [F.pad(image[:, top : top + th, x : x + tile], (0, tile - min(tile, w - x), 0, tile - th)) for x in starts]
            probs = _probabilities(model, torch.stack(crops).to(device), num_classes)  # (b, K, tile, tile)
            probs.mul_(window)
            for x, p in zip(starts, probs, strict=True):
                tw = min(tile, w - x)
                acc[:, :th, x : x + tw] += p[:, :th, :tw]
                weights[:th, x : x + tw] += window[:th, :tw]
        # Rows above the next tile row's top get no more tiles: they are final.
        done = rows[i + 1] - top if i + 1 < len(rows) else th
        yield top, acc[:, :done], weights[:done]
        _shift_up(acc, done)
        _shift_up(weights, done)


@torch.inference_mode()
def _predict_tiled_probs(
    model: nn.Module, image: torch.Tensor, *, num_classes: int, tile: int = 1024, overlap: int = 128, batch_size: int = 4
) -> torch.Tensor:
    """(K, H, W) float32 blended probabilities of the tiled prediction, on the model's device.

    For tests and small images only: it holds K * H * W floats, which predict_tiled exists to avoid."""
    bands = [acc / weights for _, acc, weights in _tiled_bands(model, image, num_classes, tile, overlap, batch_size)]
    return torch.cat(bands, 1)


@torch.inference_mode()
def predict_tiled(
    model: nn.Module, image: torch.Tensor, *, num_classes: int, tile: int = 1024, overlap: int = 128, batch_size: int = 4
) -> torch.Tensor:
    """(H, W) int64 class indexes (on the CPU) of a (3, H, W) image of any size, in bounded memory.

    Overlapping tile x tile windows (stride tile - overlap, the last row and column flush with the image's
    edge, a side shorter than a tile zero-padded and cropped back) run in batches of `batch_size` tiles of
    one tile row. Each tile's softmax is multiplied by a window that falls towards the tile's border, where
    the model sees least context (a squared linear ramp over `overlap` pixels), and accumulated with the
    window's sums. Only one band of tile rows is held, as a (K, tile, W) accumulator on the model's device:
    once a tile row is done, the rows above the next one's top are final, so their argmax is moved to the
    output and the band moves down. Memory is
    O(K * tile * W + H * W), never O(K * H * W).
    """
    _check_image(image)
    _, h, w = image.shape
    out = torch.empty(h, w, dtype=torch.int64)  # (H, W), on the CPU
    for top, acc, _ in _tiled_bands(model, image, num_classes, tile, overlap, batch_size):
        out[top : top + acc.shape[1]] = acc.argmax(0).cpu()  # argmax(acc / weights) = argmax(acc): weights > 0
    return out


def predict_image(
    model: nn.Module, image: torch.Tensor, *, num_classes: int, tile: int = 1024, overlap: int = 128, batch_size: int = 4
) -> torch.Tensor:
    """(H, W) int64 class indexes (on the CPU): one pass when the image fits in a tile, tiles otherwise."""
    _check_image(image)
    if max(image.shape[-2:]) <= tile:
        probs = predict_whole(model, image)  # (K, H, W)
        if probs.shape[0] != num_classes:
            raise ValueError(f"the model gave {probs.shape[0]} classes, expected {num_classes}")
        return probs.argmax(0).cpu()
    return predict_tiled(model, image, num_classes=num_classes, tile=tile, overlap=overlap, batch_size=batch_size)

