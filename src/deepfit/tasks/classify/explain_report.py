"""The explanation beside each worst prediction of a classification report: where the network looked for the class it
predicted (a heat map over the image or the spectrogram), or which tokens of a text spoke for it.

Explained with the evaluation's own predictor and the task's defaults (`ExplainSettings()`), for the worst cards only.
An explanation is an extra: one that fails is left out with a warning, never the report, and after REPORT_SECONDS
(a large network on a CPU, or long texts occluded token by token) the remaining cards go without.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from PIL import Image

from deepfit.errors import ConfigError
from deepfit.explain.draw import token_html
from deepfit.explain.result import ExplainSettings, Explanation
from deepfit.log import logger
from deepfit.report.gallery import THUMBNAIL_PX, jpeg_data_uri
from deepfit.report.html import esc

REPORT_SECONDS = 60.0
MAX_TOKENS_SHOWN = 120  # a card shows the start of a long text, as its text card does


def explanation_html(explanation: Explanation) -> str:
    """A card's explanation: the picture as an embedded JPEG, or a text's tokens highlighted; marked with the class
    `explanation`."""
    what = f"why {explanation.target} ({explanation.method})"
    if explanation.tokens is not None:
        tokens = explanation.tokens[:MAX_TOKENS_SHOWN]
        more = " [...]" if len(explanation.tokens) > MAX_TOKENS_SHOWN else ""
        return (f'<div class="explanation" title="{esc(what)}: red for the class, blue against" '
                f'style="font-size:0.85em">{token_html(tokens)}{more}</div>')
    uri = jpeg_data_uri(Image.fromarray(explanation.picture), (THUMBNAIL_PX, THUMBNAIL_PX))
    return f'<div class="thumb explanation"><img src="{uri}" alt="explanation: {esc(what)}" title="{esc(what)}"></div>'


def worst_explainer(predictor: Any, texts: Mapping[str, str] | None = None) -> Callable[[list[str]], dict[str, str]]:
    """paths of worst cards -> {path: the HTML of its explanation}; `texts` maps a text's source (its card's path) to
    the text itself, for a text classifier."""
    from deepfit.registry import get_task

    task = get_task("classify")

    def explain(paths: list[str]) -> dict[str, str]:
        shown: dict[str, str] = {}
        start = time.monotonic()
        for n, path in enumerate(paths):
            if time.monotonic() - start > REPORT_SECONDS:
                logger.warning(f"explanations took over {REPORT_SECONDS:g} s: the last {len(paths) - n} of the worst "
                               "predictions are shown without one (deepfit explain draws them)")
                break
            item = texts.get(path) if texts is not None else Path(path)
            if item is None:
                continue
            try:
                made = task.explain(predictor, [item], ExplainSettings())
            except ConfigError as e:  # the network cannot be explained at all: said once
                logger.warning(f"the report shows no explanations: {e}")
                break
            except Exception as e:  # an explanation is an extra: a report never fails for one
                logger.warning(f"no explanation of {path} in the report: {type(e).__name__}: {e}")
                continue
            if made:
                shown[path] = explanation_html(made[0])
        return shown

    return explain


def run_explainer(run_dir: Path, device: str = "auto", texts: Mapping[str, str] | None = None) -> Callable[[list[str]], dict[str, str]]:
    """`worst_explainer` for a run whose predictor is not at hand (`deepfit features` writes its report as it saves the
    run): the predictor is loaded from the run's best checkpoint when the cards are explained."""
    from deepfit.workflows.predict import load_predictor

    def explain(paths: list[str]) -> dict[str, str]:
        try:
            _, predictor = load_predictor(run_dir, "best", device)
        except Exception as e:  # an explanation is an extra: a report never fails for one
            logger.warning(f"the report shows no explanations: {type(e).__name__}: {e}")
            return {}
        return worst_explainer(predictor, texts)(paths)

    return explain
