"""Group accuracy table, worst-group accuracy and the shortcut validity rule (ravl_med.evaluate)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ravl_med.evaluate import (
    group_accuracy_table,
    shortcut_gaps,
    shortcut_learned,
    worst_group_accuracy,
)
from ravl_med.evaluate.groups import TABLE_COLUMNS

CLASSES = ["no finding", "cardiomegaly", "pneumothorax"]


def _random_case(seed: int, n: int = 400, classes: int = 3):
    rng = np.random.default_rng(seed)
    labels = rng.integers(classes, size=n)
    present = rng.random(n) < 0.5
    # Right 70% of the time, otherwise a random class (which may be right too).
    predictions = np.where(rng.random(n) < 0.7, labels, rng.integers(classes, size=n))
    return labels, predictions, present


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_table_matches_boolean_masks(seed):
    labels, predictions, present = _random_case(seed)
    table = group_accuracy_table(labels, predictions, present, CLASSES, spurious_class="pneumothorax", n_boot=200)
    assert list(table.columns) == [*TABLE_COLUMNS, "predicted_spurious"]
    assert len(table) == 2 * len(CLASSES)
    assert list(table["class"]) == [c for c in CLASSES for _ in (0, 1)]
    assert list(table["feature_present"]) == [True, False] * len(CLASSES)
    for row in table.itertuples(index=False):
        mask = (labels == row.class_index) & (present == row.feature_present)
        assert row.count == mask.sum()
        assert row.correct == (predictions[mask] == labels[mask]).sum()
        assert row.accuracy == pytest.approx((predictions[mask] == labels[mask]).mean())
        assert row.predicted_spurious == pytest.approx((predictions[mask] == 2).mean())
        assert row.ci_low <= row.accuracy <= row.ci_high
        assert 0.0 <= row.ci_low and row.ci_high <= 1.0
    assert table["count"].sum() == len(labels)


def test_bootstrap_interval_is_seeded_and_has_the_right_width():
    labels, predictions, present = _random_case(0, n=2000)
    a = group_accuracy_table(labels, predictions, present, CLASSES, n_boot=2000, seed=3)
    b = group_accuracy_table(labels, predictions, present, CLASSES, n_boot=2000, seed=3)
    c = group_accuracy_table(labels, predictions, present, CLASSES, n_boot=2000, seed=4)
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a["ci_low"], c["ci_low"])
    # Against the normal approximation of a binomial proportion: 95% half width 1.96 sqrt(p(1-p)/n).
    for row in a.itertuples(index=False):
        half = 1.96 * np.sqrt(row.accuracy * (1 - row.accuracy) / row.count)
        assert (row.ci_high - row.ci_low) / 2 == pytest.approx(half, rel=0.15)
    # A plain index-resampling bootstrap of one group gives the same interval, within Monte Carlo error.
    row = a.iloc[0]
    mask = (labels == row["class_index"]) & (present == row["feature_present"])
    hits = (predictions[mask] == labels[mask]).astype(float)
    rng = np.random.default_rng(0)
    means = hits[rng.integers(hits.size, size=(4000, hits.size))].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    assert row["ci_low"] == pytest.approx(low, abs=0.015) and row["ci_high"] == pytest.approx(high, abs=0.015)


def test_confidence_and_no_bootstrap():
    labels, predictions, present = _random_case(5)
    wide = group_accuracy_table(labels, predictions, present, CLASSES, confidence=0.99, n_boot=1000)
    narrow = group_accuracy_table(labels, predictions, present, CLASSES, confidence=0.5, n_boot=1000)
    assert ((wide["ci_high"] - wide["ci_low"]) > (narrow["ci_high"] - narrow["ci_low"])).all()
    none = group_accuracy_table(labels, predictions, present, CLASSES, n_boot=0)
    assert none["ci_low"].isna().all() and none["ci_high"].isna().all()
    assert "predicted_spurious" not in none.columns


def test_inputs_tensors_ints_unknown_labels_and_empty_groups():
    labels = torch.tensor([0, 0, 1, 1, -1, 2])
    predictions = torch.tensor([0, 1, 1, 1, 0, 0])
    present = np.array([1, 0, 1, 1, 1, 1])  # 0/1 is accepted as bool
    table = group_accuracy_table(labels, predictions, present, CLASSES, n_boot=50)
    assert table["count"].sum() == 5  # the -1 row is left out
    empty = table[(table["class"] == "cardiomegaly") & ~table["feature_present"]].iloc[0]
    assert empty["count"] == 0 and np.isnan(empty["accuracy"]) and np.isnan(empty["ci_low"])
    full = table[(table["class"] == "cardiomegaly") & table["feature_present"]].iloc[0]
    assert full["accuracy"] == 1.0 and full["ci_low"] == 1.0 and full["ci_high"] == 1.0
    with pytest.raises(ValueError, match="differ in length"):
        group_accuracy_table([0, 1], [0], [True, False], CLASSES)
    with pytest.raises(ValueError, match="boolean"):
        group_accuracy_table([0, 1], [0, 1], [0, 2], CLASSES)
    with pytest.raises(ValueError, match="not one of"):
        group_accuracy_table([0, 1], [0, 1], [True, False], CLASSES, spurious_class="nodule")
    with pytest.raises(ValueError, match="one-dimensional"):
        group_accuracy_table(np.zeros((2, 2)), [0, 1], [True, False], CLASSES)


def test_worst_group_accuracy():
    labels, predictions, present = _random_case(7)
    expected = min(
        (predictions[m] == labels[m]).mean()
        for c in range(3) for flag in (True, False)
        if (m := (labels == c) & (present == flag)).any()
    )
    table = group_accuracy_table(labels, predictions, present, CLASSES, n_boot=0)
    assert worst_group_accuracy(table) == pytest.approx(expected)
    assert worst_group_accuracy(labels, predictions, present, CLASSES) == pytest.approx(expected)
    # Groups below min_count are ignored; none left gives NaN.
    tiny = group_accuracy_table([0, 0, 0, 1], [1, 0, 0, 1], [True, False, False, True], CLASSES, n_boot=0)
    assert worst_group_accuracy(tiny) == 0.0
    assert worst_group_accuracy(tiny, min_count=2) == 1.0
    assert np.isnan(worst_group_accuracy(tiny, min_count=10))
    with pytest.raises(TypeError):
        worst_group_accuracy(labels)


def _shortcut_case(spurious_gap_hits: tuple[int, int], other_hits: tuple[int, int], n: int = 50):
    """Spurious class 2 right ``spurious_gap_hits`` = (present, absent) times out of n; the others
    right ``other_hits`` = (present, absent) times, their misses predicted as class 2."""
    labels, predictions, present = [], [], []
    for c in range(3):
        hits = spurious_gap_hits if c == 2 else other_hits
        for flag, k in zip((True, False), hits):
            labels += [c] * n
            present += [flag] * n
            predictions += [c] * k + [2 if c != 2 else 0] * (n - k)
    return np.array(labels), np.array(predictions), np.array(present)


def test_shortcut_learned_rule():
    learned = group_accuracy_table(*_shortcut_case((48, 20), (30, 45)), CLASSES, spurious_class="pneumothorax")
    gaps = shortcut_gaps(learned, "pneumothorax")
    assert gaps["spurious_gap"] == pytest.approx((48 - 20) / 50)
    assert gaps["other_gap"] == pytest.approx((45 - 30) / 50)
    assert gaps["other_pull"] == pytest.approx((20 - 5) / 50)
    assert shortcut_learned(learned, "pneumothorax", min_gap=0.5)
    assert not shortcut_learned(learned, "pneumothorax", min_gap=0.6)
    assert shortcut_learned(learned, "pneumothorax", min_gap=0.1, min_other_gap=0.3, min_other_pull=0.3)
    assert not shortcut_learned(learned, "pneumothorax", min_gap=0.1, min_other_gap=0.31)
    # No gap, or a reversed one: not learned.
    flat = group_accuracy_table(*_shortcut_case((40, 40), (40, 40)), CLASSES)
    assert not shortcut_learned(flat, "pneumothorax", min_gap=0.0 + 1e-9)
    reversed_ = group_accuracy_table(*_shortcut_case((20, 48), (45, 30)), CLASSES)
    assert not shortcut_learned(reversed_, "pneumothorax")
    assert shortcut_gaps(reversed_, "pneumothorax")["other_gap"] < 0
    with pytest.raises(ValueError, match="predicted_spurious"):
        shortcut_learned(flat, "pneumothorax", min_other_pull=0.1)
    with pytest.raises(ValueError, match="not in the table"):
        shortcut_learned(flat, "nodule")


def test_shortcut_learned_fails_when_a_group_is_empty():
    labels, predictions, present = _shortcut_case((48, 20), (30, 45))
    keep = ~((labels == 2) & ~present)  # no spurious-class image without the feature
    table = group_accuracy_table(labels[keep], predictions[keep], present[keep], CLASSES)
    assert np.isnan(shortcut_gaps(table, "pneumothorax")["spurious_gap"])
    assert not shortcut_learned(table, "pneumothorax", min_gap=0.0)
