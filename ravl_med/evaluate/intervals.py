"""Means over seeds with 95% intervals: how every benchmark figure is reported.

A figure measured on one seed can be luck (the demo's RaVL Precision@10 was 0.0, 0.2, 1.0, 0.2, 0.0
over seeds 0-4), so the tables report the mean over seeds with a Student-t interval.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import numpy as np

__all__ = ["MeanInterval", "mean_interval"]


class MeanInterval(NamedTuple):
    """Mean of n values and its two-sided interval (NaN bounds when n < 2)."""

    mean: float
    low: float
    high: float
    n: int

    def __str__(self) -> str:
        return format(self, ".2f")

    def __format__(self, spec: str) -> str:
        """``mean [low, high]`` with each number in ``spec`` (e.g. ``f"{interval:+.3f}"``); ``str()`` uses ``.2f``."""
        if not spec:
            return str(self)
        if self.n == 0:
            return "n/a"
        if self.n < 2:
            return f"{self.mean:{spec}} (n=1)"
        return f"{self.mean:{spec}} [{self.low:{spec}}, {self.high:{spec}}]"


def mean_interval(values: Iterable[float], level: float = 0.95) -> MeanInterval:
    """Mean and Student-t interval of the finite ``values`` (seeds are the independent units).

    Args:
        values: one value per seed (NaN and None are dropped).
        level: coverage of the interval.

    Returns:
        :class:`MeanInterval`; bounds are clipped to nothing (a mean of accuracies can have an
        interval below 0 when seeds disagree a lot: that says the seeds disagree).
    """
    from scipy import stats

    array = np.asarray([v for v in values if v is not None], dtype=np.float64)
    array = array[np.isfinite(array)]
    if array.size == 0:
        return MeanInterval(float("nan"), float("nan"), float("nan"), 0)
    mean = float(array.mean())
    if array.size < 2:
        return MeanInterval(mean, float("nan"), float("nan"), 1)
    half = float(stats.t.ppf(0.5 + level / 2, array.size - 1) * array.std(ddof=1) / np.sqrt(array.size))
    return MeanInterval(mean, mean - half, mean + half, int(array.size))
