"""The explanation beside each worst-predicted image of a detection or segmentation report: where the model looked
(a class-activation map of one object or one class region, drawn over the image) next to the image's picture.

Explained with the evaluation's own predictor, for the images the gallery shows only, one map each. An explanation is
an extra: one that fails is left out with a warning, never the report, and after REPORT_SECONDS (a large detector on
a CPU) the remaining images go without (`deepfit explain` draws them).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from PIL import Image

from deepfit.errors import ConfigError
from deepfit.explain.result import ExplainSettings, Explanation
from deepfit.log import logger
from deepfit.report.gallery import gallery, jpeg_data_uri, shot_card
from deepfit.report.html import esc
from deepfit.report.text import fixed

REPORT_SECONDS = 60.0
EXPLANATION_PX = 480  # the explanation's picture is embedded at most this large: it is drawn beside another

# Added to a report's styles: an image and its explanation side by side at the same height (each grows in proportion
# to its width / height), and cards wide enough for two pictures.
EXPLAINED_CSS = """<style>
.explained { display: flex; gap: 6px; align-items: flex-start; }
.explained > img { min-width: 0; flex-basis: 0; }
.with-explanations.det-gallery { grid-template-columns: repeat(auto-fill, minmax(480px, 1fr)); }
</style>"""

Explain = Callable[[Any, list[Any], ExplainSettings], list[Explanation]]


def explain_shown(explain: Explain, predictor: Any, shown: Sequence[tuple[str, Any, ExplainSettings]]) -> list[Explanation | None]:
    """The first explanation `explain` gives of each (name, input, settings) the gallery shows, or None where it gives
    none (nothing detected), fails, or the time is up."""
    out: list[Explanation | None] = []
    start = time.monotonic()
    for n, (name, item, settings) in enumerate(shown):
        if time.monotonic() - start > REPORT_SECONDS:
            logger.warning(f"explanations took over {REPORT_SECONDS:g} s: the last {len(shown) - n} of the worst "
                           "predictions are shown without one (deepfit explain draws them)")
            break
        try:
            made = explain(predictor, [item], settings)
        except ConfigError as e:  # the network cannot be explained at all: said once
            logger.warning(f"the report shows no explanations: {e}")
            break
        except Exception as e:  # an explanation is an extra: a report never fails for one
            logger.warning(f"no explanation of {name} in the report: {type(e).__name__}: {e}")
            made = []
        out.append(made[0] if made else None)
    return out + [None] * (len(shown) - len(out))


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
