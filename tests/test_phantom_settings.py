"""Sampling to a target Cramer's V, suites and the digits setting (no radiograph rendering)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ravl_med.config import ConfigError
from ravl_med.phantom import (
    CLASSES,
    cramers_v,
    find_suite,
    list_suites,
    plan_correlated,
    plan_independent,
)
from ravl_med.phantom.config import PhantomSetting
from ravl_med.phantom.digits import QUADRANT_BOXES, write_digits
from ravl_med.phantom.writer import plan_setting


def test_cramers_v_matches_known_tables():
    assert cramers_v(np.array([[50, 0], [0, 50]])) == pytest.approx(1.0)
    assert cramers_v(np.array([[25, 25], [25, 25]])) == pytest.approx(0.0)
    # phi of a 2x2 table: (ad - bc) / sqrt(row and column sums)
    a, b, c, d = 30, 10, 5, 55
    phi = (a * d - b * c) / np.sqrt((a + b) * (c + d) * (a + c) * (b + d))
    assert cramers_v(np.array([[a, b], [c, d]])) == pytest.approx(phi)


@pytest.mark.parametrize("strength", [0.7, 0.8, 0.9, 0.95, 0.99])
@pytest.mark.parametrize("spurious", CLASSES)
@pytest.mark.parametrize("n", [300, 1200])
def test_correlated_split_hits_target_v(strength, spurious, n):
    plan = plan_correlated(CLASSES, n, spurious, strength, np.random.default_rng(0))
    assert abs(plan.cramers_v - strength) <= 0.02
    table = plan.table()
    assert table.sum() == n and table.sum(1).max() - table.sum(1).min() <= 1  # balanced classes
    s = CLASSES.index(spurious)
    assert table[s, 1] / table[s].sum() > table[np.arange(len(CLASSES)) != s, 1].sum() / (n - table[s].sum())


@pytest.mark.parametrize("n", [60, 61, 300, 601])
def test_independent_split_is_decorrelated(n):
    plan = plan_independent(CLASSES, n, np.random.default_rng(1))
    assert plan.cramers_v < 0.05
    assert abs(plan.present.mean() - 0.5) < 0.05


def test_suites_ship_and_every_setting_hits_its_target():
    names = {p.stem for p in list_suites()}
    assert {"smoke", "standard"} <= names
    standard = find_suite("standard")
    assert len(standard.settings()) == 6 * 6 * 5 * 3
    for setting in find_suite("smoke").settings():
        plans = plan_setting(setting)
        assert abs(plans["train"].cramers_v - setting.strength) <= 0.02
        assert plans["val"].cramers_v < 0.05 and plans["test"].cramers_v < 0.05


def test_bad_settings_are_refused_with_the_key():
    with pytest.raises(ConfigError, match="no setting"):
        find_suite("smoke").setting("nope")
    with pytest.raises(ConfigError, match="known"):
        find_suite("not-a-suite")
    with pytest.raises(ValueError, match="unknown artefact"):
        PhantomSetting(name="x", artefact="banana", spurious_class="nodule", strength=0.9)


def test_digits_setting(tmp_path):
    manifest = write_digits(tmp_path, spurious_digit=3, strength=0.9, n_train=200, n_val=40, n_test=40)
    import pandas as pd
    from PIL import Image

    table = pd.read_csv(manifest, keep_default_na=False)
    meta = json.loads((tmp_path / "metadata.json").read_text())
    assert abs(meta["achieved_cramers_v"]["train"] - 0.9) <= 0.02 and meta["achieved_cramers_v"]["test"] < 0.05
    assert set(table["split"]) == {"train", "val", "test"}
    for row in table.head(40).itertuples():
        assert row.label in row.report  # captions name the digit
        assert json.loads(row.regions) == [list(b) for b in QUADRANT_BOXES]
        pixels = np.asarray(Image.open(tmp_path / row.path))
        assert pixels.shape == (56, 56, 3)
        x0, y0, x1, y1 = QUADRANT_BOXES[row.digit_quadrant]
        assert pixels[y0:y1, x0:x1].max() > 100 and np.ptp(pixels[y0:y1, x0:x1, 1]) > 0  # grey digit
        red = (pixels[..., 0] == 255) & (pixels[..., 1] == 0)
        if row.artefact_present:
            sx0, sy0, sx1, sy1 = QUADRANT_BOXES[row.square_quadrant]
            assert row.square_quadrant != row.digit_quadrant and red[sy0:sy1, sx0:sx1].sum() == red.sum() > 0
        else:
            assert row.square_quadrant == -1 and not red.any()
