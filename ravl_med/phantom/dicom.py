"""Phantom radiographs as DICOM: Digital X-Ray (For Presentation) or Computed Radiography objects.

Written with pydicom, explicit VR little endian, with the Type 1 and 2 attributes of the DX and CR
IODs (checked with ``dciodvfy``). Patient identity is pseudonymous (``PHANTOM-000123``); UIDs are
derived deterministically from the image's seed under pydicom's UID root, so a re-run writes the
same file. MONOCHROME1 devices store inverted values (and an inverted window centre) so that the
displayed image is the same as for MONOCHROME2.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_ROOT_UID, UID, ExplicitVRLittleEndian

from ravl_med.phantom.anatomy import Device

__all__ = ["CR_SOP_CLASS", "DX_SOP_CLASS", "phantom_dataset", "write_dicom"]

DX_SOP_CLASS = UID("1.2.840.10008.5.1.4.1.1.1.1")  # Digital X-Ray Image Storage - For Presentation
CR_SOP_CLASS = UID("1.2.840.10008.5.1.4.1.1.1")  # Computed Radiography Image Storage
STUDY_DATE = "20240101"


def _uid(*parts: object) -> UID:
    """A stable UID under pydicom's root from a hash of ``parts`` (at most 64 characters)."""
    digest = int(hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:24], 16)
    return UID(f"{PYDICOM_ROOT_UID}{digest}"[:64])


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def phantom_dataset(
    image: np.ndarray,
    device: Device,
    *,
    key: str,
    patient_number: int,
    sex: str,
    age_band: str,
    view_position: str,
    pixel_spacing_mm: float,
    institution: str,
) -> pydicom.FileDataset:
    """Builds the DICOM data set of one phantom radiograph.

    Args:
        image: float32 (H, W) display values in [0, 1], MONOCHROME2 polarity.
        device: the simulated device (modality, bits stored, MONOCHROME1 or 2).
        key: unique, stable text of the image (seeds the UIDs).
        patient_number: pseudonymous patient number (``PHANTOM-%06d``).
        sex, age_band, view_position: patient and acquisition attributes.
        pixel_spacing_mm: pixel size at the detector, mm.
        institution: simulated site name.
    """
    top = 2**device.bits_stored - 1
    stored = np.round(np.clip(image, 0, 1) * top).astype(np.uint16)
    if device.monochrome1:
        stored = (top - stored).astype(np.uint16)
    sop_class = DX_SOP_CLASS if device.modality == "DX" else CR_SOP_CLASS
    sop_uid = _uid("sop", key)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID(f"{PYDICOM_ROOT_UID}47.1")
    meta.ImplementationVersionName = "RAVLMED_PHANTOM"
    ds = pydicom.FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    _patient_and_study(ds, key, patient_number, sex, age_band)
    _series_and_equipment(ds, device, key, view_position, institution)
    _image_pixel(ds, image.shape, device, pixel_spacing_mm)
    if device.modality == "DX":
        _dx_image(ds, device, view_position)
    ds.PixelData = stored.tobytes()
    return ds


def _patient_and_study(ds: pydicom.Dataset, key: str, patient_number: int, sex: str, age_band: str) -> None:
    """Patient and General Study modules: pseudonymous, de-identified by construction."""
    ds.PatientName = f"PHANTOM^{patient_number:06d}"
    ds.PatientID = f"PHANTOM-{patient_number:06d}"
    ds.PatientBirthDate = ""
    ds.PatientSex = sex
    ds.PatientAge = f"{int(age_band.rstrip('+').split('-')[0]) + 5:03d}Y"
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "Synthetic phantom; no real patient"
    ds.StudyInstanceUID = _uid("study", key)
    ds.StudyDate, ds.StudyTime = STUDY_DATE, "120000"
    ds.ContentDate, ds.ContentTime = STUDY_DATE, "120000"
    ds.ReferringPhysicianName = ""
    ds.StudyID = f"{patient_number % 10**8}"
    ds.AccessionNumber = ""
    ds.StudyDescription = "CHEST PA/AP (phantom)"


def _series_and_equipment(ds: pydicom.Dataset, device: Device, key: str, view_position: str,
                          institution: str) -> None:
    """General Series, DX/CR Series and General Equipment modules."""
    ds.Modality = device.modality
    ds.SeriesInstanceUID = _uid("series", key)
    ds.SeriesNumber = 1
    ds.SeriesDescription = f"CHEST {view_position}"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = view_position
    ds.Manufacturer = device.manufacturer
    ds.InstitutionName = institution
    ds.ManufacturerModelName = device.name
    ds.StationName = device.name[:16]
    ds.SoftwareVersions = "ravl_med phantom"


def _image_pixel(ds: pydicom.Dataset, shape: tuple[int, ...], device: Device, pixel_spacing_mm: float) -> None:
    """General Image, Image Pixel, Modality LUT and VOI LUT modules (a window over the full stored range)."""
    top = 2**device.bits_stored - 1
    centre, width = top / 2.0 + 0.5, float(top + 1)
    if device.monochrome1:
        centre = top - centre + 1.0
    ds.InstanceNumber = 1
    ds.PatientOrientation = ["L", "F"]
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if device.monochrome1 else "MONOCHROME2"
    ds.Rows, ds.Columns = int(shape[0]), int(shape[1])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, device.bits_stored, device.bits_stored - 1
    ds.PixelRepresentation = 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "US"
    ds.WindowCenter, ds.WindowWidth = f"{centre:.1f}", f"{width:.1f}"
    ds.VOILUTFunction = "LINEAR"
    ds.ImagerPixelSpacing = [f"{pixel_spacing_mm:.4f}", f"{pixel_spacing_mm:.4f}"]
    ds.PixelSpacing = [f"{pixel_spacing_mm:.4f}", f"{pixel_spacing_mm:.4f}"]


def _dx_image(ds: pydicom.Dataset, device: Device, view_position: str) -> None:
    """The DX Image and DX Detector attributes a DX object adds (presentation intent, view codes)."""
    ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = -1 if device.monochrome1 else 1
    ds.PresentationLUTShape = "INVERSE" if device.monochrome1 else "IDENTITY"
    ds.DetectorType = "DIRECT" if "flatpanel" in device.name else "SCINTILLATOR"
    ds.ImageLaterality = "U"
    ds.AcquisitionContextSequence = Sequence()
    ds.AnatomicRegionSequence = Sequence([_code("43799004", "SCT", "Chest")])
    view = ("399348003", "postero-anterior") if view_position == "PA" else ("399182009", "antero-posterior")
    ds.ViewCodeSequence = Sequence([_code(view[0], "SCT", view[1])])
    ds.PatientOrientationCodeSequence = Sequence([_code("10904000", "SCT", "erect")])
    ds.PositionerType = "NONE" if device.name == "dx-portable" else "COLUMN"


def write_dicom(ds: pydicom.FileDataset, path: str | Path) -> None:
    """Writes ``ds`` as a DICOM Part 10 file (preamble, file meta, explicit VR little endian)."""
    ds.save_as(path, enforce_file_format=True)
