"""MONAI image readers for chest radiographs: DICOM (pydicom), PNG/JPEG (PIL), NIfTI (nibabel).

:class:`RadiographReader` picks one of three format readers; all three return arrays in *display order*: axis 0 = image rows (top to bottom), axis 1 = image
columns (left to right), an optional trailing channel axis, unlike MONAI's defaults (which swap the
first two axes for DICOM and PIL). They also fill the same flat, patient-free metadata keys, so the
transforms downstream never need to know which format an image came from:

``value_range``
    (lo, hi): the range the encoding can hold after the modality LUT (DICOM: bits stored and
    pixel representation through rescale slope/intercept; PNG/JPEG: the PIL mode; NIfTI: the dtype).
``pixel_spacing``
    (row, column) spacing in mm, NaN when the file does not say.
``photometric_interpretation``, ``modality``, ``view_position``, ``patient_orientation``,
``transfer_syntax``, ``source_format``
    strings, empty when unknown.
``window_center``, ``window_width``, ``voi_lut_function``, ``voi_lut_first``, ``voi_lut_bits``,
``voi_lut_data``
    the DICOM VOI module (first window / first LUT), present only when the file has it.

Patient-identifying DICOM fields are never copied into the metadata.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import struct
import warnings
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pydicom.errors
from monai.data import ImageReader, NibabelReader, PILReader
from monai.data.utils import is_supported_format
from monai.utils import MetaKeys, ensure_tuple
from PIL import Image, UnidentifiedImageError
from pydicom.pixels import apply_color_lut, apply_modality_lut
from pydicom.uid import DeflatedExplicitVRLittleEndian

from ravl_med.data.errors import IngestError

__all__ = [
    "RadiographDicomReader",
    "RadiographNiftiReader",
    "RadiographPILReader",
    "RadiographReader",
]

PIL_SUFFIXES = ("png", "jpg", "jpeg", "bmp", "tif", "tiff")
NIFTI_SUFFIXES = ("nii", "nii.gz")

# Bits per sample for the PIL modes a grey radiograph can come in.
_PIL_MODE_BITS = {"1": 1, "L": 8, "LA": 8, "P": 8, "RGB": 8, "RGBA": 8, "I;16": 16, "I;16B": 16, "I;16L": 16}


def _single_path(data: Sequence[os.PathLike] | os.PathLike) -> Path:
    names = ensure_tuple(data)
    if len(names) != 1:
        raise IngestError("bad_row", "a radiograph is read from exactly one file")
    path = Path(names[0])
    if not path.is_file():
        raise IngestError("missing_file", f"no such file: {path}")
    return path


def _one_line(err: BaseException | str, limit: int = 200) -> str:
    """``Type: message`` (or the text) on one line, cut to ``limit`` characters.

    Decoder plugins report over several lines; quarantine lists and summaries hold one line per file.
    """
    text = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
    return " ".join(text.split())[:limit]


@contextlib.contextmanager
def _pydicom_silenced():
    """No pydicom log record (from ``pydicom`` or its child loggers) for the block.

    When a decoder plugin fails, pydicom logs the failure with its traceback before trying the next
    plugin, then raises an error that lists every plugin's message. That error becomes the file's
    quarantine reason; the log would only reach the console.
    """
    pydicom_logger = logging.getLogger("pydicom")
    level = pydicom_logger.level
    pydicom_logger.setLevel(logging.CRITICAL + 1)  # child loggers inherit it (their own level is unset)
    try:
        yield
    finally:
        pydicom_logger.setLevel(level)


_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def _ends_early(ds: pydicom.Dataset, size: int, caught: Sequence[warnings.WarningMessage]) -> bool:
    """Whether pydicom stopped reading ``ds`` because its file (``size`` bytes) ran out.

    pydicom does not raise for a cut file: it warns when a delimiter is missing (and may then drop
    every element it had read), silently keeps a short last value, and ignores a partial element
    header at the end.
    """
    if any("end of file" in str(w.message).lower() for w in caught):
        return True
    if len(ds) == 0:
        return True  # the file ends right after its meta information
    last = ds.get_item(max(ds.keys()))
    tell = getattr(last, "value_tell", None)  # only raw (not yet converted) elements have it
    if tell is None or last.length == 0xFFFFFFFF:
        return False
    if last.value is not None and len(last.value) < last.length:
        return True
    file_meta = getattr(ds, "file_meta", None)
    deflated = file_meta is not None and file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian
    # Fewer than 8 bytes after the last element: a cut element header (offsets are into the
    # decompressed stream for deflated files, so the check does not apply to them).
    return not deflated and 0 < size - (tell + last.length) < 8


def _base_meta(shape: tuple[int, ...], spacing: tuple[float, float], source_format: str) -> dict:
    """Metadata keys MONAI's LoadImage/EnsureChannelFirst need, plus the shared radiograph keys."""
    row_sp, col_sp = spacing
    affine = np.diag([row_sp if math.isfinite(row_sp) else 1.0, col_sp if math.isfinite(col_sp) else 1.0, 1.0, 1.0])
    return {
        MetaKeys.SPATIAL_SHAPE: np.asarray(shape[:2]),
        MetaKeys.ORIGINAL_CHANNEL_DIM: -1 if len(shape) == 3 else float("nan"),
        MetaKeys.AFFINE: affine,
        MetaKeys.ORIGINAL_AFFINE: affine.copy(),
        "pixel_spacing": np.asarray(spacing, dtype=np.float64),
        "source_format": source_format,
        "photometric_interpretation": "",
        "modality": "",
        "view_position": "",
        "patient_orientation": "",
        "transfer_syntax": "",
        # DICOM BurnedInAnnotation: "YES" when the pixels may hold text (names, dates) burned in.
        "burned_in_annotation": "",
    }


