"""Ingestion: radiograph files (DICOM, PNG/JPEG, NIfTI) to model-ready tensors with candidate regions.

Readers and MONAI transforms (:mod:`.transforms`, composed by :mod:`.pipeline`), manifests
(:mod:`.manifest`), datasets (:mod:`.dataset`), scanning and validation (:mod:`.scan`), masks that
follow their images (:mod:`.masks`) and dataset recipes for public layouts (:mod:`.recipes`).
Import from the submodules.
"""
