"""The ingestion pipeline end to end on files written at test time."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from ravl_med.config import IngestConfig
from ravl_med.data.errors import IngestError
from ravl_med.data.pipeline import (
    ingest_transforms,
    load_radiograph,
    run_ingest_transforms,
)
from tests.factories import chest_like, write_cr_dicom


def _marked(rows=96, cols=80) -> np.ndarray:
    """Chest-like stored values with a bright 8x8 marker in the stored top-left corner."""
    pixels = chest_like(rows, cols)
    pixels[4:12, 4:12] = 4095
    return pixels


def _marker_corner(image: torch.Tensor) -> tuple[str, str]:
    """Which corner of the content holds the brightest 8x8 block: ('top'|'bottom', 'left'|'right')."""
    plane = image[0]
    ys, xs = torch.nonzero(plane >= plane.max() - 1e-6, as_tuple=True)
    rows, cols = plane.shape
    return ("top" if ys.float().mean() < rows / 2 else "bottom", "left" if xs.float().mean() < cols / 2 else "right")


@pytest.mark.parametrize(
    "orientation, corner",
    [("L\\F", ("top", "left")), ("R\\F", ("top", "right")), ("L\\H", ("bottom", "left")), ("A\\F", ("top", "left"))],
)
def test_dicom_is_put_in_radiological_display(tmp_path, orientation, corner):
    path = write_cr_dicom(tmp_path / "x.dcm", _marked(), PatientOrientation=orientation.split("\\"))
    sample = load_radiograph(path, IngestConfig(image_size=64))
    assert _marker_corner(sample["image"]) == corner


def test_monochrome1_rescale_and_window_give_the_same_display_as_monochrome2(tmp_path):
    stored = _marked()
    mono2 = write_cr_dicom(tmp_path / "m2.dcm", stored, WindowCenter=2048, WindowWidth=4096)
    # Same display, encoded as MONOCHROME1 with a modality rescale: value = 2 * stored - 100.
    mono1 = write_cr_dicom(
        tmp_path / "m1.dcm",
        4095 - stored,
        PhotometricInterpretation="MONOCHROME1",
        RescaleSlope=2,
        RescaleIntercept=-100,
        WindowCenter=2 * 2048 - 100,
        WindowWidth=2 * 4096,
    )
    a = load_radiograph(mono2, IngestConfig(image_size=64))["image"]
    b = load_radiograph(mono1, IngestConfig(image_size=64))["image"]
    assert b.meta["inverted_monochrome1"] and b.meta["voi_applied"] == "window (LINEAR)"
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=2e-3)
    # Lungs (dark) left and right of the bright central strip.
    assert float(a[0, 32, 32]) > float(a[0, 32, 14]) + 0.3


def test_bits_stored_scaling_without_window(tmp_path):
    stored = np.zeros((64, 64), dtype=np.uint16)
    stored[:, 32:] = 4095
    stored[:, :16] = 1024
    path = write_cr_dicom(tmp_path / "b.dcm", stored, bits_stored=12)
    image = load_radiograph(path, resize=False)["image"]
    assert image.meta["voi_applied"] == "fallback (value_range)"
    assert float(image[0, 0, 0]) == pytest.approx(1024 / 4095)
    assert float(image.max()) == 1.0 and float(image.min()) == 0.0


def test_pixel_spacing_is_read_from_the_header(tmp_path):
    path = write_cr_dicom(tmp_path / "s.dcm", chest_like(), ImagerPixelSpacing=[0.2, 0.15])
    meta = load_radiograph(path, resize=False)["image"].meta
    np.testing.assert_allclose(meta["pixel_spacing"], [0.2, 0.15])
    path = write_cr_dicom(tmp_path / "p.dcm", chest_like(), PixelSpacing=[0.139, 0.139], ImagerPixelSpacing=[0.2, 0.2])
    np.testing.assert_allclose(load_radiograph(path, resize=False)["image"].meta["pixel_spacing"], [0.139, 0.139])


def test_no_patient_fields_reach_the_metadata(tmp_path):
    path = write_cr_dicom(
        tmp_path / "phi.dcm", chest_like(), PatientName="Doe^Jane", PatientID="PID-12345",
        PatientBirthDate="19700101", AccessionNumber="ACC-999",
    )
    meta = load_radiograph(path)["image"].meta
    text = repr({k: v for k, v in meta.items()})
    for value in ("Doe", "PID-12345", "19700101", "ACC-999"):
        assert value not in text


def test_png_nifti_and_dicom_of_the_same_image_agree(tmp_path):
    pixels8 = (chest_like(96, 80, bits=8)).astype(np.uint8)
    Image.fromarray(pixels8).save(tmp_path / "x.png")
    # NIfTI stores (columns, rows): axis 0 runs left to right.
    nib.save(nib.Nifti1Image(pixels8.T.copy(), affine=np.eye(4)), tmp_path / "x.nii.gz")
    write_cr_dicom(tmp_path / "x.dcm", pixels8.astype(np.uint16), bits_stored=8)
    images = [load_radiograph(tmp_path / name, IngestConfig(image_size=64))["image"] for name in ("x.png", "x.nii.gz", "x.dcm")]
    for other in images[1:]:
        np.testing.assert_allclose(other.numpy(), images[0].numpy(), atol=1e-6)
    assert [im.meta["source_format"] for im in images] == ["PNG", "NIfTI", "DICOM"]


def test_mask_follows_the_image_through_the_pipeline(tmp_path):
    stored = _marked(120, 80)
    write_cr_dicom(tmp_path / "x.dcm", stored, PatientOrientation=["R", "F"])
    mask = np.zeros((120, 80), dtype=np.uint8)
    mask[4:12, 4:12] = 1
    Image.fromarray(mask * 255).save(tmp_path / "mask.png")
    transform = ingest_transforms(IngestConfig(image_size=64), mask_keys=("mask",))
    sample = run_ingest_transforms(transform, {"image": str(tmp_path / "x.dcm"), "mask": str(tmp_path / "mask.png")})
    image, moved = sample["image"][0], torch.as_tensor(sample["mask"][0]) > 0.5
    bright = image > 0.95  # the marker, wherever orientation put it
    assert moved.any() and bright.any()
    centre = lambda m: torch.nonzero(m).float().mean(0)  # noqa: E731
    torch.testing.assert_close(centre(moved), centre(bright), atol=1.0, rtol=0)
    assert float(centre(moved)[1]) > 32  # R\\F: the stored left corner is displayed on the right


def test_failures_come_out_as_ingest_errors(tmp_path):
    missing = tmp_path / "none.dcm"
    with pytest.raises(IngestError) as caught:
        load_radiograph(missing)
    assert caught.value.reason == "missing_file"
    (tmp_path / "text.png").write_text("not a png")
    with pytest.raises(IngestError) as caught:
        load_radiograph(tmp_path / "text.png")
    assert caught.value.reason == "undecodable"
    write_cr_dicom(tmp_path / "flat.dcm", np.full((80, 80), 7, dtype=np.uint16))
    with pytest.raises(IngestError) as caught:
        load_radiograph(tmp_path / "flat.dcm")
    assert caught.value.reason == "constant"
