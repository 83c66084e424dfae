"""The shortcut recipes give models that learned the planted shortcut (the validity rule of a setting).

Each setting is written into a temporary folder and fine-tuned on the CPU with its recipe
(``configs/shortcut-*.yaml``); about a minute each on 2 cores (see ``docs/shortcut-recipes.md``).
The fixtures live in :mod:`tests.shortcut_fixtures` so the audit tests can reuse the same models.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ravl_med.config import FinetuneConfig, load_config
from ravl_med.evaluate import shortcut_gaps, shortcut_learned, worst_group_accuracy
from tests.shortcut_fixtures import (
    DIGITS_RECIPE,
    PHANTOM_DATA,
    PHANTOM_RECIPE,
    describe,
)

#: The validity thresholds the recipes are held to (on the decorrelated test split).
MIN_GAP = 0.3  # acc(spurious class, feature present) - acc(spurious class, feature absent)
MIN_OTHER_PULL = 0.15  # other classes: extra fraction predicted as the spurious class when the feature is present
MIN_ABOVE_CHANCE = 0.2  # overall zero-shot accuracy above 1 / C


@pytest.mark.parametrize("recipe", [PHANTOM_RECIPE, DIGITS_RECIPE], ids=["phantom", "digits"])
def test_recipes_load_with_relative_manifests(recipe: Path):
    config = load_config(recipe, FinetuneConfig)
    assert config.manifest is not None and not config.manifest.is_absolute()
    assert not config.output_dir.is_absolute()
    assert config.device == "cpu" and config.templates
    raw = yaml.safe_load(recipe.read_text())
    assert "manifest" in raw  # overridden by the fixtures


def test_phantom_recipe_matches_its_data():
    config = load_config(PHANTOM_RECIPE, FinetuneConfig)
    assert config.classes == PHANTOM_DATA["classes"]
    assert config.ingest.image_size == PHANTOM_DATA["image_size"]


def _check(run) -> None:
    print("\n" + describe(run))
    gaps = shortcut_gaps(run.table, run.spurious_class)
    print("gaps", {k: round(v, 3) for k, v in gaps.items()}, "worst group", round(worst_group_accuracy(run.table), 3))
    assert run.accuracy > run.result.chance + MIN_ABOVE_CHANCE, describe(run)
    assert shortcut_learned(run.table, run.spurious_class, min_gap=MIN_GAP, min_other_pull=MIN_OTHER_PULL), (
        f"{gaps}\n{describe(run)}"
    )
    # The shortcut shows in the worst group: some group with the feature is far below the average.
    assert worst_group_accuracy(run.table) < run.accuracy - 0.2


@pytest.mark.slow
def test_phantom_model_learned_the_shortcut(phantom_shortcut):  # noqa: F811 - the imported fixture
    _check(phantom_shortcut)


@pytest.mark.slow
def test_digits_model_learned_the_shortcut(digits_shortcut):  # noqa: F811 - the imported fixture
    _check(digits_shortcut)
