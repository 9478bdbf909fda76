"""The explanation beside each worst prediction of a classification report: where the network looked for the class it
predicted (a heat map over the image or the spectrogram), or which tokens of a text spoke for it.

Explained with the evaluation's own predictor and the task's defaults (`ExplainSettings()`), for the worst cards only
(explain/report.py `explain_shown`: a failure or the time limit leaves a card without one, never the report).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from PIL import Image

from deepfit.explain.draw import token_html
from deepfit.explain.report import explain_shown
from deepfit.explain.result import ExplainSettings, Explanation
from deepfit.log import logger
from deepfit.report.gallery import THUMBNAIL_PX, jpeg_data_uri
from deepfit.report.html import esc

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
        items = [(path, texts.get(path) if texts is not None else Path(path)) for path in paths]
        shown = [(path, item, ExplainSettings()) for path, item in items if item is not None]
        made = explain_shown(task.explain, predictor, shown)
        return {path: explanation_html(e) for (path, _, _), e in zip(shown, made, strict=True) if e is not None}

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
