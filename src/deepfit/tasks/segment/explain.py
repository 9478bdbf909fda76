"""Where a semantic segmenter looked to paint a class: a class-activation map for a class's predicted region.

The target is the sum of the class's logits over the pixels predicted as that class (grad-cam's
SemanticSegmentationTarget, Vinogradova et al. 2020): the map shows what made the network paint the region, which
may lie outside it (context). One map per class present in the prediction, the largest region first (or the class
asked for, where it was predicted); by default from the decoder's stage at a quarter of the input's resolution. The whole image is
explained in one pass (padded to a multiple of 32 as `predict` pads), not in tiles. The picture shows the map with the
region's border in white, enlarged when the image is small.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from deepfit.explain.cam import check_method, heat_maps
from deepfit.explain.draw import overlay
from deepfit.explain.layers import Layer, choose_layer, find_layers
from deepfit.explain.result import ExplainSettings, Explanation
from deepfit.modalities.image.augment import to_unit_range
from deepfit.modalities.image.store import image_tensor
from deepfit.report.drawing import caption
from deepfit.tasks.classify.explain import enlarged, name_of, target_index
from deepfit.tasks.detect.explain import OBJECT_METHODS, outline

BORDER = (255, 255, 255)  # the region's border: white stands out on every colour of the heat


class RegionScore:
    """grad-cam target: the sum of class `index`'s logits over `region` ((H, W) bool) of a (K, H', W') output."""

    def __init__(self, index: int, region: torch.Tensor) -> None:
        self.index, self.region = index, region

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        h, w = self.region.shape
        return (output[self.index, :h, :w] * self.region.to(output)).sum()


def decoder_layer(layers: list[Layer], size: tuple[int, int], num_classes: int) -> str | None:
    """The default layer of a segmenter: the last the score reaches at a quarter of the input's resolution or coarser
    (a U-Net's decoder stage at 1/4), leaving out the class layer itself (its map would be the logits again). The
    encoder's last stage, which Grad-CAM takes for a classifier, is a 16 x 16 grid on a 512 px image: too coarse to show
    which pixels made a region. None when no layer qualifies (then the usual default)."""
    fit = [layer for layer in layers if layer.reaches and layer.grid[0] <= size[0] // 4 and layer.shape[1] != num_classes]
    return fit[-1].name if fit else None


def explain_regions(predictor: Any, items: list[Any], settings: ExplainSettings) -> list[Explanation]:
    """A map per predicted class region of each image: the `settings.max_objects` largest, or the region of class
    `settings.target` (none where that class was not predicted)."""
    method = check_method(settings.method, OBJECT_METHODS, "a segmenter")
    classes, model, out = predictor.trained.classes, predictor.model, []
    asked = None if settings.target is None else target_index(classes, np.zeros(len(classes)), settings.target)
    for i, item in enumerate(items):
        image = image_tensor(item)  # (3, H, W) uint8
        h, w = image.shape[-2:]
        painted = torch.from_numpy(predictor.predict_one(image).astype(np.int64))  # (H, W)
        areas = torch.bincount(painted.flatten(), minlength=len(classes))
        wanted = [int(k) for k in torch.argsort(areas, descending=True, stable=True)
                  if areas[k] > 0 and asked in (None, int(k))][: settings.max_objects]
        if not wanted:
            continue
        x = to_unit_range(image[None].to(predictor.device))
        x = torch.nn.functional.pad(x, (0, (32 - w % 32) % 32, 0, (32 - h % 32) % 32))  # (1, 3, H', W')
        regions = [painted == k for k in wanted]  # (H, W) bool each
        first = RegionScore(wanted[0], regions[0])
        layers = find_layers(model, x, lambda logits, first=first: first(logits[0]))  # found once a size
        layer = choose_layer(layers, settings.layer or decoder_layer(layers, x.shape[-2:], len(classes)), "the segmenter")
        with torch.no_grad():
            probs = model(x).float().softmax(1)[0, :, :h, :w].cpu()  # (K, H, W)
        shown = enlarged(image.permute(1, 2, 0).numpy())  # (H', W', 3): H' a whole multiple of H
        for k, region in zip(wanted, regions, strict=True):
            # a map at a time: the whole image with its gradients, not a tile, may be large
            heat = heat_maps(model, x, [RegionScore(k, region.to(predictor.device))], layer, method)[0, :h, :w]
            share = float(region.float().mean())
            mean = float(probs[k][region].mean())  # its mean probability over the region
            picture = outline(overlay(shown, heat), region.numpy(), BORDER)
            picture = caption(picture, f"{classes[k]} ({share:.0%} of the image)")
            out.append(Explanation(name_of(item, i), classes[k], mean, classes[k], method, layer.name, picture, heat=heat,
                                   extra={"region_fraction": round(share, 6)}))
    return out
