"""Small radiograph files written at test time (no binary fixtures in the repository)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"


def write_cr_dicom(path: Path, pixels: np.ndarray, *, bits_stored: int = 12, **tags) -> Path:
    """Writes a single-frame grey CR object with ``pixels`` (rows, columns) as stored values.

    Keyword arguments become DICOM attributes by keyword (e.g. ``PhotometricInterpretation``,
    ``WindowCenter``, ``RescaleSlope``, ``PatientOrientation``, ``PatientName``).
    """
    pixels = np.asarray(pixels)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CR_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = CR_IMAGE_STORAGE, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def chest_like(rows: int = 96, cols: int = 80, seed: int = 0, bits: int = 12) -> np.ndarray:
    """A crude stored-value image: dark lungs either side of a bright central strip, with noise."""
    rng = np.random.default_rng(seed)
    top = 2**bits - 1
    image = np.full((rows, cols), 0.25 * top)
    image[:, cols // 2 - cols // 10 : cols // 2 + cols // 10] = 0.8 * top
    image += rng.normal(0, 0.02 * top, size=image.shape)
    return np.clip(image, 0, top).astype(np.uint16)


#: Patient-identifying values written into test DICOMs; none may appear in any output.
PATIENT_IDENTIFIERS = {"PatientName": "DOE^JANE^Q", "PatientID": "MRN0098765", "AccessionNumber": "ACC55501",
                       "PatientBirthDate": "19470312", "InstitutionName": "St Elsewhere General"}


def add_patient_identifiers(path: Path, identifiers: dict[str, str] = PATIENT_IDENTIFIERS) -> Path:
    """Rewrites the DICOM at ``path`` with patient-identifying attributes set (for privacy tests)."""
    ds = pydicom.dcmread(path)
    for keyword, value in identifiers.items():
        setattr(ds, keyword, value)
    ds.save_as(path)
    return path
