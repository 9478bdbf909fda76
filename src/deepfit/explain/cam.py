"""Class-activation maps, computed by the grad-cam library (pytorch-grad-cam), never written again here.

deepfit adds what the library leaves to its user: which layer (explain/layers.py finds the layers a map can come from
and a default), the reshape of a transformer's tokens into a grid, and one call that gives (B, H, W) maps in [0, 1] at
the input's size for any model whose output a target scores.

The methods offered are those that pass the sanity check of Adebayo et al. (2018) in tests/test_explain.py: with the
network's weights randomised, the map must change (rank correlation with the trained network's below 0.5). A method
that only redraws the input's edges would pass as an explanation without it.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from deepfit.errors import ConfigError
from deepfit.explain.layers import Layer

# name -> the grad-cam class; all weigh the layer's channels by the target's gradient except eigencam (the first
# principal component of the activations: class-agnostic, gradient-free) and scorecam (by the score of the input
# masked with each channel: one forward pass per channel, slow on wide layers)
METHODS = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "hirescam": "HiResCAM",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "eigencam": "EigenCAM",
    "scorecam": "ScoreCAM",
}


def check_method(method: str | None, offered: Sequence[str], what: str) -> str:
    """`method` (default: the first offered) if `what` offers it, else an error listing what it offers."""
    if method is None:
        return offered[0]
    if method not in offered:
        raise ConfigError(f"--method {method}: {what} is explained by {', '.join(offered)}")
    return method


class ClassScore:
    """A target for grad-cam: the logit of class `index` of a classifier's (C,) output."""

    def __init__(self, index: int) -> None:
        self.index = index

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return output[..., self.index]


def heat_maps(model: nn.Module, x: torch.Tensor, targets: Sequence[Callable[[Any], torch.Tensor]], layer: Layer,
              method: str, module: nn.Module | None = None) -> np.ndarray:
    """(B, H, W) float32 maps in [0, 1] at the size of `x` (B, C, H, W): where `layer` of `model` (or the `module` given
    for it) saw the evidence for each target (one per image) by `method`; all zeros where it saw none."""
    import pytorch_grad_cam

    cam_class = getattr(pytorch_grad_cam, METHODS[method])
    target = module if module is not None else model.get_submodule(layer.name)
    was_training = model.training
    with torch.enable_grad(), cam_class(model, [target], reshape_transform=layer.transform) as cam, _quiet(method):
        if method == "scorecam":
            cam.batch_size = 8  # masked copies of the input a forward pass; the library's 16 doubles peak memory
        maps = cam(input_tensor=x.detach().clone().requires_grad_(True), targets=list(targets))
    model.train(was_training)
    return np.nan_to_num(np.asarray(maps, dtype=np.float32)).clip(0, 1)


@contextlib.contextmanager
def _quiet(method: str) -> Iterator[None]:
    """ScoreCAM draws a tqdm progress bar per map on stderr, with no option to turn it off: between deepfit's own log
    lines (and in every report) that is noise, so its module's tqdm is a plain loop while it runs."""
    if method != "scorecam":
        yield
        return
    import pytorch_grad_cam.score_cam as score_cam

    saved = score_cam.tqdm
    score_cam.tqdm = types.SimpleNamespace(tqdm=lambda iterable, **_: iterable)
    try:
        yield
    finally:
        score_cam.tqdm = saved
