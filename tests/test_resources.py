"""Where the phantom suite files are found: the source checkout, or ``$RAVL_MED_DATASETS``.

A non-editable install (the Docker image) has no repository next to the package, so the image
copies ``datasets/`` elsewhere and points ``RAVL_MED_DATASETS`` at it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ravl_med.config import ConfigError
from ravl_med.phantom.config import (
    DATASETS_DIR,
    DATASETS_ENV,
    datasets_dir,
    find_suite,
    list_suites,
)

REPO_DATASETS = Path(__file__).resolve().parents[1] / "datasets"


def test_default_is_the_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATASETS_ENV, raising=False)
    assert datasets_dir() == DATASETS_DIR == REPO_DATASETS / "phantom"
    assert {p.stem for p in list_suites()} >= {"demo", "smoke", "standard"}


def test_empty_variable_means_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATASETS_ENV, "  ")
    assert datasets_dir() == DATASETS_DIR


def test_variable_moves_the_suites(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A copy of the shipped datasets folder elsewhere, as in the image (/opt/ravl-med/datasets),
    # plus one suite that only exists there.
    root = tmp_path / "shipped" / "datasets"
    shutil.copytree(REPO_DATASETS / "phantom", root / "phantom")
    extra = (REPO_DATASETS / "phantom" / "smoke.yaml").read_text().replace("name: smoke", "name: only-here", 1)
    (root / "phantom" / "only-here.yaml").write_text(extra)

    monkeypatch.setenv(DATASETS_ENV, str(root))  # read at call time: no re-import needed
    assert datasets_dir() == root / "phantom"
    assert {p.stem for p in list_suites()} == {p.stem for p in list_suites(DATASETS_DIR)} | {"only-here"}
    assert find_suite("only-here").name == "only-here"
    assert find_suite("demo").settings() == find_suite("demo", DATASETS_DIR).settings()


def test_missing_folder_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(DATASETS_ENV, str(tmp_path / "nowhere"))
    assert list_suites() == []
    with pytest.raises(ConfigError, match="no phantom suite 'smoke' in .*nowhere"):
        find_suite("smoke")


def test_explicit_folder_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(DATASETS_ENV, str(tmp_path / "nowhere"))
    assert find_suite("smoke", DATASETS_DIR).name == "smoke"
    assert list_suites(DATASETS_DIR)
