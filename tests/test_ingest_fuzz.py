"""Property-based tests: damaged or hostile DICOM files never crash the ingestion path.

Every outcome of :func:`load_radiograph` must be either a valid sample (finite, in [0, 1], model
size) or an :class:`IngestError` with a known one-line reason; any other exception fails the test
(and hypothesis shrinks it to a minimal file). Two families of inputs:

* byte mutations of small valid DICOM files (truncation, bit flips, overwritten tag bytes, value
  length fields and runs of bytes);
* well-formed files whose VOI/modality header values are extreme (huge, tiny, NaN, infinite
  windows and rescales, degenerate VOI LUTs).

Example counts are sized for about 30 s in all on two cores; ``derandomize`` makes CI runs repeat.
``benchmarks/ingest_fuzz.py`` runs the byte mutations over 10,000 seeded cases.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from ravl_med.config import IngestConfig
from ravl_med.data.errors import REASONS, IngestError
from ravl_med.data.pipeline import load_radiograph
from ravl_med.data.readers import RadiographReader
from tests.factories import chest_like, write_cr_dicom
from tests.fuzz_inputs import MAX_MUTATIONS, MUTATIONS, fuzz_bases, multi_chunk_png, mutate, png_fields

FUZZ_SETTINGS = settings(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


def assert_valid_outcome(path: Path, config: IngestConfig | None = None) -> str:
    """Loads ``path``; returns "ok" or the refusal reason, failing on anything else."""
    try:
        sample = load_radiograph(path, config)
    except IngestError as err:
        assert err.reason in REASONS
        assert "\n" not in str(err)
        return err.reason
    image = sample["image"]
    assert image.shape == (1, 224, 224) and image.dtype == torch.float32
    assert torch.isfinite(image).all(), "a sample that loads must be finite"
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0, (float(image.min()), float(image.max()))
    return "ok"


# --- byte mutations of valid files (inputs: tests/fuzz_inputs.py) -------------------------------


def test_fuzz_bases_are_valid_radiographs(tmp_path):
    for name, raw, fields in fuzz_bases():
        path = tmp_path / name
        path.write_bytes(raw)
        assert assert_valid_outcome(path) == "ok", name
        assert len(fields) > 10


@pytest.mark.filterwarnings("ignore")
@settings(FUZZ_SETTINGS, max_examples=300)
@given(base=st.integers(0, 2), mutations=st.lists(MUTATIONS, min_size=1, max_size=MAX_MUTATIONS))
def test_mutated_dicom_is_a_valid_sample_or_an_ingest_error(tmp_path, base, mutations):
    name, raw, fields = fuzz_bases()[base]
    path = tmp_path / f"mutated_{name}"
    path.write_bytes(mutate(raw, fields, mutations))
    event(assert_valid_outcome(path))  # outcome counts: pytest --hypothesis-show-statistics


# --- extreme header values in well-formed files ---------------------------------------------------


def _ds(value: float) -> str:
    """A decimal string (DS, at most 16 characters) for any float, NaN and infinities included."""
    return f"{value:.6g}"


extreme = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 1.0, -1.0, 0.5, 1e-30, 3.4e38, 3.5e38, 1e39, -1e39, 1e300, 4095.0, 2048.0]),
)


@pytest.mark.filterwarnings("ignore")
@settings(FUZZ_SETTINGS, max_examples=150)
@given(
    center=extreme,
    width=extreme,
    slope=st.one_of(st.none(), extreme),
    intercept=st.one_of(st.none(), extreme),
    function=st.sampled_from(["LINEAR", "LINEAR_EXACT", "SIGMOID", "BOGUS", None]),
    photometric=st.sampled_from(["MONOCHROME1", "MONOCHROME2"]),
    fallback=st.sampled_from(["value_range", "minmax", "percentile"]),
)
def test_extreme_window_and_rescale_values_give_a_valid_sample_or_an_ingest_error(
    tmp_path, center, width, slope, intercept, function, photometric, fallback
):
    tags = {"WindowCenter": _ds(center), "WindowWidth": _ds(width), "PhotometricInterpretation": photometric}
    if slope is not None:
        tags["RescaleSlope"] = _ds(slope)
    if intercept is not None:
        tags["RescaleIntercept"] = _ds(intercept)
    if function is not None:
        tags["VOILUTFunction"] = function
    path = write_cr_dicom(tmp_path / "hostile.dcm", chest_like(96, 80), **tags)
    config = IngestConfig()
    config.intensity.fallback = fallback
    assert_valid_outcome(path, config)


def _voi_lut_item(first: int, bits: int, entries: np.ndarray, as_ow: bool) -> Dataset:
    item = Dataset()
    item.LUTDescriptor = [len(entries) % 65536, first, bits]
    if as_ow:  # LUT Data may be OW (raw 16-bit words) as well as US
        item.add_new(0x00283006, "OW", entries.astype("<u2").tobytes())
    else:
        item.add_new(0x00283006, "US", [int(v) for v in entries])
    return item


@pytest.mark.filterwarnings("ignore")
@settings(FUZZ_SETTINGS, max_examples=80)
@given(
    first=st.integers(0, 65535),
    bits=st.sampled_from([0, 1, 8, 10, 12, 16, 40]),
    entries=st.lists(st.integers(0, 65535), min_size=1, max_size=64).map(np.array) | st.just(np.zeros(4096)),
    as_ow=st.booleans(),
)
def test_degenerate_voi_luts_give_a_valid_sample_or_an_ingest_error(tmp_path, first, bits, entries, as_ow):
    item = _voi_lut_item(first, bits, entries, as_ow)
    path = write_cr_dicom(tmp_path / "lut.dcm", chest_like(96, 80), VOILUTSequence=Sequence([item]))
    assert_valid_outcome(path)


# --- the cases the properties above found, kept as plain regression tests ------------------------


@pytest.mark.parametrize(
    "tags",
    [
        {"WindowCenter": "1e39", "WindowWidth": "1e39"},  # beyond float32: inf - inf = NaN before
        {"WindowCenter": "-1e39", "WindowWidth": "1"},
        {"WindowCenter": "2048", "WindowWidth": "1e300"},
        {"WindowCenter": "1e39", "WindowWidth": "1e39", "VOILUTFunction": "SIGMOID"},
        {"WindowCenter": "2048", "WindowWidth": "1"},  # zero-width LINEAR ramp: values were -2047..2047
    ],
    ids=["huge-centre", "huge-negative-centre", "huge-width", "sigmoid-huge", "width-1"],
)
def test_extreme_windows_stay_finite_and_in_unit_range(tmp_path, tags):
    path = write_cr_dicom(tmp_path / "w.dcm", chest_like(96, 80), **tags)
    assert assert_valid_outcome(path) == "ok"


def test_window_of_width_1_is_a_threshold(tmp_path):
    # PS3.3 C.11.2.1.2.1: LINEAR with width 1 maps x <= c - 0.5 to 0 and everything above to 1.
    path = write_cr_dicom(tmp_path / "w.dcm", chest_like(96, 80), WindowCenter=2048, WindowWidth=1)
    image = load_radiograph(path, resize=False)["image"]
    stored = chest_like(96, 80)
    np.testing.assert_array_equal(image[0].numpy(), (stored > 2047.5).astype(np.float32))


def test_percentile_fallback_on_a_mostly_uniform_image_stays_in_unit_range(tmp_path):
    # 99.9% of pixels share a value, so the 0.5 and 99.5 percentiles meet; MONAI's percentile
    # scaling then returned the image shifted but unscaled (values up to 100).
    pixels = np.full((128, 128), 100, dtype=np.uint16)
    pixels[0, :10] = 200
    path = write_cr_dicom(tmp_path / "flat.dcm", pixels)
    config = IngestConfig()
    config.intensity.fallback = "percentile"
    image = load_radiograph(path, config, resize=False)["image"]
    assert float(image.min()) == 0.0 and float(image.max()) == 1.0
    assert float(image[0, 0, 0]) == 1.0 and float(image[0, 64, 64]) == 0.0


def test_an_all_zero_voi_lut_of_0_bits_does_not_give_nan(tmp_path):
    item = _voi_lut_item(0, 0, np.zeros(4096), as_ow=False)
    path = write_cr_dicom(tmp_path / "lut.dcm", chest_like(96, 80), VOILUTSequence=Sequence([item]))
    assert assert_valid_outcome(path) == "ok"


def test_voi_lut_data_stored_as_ow_is_used(tmp_path):
    # LUT Data is "US or OW"; an OW table arrives as raw bytes and was refused as undecodable.
    ramp = np.arange(0, 65536, 16)  # 4096 entries, 16-bit output
    stored = chest_like(96, 80)
    images = {}
    for as_ow in (False, True):
        item = _voi_lut_item(0, 16, ramp, as_ow=as_ow)
        path = write_cr_dicom(tmp_path / f"lut_{as_ow}.dcm", stored, VOILUTSequence=Sequence([item]))
        images[as_ow] = load_radiograph(path, resize=False)["image"]
        assert images[as_ow].meta["voi_applied"] == "VOI LUT"
    np.testing.assert_allclose(images[True].numpy(), images[False].numpy(), atol=0)
    np.testing.assert_allclose(images[True][0].numpy(), ramp[stored] / 65535.0, atol=1e-6)


# --- what benchmarks/ingest_fuzz.py found (10,000 cases), kept as plain regression tests ------------


def _reader_outcome(path: Path) -> IngestError:
    """The IngestError the radiograph reader itself raises for ``path`` (not the pipeline's catch-all)."""
    reader = RadiographReader()
    with pytest.raises(IngestError) as caught:
        reader.get_data(reader.read(str(path)))
    return caught.value


def test_png_with_a_damaged_chunk_type_inside_its_image_data_is_refused_by_the_reader(tmp_path):
    # Seed 0, cases 76, 168, ... (191 of 10,000): a garbled chunk type between IDAT chunks of a real
    # PNG. Pillow raises SyntaxError("broken PNG file") while decoding, which left the PIL reader
    # and was only turned into an IngestError by the pipeline's per-file boundary.
    raw = multi_chunk_png()
    fields = png_fields(raw)
    second_idat = [at for at, _, _ in fields if raw[at : at + 4] == b"IDAT"][1]
    path = tmp_path / "broken.png"
    path.write_bytes(mutate(raw, fields, [("tag", fields.index((second_idat, second_idat - 4, 4)), b"\xbc\xa8R\xc8")]))
    error = _reader_outcome(path)
    assert error.reason == "undecodable" and "broken PNG file" in str(error)
    assert assert_valid_outcome(path) == "undecodable"


def test_png_header_beyond_pillows_pixel_limit_is_bad_size(tmp_path):
    # Found beside the fuzz (not by it): Pillow's DecompressionBombError is neither OSError nor
    # ValueError, so it also left the PIL reader; it is a size refusal.
    raw = bytearray(multi_chunk_png())
    raw[16:24] = struct.pack(">II", 30_000, 30_000)  # IHDR width, height: 9e8 pixels
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))  # the IHDR's CRC, so Pillow reads it
    path = tmp_path / "bomb.png"
    path.write_bytes(bytes(raw))
    assert _reader_outcome(path).reason == "bad_size"
    assert assert_valid_outcome(path) == "bad_size"
