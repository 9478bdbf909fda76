"""The explanation beside each worst-predicted image of a detection or segmentation report: where the model looked
(a class-activation map of one object or one class region, drawn over the image) next to the image's picture.

Explained with the evaluation's own predictor, for the images the gallery shows only, one map each
(explain/report.py `explain_shown`: a failure or the time limit leaves an image without one, never the report).
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

from deepfit.explain.result import Explanation
from deepfit.report.gallery import gallery, jpeg_data_uri, shot_card
from deepfit.report.html import esc
from deepfit.report.text import fixed

EXPLANATION_PX = 480  # the explanation's picture is embedded at most this large: it is drawn beside another

# Added to a report's styles: an image and its explanation side by side at the same height (each grows in proportion
# to its width / height), and cards wide enough for two pictures.
EXPLAINED_CSS = """<style>
.explained { display: flex; gap: 6px; align-items: flex-start; }
.explained > img { min-width: 0; flex-basis: 0; }
.with-explanations.det-gallery { grid-template-columns: repeat(auto-fill, minmax(480px, 1fr)); }
</style>"""

def explained_gallery(items: Sequence[tuple[str, Image.Image, float]], explanations: Sequence[Explanation | None], *,
                      score_label: str, decimals: int, max_size: tuple[int, int], quality: int = 85,
                      extra_class: str = "") -> str:
    """`report.gallery.scored_gallery`'s cards, each picture with its explanation (if any) beside it at the same height,
    marked by the class `explanation` and an alt text starting "explanation:"."""
    cards = []
    for (name, picture, score), e in zip(items, explanations, strict=True):
        shown = f'<img src="{jpeg_data_uri(picture, max_size, quality)}" alt="{esc(name)}"'
        rows = f'<div class="row">{score_label}: <b>{fixed(score, decimals)}</b></div>'
        if e is None:
            cards.append(shot_card(shown + ">", name, rows))
            continue
        side = Image.fromarray(e.picture)
        what = f"where the model looked for {e.target} {e.probability:.0%} ({e.method}, layer {e.layer})"
        cards.append(shot_card(
            f'<div class="explained">{shown} style="flex-grow:{_aspect(picture):.4f}">'
            f'<img class="explanation" src="{jpeg_data_uri(side, (EXPLANATION_PX, EXPLANATION_PX), quality)}" '
            f'alt="explanation: {esc(what)}" title="{esc(what)}" style="flex-grow:{_aspect(side):.4f}"></div>',
            name, rows + f'<div class="row">beside it: {esc(what)}</div>'))
    return gallery(cards, empty_html="No images to show.", extra_class=extra_class)


def _aspect(picture: Image.Image) -> float:
    return picture.width / max(1, picture.height)
