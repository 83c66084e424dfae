"""Accuracy per value of a known subgroup attribute, checked against counts done by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ravl_med.data.manifest import known_attributes
from ravl_med.evaluate.attributes import NOT_GIVEN, attribute_accuracy, attribute_spread


def test_accuracy_per_value_matches_boolean_masks():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    site = np.where(np.arange(300) < 200, "site-a", "site-b")
    predictions = np.where((site == "site-a") & (rng.random(300) < 0.9), labels, (labels + 1) % 3)
    sex = np.array(["F", "M", ""])[np.arange(300) % 3]
    table = attribute_accuracy(labels, predictions, {"site": site, "sex": sex}, n_boot=500, seed=0)
    assert table[["attribute", "value"]].values.tolist() == [["site", "site-a"], ["site", "site-b"], ["sex", NOT_GIVEN],
                                                             ["sex", "F"], ["sex", "M"]]
    for row in table.itertuples():
        values = {"site": site, "sex": np.where(sex == "", NOT_GIVEN, sex)}[row.attribute]
        member = values == row.value
        assert row.count == member.sum() and row.accuracy == pytest.approx(np.mean(predictions[member] == labels[member]))
        assert row.ci_low <= row.accuracy <= row.ci_high
    spread = attribute_spread(table, min_count=20).set_index("attribute")
    assert spread.loc["site", "best_value"] == "site-a" and spread.loc["site", "worst_value"] == "site-b"
    assert spread.loc["site", "separated"] and spread.loc["site", "spread"] > 0.8
    assert spread.loc["sex", "n_values"] == 2  # "(not given)" is not compared
    assert "sex" not in attribute_spread(table, min_count=101).attribute.tolist()  # 100 images per value
    with pytest.raises(ValueError, match="attribute 'site': 2 values for 300 images"):
        attribute_accuracy(labels, predictions, {"site": ["a", "b"]})


def test_known_attributes_leave_out_ground_truth_identifiers_and_constants():
    table = pd.DataFrame({"key": list("abcd"), "path": list("abcd"), "label": ["x"] * 4, "report": list("abcd"),
                          "split": ["test"] * 4, "labels": [["x"]] * 4, "site": ["s1", "s2", "s1", "s2"],
                          "device": ["d"] * 4, "patient_id": list("pqrs"), "artefact_present": list("0101"),
                          "mask_artefact": list("abcd")})
    assert known_attributes(table, max_values=3) == ["site"]
