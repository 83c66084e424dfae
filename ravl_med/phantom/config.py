"""Configuration of phantom benchmark settings and suites (YAML files under ``datasets/phantom``).

A *setting* is one dataset on disk: a fine-tuning split in which one artefact co-occurs with one
class at a target Cramer's V, plus validation and test splits in which the artefact is
independent of the class. A *suite* is a grid of settings (artefacts x spurious classes x
strengths x seeds) with shared sizes.
"""

from __future__ import annotations

import fnmatch
import itertools
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from ravl_med.config import ConfigError, StrictModel, load_config
from ravl_med.phantom.artefacts import artefact_label, check_artefact
from ravl_med.phantom.findings import CLASSES

__all__ = [
    "DATASETS_DIR", "DATASETS_ENV", "PhantomSetting", "PhantomSuite", "datasets_dir", "find_suite", "list_suites",
    "load_suite",
]

#: Environment variable naming the ``datasets`` folder (the one holding ``phantom/*.yaml``). A
#: non-editable install (e.g. the Docker image, which copies the repository's ``datasets/`` to
#: ``/opt/ravl-med/datasets`` and sets it) has no repository around the package to find it in.
DATASETS_ENV = "RAVL_MED_DATASETS"

#: The benchmark definitions in the source checkout (the default when ``$RAVL_MED_DATASETS`` is unset).
DATASETS_DIR = Path(__file__).resolve().parents[2] / "datasets" / "phantom"


def datasets_dir() -> Path:
    """The folder of the suite files: ``$RAVL_MED_DATASETS/phantom`` if set, else :data:`DATASETS_DIR`.

    Read at call time, so setting the variable after import takes effect.
    """
    root = os.environ.get(DATASETS_ENV, "").strip()
    return Path(root).expanduser() / "phantom" if root else DATASETS_DIR

Placement = Literal["outside_lungs", "overlap_lungs", "any"]


def _check_class(value: str) -> str:
    if value not in CLASSES:
        raise ValueError(f"unknown class {value!r}; allowed: {', '.join(CLASSES)}")
    return value


def _check_artefact(value: str) -> str:
    # A built-in or registered name, or an import string 'package.module:attribute' (imported and
    # drawn once here, so that a bad one is refused with the file and key before anything is written).
    return check_artefact(value)


class Sizes(StrictModel):
    """Split sizes, image size and rendering knobs shared by the settings of a suite."""

    n_train: Annotated[int, Field(ge=2)] = 600
    n_val: Annotated[int, Field(ge=0)] = 300
    n_test: Annotated[int, Field(ge=0)] = 300
    image_size: Annotated[int, Field(ge=64, le=1024)] = 256
    classes: list[str] = Field(default_factory=lambda: list(CLASSES), min_length=2)
    #: Where the artefact may go; ``None``: the artefact's own default rule.
    placement: Placement | None = None
    #: Artefact size multiplier and display brightness (``None``: the artefact's default).
    scale: Annotated[float, Field(gt=0, le=4)] = 1.0
    level: Annotated[float, Field(ge=0, le=1)] | None = None
    mask_format: Literal["png", "nifti"] = "png"
    #: Probability that a report mentions a reportable device (pacemaker, drain, ECG leads).
    device_mention: Annotated[float, Field(ge=0, le=1)] = 0.5

    @field_validator("classes")
    @classmethod
    def _classes(cls, value: list[str]) -> list[str]:
        for name in value:
            _check_class(name)
        if len(set(value)) != len(value):
            raise ValueError("classes must be distinct")
        return value


class PhantomSetting(Sizes):
    """One benchmark setting (see the module docstring)."""

    name: str
    #: A built-in or registered artefact name, or an import string ``package.module:attribute``.
    artefact: str
    spurious_class: str
    #: Target Cramer's V of (class x artefact present) in the fine-tuning split.
    strength: Annotated[float, Field(ge=0, le=1)]
    seed: Annotated[int, Field(ge=0)] = 0

    _artefact = field_validator("artefact")(classmethod(lambda cls, v: _check_artefact(v)))
    _spurious = field_validator("spurious_class")(classmethod(lambda cls, v: _check_class(v)))

    @model_validator(mode="after")
    def _spurious_in_classes(self) -> PhantomSetting:
        if self.spurious_class not in self.classes:
            raise ValueError(f"spurious_class {self.spurious_class!r} is not one of classes {self.classes}")
        return self


