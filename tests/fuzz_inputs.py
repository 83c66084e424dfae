"""Inputs of the ingestion fuzz: valid starting files and the byte mutations applied to them.

Shared by the property tests (``tests/test_ingest_fuzz.py``: a small derandomized hypothesis set
that CI keeps) and the long run (``benchmarks/ingest_fuzz.py``: thousands of seeded cases). Both
draw from one mutation space, written once here:

* ``truncate`` (fraction kept), ``flip`` (position fraction, bit), ``bytes`` (position fraction,
  1-16 bytes written over the data);
* ``tag`` (field index, 4 bytes written over a structural tag: a DICOM element's tag, a PNG chunk's
  type) and ``length`` (field index, a new value-length field: DICOM value length, PNG chunk length).

:data:`MUTATIONS` is the hypothesis strategy over that space; :func:`draw_mutations` draws from the
same space with a numpy generator, so that each case of the long run is reproducible from its seed.
"""

from __future__ import annotations

import functools
import io
import struct
from pathlib import Path

import numpy as np
import pydicom
from hypothesis import strategies as st
from PIL import Image

from tests.factories import chest_like, write_cr_dicom

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
# Explicit VR encodings whose value length takes 4 bytes after 2 reserved ones (PS3.5 7.1.2).
LONG_LENGTH_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}

#: Structural fields of a file: (tag offset, value-length offset, value-length size in bytes).
Fields = tuple[tuple[int, int, int], ...]

# The mutation space (both samplers read these).
MAX_MUTATIONS = 4
MAX_FIELD_INDEX = 10_000  # taken modulo the file's field count
SPECIAL_LENGTHS = (0, 1, 2, 3, 0xFFFF, 0xFFFFFFFF, 0x7FFFFFFF)
MAX_OVERWRITE = 16
KINDS = ("truncate", "flip", "tag", "length", "bytes")


def _small_cr() -> bytes:
    """A 96 x 80 MONOCHROME1 CR, 12 bits stored, with rescale and window (written with pydicom)."""
    buffer = io.BytesIO()
    write_cr_dicom(
        buffer,
        4095 - chest_like(96, 80, seed=7),
        PhotometricInterpretation="MONOCHROME1",
        RescaleSlope=1,
        RescaleIntercept=0,
        WindowCenter=2048,
        WindowWidth=4096,
        PatientOrientation=["L", "F"],
    )
    return buffer.getvalue()


def dicom_fields(raw: bytes) -> Fields:
    """(tag offset, value-length offset, value-length size) of each top-level and file-meta element
    pydicom reports an offset for."""
    ds = pydicom.dcmread(io.BytesIO(raw))
    fields = []
    for group in (ds.file_meta, ds):
        for tag in group.keys():
            element = group.get_item(tag)
            tell = getattr(element, "value_tell", None)
            if tell is None:
                continue  # converted while reading: no offset kept
            if element.is_implicit_VR:
                fields.append((tell - 8, tell - 4, 4))
            elif element.VR in LONG_LENGTH_VRS:
                fields.append((tell - 12, tell - 4, 4))
            else:
                fields.append((tell - 8, tell - 2, 2))
    return tuple(fields)


def png_fields(raw: bytes) -> Fields:
    """(chunk type offset, chunk length offset, 4) of each PNG chunk (after the 8-byte signature).

    PNG lengths are big-endian; :func:`mutate` writes little-endian, which is still a new length.
    """
    fields, at = [], 8
    while at + 8 <= len(raw):
        (length,) = struct.unpack(">I", raw[at : at + 4])
        fields.append((at + 4, at, 4))
        at += 12 + length
    return tuple(fields)


def small_png(bits: int) -> bytes:
    """A 96 x 80 grey PNG of :func:`chest_like` pixels, 8 (mode L) or 16 bits (mode I;16)."""
    pixels = chest_like(96, 80, seed=11, bits=bits)
    image = Image.fromarray(pixels.astype(np.uint8)) if bits == 8 else Image.fromarray(pixels.astype(np.uint16))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def multi_chunk_png() -> bytes:
    """A 300 x 300 8-bit grey PNG stored uncompressed, so that its image data spans two IDAT chunks
    (Pillow writes 64 KiB per chunk), as large real PNGs do."""
    pixels = chest_like(300, 300, seed=13, bits=8).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=0)
    return buffer.getvalue()


