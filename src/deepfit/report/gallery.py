"""Pictures in a report: thumbnails of image files, embedded JPEGs, galleries of captioned cards, panel strips,
and a few examples of every class.

Every picture is embedded in the page as a ``data:`` URI (see :mod:`deepfit.report.html`), scaled down
first so a report with a hundred pictures stays a file that opens quickly, and tiny ones (8 x 8 digits)
enlarged pixel by pixel so they can be seen. A gallery is a grid of "shot" cards: the picture, its file
name, and a few lines about it (scores, labels).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont, ImageOps

from deepfit.log import logger
from deepfit.report.drawing import label_font_path
from deepfit.report.html import data_uri, empty_note, esc
from deepfit.report.text import clamp, fixed

# One class's examples: (class name, [(caption, picture: an image file's path or a drawn PIL image), ...]).
ClassExamples = tuple[str, Sequence[tuple[str, str | Image.Image]]]

__all__ = [
    "EXAMPLES_PER_CLASS",
    "MAX_EXAMPLE_CLASSES",
    "THUMBNAIL_PX",
    "ClassExamples",
    "class_examples",
    "crop_around",
    "fit_picture",
    "gallery",
    "jpeg_data_uri",
    "panel_strip",
    "scored_gallery",
    "shot_card",
    "thumbnail_data_uri",
]

THUMBNAIL_PX = 160  # the side of a thumbnail; the page's .shot styles are sized for it
UPSCALE_TO = 128  # pictures smaller than this (longer side) are enlarged, pixel by pixel, to about this size
EXAMPLE_PX = 128  # the side of an example picture
EXAMPLES_PER_CLASS = 4
MAX_EXAMPLE_CLASSES = 40  # a 1000-class report would otherwise be mostly examples
_PANEL_GAP_PX = 4  # white space between the panels of a strip
_GAP_COLOR = (255, 255, 255)
_CAPTION_BACKGROUND = (31, 41, 51)
_CAPTION_TEXT = (245, 247, 250)


def fit_picture(picture: Image.Image, max_size: tuple[int, int]) -> Image.Image:
    """``picture`` scaled to fit ``max_size`` (width, height): down smoothly, or up when it is tiny.

    An 8 x 8 digit or a 16 px icon would show as a speck, so a picture whose longer side is under
    :data:`UPSCALE_TO` is enlarged by a whole factor with NEAREST, which keeps its pixels sharp squares
    (the reader sees exactly what the model saw) and never beyond ``max_size``.
    """
    shown = picture.copy()
    shown.thumbnail(max_size)  # never enlarges
    longer = max(shown.width, shown.height)
    if 0 < longer < UPSCALE_TO:
        factor = min(math.ceil(UPSCALE_TO / longer), max_size[0] // shown.width, max_size[1] // shown.height)
        if factor > 1:
            shown = shown.resize((shown.width * factor, shown.height * factor), Image.Resampling.NEAREST)
    return shown


def thumbnail_data_uri(image_path: str, px: int = THUMBNAIL_PX) -> str | None:
    """A small embedded copy of the image file, upright, or ``None`` when it cannot be read for any reason.

    A report is often produced long after the data moved or on another machine, so an
    unreadable picture must degrade to a placeholder rather than lose the whole report.
    """
    try:
        with Image.open(image_path) as opened:
            opened.draft(None, (px * 2, px * 2))  # JPEGs decode faster at reduced size
            picture = ImageOps.exif_transpose(opened)  # phone photos otherwise show sideways
            picture = picture.convert("RGBA" if picture.mode in ("RGBA", "LA", "P") else "RGB")
            picture = fit_picture(picture, (px, px))
            buffer = io.BytesIO()
            if picture.mode == "RGBA":
                picture.save(buffer, format="PNG", optimize=True)  # keep transparency
                return data_uri(buffer.getvalue(), "image/png")
            picture.save(buffer, format="JPEG", quality=85)
            return data_uri(buffer.getvalue(), "image/jpeg")
    except Exception as error:  # any failure (missing, truncated, not an image) means "placeholder"
        logger.debug("cannot make a thumbnail of %s: %s", image_path, error)
        return None


def jpeg_data_uri(picture: Image.Image, max_size: tuple[int, int], quality: int = 85) -> str:
    """JPEG ``data:`` URI of a picture fitted to ``max_size`` (width, height) by :func:`fit_picture`."""
    shown = fit_picture(picture.convert("RGB"), max_size)
    buffer = io.BytesIO()
    shown.save(buffer, format="JPEG", quality=quality)
    return data_uri(buffer.getvalue(), "image/jpeg")


def shot_card(picture_html: str, name: str, rows_html: str) -> str:
    """One gallery card: the picture, its name (escaped, in monospace) and lines of ``<div class="row">``."""
    return f'<div class="shot">{picture_html}<div class="path">{esc(name)}</div>{rows_html}</div>'


def gallery(cards: Sequence[str], *, empty_html: str, extra_class: str = "") -> str:
    """A grid of :func:`shot_card` cards; ``empty_html`` stands in when there is none.

    ``extra_class`` lets a task size its cards with its own styles (large drawings, wide strips).
    """
    if not cards:
        return empty_note(empty_html)
    classes = f"gallery {extra_class}" if extra_class else "gallery"
    return f'<div class="{classes}">{"".join(cards)}</div>'


def scored_gallery(
    items: Sequence[tuple[str, Image.Image, float]], *, score_label: str, decimals: int,
    max_size: tuple[int, int], quality: int = 85, extra_class: str = "",
) -> str:
    """A gallery of (name, picture, score) in the order given, each card reading "score_label: 0.87".

    Callers pass the items worst first, because the images the model gets most wrong are the ones
    worth a look. Pictures are embedded as JPEGs scaled down to ``max_size``.
    """
    cards = [
        shot_card(
            f'<img src="{jpeg_data_uri(picture, max_size, quality)}" alt="{esc(name)}">', name,
            f'<div class="row">{score_label}: <b>{fixed(score, decimals)}</b></div>',
        )
        for name, picture, score in items
    ]
    return gallery(cards, empty_html="No images to show.", extra_class=extra_class)


def crop_around(picture: Image.Image, box: Sequence[float], margin: float = 0.25) -> Image.Image:
    """The part of ``picture`` around ``box`` (x1, y1, x2, y2 pixels), widened by ``margin`` of its size each side.

    A little context around an object or a region shows what it is far better than the whole photo, where a
    small object is lost in a thumbnail, or the exact box, where its edges are cut.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    dx, dy = margin * max(x2 - x1, 1.0), margin * max(y2 - y1, 1.0)
    left, top = max(0, math.floor(x1 - dx)), max(0, math.floor(y1 - dy))
    right, bottom = min(picture.width, math.ceil(x2 + dx)), min(picture.height, math.ceil(y2 + dy))
    if right <= left or bottom <= top:
        return picture
    return picture.crop((left, top, right, bottom))


