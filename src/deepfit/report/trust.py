"""What a reader needs before trusting a report's numbers, shared by every task's page.

    interval_hint   a headline figure's 95% confidence interval, as a line under its card
    one_class_note  the warning that the model answers (almost) one class for everything
    options_table   the training options the run was made with
    worst_first     which items a "worst predictions" gallery shows: the wrong ones, worst first

A report that shows only its best-looking parts misleads; these make the uncertain, the degenerate and the
wrong visible on the page itself, in the same way for classification, detection and segmentation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from deepfit.log import logger
from deepfit.report.html import esc
from deepfit.report.stats import Interval
from deepfit.report.text import fixed

__all__ = ["COLLAPSE_SHARE", "interval_hint", "one_class_note", "options_table", "worst_first"]

# One class taking this share of all predictions, while the truth is spread over several, is a collapsed model.
COLLAPSE_SHARE = 0.99


def interval_hint(interval: Mapping[str, Any] | Interval | None, spell: Callable[[Any], str] = fixed) -> str:
    """``<div class="ci">95% CI 0.612 – 0.790</div>`` to add to a card's hint; empty when there is no interval.

    ``spell`` writes each bound as the card writes its value (:func:`~deepfit.report.text.percent` for
    accuracies), so the interval reads in the same units as the number above it.
    """
    found = Interval.of(interval)
    if found is None or math.isnan(found.low) or math.isnan(found.high):
        return ""
    title = f"{found.method} interval over the test images" if found.method else "confidence interval"
    return (f'<div class="ci" title="{esc(title)}">{100 * found.level:.0f}% CI {spell(found.low)} – '
            f"{spell(found.high)}</div>")


def one_class_note(
    predicted: Sequence[float], truth: Sequence[float], class_names: Sequence[str], *, what: str,
    share: float = COLLAPSE_SHARE,
) -> str | None:
    """A warning when the model predicts nothing at all, or one class for (nearly) everything; else ``None``.

    ``predicted[k]`` and ``truth[k]`` count class k's predictions and true items (images, pixels, objects),
    and ``what`` names them ("test images", "labelled pixels", "detections"). One class is a problem only
    when the truth is spread over several: a model that answers "background" for 99.5% of pixels that are
    99.8% background is right. The warning is logged too, so it is seen without opening the report.
    """
    predicted_counts = np.asarray(predicted, dtype=np.float64)
    true_counts = np.asarray(truth, dtype=np.float64)
    total, true_total = float(predicted_counts.sum()), float(true_counts.sum())
    if total <= 0:
        if true_total <= 0:
            return None  # nothing to find and nothing found
        note = (f"The model made no {what} at all on data with {true_total:,.0f} true ones: it has not learned to "
                "find anything yet (too few epochs, a learning rate that is too high or too low, or labels that "
                "do not match the images).")
    else:
        top = int(predicted_counts.argmax())
        top_share = predicted_counts[top] / total
        true_share = true_counts[top] / true_total if true_total > 0 else 0.0
        if top_share < share or int((true_counts > 0).sum()) < 2 or true_share >= share:
            return None
        name = class_names[top] if top < len(class_names) else str(top)
        note = (f"The model predicts one class, {name!r}, for {top_share:.1%} of the {what} "
                f"({predicted_counts[top]:,.0f} of {total:,.0f}), although only {true_share:.1%} of the truth is "
                f"{name!r}: it answers the same thing whatever it sees, and the scores below describe that, not "
                "a model that tells classes apart. Check the training curves, the learning rate and the class balance.")
    logger.warning(note)
    return note


def _spell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None or value == "" or value == {} or value == []:
        return "–"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, Mapping):
        return ", ".join(f"{key}={_spell(item)}" for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_spell(item) for item in value)
    return str(value)


def options_table(options: Mapping[str, Any]) -> str:
    """The training options as a two-column table (option, value); empty when there are none.

    Values are spelled for reading: yes/no, ``key=value`` lists, ``–`` for "not set".
    """
    if not options:
        return ""
    rows = "".join(f"<tr><td>{esc(key)}</td><td>{esc(_spell(value))}</td></tr>" for key, value in options.items())
    return f'<table class="summary options">{rows}</table>'


def worst_first(scores: Sequence[float], wrong: Sequence[bool], most: int) -> tuple[list[int], bool]:
    """Which items a "worst predictions" gallery shows, and whether they are mistakes.

    The wrong items (``wrong[i]``), lowest ``scores[i]`` first (the probability given to the truth, an image's
    F1 or mean IoU), at most ``most``: a gallery titled "got most wrong" must not fill up with right answers.
    Only when nothing is wrong does it show the right items with the lowest scores (the least sure), and the
    second value is then False so the page can title the gallery accordingly.
    """
    order = sorted(range(len(scores)), key=lambda i: (scores[i], i))
    mistakes = [i for i in order if wrong[i]]
    if mistakes:
        return mistakes[:most], True
    return order[:most], False
