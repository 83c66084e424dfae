"""Phantom files on disk: DICOM validity and round trip, mask alignment, atomic resumable writes, CLI."""

from __future__ import annotations

import shutil
import subprocess

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest

from ravl_med.cli import main
from ravl_med.config import IngestConfig
from ravl_med.data.manifest import Manifest
from ravl_med.data.pipeline import ingest_transforms, load_radiograph
from ravl_med.phantom import DEVICES, get_artefact, render_phantom
from ravl_med.phantom.config import PhantomSetting
from ravl_med.phantom.dicom import phantom_dataset, write_dicom
from ravl_med.phantom.writer import MANIFEST_COLUMNS, write_mask, write_setting


def _write(tmp_path, device, artefact="pacemaker", name="x"):
    ph = render_phantom(5, "cardiomegaly", get_artefact(artefact) if artefact else None, 256)
    ds = phantom_dataset(ph.image, device, key=name + device.name, patient_number=123, sex="M", age_band="60-79",
                         view_position="PA", pixel_spacing_mm=1.48, institution="site-a")
    path = tmp_path / f"{name}-{device.name}.dcm"
    write_dicom(ds, path)
    return ph, path


def test_dicom_header(tmp_path):
    for device in DEVICES:
        _, path = _write(tmp_path, device)
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.SOPClassUID == ("1.2.840.10008.5.1.4.1.1.1.1" if device.modality == "DX" else "1.2.840.10008.5.1.4.1.1.1")
        assert ds.PhotometricInterpretation == ("MONOCHROME1" if device.monochrome1 else "MONOCHROME2")
        assert ds.BitsStored == device.bits_stored and list(ds.PatientOrientation) == ["L", "F"]
        assert ds.PatientID == "PHANTOM-000123" and ds.PixelSpacing and ds.WindowWidth


def test_monochrome1_and_2_load_with_the_same_polarity(tmp_path):
    images = {}
    for device in DEVICES:
        ph, path = _write(tmp_path, device, artefact=None)
        sample = load_radiograph(path, IngestConfig(image_size=256))
        images[device.name] = sample["image"][0].numpy()
        assert np.abs(images[device.name] - ph.image).max() < 2e-3  # display values survive the round trip
    mono2, mono1 = images["dx-flatpanel-a"], images["dx-portable"]
    assert np.corrcoef(mono1.ravel(), mono2.ravel())[0, 1] > 0.99


@pytest.mark.parametrize("suffix", [".png", ".nii.gz"])
def test_artefact_mask_aligns_with_bright_pixels_after_ingestion(tmp_path, suffix):
    device = DEVICES[2]  # MONOCHROME1, so the inversion path is covered too
    ph, path = _write(tmp_path, device, artefact="pacemaker")
    mask_path = tmp_path / f"mask{suffix}"
    write_mask(ph.artefact_mask, mask_path)
    if suffix == ".nii.gz":
        assert nib.load(mask_path).shape[:2] == ph.artefact_mask.T.shape
    transform = ingest_transforms(IngestConfig(image_size=128), mask_keys=("mask",), regions=False)
    out = transform({"image": str(path), "mask": str(mask_path)})
    mask = out["mask"][0].numpy() > 0.5
    image = out["image"][0].numpy()
    assert mask.any() and image[mask].mean() > 0.75
    expected = ph.artefact_mask[::2, ::2]  # nearest-neighbour downscale of the rendered mask
    assert (mask == expected).mean() > 0.99
    shifted = np.roll(mask, 6, axis=1)
    assert image[mask].mean() > image[shifted & ~mask].mean() + 0.1


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian package dicom3tools) not installed")
def test_dciodvfy_reports_no_errors(tmp_path):
    for device in DEVICES:
        _, path = _write(tmp_path, device)
        result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        text = result.stdout + result.stderr
        assert "Error" not in text, text


@pytest.mark.skipif(shutil.which("dcmdump") is None, reason="dcmdump (Debian package dcmtk) not installed")
def test_dcmdump_reads_files(tmp_path):
    _, path = _write(tmp_path, DEVICES[0])
    result = subprocess.run(["dcmdump", str(path)], capture_output=True, text=True)
    assert result.returncode == 0 and "PHANTOM-000123" in result.stdout


def _tiny_setting(**kw):
    return PhantomSetting(name="tiny", artefact="clothing_clip", spurious_class="nodule", strength=0.9,
                          n_train=24, n_val=6, n_test=6, image_size=96, **kw)


def test_write_setting_is_atomic_and_resumable(tmp_path):
    setting = _tiny_setting()
    root = tmp_path / "tiny"
    # A left-over temp file from an interrupted run must be ignored (not listed, not mistaken).
    (root / "images" / "train").mkdir(parents=True)
    stale = root / "images" / "train" / ".train-000000.dcm.abc.tmp.dcm"
    stale.write_bytes(b"half a file")
    first = write_setting(setting, tmp_path, progress=False)
    manifest_1 = first.manifest.read_text()
    assert first.files_written > 36
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    mtimes = {p: p.stat().st_mtime_ns for p in files}
    second = write_setting(setting, tmp_path, progress=False)
    assert second.files_written == 0 and second.manifest.read_text() == manifest_1
    assert all(p.stat().st_mtime_ns == mtimes[p] for p in files if p.suffix in (".dcm", ".png"))
    # Delete one image: only it is written again, identical to before.
    victim = root / "images" / "val" / "val-000001.dcm"
    before = victim.read_bytes()
    victim.unlink()
    third = write_setting(setting, tmp_path, progress=False)
    assert third.files_written == 1 and victim.read_bytes() == before

    table = pd.read_csv(first.manifest, keep_default_na=False)
    assert tuple(table.columns) == MANIFEST_COLUMNS
    assert set(table["split"]) == {"train", "val", "test"}
    assert (table["artefact_present"].astype(bool) == (table["mask_artefact"] != "")).all()
    assert ((table["label"] == "no finding") == (table["mask_finding"] == "")).all()
    checked = Manifest.read(first.manifest)
    assert len(checked) == 36 and not checked.problems


def test_cli_smoke(tmp_path, capsys):
    assert main(["phantom", "list"]) == 0
    assert "chest_drain-pneumothorax-v0.90-s0" in capsys.readouterr().out
    assert main(["phantom", "write", "--out", str(tmp_path), "--artefact", "site_token", "--spurious-class",
                 "pneumothorax", "--strength", "0.9", "--n-train", "24", "--n-val", "6", "--n-test", "6",
                 "--image-size", "64", "--mask-format", "nifti", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "site_token-pneumothorax-v0.90-s0" in out and (tmp_path / "site_token-pneumothorax-v0.90-s0" / "metadata.json").is_file()
    assert main(["phantom", "write", "--out", str(tmp_path), "--suite", "smoke"]) == 2  # needs --setting
    assert main(["phantom", "sheet", "--out", str(tmp_path / "sheet.png"), "-n", "4", "--image-size", "64"]) == 0
    assert (tmp_path / "sheet.png").stat().st_size > 1000
    assert main(["phantom", "digits", "--out", str(tmp_path / "digits"), "--n-train", "20", "--n-val", "10",
                 "--n-test", "10"]) == 0
