"""Where a detector looked for each object it found: a class-activation map per detected object.

The target of each map is the object's own score: the highest score the detector gives, in one forward pass, to a box
of the same class overlapping the object's box (IoU >= 0.5), as grad-cam's FasterRCNNBoxScoreTarget does for one box
(written here because deepfit's labels are 0-based and an image may have no match). The default layer is the last
stage of the backbone's encoder that the score reaches; `--layer` takes any layer found, the feature pyramid's
included. Maps are computed on the letterboxed image the detector sees (the objects of an image in one batch), then cut
to the image's part of the frame and resized to its pixels. The picture shows the map, the object's box (and an
instance segmenter's mask as an outline), enlarged when the image is small.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.ops import box_iou

from deepfit.explain.cam import check_method, heat_maps
from deepfit.explain.draw import draw_box, overlay
from deepfit.explain.layers import choose_layer, find_layers
from deepfit.explain.result import ExplainSettings, Explanation
from deepfit.modalities.image.augment import to_unit_range
from deepfit.modalities.image.store import image_tensor
from deepfit.report.drawing import class_color
from deepfit.tasks.classify.explain import SHOWN_PX, enlarged, name_of, target_index
from deepfit.tasks.detect.model import set_thresholds
from deepfit.tasks.detect.predict import DEFAULT_IOU

EXPLAIN_CONF = 0.05  # the post-processing keeps boxes down to this score while explaining, so a matched box is found
OBJECT_METHODS = ("gradcam", "gradcam++", "hirescam", "xgradcam", "layercam", "eigencam")  # scorecam: a pass a channel

# model -> {(the layer asked for, input size): the layer}: explain is called one input at a time (workflows/explain.py
# skips an unreadable one, the reports explain each worst image apart), and each search is a forward and backward pass
class BoxScore:
    """grad-cam target: the best score of a detected box of `label` (the model's own, 1-based) overlapping `box`."""

    def __init__(self, label: int, box: torch.Tensor, iou: float = 0.5) -> None:
        self.label, self.box, self.iou = label, box, iou

    def __call__(self, output: dict[str, torch.Tensor]) -> torch.Tensor:
        boxes, scores = output["boxes"], output["scores"]
        if not len(boxes):
            return scores.sum() * 0
        match = (box_iou(self.box[None].to(boxes), boxes)[0] >= self.iou) & (output["labels"] == self.label)
        return scores[match].max() if match.any() else scores.sum() * 0


def outline(picture: np.ndarray, mask: np.ndarray, color: tuple[int, int, int]) -> np.ndarray:
    """The (H, W, 3) picture with the border of `mask` ((h, w) bool, H and W whole multiples of h and w) drawn in
    `color`, about as thick as a drawn box's line."""
    factor = picture.shape[0] // mask.shape[0]
    inside = mask.repeat(factor, 0).repeat(factor, 1)
    inner = inside.copy()
    for _ in range(max(2, round(min(picture.shape[:2]) / 200))):  # erode by 4-neighbours, a pixel a step
        padded = np.pad(inner, 1, mode="edge")  # the image's own edge is no border of the region
        inner = inner & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    out = picture.copy()
    out[inside & ~inner] = color
    return out


def explain_objects(predictor: Any, items: list[Any], settings: ExplainSettings) -> list[Explanation]:
    """A map per detected object (the `settings.max_objects` most confident scoring at least `settings.conf`, of class
    `settings.target` if given); an image with no such object gives none."""
    method, conf = check_method(settings.method, OBJECT_METHODS, "a detector"), settings.conf
    classes, model, out = predictor.trained.classes, predictor.model, []
    if settings.target is not None:
        target_index(classes, np.zeros(len(classes)), settings.target)  # a class it does not know is an error
    for i, item in enumerate(items):
        image = image_tensor(item)  # (3, H, W) uint8
        found = predictor.predict(image, conf=conf)
        keep = [int(j) for j in np.argsort(-found["scores"], kind="stable")
                if settings.target in (None, found["names"][j])][: settings.max_objects]
        if not keep:
            continue
        letterboxed, (scale, _) = predictor._prepare(image)
        x = to_unit_range(letterboxed[None].to(predictor.device))  # (1, 3, S, S) in [0, 1]
        set_thresholds(model, min(conf, EXPLAIN_CONF), DEFAULT_IOU)
        try:
            layers = find_layers(model, x, lambda outputs: sum(o["scores"].sum() for o in outputs))  # found once a size
            layer = choose_layer(layers, settings.layer, "the detector", prefer=_encoder(model))
            targets = [BoxScore(int(found["labels"][j]) + 1, torch.as_tensor(found["boxes"][j] * scale, dtype=torch.float32))
                       for j in keep]  # boxes in the letterboxed frame
            heats = heat_maps(model, x.expand(len(keep), -1, -1, -1), targets, layer, method)  # (N, S, S)
        finally:
            set_thresholds(model, conf, DEFAULT_IOU)
        h, w = image.shape[-2:]
        frame = torch.from_numpy(heats[:, None, : max(1, round(h * scale)), : max(1, round(w * scale))])  # the image's part
        heats = torch.nn.functional.interpolate(frame, size=(h, w), mode="bilinear", align_corners=False)[:, 0].numpy()
        shown = enlarged(image.permute(1, 2, 0).numpy())  # (H', W', 3): H' a whole multiple of H
        factor = max(1, SHOWN_PX // max(h, w))
        for j, heat in zip(keep, heats, strict=True):
            label, score, box = int(found["labels"][j]), float(found["scores"][j]), found["boxes"][j]
            picture = overlay(shown, heat)
            if "masks" in found:
                picture = outline(picture, found["masks"][j], class_color(label))
            picture = draw_box(picture, box * factor, f"{classes[label]} {score:.0%}", class_color(label))
            out.append(Explanation(name_of(item, i), classes[label], score, classes[label], method, layer.name, picture,
                                   heat=heat, box=[float(v) for v in box]))
    return out


def _encoder(model: nn.Module) -> str:
    """The name of the detector's feature encoder (torchvision's backbone.body, an SSD's backbone.features)."""
    names = {n for n, _ in model.named_modules()}
    return next((n for n in ("backbone.body", "backbone.features", "backbone") if n in names), "")
