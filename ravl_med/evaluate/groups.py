"""Accuracy per group, where a group is (class, spurious feature present or absent).

The evaluation framework of RaVL (see ``docs`` of the method) judges a setting by these groups:
a fine-tuned model has learned the planted shortcut when, on a split where the feature is
independent of the class, images of the spurious class are classified better WITH the feature than
without it; the shortcut usually also pulls images of other classes that carry the feature towards
the spurious class. Mitigation is scored by the worst group's accuracy.

Confidence intervals are percentile bootstrap intervals, resampling the images of each group with
replacement. For a proportion this is exactly a draw of ``Binomial(n, k / n) / n`` per resample,
which is how it is computed (no (n_boot x n) index matrix). Seeded: the same inputs and ``seed``
give the same intervals.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = [
    "TABLE_COLUMNS",
    "GroupAccuracy",
    "group_accuracy_table",
    "overall_accuracy",
    "shortcut_gaps",
    "shortcut_learned",
    "worst_group_accuracy",
]

#: Columns of :func:`group_accuracy_table` (``predicted_spurious`` only with ``spurious_class``).
TABLE_COLUMNS = ("class", "class_index", "feature_present", "count", "correct", "accuracy", "ci_low", "ci_high")


def _as_1d(name: str, values, dtype=None) -> np.ndarray:
    array = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    return array.astype(dtype) if dtype is not None else array


def _bootstrap_ci(correct: int, count: int, n_boot: int, confidence: float,
                  rng: np.random.Generator) -> tuple[float, float]:
    if count == 0 or n_boot <= 0:
        return float("nan"), float("nan")
    resampled = rng.binomial(count, correct / count, size=n_boot) / count
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(resampled, [tail, 1.0 - tail])
    return float(low), float(high)


def group_accuracy_table(
    labels,
    predictions,
    feature_present,
    classes: Sequence[str],
    *,
    spurious_class: str | None = None,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Accuracy of every (class, feature present/absent) group, with bootstrap intervals.

    Args:
        labels: (N,) true class indices into ``classes``; rows with a label outside
            ``[0, len(classes))`` (e.g. -1, unknown) are left out.
        predictions: (N,) predicted class indices.
        feature_present: (N,) bool, whether the image carries the spurious feature.
        classes: C class names.
        spurious_class: when given, the column ``predicted_spurious`` holds the fraction of each
            group predicted as this class (the pull of the shortcut on the other classes).
        n_boot: bootstrap resamples per group (0: no intervals, ``ci_low``/``ci_high`` are NaN).
        confidence: interval coverage, in (0, 1).
        seed: bootstrap seed.

    Returns:
        One row per class and presence, classes in the given order, present before absent:
        ``class`` (str), ``class_index`` (int), ``feature_present`` (bool), ``count`` (images),
        ``correct`` (images predicted right), ``accuracy`` (NaN for an empty group), ``ci_low``,
        ``ci_high`` and, with ``spurious_class``, ``predicted_spurious``.
    """
    labels = _as_1d("labels", labels).astype(np.int64)
    predictions = _as_1d("predictions", predictions).astype(np.int64)
    present = _as_flags("feature_present", feature_present)
    if not (len(labels) == len(predictions) == len(present)):
        raise ValueError(
            f"labels, predictions and feature_present differ in length: {len(labels)}, {len(predictions)}, {len(present)}"
        )
    classes = list(classes)
    if len(classes) < 1:
        raise ValueError("classes must not be empty")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    spurious_index = None
    if spurious_class is not None:
        if spurious_class not in classes:
            raise ValueError(f"spurious_class {spurious_class!r} is not one of {classes}")
        spurious_index = classes.index(spurious_class)
    known = (labels >= 0) & (labels < len(classes))
    labels, predictions, present = labels[known], predictions[known], present[known]
    hit = labels == predictions
    rows = []
    for c, name in enumerate(classes):
        for flag in (True, False):
            mask = (labels == c) & (present == flag)
            count, correct = int(mask.sum()), int(hit[mask].sum())
            rng = np.random.default_rng([seed, c, int(flag)])
            low, high = _bootstrap_ci(correct, count, n_boot, confidence, rng)
            row = {
                "class": name, "class_index": c, "feature_present": flag, "count": count, "correct": correct,
                "accuracy": correct / count if count else float("nan"), "ci_low": low, "ci_high": high,
            }
            if spurious_index is not None:
                row["predicted_spurious"] = float((predictions[mask] == spurious_index).mean()) if count else float("nan")
            rows.append(row)
    return pd.DataFrame(rows, columns=[*TABLE_COLUMNS] + (["predicted_spurious"] if spurious_index is not None else []))


