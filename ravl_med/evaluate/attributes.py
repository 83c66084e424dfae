"""Accuracy per value of a known subgroup attribute (site, device, view position, sex, age band, ...).

Discovery looks for features nobody listed; a manifest often lists some already (the site an image
came from, the device, the view). A model that is much less accurate on one site's images than on
another's may lean on something that differs between sites. :func:`attribute_accuracy` gives the
accuracy of each value of each attribute with a bootstrap interval (the same binomial bootstrap as
:mod:`ravl_med.evaluate.groups`); :func:`attribute_spread` summarises each attribute by its best and
worst value among those with enough images. Pure numpy/pandas.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from ravl_med.evaluate.groups import _as_1d, _bootstrap_ci

__all__ = ["ATTRIBUTE_COLUMNS", "SPREAD_COLUMNS", "attribute_accuracy", "attribute_spread"]

#: Columns of :func:`attribute_accuracy`.
ATTRIBUTE_COLUMNS = ("attribute", "value", "count", "correct", "accuracy", "ci_low", "ci_high")
#: Columns of :func:`attribute_spread`.
SPREAD_COLUMNS = ("attribute", "n_values", "best_value", "best_accuracy", "best_count", "worst_value",
                  "worst_accuracy", "worst_count", "spread", "separated")

#: The value of an image whose attribute cell is empty.
NOT_GIVEN = "(not given)"


def attribute_accuracy(labels, predictions, attributes: Mapping[str, Sequence[str]], *, n_boot: int = 1000,
                       confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Accuracy per (attribute, value).

    Args:
        labels, predictions: (N,) int class indices.
        attributes: attribute name -> (N,) values (str; empty means not given).
        n_boot: bootstrap resamples per interval (0: no interval).
        confidence: interval level.
        seed: bootstrap seed.

    Returns:
        one row per (attribute, value), values sorted within an attribute; columns
        :data:`ATTRIBUTE_COLUMNS` (``accuracy`` and the interval in [0, 1], NaN interval without resamples).
    """
    labels = _as_1d("labels", labels, np.int64)
    correct = _as_1d("predictions", predictions, np.int64) == labels
    rng = np.random.default_rng(seed)
    rows = []
    for name, values in attributes.items():
        values = np.asarray([str(v).strip() or NOT_GIVEN for v in values], dtype=object)
        if values.shape != labels.shape:
            raise ValueError(f"attribute {name!r}: {values.shape[0]} values for {labels.shape[0]} images")
        for value in sorted(set(values.tolist())):
            member = values == value
            count, hits = int(member.sum()), int(correct[member].sum())
            low, high = _bootstrap_ci(hits, count, n_boot, confidence, rng)
            rows.append({"attribute": name, "value": value, "count": count, "correct": hits,
                         "accuracy": hits / count, "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows, columns=list(ATTRIBUTE_COLUMNS))


def attribute_spread(table: pd.DataFrame, min_count: int = 20) -> pd.DataFrame:
    """Each attribute's best and worst value (among values with ``min_count`` images or more).

    Args:
        table: :func:`attribute_accuracy`'s table.
        min_count: values with fewer images are left out (their accuracy is too uncertain to compare).

    Returns:
        one row per attribute with at least two such values; columns :data:`SPREAD_COLUMNS`:
        ``spread`` = best - worst accuracy, ``separated`` = the two 95% intervals do not overlap
        (``False`` when intervals were not computed).
    """
    rows = []
    for name, part in table.groupby("attribute", sort=False):
        part = part[(part["count"] >= min_count) & (part["value"] != NOT_GIVEN)]
        if len(part) < 2:
            continue
        ordered = part.sort_values(["accuracy", "value"], ascending=[False, True])
        best, worst = ordered.iloc[0], ordered.iloc[-1]
        rows.append({"attribute": name, "n_values": len(part), "best_value": best["value"],
                     "best_accuracy": float(best["accuracy"]), "best_count": int(best["count"]),
                     "worst_value": worst["value"], "worst_accuracy": float(worst["accuracy"]),
                     "worst_count": int(worst["count"]), "spread": float(best["accuracy"] - worst["accuracy"]),
                     "separated": bool(worst["ci_high"] < best["ci_low"])})
    return pd.DataFrame(rows, columns=list(SPREAD_COLUMNS))
