"""Which layers of a network a class-activation map can be drawn from, found by running it once.

A layer can be explained when its output is a picture of the input: a (B, C, h, w) map whose grid is the input's
(H, W) divided by a whole stride, or a vision transformer's (B, N, C) tokens holding such a grid after a few extra
tokens (class, register). One forward and one backward pass of the target's score with hooks on every module finds
them (a module called more than once, such as a feature-pyramid head shared by its levels, is left out: its output is
not one picture), in the order their outputs were finished.

The default layer is the last of them that the score's gradient reaches at more than one position. For a CNN that is
its last convolutional stage (global pooling spreads the gradient over every position). For a vision transformer
pooled on its class token, the last blocks' outputs get gradient at the class token only, so the default falls back to
the last normalisation before the final attention mixes the tokens (`blocks.11.norm1` of a ViT), as Grad-CAM for
vision transformers is used.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from deepfit.errors import ConfigError

MAX_EXTRA_TOKENS = 8  # a class token and up to 7 register tokens precede a transformer's patch grid


@dataclass(frozen=True)
class Layer:
    name: str
    shape: tuple[int, ...]  # the output's shape for the probe input
    grid: tuple[int, int]  # (h, w) of its picture of the input
    extra_tokens: int = -1  # -1: a (B, C, h, w) map; else (B, N, C) tokens, this many before the grid
    reaches: bool = True  # whether the score's gradient reaches more than one position of the grid
    kind: str = ""  # the module's class name

    @property
    def is_norm(self) -> bool:
        return "Norm" in self.kind

    def reshape(self, output: torch.Tensor) -> torch.Tensor:
        """The layer's output as a (B, C, h, w) map (the transform grad-cam's methods take)."""
        if self.extra_tokens < 0:
            return output
        b, _, c = output.shape
        return output[:, self.extra_tokens :].reshape(b, *self.grid, c).permute(0, 3, 1, 2)

    @property
    def transform(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        return None if self.extra_tokens < 0 else self.reshape


def _fits(size: int, side: int) -> bool:
    """Whether `side` cells cover `size` input pixels with a whole stride (rounded either way)."""
    if side < 1 or side > size:
        return False
    stride = max(1, round(size / side))
    return side in (size // stride, -(-size // stride))


def _grid(output: Any, batch: int, size: tuple[int, int]) -> tuple[tuple[int, int], int] | None:
    """((h, w), extra tokens) when `output` is a picture of an input of `size`, else None."""
    if not isinstance(output, torch.Tensor) or not output.is_floating_point() or output.shape[0] != batch:
        return None
    if output.ndim == 4 and _fits(size[0], output.shape[2]) and _fits(size[1], output.shape[3]) and output.shape[2] * output.shape[3] > 1:
        return (output.shape[2], output.shape[3]), -1
    if output.ndim == 3:
        for extra in range(MAX_EXTRA_TOKENS + 1):
            side = int(round((output.shape[1] - extra) ** 0.5))
            if side > 1 and side * side == output.shape[1] - extra and _fits(size[0], side) and _fits(size[1], side):
                return (side, side), extra
    return None


_FOUND: weakref.WeakKeyDictionary[nn.Module, dict[tuple, list[Layer]]] = weakref.WeakKeyDictionary()


def find_layers(model: nn.Module, x: torch.Tensor, score: Callable[[Any], torch.Tensor], *,
                size: tuple[int, int] | None = None, within: str = "") -> list[Layer]:
    """The explainable layers of `model` (named as `model.named_modules()` names them, under `within` if given) for the
    input `x` (B, C, H, W), in the order their outputs were finished; `score(outputs)` is the scalar explained. Found
    once per model and input shape (a wide network's probe costs a forward and backward pass with hundreds of hooks)."""
    size = size or (x.shape[-2], x.shape[-1])
    key = (tuple(x.shape), size, within)
    known = _FOUND.setdefault(model, {})
    if key not in known:
        known[key] = _probe(model, x, score, size, within)
    return known[key]


def _probe(model: nn.Module, x: torch.Tensor, score: Callable[[Any], torch.Tensor], size: tuple[int, int],
           within: str) -> list[Layer]:
    found: dict[str, tuple[torch.Tensor, tuple[tuple[int, int], int]]] = {}
    calls: dict[str, int] = {}
    order: list[str] = []

    def hook(name: str) -> Callable[..., None]:
        def record(_module: nn.Module, _inputs: Any, output: Any) -> None:
            calls[name] = calls.get(name, 0) + 1
            grid = _grid(output, x.shape[0], size)
            if grid is not None and output.requires_grad:
                found[name] = (output, grid)
                order.append(name)
        return record

    prefix = f"{within}." if within else ""
    modules = dict(model.named_modules())
    handles = [m.register_forward_hook(hook(n)) for n, m in modules.items()
               if n and (not within or n == within or n.startswith(prefix))]
    try:
        with torch.enable_grad():
            outputs = model(x.detach().clone().requires_grad_(True))
            names = [n for n in dict.fromkeys(order) if calls[n] == 1]
            # none found (a network of hand-made features): no layers, which choose_layer says in one clear line
            grads = torch.autograd.grad(score(outputs), [found[n][0] for n in names], allow_unused=True) if names else ()
    finally:
        for h in handles:
            h.remove()
    layers = []
    for name, grad in zip(names, grads, strict=True):
        output, (grid, extra) = found[name]
        layer = Layer(name, tuple(output.shape), grid, extra)
        spread = 0 if grad is None else int((layer.reshape(grad).abs().sum((0, 1)) > 0).sum())
        layers.append(Layer(name, tuple(output.shape), grid, extra, reaches=spread > 1, kind=type(modules[name]).__name__))
    return layers


def choose_layer(layers: list[Layer], name: str | None, what: str, prefer: str = "") -> Layer:
    """The layer called `name`, or the default one (the last the score reaches, inside the module named `prefer` when
    it has one); a name that cannot be explained is an error naming those that can."""
    if not layers:
        raise ConfigError(f"{what} has no layer whose output is a picture of its input, so no map can be drawn")
    if name is None:
        reached = [layer for layer in layers if layer.reaches]
        inside = [layer for layer in reached if layer.name == prefer or layer.name.startswith(prefer + ".")] if prefer else []
        chosen = (inside or reached or layers)[-1]
        if chosen.extra_tokens >= 0:  # a transformer: the input of its last attention (its norm), not a projection of it
            norms = [layer for layer in reached if layer.extra_tokens >= 0 and layer.is_norm]
            chosen = norms[-1] if norms else chosen
        return chosen
    chosen = next((layer for layer in layers if layer.name == name), None)
    if chosen is None:
        names = [layer.name for layer in layers]
        shown = ", ".join(reversed(names[-12:])) + (f" (and {len(names) - 12} before them)" if len(names) > 12 else "")
        raise ConfigError(f"--layer {name}: {what} has no such layer that can be explained (its output must be a picture "
                          f"of the input); layers that can, last first: {shown}")
    return chosen