def _dtype_range(dtype: np.dtype) -> tuple[float, float]:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return float(info.min), float(info.max)
    return float("nan"), float("nan")


class RadiographDicomReader(ImageReader):
    """Reads one single-frame DICOM radiograph with pydicom and applies the modality LUT.

    Output array: float32, shape (rows, columns) for grey images or (rows, columns, 3) for colour
    ones, in modality units (rescale slope/intercept or Modality LUT Sequence applied). VOI LUT,
    windowing and MONOCHROME1 inversion are left to the intensity transforms, which read the VOI
    module from the metadata.

    Every failure is raised as :class:`~ravl_med.data.errors.IngestError` with a reason code.

    Args:
        max_pixels: refuse objects whose Rows x Columns exceed this before decoding them (protects
            memory from absurd headers).
    """

    def __init__(self, max_pixels: int = 2**28) -> None:
        super().__init__()
        self.max_pixels = max_pixels

    def verify_suffix(self, filename: Sequence[os.PathLike] | os.PathLike) -> bool:
        """Any name: DICOM files often have no suffix."""
        return True

    def read(self, data: Sequence[os.PathLike] | os.PathLike, **kwargs) -> pydicom.Dataset:
        path = _single_path(data)
        try:
            with warnings.catch_warnings(record=True) as caught:  # header quirks pydicom can read past
                warnings.simplefilter("always")
                ds = pydicom.dcmread(path, **kwargs)
            if not any(k in ds for k in _PIXEL_KEYWORDS) and _ends_early(ds, path.stat().st_size, caught):
                raise IngestError("truncated", "the file ends before its pixel data")
            return ds
        except IngestError:
            raise
        except pydicom.errors.InvalidDicomError:
            pass  # no preamble or file meta: some valid data sets are stored raw, so try once more.
        except (EOFError, struct.error) as err:
            raise IngestError("truncated", f"the DICOM header ends early ({type(err).__name__})") from err
        except Exception as err:  # noqa: BLE001 - pydicom raises many types for damaged headers
            raise IngestError("corrupt_header", _one_line(err)) from err
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, force=True, **kwargs)
        except Exception as err:  # noqa: BLE001
            raise IngestError("not_dicom", "no DICOM preamble and no parseable data set") from err
        if "Rows" not in ds or not any(k in ds for k in _PIXEL_KEYWORDS):
            raise IngestError("not_dicom", "no DICOM preamble, and no image data set found without one")
        return ds

    def get_data(self, img: pydicom.Dataset) -> tuple[np.ndarray, dict]:
        ds = img
        try:
            return self._decode(ds)
        except IngestError:
            raise
        except (EOFError, struct.error) as err:
            raise IngestError("truncated", f"{type(err).__name__} while decoding") from err
        except Exception as err:  # noqa: BLE001 - decoder plugins raise arbitrary types
            message = str(err)
            if "less than" in message or "truncat" in message.lower() or "too short" in message:
                raise IngestError("truncated", _one_line(message)) from err
            raise IngestError("undecodable", _one_line(err)) from err

    def _decode(self, ds: pydicom.Dataset) -> tuple[np.ndarray, dict]:
        if len(ds) == 0:
            raise IngestError("truncated", "the file ends before its first data element")
        if not any(k in ds for k in _PIXEL_KEYWORDS):
            raise IngestError("no_pixel_data")
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if frames > 1:
            raise IngestError("multi_frame", f"{frames} frames")
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        if rows <= 0 or cols <= 0:
            raise IngestError("bad_size", f"header says {rows} x {cols} pixels")
        if rows * cols > self.max_pixels:
            raise IngestError("bad_size", f"{rows} x {cols} pixels exceeds the {self.max_pixels} pixel limit")

        tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        if tsyntax is not None and tsyntax.is_compressed:
            try:
                decoder = pydicom.pixels.get_decoder(tsyntax)
            except NotImplementedError as err:
                raise IngestError("unsupported_transfer_syntax", f"{tsyntax.name}") from err
            if not decoder.is_available:
                raise IngestError("unsupported_transfer_syntax", f"{tsyntax.name}: no decoder plugin installed")

        with warnings.catch_warnings(), _pydicom_silenced():
            warnings.simplefilter("ignore")  # pydicom warns about minor header quirks it then handles
            pixels = ds.pixel_array
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        if pixels.ndim != (2 if samples == 1 else 3):
            raise IngestError("volume", f"decoded to shape {pixels.shape}")

        bits_stored = int(ds.get("BitsStored", 8 * pixels.dtype.itemsize) or 8)
        signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
        stored_range = (
            np.array([-(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1])
            if signed
            else np.array([0, 2**bits_stored - 1])
        )
        photometric = str(ds.get("PhotometricInterpretation", "") or "")
        if samples == 1 and photometric.strip().upper() == "PALETTE COLOR":
            # The stored values index a colour table: the image is what the table maps them to
            # (then refused as colour unless the table is grey).
            pixels = apply_color_lut(pixels, ds)
            samples, photometric = 3, "RGB"
            stored_range = np.array([0, np.iinfo(pixels.dtype).max])
        if samples == 1 and np.issubdtype(pixels.dtype, np.integer):
            data = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float32)
            value_range = np.sort(np.asarray(apply_modality_lut(stored_range, ds), dtype=np.float64))
        else:
            data = pixels.astype(np.float32)
            value_range = stored_range.astype(np.float64) if np.issubdtype(pixels.dtype, np.integer) else (
                np.array([np.nan, np.nan])
            )

        meta = _base_meta(data.shape, self._spacing(ds), "DICOM")
        meta.update(
            value_range=value_range,
            photometric_interpretation=photometric,
            modality=str(ds.get("Modality", "") or ""),
            view_position=str(ds.get("ViewPosition", "") or ""),
            patient_orientation="\\".join(str(v) for v in ensure_tuple(ds.get("PatientOrientation", "") or "")),
            transfer_syntax=tsyntax.name if tsyntax is not None else "",
            bits_stored=bits_stored,
            burned_in_annotation=str(ds.get("BurnedInAnnotation", "") or "").strip().upper(),
        )
        meta.update(self._voi_module(ds))
        return data, meta

    @staticmethod
    def _spacing(ds: pydicom.Dataset) -> tuple[float, float]:
        # PixelSpacing is calibrated to the patient; ImagerPixelSpacing is at the detector.
        for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
            value = ds.get(keyword)
            if value is not None and len(value) == 2:
                try:
                    row, col = float(value[0]), float(value[1])
                except (TypeError, ValueError):
                    continue
                if row > 0 and col > 0:
                    return row, col
        return float("nan"), float("nan")

    @staticmethod
    def _voi_module(ds: pydicom.Dataset) -> dict:
        voi: dict = {}
        lut_seq = ds.get("VOILUTSequence")
        if lut_seq:
            item = lut_seq[0]
            descriptor = item.get("LUTDescriptor")
            lut_data = item.get("LUTData")
            if isinstance(lut_data, bytes):  # LUT Data is US or OW; OW arrives as raw 16-bit words
                little_endian = ds.original_encoding[1] is not False
                lut_data = np.frombuffer(lut_data[: len(lut_data) // 2 * 2], dtype="<u2" if little_endian else ">u2")
            if descriptor is not None and lut_data is not None and len(descriptor) == 3 and np.size(lut_data):
                voi["voi_lut_first"] = int(descriptor[1])
                voi["voi_lut_bits"] = int(descriptor[2])
                voi["voi_lut_data"] = np.asarray(lut_data, dtype=np.float32).ravel()
        center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
        if center is not None and width is not None:
            try:
                c, w = float(ensure_tuple(center)[0]), float(ensure_tuple(width)[0])
            except (TypeError, ValueError, IndexError):
                c, w = float("nan"), float("nan")
            if math.isfinite(c) and math.isfinite(w) and w >= 1:
                voi["window_center"], voi["window_width"] = c, w
                voi["voi_lut_function"] = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
        return voi


class RadiographPILReader(PILReader):
    """PNG/JPEG/BMP/TIFF through MONAI's PIL reader, in display order (rows, columns[, channels])."""

    def __init__(self) -> None:
        super().__init__(reverse_indexing=False)

    def verify_suffix(self, filename: Sequence[os.PathLike] | os.PathLike) -> bool:
        return is_supported_format(filename, PIL_SUFFIXES)

    def read(self, data: Sequence[os.PathLike] | os.PathLike | np.ndarray, **kwargs):
        path = _single_path(data)
        try:
            return super().read(path, **kwargs)
        except Image.DecompressionBombError as err:  # a header claiming over twice Pillow's pixel limit
            raise IngestError("bad_size", _one_line(err)) from err
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise IngestError("undecodable", _one_line(err)) from err

    def get_data(self, img: Image.Image) -> tuple[np.ndarray, dict]:
        try:
            data, header = super().get_data(img)
        except (OSError, SyntaxError) as err:
            # Pillow decodes lazily: a cut file fails here (OSError), and a damaged chunk met while
            # decoding (e.g. a garbled IDAT type in a multi-chunk PNG) raises SyntaxError.
            reason = "truncated" if "truncated" in str(err) else "undecodable"
            raise IngestError(reason, _one_line(err)) from err
        meta = _base_meta(data.shape, (float("nan"), float("nan")), str(img.format or "image"))
        bits = _PIL_MODE_BITS.get(img.mode)
        if bits is None and img.mode == "I":  # 32-bit container; 16-bit PNGs often open this way
            bits = 16 if data.size and data.max() < 2**16 and data.min() >= 0 else 32
        meta["value_range"] = np.array([0.0, 2.0**bits - 1]) if bits else np.array([np.nan, np.nan])
        meta["photometric_interpretation"] = "MONOCHROME2" if data.ndim == 2 else img.mode
        meta["image_mode"] = header["mode"]
        return data, meta


class RadiographNiftiReader(NibabelReader):
    """2-D NIfTI through MONAI's nibabel reader, transposed to display order.

    NIfTI stores the first axis as image columns (x) and the second as rows (y), as ITK writes 2-D
    images; a trailing singleton third axis is dropped. True volumes are refused.
    """

    def read(self, data: Sequence[os.PathLike] | os.PathLike, **kwargs):
        path = _single_path(data)
        try:
            return super().read(path, **kwargs)
        except Exception as err:  # noqa: BLE001 - nibabel raises several types for bad files
            raise IngestError("undecodable", _one_line(err)) from err

    def get_data(self, img: nib.Nifti1Image) -> tuple[np.ndarray, dict]:
        try:
            data = np.asanyarray(img.dataobj)
        except Exception as err:  # noqa: BLE001
            reason = "truncated" if isinstance(err, EOFError) or "truncat" in str(err).lower() else "undecodable"
            raise IngestError(reason, _one_line(err)) from err
        while data.ndim > 2 and data.shape[-1] == 1:
            data = data[..., 0]
        if data.ndim != 2:
            raise IngestError("volume", f"NIfTI image of shape {tuple(data.shape)}")
        zooms = img.header.get_zooms()
        data = np.ascontiguousarray(data.T)
        meta = _base_meta(data.shape, (float(zooms[1]), float(zooms[0])), "NIfTI")
        meta["value_range"] = np.asarray(_dtype_range(data.dtype))
        meta["photometric_interpretation"] = "MONOCHROME2"
        return data.astype(np.float32), meta


def _is_dicom_file(path: Path) -> bool:
    with path.open("rb") as handle:
        handle.seek(128)
        return handle.read(4) == b"DICM"


class RadiographReader(ImageReader):
    """One reader for every radiograph format, choosing by content and suffix.

    A file with the DICOM preamble (``DICM`` at byte 128) is read as DICOM whatever its name (some
    DICOM files are also valid TIFFs, which PIL would otherwise decode without the DICOM header);
    ``.png/.jpg/.jpeg/.bmp/.tif/.tiff`` go to PIL, ``.nii/.nii.gz`` to nibabel, anything else is
    tried as DICOM (hospital exports often have no suffix).

    ``read`` returns ``(sub_reader, image_object)``, which ``get_data`` hands back to that reader.

    Args:
        max_pixels: passed to :class:`RadiographDicomReader`.
    """

    def __init__(self, max_pixels: int = 2**28) -> None:
        super().__init__()
        self.dicom = RadiographDicomReader(max_pixels=max_pixels)
        self.nifti = RadiographNiftiReader()
        self.pil = RadiographPILReader()

    def verify_suffix(self, filename: Sequence[os.PathLike] | os.PathLike) -> bool:
        return True

    def choose(self, path: Path) -> ImageReader:
        """The sub-reader for ``path`` (which must exist)."""
        if _is_dicom_file(path):
            return self.dicom
        if is_supported_format(path, PIL_SUFFIXES):
            return self.pil
        if is_supported_format(path, NIFTI_SUFFIXES):
            return self.nifti
        return self.dicom

    def read(self, data: Sequence[os.PathLike] | os.PathLike, **kwargs) -> tuple[ImageReader, object]:
        path = _single_path(data)
        reader = self.choose(path)
        return reader, reader.read(path, **kwargs)

    def get_data(self, img: tuple[ImageReader, object]) -> tuple[np.ndarray, dict]:
        reader, obj = img
        return reader.get_data(obj)
