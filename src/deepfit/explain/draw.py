"""Explanations drawn for people: a heat map over an image or a spectrogram, highlighted tokens of a text.

Heat is drawn with matplotlib's `jet` colours (blue: none, red: the most) at half opacity over the input, so the
picture under it stays visible; token scores in red (evidence for the class) and blue (against it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw

from deepfit.report.drawing import label_font, text_color
from deepfit.report.html import esc

HEAT_ALPHA = 0.5
SPECTROGRAM_HEIGHT = 256  # a spectrogram's picture is enlarged to about this height: its 64 bins would be a strip


def heat_colors(heat: np.ndarray) -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) uint8 colours."""
    return (colormaps["jet"](np.clip(heat, 0, 1))[..., :3] * 255).round().astype(np.uint8)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = HEAT_ALPHA) -> np.ndarray:
    """(H, W, 3) uint8 image with the (h, w) heat map in [0, 1] drawn over it (resized to the image if it differs)."""
    if heat.shape != image.shape[:2]:
        heat = np.asarray(Image.fromarray(heat.astype(np.float32)).resize(image.shape[1::-1], Image.Resampling.BILINEAR))
    mixed = (1 - alpha) * image.astype(np.float32) + alpha * heat_colors(heat).astype(np.float32)
    return mixed.round().clip(0, 255).astype(np.uint8)


def draw_box(image: np.ndarray, box: Sequence[float], label: str, color: tuple[int, int, int]) -> np.ndarray:
    """The image with one labelled box (x1, y1, x2, y2 in its pixels) drawn on it."""
    picture = Image.fromarray(np.ascontiguousarray(image))
    draw = ImageDraw.Draw(picture)
    width = max(2, round(min(picture.size) / 200))
    draw.rectangle(tuple(float(v) for v in box), outline=color, width=width)
    font = label_font(max(10, round(min(picture.size) / 30)))
    x, y = float(box[0]), max(0.0, float(box[1]) - font.size * 1.3)
    left, top, right, bottom = draw.textbbox((x, y), label, font=font)
    draw.rectangle((left - 2, top - 2, right + 2, bottom + 2), fill=color)
    draw.text((x, y), label, fill=text_color(color), font=font)
    return np.asarray(picture)


def spectrogram_picture(spectrogram: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """(bins, frames) spectrogram and heat -> an RGB picture of the spectrogram in grey with the heat over it, low
    frequencies at the bottom, enlarged (pixel by pixel) to about SPECTROGRAM_HEIGHT rows."""
    low, high = np.percentile(spectrogram, [1, 99]) if spectrogram.size else (0.0, 1.0)
    grey = ((spectrogram - low) / max(high - low, 1e-6)).clip(0, 1)
    image = np.repeat((grey * 255).round().astype(np.uint8)[..., None], 3, axis=2)
    drawn = overlay(image, heat)[::-1]  # row 0 is the lowest bin: drawn at the bottom
    scale = max(1, round(SPECTROGRAM_HEIGHT / max(1, drawn.shape[0])))
    return np.ascontiguousarray(drawn.repeat(scale, 0).repeat(scale, 1))


def token_color(score: float, top: float) -> tuple[int, int, int]:
    """White for 0, towards red for evidence for the class, towards blue for evidence against, by |score| / top."""
    strength = min(1.0, abs(score) / top) if top > 0 else 0.0
    fade = round(255 * (1 - 0.75 * strength))
    return (255, fade, fade) if score > 0 else (fade, fade, 255)


def token_html(tokens: Sequence[tuple[str, float]]) -> str:
    """The tokens as HTML spans, each with its colour and its score as a tooltip."""
    top = max((abs(s) for _, s in tokens), default=0.0)
    spans = []
    for token, score in tokens:
        r, g, b = token_color(score, top)
        spans.append(f'<span title="{score:+.3f}" style="background:rgb({r},{g},{b});padding:1px 2px;border-radius:3px">'
                     f"{esc(token)}</span>")
    return '<p class="tokens" style="line-height:1.8">' + " ".join(spans) + "</p>"


def token_picture(tokens: Sequence[tuple[str, float]], title: str, width: int = 720) -> np.ndarray:
    """The tokens drawn as highlighted text wrapped to `width` pixels, under a title line: an RGB array."""
    font, bold = label_font(18), label_font(16)
    top = max((abs(s) for _, s in tokens), default=0.0)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    space, line_height, margin = measure.textlength(" ", font=font), round(font.size * 1.6), 12
    places, x, y = [], margin, margin + line_height
    for token, score in tokens:
        w = measure.textlength(token, font=font)
        if x + w > width - margin and x > margin:
            x, y = margin, y + line_height
        places.append((x, y, w, token, score))
        x += w + space
    picture = Image.new("RGB", (width, y + line_height + margin), (255, 255, 255))
    draw = ImageDraw.Draw(picture)
    draw.text((margin, margin), title, fill=(31, 41, 51), font=bold)
    for x, y, w, token, score in places:
        color = token_color(score, top)
        draw.rectangle((x - 2, y - 2, x + w + 2, y + font.size + 4), fill=color)
        draw.text((x, y), token, fill=(0, 0, 0), font=font)
    return np.asarray(picture)
