"""Phantom chest X-ray benchmark: procedural radiographs with injectable shortcuts and masks.

The medical counterpart of the RaVL evaluation framework: a known spurious feature (artefact),
at a known location (pixel mask), tied to a class at a chosen Cramer's V. Modules, in pipeline
order: ``anatomy`` (patient and detector), ``findings`` (classes), ``artefacts`` (shortcuts, and a
site's own: ``CustomArtefact``, ``register_artefact``, ``package.module:attribute`` import strings),
``inject`` (the ``InjectArtefact(d)`` MONAI transforms), ``render`` (one image), ``reports``, ``dicom``,
``settings`` (sampling to a target V), ``config`` (suite YAML), ``writer`` (a setting on disk),
``sheet``, ``digits`` (the paper's synthetic digits setting).

The names below are imported from their modules on first use, so that ``import
ravl_med.phantom.config`` (the command line's suite listing) does not load torch and MONAI.
"""

from __future__ import annotations

from ravl_med._lazy import lazy_exports

#: Public name -> the module (in this package) that defines it.
_EXPORTS: dict[str, str] = {
    "DEVICES": "anatomy",
    "Device": "anatomy",
    "ARTEFACTS": "artefacts",
    "Artefact": "artefacts",
    "CustomArtefact": "artefacts",
    "Layout": "artefacts",
    "artefact_label": "artefacts",
    "artefact_names": "artefacts",
    "artefact_visibility": "artefacts",
    "get_artefact": "artefacts",
    "register_artefact": "artefacts",
    "unregister_artefact": "artefacts",
    "InjectArtefact": "inject",
    "InjectArtefactd": "inject",
    "PhantomSetting": "config",
    "PhantomSuite": "config",
    "find_suite": "config",
    "list_suites": "config",
    "load_suite": "config",
    "CLASSES": "findings",
    "PhantomImage": "render",
    "render_phantom": "render",
    "cramers_v": "settings",
    "plan_correlated": "settings",
    "plan_independent": "settings",
    "plan_setting": "writer",
    "write_setting": "writer",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
