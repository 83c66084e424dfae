"""``ravl-med validate`` (and ``ingest``) on folders and manifests mixing good and broken files.

Every broken file must be listed, with the right reason, in the printed summary, the quarantine
CSV and the JSON report, and no good file may be; a dataset with nothing usable exits 1 with a
clear message; patient identifiers in DICOM headers never reach any output.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
from PIL import Image, ImageDraw, ImageFont

from ravl_med.cli import main
from tests.factories import chest_like, write_cr_dicom

PATIENT = {
    "PatientName": "Doe^Jane",
    "PatientID": "PID-12345",
    "AccessionNumber": "ACC-98765",
    "PatientBirthDate": "19700101",
}
IDENTIFIERS = ("Doe^Jane", "PID-12345", "ACC-98765", "19700101")
#: Name parts, looked for in text outputs only (3-4 bytes can occur by chance inside a PNG).
NAME_PARTS = ("Doe", "Jane")


def _good_files(folder: Path, patient: dict) -> dict[str, Path]:
    """Two 12-bit CR DICOMs (MONOCHROME2 and MONOCHROME1, rescale and window tags) and a PNG."""
    stored = chest_like(120, 100, seed=1)
    mono2 = write_cr_dicom(
        folder / "cr_mono2.dcm", stored, RescaleSlope=1, RescaleIntercept=0, WindowCenter=2048, WindowWidth=4096,
        ViewPosition="PA", **patient,
    )
    mono1 = write_cr_dicom(
        folder / "cr_mono1.dcm", 4095 - stored, PhotometricInterpretation="MONOCHROME1",
        RescaleSlope=2, RescaleIntercept=-100, WindowCenter=2 * 2048 - 100, WindowWidth=2 * 4096, **patient,
    )
    png = folder / "grey.png"
    Image.fromarray(chest_like(100, 90, seed=2, bits=8).astype(np.uint8)).save(png)
    return {"cr_mono2": mono2, "cr_mono1": mono1, "png": png}


def _broken_files(folder: Path, patient: dict) -> dict[Path, str]:
    """Broken files -> the reason each must be refused with."""
    source = write_cr_dicom(folder / "source.tmp", chest_like(120, 100, seed=3), **patient)
    raw = source.read_bytes()
    source.unlink()
    broken: dict[Path, str] = {}

    text = folder / "notes.dcm"
    text.write_text("Patient notes, not an image.\n" * 20)
    broken[text] = "not_dicom"

    cut = folder / "cut.dcm"
    cut.write_bytes(raw[: len(raw) - 5000])  # inside the pixel data
    broken[cut] = "truncated"

    no_pixels = write_cr_dicom(folder / "no_pixels.dcm", chest_like(120, 100), **patient)
    ds = pydicom.dcmread(no_pixels)
    del ds.PixelData
    ds.save_as(no_pixels)
    broken[no_pixels] = "no_pixel_data"

    frames = write_cr_dicom(folder / "frames.dcm", chest_like(120, 100), **patient)
    ds = pydicom.dcmread(frames)
    ds.NumberOfFrames = 3
    ds.PixelData = np.stack([chest_like(120, 100, seed=s) for s in range(3)]).astype(np.uint16).tobytes()
    ds.save_as(frames)
    broken[frames] = "multi_frame"

    rng = np.random.default_rng(0)
    colour = folder / "colour.png"
    Image.fromarray(rng.integers(0, 256, (100, 100, 3), dtype=np.uint8)).save(colour)
    broken[colour] = "colour"

    constant = folder / "constant.png"
    Image.fromarray(np.full((100, 100), 128, dtype=np.uint8)).save(constant)
    broken[constant] = "constant"

    tiny = folder / "tiny.png"
    Image.fromarray(rng.integers(0, 256, (10, 10), dtype=np.uint8)).save(tiny)
    broken[tiny] = "bad_size"
    return broken


def _problem_lines(printed: str) -> list[str]:
    lines = printed.splitlines()
    start = lines.index("problems (refused):") + 1
    return [line for line in lines[start:] if line.startswith("  ")]


def test_validate_lists_each_broken_file_with_its_reason_and_no_good_one(tmp_path, capsys):
    folder = tmp_path / "dataset"
    folder.mkdir()
    good = _good_files(folder, {})
    broken = _broken_files(folder, {})
    quarantine, report = tmp_path / "quarantine.csv", tmp_path / "report.json"

    code = main(["validate", str(folder), "--quarantine", str(quarantine), "--report", str(report), "--no-progress"])

    assert code == 0
    printed = capsys.readouterr().out
    assert f"usable images: {len(good)}    refused: {len(broken)}    warnings: 0" in printed
    problem_lines = _problem_lines(printed)
    assert len(problem_lines) == len(broken)
    for path, reason in broken.items():
        assert any(line.startswith(f"  {path}: {reason}: ") for line in problem_lines), (path, reason)
    for path in good.values():
        assert str(path) not in printed
    table = pd.read_csv(quarantine)
    assert dict(zip(table["path"], table["reason"])) == {str(p): r for p, r in broken.items()}
    assert table["detail"].notna().all()
    written = json.loads(report.read_text())
    assert {p["path"]: p["reason"] for p in written["problems"]} == {str(p): r for p, r in broken.items()}
    summary = written["summary"]
    assert summary["usable"] == len(good)
    assert summary["refused_by_reason"] == {reason: 1 for reason in broken.values()}
    assert summary["photometric_interpretations"] == {"MONOCHROME2": 2, "MONOCHROME1": 1}


def test_validate_warns_about_burned_in_annotations(tmp_path, capsys):
    folder = tmp_path / "dataset"
    folder.mkdir()
    write_cr_dicom(folder / "plain.dcm", chest_like(120, 100, seed=1))
    write_cr_dicom(folder / "burned.dcm", chest_like(120, 100, seed=2), BurnedInAnnotation="YES")
    code = main(["validate", str(folder), "--quarantine", str(tmp_path / "q.csv"), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "usable images: 2    refused: 0    warnings: 1" in printed
    assert "burned-in annotation (DICOM): YES=1, (none)=1" in printed
    assert f"{folder / 'burned.dcm'}: burned_in_annotation: the DICOM header says the pixels hold burned-in text" \
        in printed


def _with_text(stored: np.ndarray, text: str) -> np.ndarray:
    """``stored`` (12-bit) with ``text`` burned in at the top left, drawn at the display's white (4095), font 6% of
    the height."""
    canvas = Image.fromarray(stored.astype(np.int32), mode="I")
    font = ImageFont.load_default(size=round(0.06 * stored.shape[0]))
    ImageDraw.Draw(canvas).text((0.04 * stored.shape[1], 0.04 * stored.shape[0]), text, fill=4095, font=font)
    return np.asarray(canvas).astype(np.uint16)


def test_validate_checks_pixels_for_burned_in_text(tmp_path, capsys):
    """The pixel check flags a DICOM with a name and date drawn into its pixels and no BurnedInAnnotation, and not
    the same image without the text; each warning names its source; --no-text-check skips it."""
    folder = tmp_path / "dataset"
    folder.mkdir()
    stored = chest_like(320, 280, seed=4)
    write_cr_dicom(folder / "clean.dcm", stored)
    write_cr_dicom(folder / "text.dcm", _with_text(stored, "DOE^JANE 1948-07-11"))
    write_cr_dicom(folder / "declared.dcm", chest_like(320, 280, seed=5), BurnedInAnnotation="YES")
    report = tmp_path / "report.json"
    code = main(["validate", str(folder), "--quarantine", str(tmp_path / "q.csv"), "--report", str(report),
                 "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "usable images: 3    refused: 0    warnings: 2" in printed
    assert ("burned-in text: 2 image(s) may hold it, flagged 1 by the DICOM attribute (BurnedInAnnotation YES) and 1 "
            "by the pixel check (lines of text-like marks)") in printed
    assert f"{folder / 'text.dcm'}: burned_in_text: the pixel check found " in printed
    assert f"{folder / 'declared.dcm'}: burned_in_annotation: the DICOM header says" in printed
    assert str(folder / "clean.dcm") not in printed
    written = json.loads(report.read_text())
    assert {w["path"]: w["reason"] for w in written["warnings"]} == {
        str(folder / "text.dcm"): "burned_in_text", str(folder / "declared.dcm"): "burned_in_annotation"}
    assert written["summary"]["burned_in_text"] == {"images": 2, "dicom_attribute": 1, "pixel_check": 1}
    assert pd.read_csv(tmp_path / "q.csv").empty  # warnings are kept images, not quarantined

    assert main(["validate", str(folder), "--quarantine", str(tmp_path / "q.csv"), "--no-text-check",
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "warnings: 1" in printed and "burned_in_text" not in printed
    assert "flagged 1 by the DICOM attribute (BurnedInAnnotation YES) and the pixel check not run" in printed


def test_the_pixel_check_sees_an_enlarged_image_at_its_stored_resolution(tmp_path):
    """Ingestion enlarges a 100 x 90 image to 224 px; the pixel check gets it back at 100 px (its smoothed edges gave
    false alarms on 128 px phantoms at 224 px); a larger image is checked at the ingest size."""
    from ravl_med.config import IngestConfig
    from ravl_med.data.burned_text import at_stored_resolution
    from ravl_med.data.pipeline import ingest_transforms, run_ingest_transforms

    def checked(path):  # what scan_manifest and the audit's galleries hand the pixel check
        image = run_ingest_transforms(transform, {"image": str(path)})["image"]
        return at_stored_resolution(np.asarray(image, dtype=np.float32)[0], max(image.meta["original_shape"].tolist()))

    transform = ingest_transforms(IngestConfig(image_size=224), regions=False)
    small = write_cr_dicom(tmp_path / "small.dcm", chest_like(100, 90, seed=1))
    large = write_cr_dicom(tmp_path / "large.dcm", chest_like(320, 280, seed=1))
    pixels = checked(small)
    assert pixels.shape == (100, 100) and pixels.dtype == np.float32 and 0.0 <= pixels.min() <= pixels.max() <= 1.0
    assert checked(large).shape == (224, 224)


def test_validate_exits_1_with_a_clear_message_when_nothing_is_usable(tmp_path, capsys):
    folder = tmp_path / "dataset"
    folder.mkdir()
    broken = _broken_files(folder, {})
    quarantine = tmp_path / "quarantine.csv"

    code = main(["validate", str(folder), "--quarantine", str(quarantine), "--no-progress"])

    assert code == 1
    printed = capsys.readouterr().out
    assert f"ravl-med validate: error: none of the {len(broken)} entries in {folder} is usable" in printed
    assert len(pd.read_csv(quarantine)) == len(broken)


def test_validate_quarantines_bad_manifest_rows(tmp_path, capsys):
    folder = tmp_path / "dataset"
    folder.mkdir()
    good = _good_files(folder, {})
    rows = [
        {"path": "cr_mono2.dcm", "label": "pneumothorax"},
        {"path": "grey.png", "label": "no finding"},
        {"path": "cr_mono1.dcm", "label": "cardiomegaly"},  # not a configured class
        {"path": "./cr_mono2.dcm", "label": "no finding"},  # the first row's image again
        {"path": "gone.dcm", "label": "pneumothorax"},  # no such file
    ]
    manifest = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    quarantine = tmp_path / "quarantine.csv"

    classes = "pneumothorax,no finding"
    code = main(["validate", str(manifest), "--classes", classes, "--quarantine", str(quarantine), "--no-progress"])

    assert code == 0
    printed = capsys.readouterr().out
    assert "usable images: 2    refused: 3" in printed
    table = pd.read_csv(quarantine)
    by_reason = dict(zip(table["reason"], table["path"]))
    assert sorted(by_reason) == ["duplicate_path", "missing_file", "unknown_label"]
    assert by_reason["unknown_label"] == str(good["cr_mono1"].resolve())
    assert by_reason["duplicate_path"] == str(good["cr_mono2"].resolve())
    assert by_reason["missing_file"] == str((folder / "gone.dcm").resolve())
    # Row problems carry their manifest row (0-based data row).
    rows_of = dict(zip(table["reason"], table["row"]))
    assert rows_of["unknown_label"] == 2 and rows_of["duplicate_path"] == 3
    assert "cardiomegaly" in printed


def _all_output_bytes(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_patient_identifiers_never_reach_any_output(tmp_path, capfd, caplog):
    caplog.set_level(logging.DEBUG)
    folder = tmp_path / "dataset"
    folder.mkdir()
    _good_files(folder, PATIENT)
    _broken_files(folder, PATIENT)
    for path in folder.glob("*.dcm"):  # the identifiers are really in the inputs
        if path.name != "notes.dcm":
            assert b"PID-12345" in path.read_bytes()
    reports, out = tmp_path / "reports", tmp_path / "ingested"

    assert main(["validate", str(folder), "--quarantine", str(reports / "q.csv"), "--report", str(reports / "r.json"),
                 "--no-progress"]) == 0
    assert main(["validate", str(folder), "--quarantine", str(reports / "q.json"), "--no-progress"]) == 0
    assert main(["ingest", str(folder), "--out", str(out), "--no-progress"]) == 0

    captured = capfd.readouterr()
    outputs = {"stdout": captured.out.encode(), "stderr": captured.err.encode(), "log": caplog.text.encode()}
    outputs.update({str(p): data for p, data in _all_output_bytes(reports).items()})
    written = _all_output_bytes(out)
    assert len(written) >= 3 + 3  # three images, manifest, quarantine, summary
    outputs.update({str(p): data for p, data in written.items()})
    for name, data in outputs.items():
        looked_for = IDENTIFIERS + (() if name.endswith(".png") else NAME_PARTS)
        for identifier in looked_for:
            assert identifier.encode() not in data, f"{identifier!r} found in {name}"
