"""Phantom chest X-ray benchmark: procedural radiographs with injectable shortcuts and masks.

The medical counterpart of the RaVL evaluation framework: a known spurious feature (artefact),
at a known location (pixel mask), tied to a class at a chosen Cramer's V. Modules, in pipeline
order: ``anatomy`` (patient and detector), ``findings`` (classes), ``artefacts`` (shortcuts and the
``InjectArtefact(d)`` transforms), ``render`` (one image), ``reports``, ``dicom``, ``settings``
(sampling to a target V), ``config`` (suite YAML), ``writer`` (a setting on disk), ``sheet``,
``digits`` (the paper's synthetic digits setting).
"""

from ravl_med.data.phantom.anatomy import DEVICES, Device
from ravl_med.data.phantom.artefacts import (
    ARTEFACTS,
    Artefact,
    CustomArtefact,
    InjectArtefact,
    InjectArtefactd,
    Layout,
    get_artefact,
)
from ravl_med.data.phantom.config import (
    PhantomSetting,
    PhantomSuite,
    find_suite,
    list_suites,
    load_suite,
)
from ravl_med.data.phantom.findings import CLASSES
from ravl_med.data.phantom.render import PhantomImage, render_phantom
from ravl_med.data.phantom.settings import cramers_v, plan_correlated, plan_independent
from ravl_med.data.phantom.writer import plan_setting, write_setting

__all__ = [
    "ARTEFACTS",
    "CLASSES",
    "DEVICES",
    "Artefact",
    "CustomArtefact",
    "Device",
    "InjectArtefact",
    "InjectArtefactd",
    "Layout",
    "PhantomImage",
    "PhantomSetting",
    "PhantomSuite",
    "cramers_v",
    "find_suite",
    "get_artefact",
    "list_suites",
    "load_suite",
    "plan_correlated",
    "plan_independent",
    "plan_setting",
    "render_phantom",
    "write_setting",
]
