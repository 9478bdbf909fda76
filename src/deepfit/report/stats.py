"""How sure a measured number is: 95% confidence intervals for every report, and the standard error `compare` uses.

A score measured on a test set of a few hundred images moves by several points from one test set to another,
so a report that prints "87.5%" alone invites reading more into it than it holds. Every headline figure gets an
interval here, by one of two methods:

    wilson     for a proportion of independent images (accuracy): Wilson's score interval, which stays inside
               [0, 1] and keeps a sensible width at 0% or 100% and on small test sets, where the textbook
               p ± 1.96·SE collapses to a point
    bootstrap  for everything that is not a plain proportion (balanced accuracy, macro F1, mAP, mIoU, ...): the
               test images are drawn again with replacement, the figure recomputed on each draw, and the middle
               95% of those values kept. Images, not pixels or objects, are what is resampled, because pixels
               and the objects of one image are not independent of each other. Seeded, so a report is
               reproducible.

A statistic to bootstrap takes a *weight vector*: how many times each test item is in the resample (0, 1, 2, ...).
That lets a task recompute its figure from per-image sums (``weights @ per_image``) instead of copying data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

__all__ = [
    "BOOTSTRAP_SAMPLES",
    "LEVEL",
    "Interval",
    "bootstrap_intervals",
    "resample_weights",
    "standard_error",
    "wilson_interval",
]

LEVEL = 0.95
BOOTSTRAP_SAMPLES = 1000  # enough for the 2.5% and 97.5% percentiles to settle to about a tenth of the width


@dataclass(frozen=True)
class Interval:
    """A confidence interval: ``low`` and ``high`` (NaN when nothing was measured), its level and its method."""

    low: float
    high: float
    method: str
    level: float = LEVEL

    def to_dict(self) -> dict[str, Any]:
        """As stored in metrics.json and evaluation.json (``None`` for a bound that could not be measured)."""
        bounds = {key: None if math.isnan(value) else round(float(value), 6) for key, value in
                  (("low", self.low), ("high", self.high))}
        return {**bounds, "level": self.level, "method": self.method}

    @classmethod
    def of(cls, value: Mapping[str, Any] | Interval | None) -> Interval | None:
        """An interval back from its dict (as read from metrics.json), or ``None`` when there is none."""
        if value is None or isinstance(value, Interval):
            return value
        bounds = [math.nan if value.get(key) is None else float(value[key]) for key in ("low", "high")]
        return cls(bounds[0], bounds[1], str(value.get("method", "")), float(value.get("level", LEVEL)))


def _z(level: float) -> float:
    return NormalDist().inv_cdf(0.5 + level / 2.0)


def standard_error(p: float, n: int) -> float:
    """Binomial standard error of an accuracy measured on n images (at least that of 1 error in n)."""
    p = min(max(p, 1.0 / n), 1.0 - 1.0 / n) if n > 1 else p
    return math.sqrt(p * (1 - p) / max(n, 1))


def wilson_interval(successes: float, n: int, level: float = LEVEL) -> Interval:
    """Wilson's score interval for a proportion of ``successes`` out of ``n`` independent trials."""
    if n <= 0:
        return Interval(math.nan, math.nan, "wilson", level)
    z = _z(level)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # At 0 or n successes the bound is exactly 0 or 1; say so rather than leave a rounding error of 1e-17.
    low = 0.0 if successes <= 0 else max(0.0, centre - half)
    high = 1.0 if successes >= n else min(1.0, centre + half)
    return Interval(low, high, "wilson", level)


def resample_weights(n: int, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> Iterator[np.ndarray]:
    """``samples`` bootstrap draws of ``n`` items, each as (n,) counts of how often every item was drawn."""
    rng = np.random.default_rng(seed)
    for _ in range(samples):
        yield np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)


def bootstrap_intervals(
    statistic: Callable[[np.ndarray], Sequence[float]], n: int, names: Sequence[str], *,
    samples: int = BOOTSTRAP_SAMPLES, seed: int = 0, level: float = LEVEL,
) -> dict[str, Interval]:
    """Percentile bootstrap intervals of the figures ``names`` that ``statistic(weights)`` returns, over ``n`` items.

    ``statistic`` gets the counts of one resample (see :func:`resample_weights`) and returns every figure at
    once, in the order of ``names``, so per-image sums are computed once per resample whatever the number of
    figures. A resample on which a figure is undefined (NaN) is left out of that figure's percentiles.
    """
    nothing = Interval(math.nan, math.nan, "bootstrap", level)
    if n <= 0:
        return dict.fromkeys(names, nothing)
    values = np.array([statistic(w) for w in resample_weights(n, samples, seed)], dtype=np.float64).reshape(samples, -1)
    tail = 100.0 * (1.0 - level) / 2.0
    intervals = {}
    for name, column in zip(names, values.T, strict=True):
        kept = column[np.isfinite(column)]
        if not kept.size:
            intervals[name] = nothing
            continue
        low, high = np.percentile(kept, [tail, 100.0 - tail])
        intervals[name] = Interval(float(low), float(high), "bootstrap", level)
    return intervals