@functools.cache
def fuzz_bases() -> tuple[tuple[str, bytes, Fields], ...]:
    """(name, bytes, element fields) of each valid starting DICOM file of the property test."""
    raws = {
        "CT_small.dcm": (PYDICOM_FILES / "CT_small.dcm").read_bytes(),  # uncompressed, signed 16-bit
        "JPGExtended.dcm": (PYDICOM_FILES / "JPGExtended.dcm").read_bytes(),  # JPEG Extended, 12-bit
        "small_cr.dcm": _small_cr(),
    }
    return tuple((name, raw, dicom_fields(raw)) for name, raw in raws.items())


unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
MUTATIONS = st.one_of(
    st.tuples(st.just("truncate"), unit),
    st.tuples(st.just("flip"), unit, st.integers(0, 7)),
    st.tuples(st.just("tag"), st.integers(0, MAX_FIELD_INDEX), st.binary(min_size=4, max_size=4)),
    st.tuples(
        st.just("length"),
        st.integers(0, MAX_FIELD_INDEX),
        st.one_of(st.sampled_from(SPECIAL_LENGTHS), st.integers(0, 2**32 - 1)),
    ),
    st.tuples(st.just("bytes"), unit, st.binary(min_size=1, max_size=MAX_OVERWRITE)),
)


def _unit(rng: np.random.Generator) -> float:
    # Like hypothesis, hit the ends now and then: truncating to nothing, the first and last byte.
    return float(rng.choice([0.0, 1.0])) if rng.random() < 0.1 else float(rng.random())


def draw_mutations(rng: np.random.Generator) -> list[tuple]:
    """1 to :data:`MAX_MUTATIONS` mutations from the space of :data:`MUTATIONS`, drawn with ``rng``."""
    out: list[tuple] = []
    for _ in range(int(rng.integers(1, MAX_MUTATIONS + 1))):
        kind = KINDS[int(rng.integers(len(KINDS)))]
        if kind == "truncate":
            out.append((kind, _unit(rng)))
        elif kind == "flip":
            out.append((kind, _unit(rng), int(rng.integers(0, 8))))
        elif kind == "tag":
            out.append((kind, int(rng.integers(0, MAX_FIELD_INDEX + 1)), rng.bytes(4)))
        elif kind == "length":
            special = rng.random() < 0.5
            value = SPECIAL_LENGTHS[int(rng.integers(len(SPECIAL_LENGTHS)))] if special else int(rng.integers(0, 2**32))
            out.append((kind, int(rng.integers(0, MAX_FIELD_INDEX + 1)), value))
        else:
            out.append((kind, _unit(rng), rng.bytes(int(rng.integers(1, MAX_OVERWRITE + 1)))))
    return out


def mutate(raw: bytes, fields: Fields, mutations) -> bytes:
    """``raw`` with ``mutations`` (see the module docstring) applied in order."""
    data = bytearray(raw)
    for mutation in mutations:
        kind = mutation[0]
        if not data:
            break
        if kind == "truncate":
            del data[int(mutation[1] * len(data)) :]
        elif kind == "flip":
            data[min(int(mutation[1] * len(data)), len(data) - 1)] ^= 1 << mutation[2]
        elif kind == "tag":
            start = fields[mutation[1] % len(fields)][0]
            data[start : start + 4] = mutation[2]
        elif kind == "length":
            _, vl_at, size = fields[mutation[1] % len(fields)]
            data[vl_at : vl_at + size] = struct.pack("<I" if size == 4 else "<H", mutation[2] % (1 << (8 * size)))
        else:
            at = min(int(mutation[1] * len(data)), len(data) - 1)
            data[at : at + len(mutation[2])] = mutation[2]
    return bytes(data)