def setting_name(artefact: str, spurious_class: str, strength: float, seed: int) -> str:
    """Canonical setting name, e.g. ``chest_drain-pneumothorax-v0.90-s0``.

    An import-string artefact goes by its attribute name (``site.tags:hospital_logo`` ->
    ``hospital_logo-...``), see :func:`~ravl_med.phantom.artefacts.artefact_label`.
    """
    return f"{artefact_label(artefact)}-{spurious_class.replace(' ', '_')}-v{strength:.2f}-s{seed}"


class PhantomSuite(StrictModel):
    """A grid of settings: every artefact x spurious class x strength x seed."""

    name: str
    description: str = ""
    #: Built-in or registered names, or import strings ``package.module:attribute``.
    artefacts: list[str] = Field(min_length=1)
    spurious_classes: list[str] = Field(min_length=1)
    strengths: list[Annotated[float, Field(ge=0, le=1)]] = Field(min_length=1)
    seeds: list[Annotated[int, Field(ge=0)]] = Field(default_factory=lambda: [0], min_length=1)
    sizes: Sizes = Field(default_factory=Sizes)

    @field_validator("artefacts")
    @classmethod
    def _artefacts(cls, value: list[str]) -> list[str]:
        value = [_check_artefact(a) for a in value]
        labels = [artefact_label(a) for a in value]
        clash = sorted({label for label in labels if labels.count(label) > 1})
        if clash:
            raise ValueError(f"artefacts must have distinct names (setting names use them); repeated: {clash}")
        return value

    _spurious = field_validator("spurious_classes")(classmethod(lambda cls, v: [_check_class(c) for c in v]))

    def settings(self) -> list[PhantomSetting]:
        """The suite's settings, in a stable order."""
        return [
            PhantomSetting(
                name=setting_name(a, c, s, seed), artefact=a, spurious_class=c, strength=s, seed=seed,
                **self.sizes.model_dump(),
            )
            for a, c, s, seed in itertools.product(self.artefacts, self.spurious_classes, self.strengths, self.seeds)
        ]

    def setting(self, name: str) -> PhantomSetting:
        """The setting called ``name``; raises :class:`ConfigError` listing the names otherwise."""
        for setting in self.settings():
            if setting.name == name:
                return setting
        names = [s.name for s in self.settings()]
        shown = ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
        raise ConfigError(f"suite {self.name!r} has no setting {name!r}; it has: {shown}")

    def select(self, patterns: list[str] | None) -> list[PhantomSetting]:
        """The settings whose names match any of the shell-style ``patterns`` (``None``: all), in suite order.

        Raises:
            ConfigError: a pattern matches no setting (the message lists some names).
        """
        settings = self.settings()
        if patterns is None:
            return settings
        for pattern in patterns:
            if not any(fnmatch.fnmatchcase(s.name, pattern) for s in settings):
                self.setting(pattern)  # raises, listing the names
        return [s for s in settings if any(fnmatch.fnmatchcase(s.name, p) for p in patterns)]


def list_suites(folder: Path | None = None) -> list[Path]:
    """The suite files (``*.yaml``) in ``folder`` (default: :func:`datasets_dir`), sorted."""
    return sorted((datasets_dir() if folder is None else folder).glob("*.yaml"))


def load_suite(path: str | Path) -> PhantomSuite:
    """Reads and checks one suite YAML file (raises :class:`ConfigError`)."""
    return load_config(path, PhantomSuite)


def find_suite(name_or_path: str, folder: Path | None = None) -> PhantomSuite:
    """A suite by file path or by name (``smoke`` -> ``datasets/phantom/smoke.yaml``).

    Names are looked up in ``folder`` (default: :func:`datasets_dir`).
    """
    folder = datasets_dir() if folder is None else folder
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return load_suite(path)
    candidate = folder / f"{name_or_path}.yaml"
    if not candidate.is_file():
        known = ", ".join(p.stem for p in list_suites(folder)) or "none"
        raise ConfigError(f"no phantom suite {name_or_path!r} in {folder}; known: {known}")
    return load_suite(candidate)
