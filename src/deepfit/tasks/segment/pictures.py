"""Class masks as pictures: coloured masks, overlays, where the prediction is wrong, and the strips the report shows.

Conventions:

    mask   = (H, W) class indexes 0..K-1; ``IGNORE`` (255) marks unlabelled or ambiguous pixels
    colors = (K, 3) uint8, the display colour of each class

Ignored pixels are drawn as light grey diagonal stripes (:data:`IGNORE_HATCH`), never as a flat colour: many
palettes (Pascal VOC's, the default one) give the background class black, and a dark flat "ignored" beside it
would read as the same thing. Stripes are no class's colour in any palette, and the report's legend shows them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from deepfit.data.formats.masks import IGNORE_INDEX as IGNORE
from deepfit.report.drawing import as_numpy, rgb_array
from deepfit.report.gallery import panel_strip

__all__ = [
    "ERROR_COLOR",
    "IGNORE",
    "IGNORE_COLOR",
    "IGNORE_HATCH",
    "class_indexes",
    "color_table",
    "colorize",
    "error_map",
    "overlay",
    "side_by_side",
]

IGNORE_HATCH = ((232, 232, 232), (168, 168, 168))  # the two shades of the stripes drawn on ignored pixels
IGNORE_COLOR = IGNORE_HATCH[1]  # where one flat colour must do: a palette PNG's IGNORE entry, a chart's bar
ERROR_COLOR = (230, 0, 110)  # a wrong pixel in the error panel: loud, and alone in a faded picture
_STRIPES = 40  # about this many stripes across the longer side, whatever the mask's size, so they survive scaling


def color_table(colors: Any) -> np.ndarray:
    """(K, 3) uint8 class colours, checked."""
    table = np.asarray(colors)
    if table.ndim != 2 or table.shape[1] != 3:
        raise ValueError(f"colors must be a (K, 3) array, got shape {table.shape}")
    return table.astype(np.uint8)


def class_indexes(mask: Any) -> np.ndarray:
    """(H, W) int64 class indexes from a numpy array, a torch tensor (any device) or a PIL image."""
    array = np.asarray(mask) if isinstance(mask, Image.Image) else as_numpy(mask)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]  # (1, H, W), as a batch of one comes out of a model
    if array.ndim != 2:
        raise ValueError(f"a mask must be (H, W), got shape {array.shape}")
    return array.astype(np.int64)


def _known(index: np.ndarray, num_classes: int) -> np.ndarray:
    """Pixels that hold a real class: not IGNORE and inside the colour table."""
    return (index >= 0) & (index < num_classes) & (index != IGNORE)


def _hatch(shape: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) diagonal stripes of the two :data:`IGNORE_HATCH` shades, their width following the picture's size."""
    height, width = shape
    half = max(2, round(max(height, width) / (2 * _STRIPES)))  # 1 would draw a checkerboard, not stripes
    rows, columns = np.ogrid[:height, :width]
    return np.asarray(IGNORE_HATCH, dtype=np.uint8)[((rows + columns) // half) % 2]


def colorize(mask: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """(H, W) class indexes -> (H, W, 3) uint8 in the class colours.

    IGNORE, and any index without a colour (>= K), is drawn as light grey stripes, so unlabelled pixels are
    visibly "not a class" rather than borrowing some class's colour, or black's.
    """
    table = color_table(colors)
    index = class_indexes(mask)
    known = _known(index, len(table))
    picture = table[np.where(known, index, 0)] if len(table) else np.zeros((*index.shape, 3), np.uint8)
    return np.where(known[:, :, None], picture, _hatch(index.shape))


def overlay(image: np.ndarray, mask: np.ndarray, colors: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The image blended with the class colours: ``(1 - alpha) * image + alpha * colour``, rounded.

    IGNORE pixels (and indexes without a colour) keep the image untouched: tinting them would hide
    exactly the parts of the picture nobody labelled.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    picture = rgb_array(image)
    index = class_indexes(mask)
    if index.shape != picture.shape[:2]:
        raise ValueError(f"the mask is {index.shape}, the image is {picture.shape[:2]}: they must match")
    tinted = picture.astype(np.float64) * (1.0 - alpha) + colorize(index, colors).astype(np.float64) * alpha
    blended = np.clip(np.rint(tinted), 0, 255).astype(np.uint8)
    return np.where(_known(index, len(color_table(colors)))[:, :, None], blended, picture)


def error_map(image: np.ndarray, truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """(H, W, 3): the image faded to a light grey, the pixels where the prediction is not the truth in
    :data:`ERROR_COLOR`, and ignored pixels striped (they are not errors: they are not scored).

    Where the mistakes are is what a reader cannot see by comparing two coloured masks by eye.
    """
    grey = rgb_array(image).astype(np.float64).mean(axis=2, keepdims=True)
    faded = np.repeat(np.rint(150.0 + 0.4 * grey), 3, axis=2).astype(np.uint8)
    truth, prediction = class_indexes(truth), class_indexes(prediction)
    if truth.shape != prediction.shape or truth.shape != faded.shape[:2]:
        raise ValueError(f"image {faded.shape[:2]}, truth {truth.shape} and prediction {prediction.shape} must match")
    ignored = truth == IGNORE
    wrong = (truth != prediction) & ~ignored
    picture = np.where(ignored[:, :, None], _hatch(truth.shape), faded)
    return np.where(wrong[:, :, None], np.asarray(ERROR_COLOR, dtype=np.uint8), picture)


def side_by_side(
    image: np.ndarray, truth: np.ndarray | None, prediction: np.ndarray, colors: np.ndarray, *, height: int = 240
) -> Image.Image:
    """image | true mask | predicted mask | errors as one RGB picture, each panel ``height`` pixels high.

    Masks are scaled with NEAREST so no blended, class-less colours appear at region borders. Each panel
    has a small caption strip above it; without a truth the strip is image | prediction.
    """
    panels = [("image", Image.fromarray(rgb_array(image)), Image.Resampling.BILINEAR)]
    if truth is not None:
        panels.append(("truth", Image.fromarray(colorize(truth, colors)), Image.Resampling.NEAREST))
    panels.append(("prediction", Image.fromarray(colorize(prediction, colors)), Image.Resampling.NEAREST))
    if truth is not None:
        panels.append(("errors", Image.fromarray(error_map(image, truth, prediction)), Image.Resampling.NEAREST))
    return panel_strip(panels, height)