def overall_accuracy(table: pd.DataFrame) -> float:
    """Accuracy over every image of a :func:`group_accuracy_table` table (NaN when it counts none).

    The one definition of "overall accuracy" in the package: rows with an unknown label (-1) are not
    in the table, so this is the accuracy over the images with a known label, i.e. the count-weighted
    mean of the group accuracies.
    """
    count = int(table["count"].sum())
    return float(table["correct"].sum() / count) if count else float("nan")


class GroupAccuracy:
    """Accuracy overall and per (class x feature present/absent) group, in the style of Fairlearn's MetricFrame.

    The one home of "overall" and "worst-group" accuracy. Keyword-only; computed on construction::

        frame = GroupAccuracy(labels=y, predictions=p, feature_present=f, classes=names, n_boot=1000)
        frame.overall, frame.worst_group, frame.by_group  # float, float, DataFrame with 95% intervals

    Args:
        labels: (N,) true class indices into ``classes`` (-1: unknown, left out everywhere).
        predictions: (N,) predicted class indices.
        feature_present: (N,) bool, the spurious feature per row.
        classes: C class names.
        spurious_class: adds ``predicted_spurious`` to :attr:`by_group`.
        n_boot, confidence, seed: the bootstrap intervals of :func:`group_accuracy_table`.

    Attributes:
        by_group: the :func:`group_accuracy_table` (2C rows).
        overall: :func:`overall_accuracy` (NaN without a known label).
        count: rows with a known label.
    """

    def __init__(self, *, labels, predictions, feature_present, classes: Sequence[str],
                 spurious_class: str | None = None, n_boot: int = 1000, confidence: float = 0.95,
                 seed: int = 0) -> None:
        self.by_group = group_accuracy_table(labels, predictions, feature_present, classes,
                                             spurious_class=spurious_class, n_boot=n_boot, confidence=confidence,
                                             seed=seed)
        self.overall = overall_accuracy(self.by_group)
        self.count = int(self.by_group["count"].sum())

    @classmethod
    def of_regions(cls, *, region_predictions, region_image, labels, feature_present, scored,
                   classes: Sequence[str], n_boot: int = 0, seed: int = 0) -> GroupAccuracy:
        """Accuracy of regions: a region is right when its prediction is its image's label.

        Args:
            region_predictions: (M,) predicted class per region.
            region_image: (M,) image index of each region.
            labels: (N,) image labels; feature_present: (N,) bool per image.
            scored: (M,) bool, the regions counted (e.g. the core regions); a region's group is its image's.
            classes, n_boot, seed: as the constructor.
        """
        region_image = np.asarray(region_image, dtype=np.int64).reshape(-1)
        region_predictions = np.asarray(region_predictions, dtype=np.int64).reshape(-1)
        scored = _as_flags("scored", scored, len(region_image))
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        present = _as_flags("feature_present", feature_present, len(labels))
        if len(region_predictions) != len(region_image):
            raise ValueError("region_predictions and region_image differ in length")
        rows = region_image[scored]
        return cls(labels=labels[rows], predictions=region_predictions[scored], feature_present=present[rows],
                   classes=classes, n_boot=n_boot, seed=seed)

    @property
    def worst_group(self) -> float:
        """:func:`worst_group_accuracy` of :attr:`by_group` (NaN when every group is empty)."""
        return worst_group_accuracy(self.by_group)


def _as_flags(name: str, values, length: int | None = None) -> np.ndarray:
    """(N,) bool from bool or 0/1 values (N = ``length`` when given); ValueError naming ``name`` otherwise."""
    array = _as_1d(name, values)
    if array.dtype != bool:
        if not np.isin(array, (0, 1)).all():
            raise ValueError(f"{name} must be boolean (or 0/1)")
        array = array.astype(bool)
    if length is not None and len(array) != length:
        raise ValueError(f"{name} has length {len(array)}, expected {length}")
    return array


