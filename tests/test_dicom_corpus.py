"""pydicom's own DICOM corpus through the ingestion path.

Every file of ``pydicom/data/test_files`` (odd, broken and colour objects) and of the
``pydicom-data`` package (larger real images, when installed) either loads to a model-ready
(1, 224, 224) image in [0, 1] or is refused with an :class:`IngestError` whose message is one line;
no other exception may escape. Known-bad files must be refused for the right reason, and different
encodings of the same image must load to the same tensor.
"""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest
import torch
from monai.data import MetaTensor

from ravl_med.data.errors import REASONS, IngestError
from ravl_med.data.pipeline import load_radiograph
from tests.factories import chest_like, write_cr_dicom

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
# badVR.dcm and friends make pydicom warn while it reads them; refusing them is the point here.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def pydicom_data_dir() -> Path | None:
    """The folder of the ``pydicom-data`` package's files, or None when it is not installed.

    Checked by import rather than through ``get_testdata_file`` alone, which would try to download
    a missing file.
    """
    if importlib.util.find_spec("data_store") is None:
        return None
    found = pydicom.data.get_testdata_file("RG1_UNCR.dcm")
    return Path(found).parent if found else None


def _corpus() -> list[pytest.param]:
    params = [pytest.param(p, id=f"pydicom/{p.name}") for p in sorted(PYDICOM_FILES.glob("*.dcm"))]
    extra = pydicom_data_dir()
    if extra is not None:
        params += [pytest.param(p, id=f"pydicom-data/{p.name}") for p in sorted(extra.glob("*.dcm"))]
    return params


CORPUS = _corpus()


def _corpus_file(name: str) -> Path:
    for folder in (PYDICOM_FILES, pydicom_data_dir()):
        if folder is not None and (folder / name).is_file():
            return folder / name
    pytest.skip(f"{name} is not installed (pydicom-data missing?)")


def test_the_corpus_is_there():
    assert len(CORPUS) >= 70, "pydicom's bundled test files were not found"


@pytest.mark.parametrize("path", CORPUS)
def test_every_corpus_file_loads_or_is_refused_with_a_reason(path):
    try:
        sample = load_radiograph(path)
    except IngestError as err:
        assert err.reason in REASONS
        message = str(err)
        assert message.startswith(f"{err.reason}: ") and err.detail
        assert "\n" not in message and "\r" not in message, "the reason must fit on one line of a report"
        return
    image = sample["image"]
    assert isinstance(image, MetaTensor)
    assert image.shape == (1, 224, 224) and image.dtype == torch.float32
    assert torch.isfinite(image).all()
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    assert float(image.max()) > float(image.min()), "a usable image must not come out constant"
    assert image.meta["source_format"] == "DICOM"
    assert sample["regions"].shape[-1] == 4


# (file, reason): files whose defect is known from pydicom's corpus README or their header.
KNOWN_BAD = [
    ("rtplan.dcm", "no_pixel_data"),  # RT plan: no image at all
    ("reportsi.dcm", "no_pixel_data"),  # structured report
    ("waveform_ecg.dcm", "no_pixel_data"),  # ECG waveform
    ("rtdose.dcm", "multi_frame"),  # 15-frame dose grid
    ("examples_ybr_color.dcm", "multi_frame"),  # 30-frame colour cine
    ("MR_truncated.dcm", "truncated"),  # pixel data shorter than Rows x Columns
    ("rtplan_truncated.dcm", "truncated"),  # cut inside its header
    ("emri_small_jpeg_2k_lossless_too_short.dcm", "truncated"),  # encapsulated data cut short
    ("SC_rgb_rle.dcm", "colour"),  # RGB colour bars
    ("SC_rgb.dcm", "colour"),
    ("examples_palette.dcm", "colour"),  # PALETTE COLOR ultrasound
    ("OBXXXX1A.dcm", "colour"),
    ("rtdose_1frame.dcm", "bad_size"),  # 10 x 10 pixels
    ("SC_rgb_small_odd.dcm", "bad_size"),  # 3 x 3 pixels
    ("ExplVR_BigEndNoMeta.dcm", "not_dicom"),  # raw RT plan data set: no preamble, no image
    ("JPEG2000-embedded-sequence-delimiter.dcm", "undecodable"),  # delimiter bytes inside the J2K stream
]


@pytest.mark.parametrize("name, reason", KNOWN_BAD, ids=[n for n, _ in KNOWN_BAD])
def test_known_bad_files_are_refused_for_the_right_reason(name, reason):
    with pytest.raises(IngestError) as caught:
        load_radiograph(_corpus_file(name))
    assert caught.value.reason == reason, str(caught.value)