def class_examples(examples: Sequence[ClassExamples], *, classes_total: int | None = None) -> str:
    """One row per class: its name and a few example pictures (files or drawn pictures), each with a caption.

    Shows the reader what every class looks like in the test split, the first check that the labels mean
    what the class names say. At most :data:`MAX_EXAMPLE_CLASSES` rows; ``classes_total`` (when more classes
    exist than rows given) adds a line saying how many were left out.
    """
    rows = []
    for name, pictures in examples[:MAX_EXAMPLE_CLASSES]:
        shots = []
        for caption, picture in pictures:
            uri = thumbnail_data_uri(picture, EXAMPLE_PX) if isinstance(picture, str) else jpeg_data_uri(
                picture, (EXAMPLE_PX, EXAMPLE_PX))
            shots.append(f'<img src="{uri}" alt="{esc(caption)}" title="{esc(caption)}">' if uri else
                         f'<span class="placeholder" title="{esc(caption)}">not available</span>')
        shown = "".join(shots) or '<span class="empty">no example in the evaluated images</span>'
        rows.append(f'<div class="examples"><div class="name">{esc(name)}</div><div class="pictures">{shown}</div></div>')
    if not rows:
        return empty_note("No examples to show.")
    left_out = max(len(examples), classes_total or 0) - len(rows)
    more = empty_note(f"… and {left_out} more classes.") if left_out > 0 else ""
    return "".join(rows) + more


def _caption_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    font_path = label_font_path()
    if font_path:
        try:
            return ImageFont.truetype(font_path, size)
        except OSError as error:  # a font file that cannot be read must not stop the pictures
            logger.debug("cannot load %s (%s); using PIL's default font", font_path, error)
    return ImageFont.load_default(size)


def _to_height(picture: Image.Image, height: int, resample: Image.Resampling) -> Image.Image:
    width = max(1, int(round(picture.width * height / max(1, picture.height))))
    return picture.resize((width, height), resample)


def panel_strip(panels: Sequence[tuple[str, Image.Image, Image.Resampling]], height: int) -> Image.Image:
    """Pictures side by side as one RGB picture, each scaled to ``height`` pixels and captioned above.

    ``panels`` holds (caption, picture, resampling) each: masks want NEAREST so no blended, class-less
    colours appear at region borders, photos BILINEAR. Panels are separated by a thin white gap.
    """
    if height < 1:
        raise ValueError(f"height must be at least 1, got {height}")
    scaled = [(caption, _to_height(picture, height, resample)) for caption, picture, resample in panels]
    # The caption strip grows a little with the panels so its text stays legible on large strips.
    strip = int(round(clamp(height / 12.0, 14.0, 32.0)))
    total_width = sum(panel.width for _, panel in scaled) + _PANEL_GAP_PX * (len(scaled) - 1)
    canvas = Image.new("RGB", (total_width, strip + height), _GAP_COLOR)
    draw = ImageDraw.Draw(canvas)
    font = _caption_font(max(8, strip - 6))
    x = 0
    for caption, panel in scaled:
        draw.rectangle((x, 0, x + panel.width - 1, strip - 1), fill=_CAPTION_BACKGROUND)
        if isinstance(font, ImageFont.FreeTypeFont):
            draw.text((x + 5, strip / 2), caption, fill=_CAPTION_TEXT, font=font, anchor="lm")
        else:  # PIL's bitmap font knows no anchors
            draw.text((x + 5, 2), caption, fill=_CAPTION_TEXT, font=font)
        canvas.paste(panel, (x, strip))
        x += panel.width + _PANEL_GAP_PX
    return canvas