def worst_group_accuracy(table_or_labels, predictions=None, feature_present=None, classes=None, *,
                         min_count: int = 1) -> float:
    """The lowest accuracy over groups with at least ``min_count`` images.

    Call with a table from :func:`group_accuracy_table`, or with the arrays it takes
    (``labels, predictions, feature_present, classes``). NaN when no group is large enough.
    """
    if isinstance(table_or_labels, pd.DataFrame):
        table = table_or_labels
    else:
        if predictions is None or feature_present is None or classes is None:
            raise TypeError("worst_group_accuracy needs a table, or labels, predictions, feature_present and classes")
        table = group_accuracy_table(table_or_labels, predictions, feature_present, classes, n_boot=0)
    kept = table[table["count"] >= max(1, min_count)]
    return float(kept["accuracy"].min()) if len(kept) else float("nan")


def _group(table: pd.DataFrame, name: str, flag: bool) -> pd.Series | None:
    rows = table[(table["class"] == name) & (table["feature_present"] == flag)]
    if len(rows) != 1 or int(rows["count"].iloc[0]) == 0:
        return None
    return rows.iloc[0]


def shortcut_gaps(table: pd.DataFrame, spurious_class: str) -> dict[str, float]:
    """The numbers :func:`shortcut_learned` judges, from a :func:`group_accuracy_table` table.

    Returns:
        ``spurious_gap``: acc(spurious class, present) - acc(spurious class, absent);
        ``other_gap``: mean over the other classes (with both groups non-empty) of
        acc(absent) - acc(present), i.e. how much the feature hurts them (NaN without such a class);
        ``other_pull`` (only when the table has ``predicted_spurious``): the same mean of
        predicted_spurious(present) - predicted_spurious(absent).
        Gaps are NaN when a group they need is empty.
    """
    classes = list(dict.fromkeys(table["class"]))
    if spurious_class not in classes:
        raise ValueError(f"spurious_class {spurious_class!r} is not in the table (classes {classes})")
    present, absent = _group(table, spurious_class, True), _group(table, spurious_class, False)
    gaps = {"spurious_gap": float("nan"), "other_gap": float("nan")}
    if present is not None and absent is not None:
        gaps["spurious_gap"] = float(present["accuracy"] - absent["accuracy"])
    others, pulls = [], []
    for name in classes:
        if name == spurious_class:
            continue
        p, a = _group(table, name, True), _group(table, name, False)
        if p is None or a is None:
            continue
        others.append(a["accuracy"] - p["accuracy"])
        if "predicted_spurious" in table.columns:
            pulls.append(p["predicted_spurious"] - a["predicted_spurious"])
    if others:
        gaps["other_gap"] = float(np.mean(others))
    if "predicted_spurious" in table.columns:
        gaps["other_pull"] = float(np.mean(pulls)) if pulls else float("nan")
    return gaps


def shortcut_learned(table: pd.DataFrame, spurious_class: str, min_gap: float = 0.1, *,
                     min_other_gap: float | None = None, min_other_pull: float | None = None) -> bool:
    """The validity rule of a setting: did the fine-tuned model learn the planted shortcut?

    On a split where the feature is independent of the class, the spurious class must be
    classified clearly better with the feature than without it:
    ``acc(spurious, present) - acc(spurious, absent) >= min_gap``. Optionally, the feature must
    also hurt the other classes (``other_gap >= min_other_gap``) or pull them towards the spurious
    class (``other_pull >= min_other_pull``, needs the ``predicted_spurious`` column); see
    :func:`shortcut_gaps`. A gap that cannot be computed (empty group) fails the rule.

    Args:
        table: from :func:`group_accuracy_table`.
        spurious_class: the class the feature was tied to in the fine-tuning data.
        min_gap: required accuracy gap of the spurious class (the paper's "clear gap"; a parameter).
        min_other_gap, min_other_pull: optional extra requirements (``None``: not checked).
    """
    gaps = shortcut_gaps(table, spurious_class)
    checks = [(gaps["spurious_gap"], min_gap)]
    if min_other_gap is not None:
        checks.append((gaps["other_gap"], min_other_gap))
    if min_other_pull is not None:
        if "other_pull" not in gaps:
            raise ValueError("min_other_pull needs a table made with spurious_class (column predicted_spurious)")
        checks.append((gaps["other_pull"], min_other_pull))
    return all(np.isfinite(value) and value >= threshold for value, threshold in checks)