# Groups of files holding the same pixels in different transfer syntaxes. pydicom-data's *_UNCR
# files are the originals and *_J2KR their lossless JPEG 2000 form; *_UNCI hold the pixels of the
# lossy *_J2KI, decompressed.
SAME_IMAGE = [
    (
        "MR_small.dcm",
        [
            "MR_small_RLE.dcm",
            "MR_small_bigendian.dcm",
            "MR_small_expb.dcm",
            "MR_small_implicit.dcm",
            "MR_small_jp2klossless.dcm",
            "MR_small_jpeg_ls_lossless.dcm",
            "MR_small_padded.dcm",
        ],
    ),
    ("RG1_UNCR.dcm", ["RG1_J2KR.dcm"]),
    ("RG1_UNCI.dcm", ["RG1_J2KI.dcm"]),
    ("RG3_UNCR.dcm", ["RG3_J2KR.dcm"]),
    ("RG3_UNCI.dcm", ["RG3_J2KI.dcm"]),
    ("693_UNCR.dcm", ["693_J2KR.dcm"]),
    ("693_UNCI.dcm", ["693_J2KI.dcm"]),
    ("MR2_UNCR.dcm", ["MR2_J2KR.dcm"]),
    ("liver_1frame.dcm", ["liver_expb_1frame.dcm"]),
]


@pytest.mark.parametrize("reference, others", SAME_IMAGE, ids=[r for r, _ in SAME_IMAGE])
def test_every_encoding_of_an_image_loads_to_the_same_tensor(reference, others):
    expected = load_radiograph(_corpus_file(reference))["image"]
    for name in others:
        image = load_radiograph(_corpus_file(name))["image"]
        assert float((image - expected).abs().max()) < 1e-6, name


def test_lossy_jpeg2000_stays_close_to_the_original():
    original = load_radiograph(_corpus_file("RG1_UNCR.dcm"))["image"]
    lossy = load_radiograph(_corpus_file("RG1_J2KI.dcm"))["image"]
    assert float((lossy - original).abs().mean()) < 0.01


# --- truncation anywhere in a file is reported as such -------------------------------------------


def _value_offsets(raw: bytes) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """Where the values of a DICOM file in ``raw`` lie: (offset, length) of each top-level element
    (elements pydicom converted while reading carry no offset and are left out), and of its pixel
    data. A length of 0xFFFFFFFF means undefined (encapsulated pixel data, sequences)."""
    ds = pydicom.dcmread(io.BytesIO(raw))
    elements = [ds.get_item(tag) for tag in ds.keys()]
    spans = [(e.value_tell, e.length) for e in elements if getattr(e, "value_tell", None) is not None]
    pixels = ds.get_item("PixelData")
    return spans, (pixels.value_tell, pixels.length)


@pytest.mark.parametrize("name", ["CT_small.dcm", "JPGExtended.dcm"])
def test_a_file_cut_anywhere_after_its_meta_is_truncated(tmp_path, name):
    # pydicom reads a cut file without raising (it may even drop every element it had read), so
    # before the fix these came out as 'no_pixel_data'.
    raw = _corpus_file(name).read_bytes()
    spans, (pixel_start, pixel_length) = _value_offsets(raw)
    encapsulated = pixel_length == 0xFFFFFFFF
    pixel_end = len(raw) if encapsulated else pixel_start + pixel_length
    cuts = {
        "inside a header value": next(start + 1 for start, length in spans if 4 <= length < 1000 and start > 400),
        "inside the pixel data element header": pixel_start - 5,
        "just inside the pixel data": pixel_start + 10,
        "half-way through the pixel data": (pixel_start + pixel_end) // 2,
        # Encapsulated: the last fragment loses 4 bytes and the sequence delimiter is gone.
        "at the end of the pixel data": pixel_end - 12 if encapsulated else pixel_end - 1,
    }
    for where, cut in cuts.items():
        path = tmp_path / f"cut_{cut}.dcm"
        path.write_bytes(raw[:cut])
        with pytest.raises(IngestError) as caught:
            load_radiograph(path)
        assert caught.value.reason == "truncated", f"cut {where} (byte {cut}): {caught.value}"


# --- PALETTE COLOR: the stored values are indices into a colour table ----------------------------


def test_a_grey_palette_image_is_shown_through_its_table(tmp_path):
    index = chest_like(96, 96, bits=8)
    # A grey table that reverses the index: display = 255 - index. Loading the indices as grey
    # values would give the opposite polarity.
    table = ((255 - np.arange(256)) * 257).astype(np.uint16).tobytes()
    palette = write_cr_dicom(
        tmp_path / "palette.dcm",
        index,
        bits_stored=8,
        PhotometricInterpretation="PALETTE COLOR",
        RedPaletteColorLookupTableDescriptor=[256, 0, 16],
        GreenPaletteColorLookupTableDescriptor=[256, 0, 16],
        BluePaletteColorLookupTableDescriptor=[256, 0, 16],
        RedPaletteColorLookupTableData=table,
        GreenPaletteColorLookupTableData=table,
        BluePaletteColorLookupTableData=table,
    )
    grey = write_cr_dicom(tmp_path / "grey.dcm", 255 - index, bits_stored=8)
    shown = load_radiograph(palette)["image"]
    expected = load_radiograph(grey)["image"]
    assert shown.meta["photometric_interpretation"] == "MONOCHROME2"
    assert float((shown - expected).abs().max()) < 1e-5
