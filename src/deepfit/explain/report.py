"""Explanations for a report's worst examples: an extra, never a reason for the report to fail.

Every task's evaluation report explains only the examples its gallery shows, with the evaluation's own predictor. One
that fails is left out with a warning; a network that cannot be explained at all is said once; after REPORT_SECONDS
(a large network on a CPU, or long texts occluded token by token) the remaining examples go without (`deepfit explain`
draws them).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from deepfit.errors import ConfigError
from deepfit.explain.result import ExplainSettings, Explanation
from deepfit.log import logger

REPORT_SECONDS = 60.0

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
