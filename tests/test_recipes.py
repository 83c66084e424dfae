"""Dataset recipes and ``ravl-med manifest`` on tiny fake datasets in each release's real layout.

Every fake dataset lists one image that is not on disk, carries patient IDs in its CSVs (which must
not reach the manifest) and has labels whose expected manifest form is spelled out per image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ravl_med.cli import main
from ravl_med.data.errors import IngestError
from ravl_med.data.manifest import ATTRIBUTE_COLUMNS, Manifest
from ravl_med.data.recipes import (
    RECIPES,
    age_band,
    build_dicom_folder,
    build_manifest,
    build_mimic,
    build_siim,
)
from tests.factories import write_cr_dicom

#: Columns a manifest built by a recipe may have.
ALLOWED_COLUMNS = {"path", "label", "report", "split", *ATTRIBUTE_COLUMNS}
PATIENT_SECRET = "PAT-SECRET-0042"


# --------------------------------------------------------------------------------------------------
# Tiny image writers


def _png(path: Path, value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, dtype=np.uint8)).save(path)


def _jpg(path: Path, value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, dtype=np.uint8)).save(path, format="JPEG")


def _dicom(path: Path, *, sex: str = "", age: str = "", view: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_cr_dicom(
        path, np.arange(64).reshape(8, 8), PatientID=PATIENT_SECRET, PatientName="Doe^Jane", PatientSex=sex,
        PatientAge=age, ViewPosition=view, Manufacturer="FakeVendor",
    )


# --------------------------------------------------------------------------------------------------
# Fake datasets


@dataclass
class FakeDataset:
    """A fake dataset and what its manifest must hold.

    ``rows`` maps each image's file name to its expected labels (a set) and column values.
    """

    layout: str
    root: Path
    rows: dict[str, dict]
    dropped: dict[str, int]
    has_split: bool
    cli_args: list[str] = field(default_factory=list)


def make_nih(base: Path) -> FakeDataset:
    root = base / "nih"
    # The release spreads the PNGs over images_001/images/ ... images_012/images/.
    _png(root / "images_001" / "images" / "00000001_000.png")
    _png(root / "images_001" / "images" / "00000001_001.png")
    _png(root / "images_002" / "images" / "00000002_000.png")
    pd.DataFrame(
        {
            "Image Index": ["00000001_000.png", "00000001_001.png", "00000002_000.png", "00000003_000.png"],
            "Finding Labels": ["Cardiomegaly|Effusion", "No Finding", "Pleural_Thickening", "Hernia"],
            "Follow-up #": [0, 1, 0, 0],
            "Patient ID": [1, 1, 2, 3],
            "Patient Age": [57, 58, 93, 40],
            "Patient Gender": ["M", "M", "F", "F"],
            "View Position": ["PA", "AP", "PA", "PA"],
            "OriginalImage[Width": [2682] * 4,
            "Height]": [2749] * 4,
            "OriginalImagePixelSpacing[x": [0.143] * 4,
            "y]": [0.143] * 4,
        }
    ).to_csv(root / "Data_Entry_2017_v2020.csv", index=False)
    (root / "train_val_list.txt").write_text("00000001_000.png\n00000001_001.png\n00000003_000.png\n")
    (root / "test_list.txt").write_text("00000002_000.png\n")
    common = {"site": "NIH"}
    return FakeDataset(
        "nih",
        root,
        {
            "00000001_000.png": {"labels": {"Cardiomegaly", "Effusion"}, "split": "train", "view_position": "PA",
                                 "sex": "M", "age_band": "50-59", **common},
            "00000001_001.png": {"labels": {"No Finding"}, "split": "train", "view_position": "AP", "sex": "M",
                                 "age_band": "50-59", **common},
            "00000002_000.png": {"labels": {"Pleural_Thickening"}, "split": "test", "view_position": "PA",
                                 "sex": "F", "age_band": "90+", **common},
        },
        {"missing_image": 1},
        has_split=True,
    )


CHEXPERT_CLASSES = [
    "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema", "Consolidation",
    "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices",
]


def _chexpert_row(path: str, sex: str, age: int, frontal: str, appa: str | None, **labels: float) -> dict:
    row = {"Path": path, "Sex": sex, "Age": age, "Frontal/Lateral": frontal, "AP/PA": appa,
           "No Finding": labels.pop("No_Finding", np.nan)}
    row.update({c: labels.get(c.replace(" ", "_"), np.nan) for c in CHEXPERT_CLASSES})
    return row


def make_chexpert(base: Path) -> FakeDataset:
    # "training" in the parent folder must not confuse the class's train/valid check on the CSV path.
    root = base / "training" / "CheXpert-v1.0-small"
    prefix = "CheXpert-v1.0-small"
    _jpg(root / "train" / "patient00001" / "study1" / "view1_frontal.jpg")
    _jpg(root / "train" / "patient00002" / "study1" / "view1_frontal.jpg")
    _jpg(root / "train" / "patient00002" / "study1" / "view2_lateral.jpg")
    _jpg(root / "valid" / "patient64541" / "study1" / "view1_frontal.jpg")
    pd.DataFrame(
        [
            # No Finding = 1 clears every class but Support Devices.
            _chexpert_row(f"{prefix}/train/patient00001/study1/view1_frontal.jpg", "Female", 68, "Frontal", "AP",
                          No_Finding=1.0, Support_Devices=1.0, Edema=1.0),
            # -1 (uncertain) is not positive.
            _chexpert_row(f"{prefix}/train/patient00002/study1/view1_frontal.jpg", "Male", 45, "Frontal", "PA",
                          Cardiomegaly=1.0, Edema=-1.0, Pleural_Effusion=1.0, Fracture=0.0),
            _chexpert_row(f"{prefix}/train/patient00002/study1/view2_lateral.jpg", "Male", 45, "Lateral", None,
                          Lung_Opacity=-1.0),
            _chexpert_row(f"{prefix}/train/patient00003/study1/view1_frontal.jpg", "Female", 30, "Frontal", "PA",
                          Pneumonia=1.0),
        ]
    ).to_csv(root / "train.csv", index=False)
    pd.DataFrame(
        [_chexpert_row(f"{prefix}/valid/patient64541/study1/view1_frontal.jpg", "Male", 0, "Frontal", "AP",
                       Pneumothorax=1.0, Atelectasis=0.0)]
    ).to_csv(root / "valid.csv", index=False)
    common = {"site": "CheXpert"}
    return FakeDataset(
        "chexpert",
        root,
        {
            "train/patient00001/study1/view1_frontal.jpg": {"labels": {"Support Devices"}, "split": "train",
                                                           "view_position": "AP", "sex": "F", "age_band": "60-69",
                                                           **common},
            "train/patient00002/study1/view1_frontal.jpg": {"labels": {"Cardiomegaly", "Effusion"}, "split": "train",
                                                           "view_position": "PA", "sex": "M", "age_band": "40-49",
                                                           **common},
            "train/patient00002/study1/view2_lateral.jpg": {"labels": {"No Finding"}, "split": "train",
                                                           "view_position": "L", "sex": "M", "age_band": "40-49",
                                                           **common},
            # CheXpert's age 0 means unknown.
            "valid/patient64541/study1/view1_frontal.jpg": {"labels": {"Pneumothorax"}, "split": "val",
                                                           "view_position": "AP", "sex": "M", "age_band": "",
                                                           **common},
        },
        {"missing_image": 1},
        has_split=True,
    )


def make_mimic(base: Path) -> FakeDataset:
    root = base / "mimic-cxr-jpg" / "2.0.0"
    files = root / "files"
    images = [
        # dicom_id, subject, study, view, split
        ("02aa804e-bde0afdd", 10000032, 50414267, "PA", "train"),
        ("174413ec-4ec4c1f7", 10000032, 50414267, "LATERAL", "train"),
        ("2a2277a9-b0ded155", 10000032, 53189527, "AP", "validate"),
        ("68b5c4b1-227d0485", 11000011, 51029426, "PA", "test"),  # not on disk
    ]
    for dicom_id, subject, study, _, _ in images[:3]:
        _jpg(files / f"p{str(subject)[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom_id}.jpg")
    (files / "p10" / "p10000032" / "s50414267.txt").write_text("FINDINGS: No acute cardiopulmonary process.\n")
    classes = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
               "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
               "Pneumothorax", "Support Devices"]

    def study_row(subject: int, study: int, **labels: float) -> dict:
        return {"subject_id": subject, "study_id": study,
                **{c: labels.get(c.replace(" ", "_"), np.nan) for c in classes}}

    pd.DataFrame(
        [
            study_row(10000032, 50414267, No_Finding=1.0),
            study_row(10000032, 53189527, Pneumonia=1.0, Atelectasis=-1.0, Support_Devices=1.0),
            study_row(11000011, 51029426, Edema=1.0),
            study_row(12000022, 50000001, Fracture=1.0),  # no image in the metadata
        ]
    ).to_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz", index=False, compression="gzip")
    pd.DataFrame(
        {
            "dicom_id": [i[0] for i in images],
            "subject_id": [i[1] for i in images],
            "study_id": [i[2] for i in images],
            "PerformedProcedureStepDescription": "CHEST (PA AND LAT)",
            "ViewPosition": [i[3] for i in images],
            "Rows": 3056,
            "Columns": 2544,
            "StudyDate": 21800506,
            "StudyTime": 213014.531,
            "ProcedureCodeSequence_CodeMeaning": "CHEST (PA AND LAT)",
            "ViewCodeSequence_CodeMeaning": "postero-anterior",
            "PatientOrientationCodeSequence_CodeMeaning": "Erect",
        }
    ).to_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", index=False, compression="gzip")
    pd.DataFrame(
        {"dicom_id": [i[0] for i in images], "study_id": [i[2] for i in images],
         "subject_id": [i[1] for i in images], "split": [i[4] for i in images]}
    ).to_csv(root / "mimic-cxr-2.0.0-split.csv.gz", index=False, compression="gzip")
    report = "FINDINGS: No acute cardiopulmonary process."
    common = {"site": "MIMIC-CXR"}
    return FakeDataset(
        "mimic",
        root,
        {
            "02aa804e-bde0afdd.jpg": {"labels": {"No Finding"}, "split": "train", "view_position": "PA",
                                      "report": report, **common},
            "174413ec-4ec4c1f7.jpg": {"labels": {"No Finding"}, "split": "train", "view_position": "LATERAL",
                                      "report": report, **common},
            "2a2277a9-b0ded155.jpg": {"labels": {"Pneumonia", "Support Devices"}, "split": "val",
                                      "view_position": "AP", "report": "", **common},
        },
        {"missing_image": 1, "no_image_record": 1},
        has_split=True,
    )


def make_padchest(base: Path) -> FakeDataset:
    root = base / "padchest"
    rows = [
        # ImageID, ImageDir, StudyDate, birth, sex, projection, labels, on disk where
        ("216840111366964012339356563862009072111404053_00-043-192a.png", 0, 20140915, 1930.0, "F", "PA",
         "['normal']", "0"),
        ("216840111366964012339356563862009072111404053_00-043-192b.png", 0, 20150101, 1960.0, "M", "AP_horizontal",
         "['pleural effusion', 'cardiomegaly']", "0"),
        ("child.png", 1, 20150101, 2012.0, "M", "PA", "['normal']", "1"),  # under 10: the class filters it
        ("nolabel.png", 1, 20150101, 1950.0, "F", "PA", None, "1"),  # no labels: the class filters it
        ("missing.png", 1, 20150101, 1950.0, "F", "PA", "['pneumothorax']", None),
        ("flat.png", 2, 20160320, 1941.0, "O", "L", "['chronic changes', 'granuloma']", ""),  # flat, not in 2/
    ]
    for image_id, _, _, _, _, _, _, where in rows:
        if where is not None:
            _png(root / where / image_id)
    pd.DataFrame(
        {
            "Unnamed: 0": range(len(rows)),
            "ImageID": [r[0] for r in rows],
            "ImageDir": [r[1] for r in rows],
            "StudyDate_DICOM": [r[2] for r in rows],
            "StudyID": [f"study{i}" for i in range(len(rows))],
            "PatientID": [f"{PATIENT_SECRET}-{i}" for i in range(len(rows))],
            "PatientBirth": [r[3] for r in rows],
            "PatientSex_DICOM": [r[4] for r in rows],
            "ViewPosition_DICOM": "POSTEROANTERIOR",
            "Projection": [r[5] for r in rows],
            "Manufacturer_DICOM": "ImagingDynamicsCompanyLtd",
            "Report": "sin hallazg patolog edad pacient .",
            "MethodLabel": "Physician",
            "Labels": [r[6] for r in rows],
        }
    ).to_csv(root / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv", index=False)
    common = {"site": "PadChest", "device": "ImagingDynamicsCompanyLtd", "report": "sin hallazg patolog edad pacient ."}
    return FakeDataset(
        "padchest",
        root,
        {
            rows[0][0]: {"labels": {"No Finding"}, "view_position": "PA", "sex": "F", "age_band": "80-89", **common},
            rows[1][0]: {"labels": {"Cardiomegaly", "Effusion"}, "view_position": "AP Supine", "sex": "M",
                         "age_band": "50-59", **common},
            "flat.png": {"labels": {"Granuloma"}, "view_position": "L", "sex": "O", "age_band": "70-79", **common},
        },
        {"missing_image": 1, "filtered_by_torchxrayvision": 2},
        has_split=False,
    )


def make_siim(base: Path, *, stage_2: bool = False) -> FakeDataset:
    root = base / ("siim-stage2" if stage_2 else "siim")
    images = root / "dicom-images-train"
    ids = ["1.2.276.0.7230010.3.1.4.1", "1.2.276.0.7230010.3.1.4.2", "1.2.276.0.7230010.3.1.4.3",
           "1.2.276.0.7230010.3.1.4.4"]
    headers = [("F", "045Y", "PA"), ("M", "023Y", "AP"), ("M", "070Y", "PA")]
    for image_id, (sex, age, view) in zip(ids, headers):
        _dicom(images / f"{image_id}.study" / f"{image_id}.series" / f"{image_id}.dcm", sex=sex, age=age, view=view)
    # Kaggle's train-rle.csv: a leading space in the column name and in every value.
    encoded = [" -1", " 100 5 200 5", " 300 5", " -1", " 50 4"]
    image_of = [ids[0], ids[1], ids[1], ids[2], ids[3]]
    if stage_2:
        pd.DataFrame({"ImageId": image_of, "EncodedPixels": [e.strip() for e in encoded]}).to_csv(
            root / "stage_2_train.csv", index=False
        )
    else:
        pd.DataFrame({"ImageId": image_of, " EncodedPixels": encoded}).to_csv(root / "train-rle.csv", index=False)
    common = {"site": "SIIM-ACR", "device": "FakeVendor"}
    return FakeDataset(
        "siim",
        root,
        {
            f"{ids[0]}.dcm": {"labels": {"No Finding"}, "view_position": "PA", "sex": "F", "age_band": "40-49",
                              **common},
            f"{ids[1]}.dcm": {"labels": {"Pneumothorax"}, "view_position": "AP", "sex": "M", "age_band": "20-29",
                              **common},
            f"{ids[2]}.dcm": {"labels": {"No Finding"}, "view_position": "PA", "sex": "M", "age_band": "70-79",
                              **common},
        },
        {"missing_image": 1, "duplicate_row": 1},
        has_split=False,
    )


def make_dicom_folder(base: Path) -> FakeDataset:
    root = base / "hospital"
    _dicom(root / "a.dcm", sex="F", age="034Y", view="PA")
    _dicom(root / "b.dcm", sex="M", age="061Y", view="AP")
    _dicom(root / "sub" / "c.dcm", sex="M", age="", view="")
    _dicom(root / "d.dcm", sex="F", age="050Y", view="PA")
    labels = root / "labels.csv"
    pd.DataFrame(
        {
            "filename": ["a.dcm", "b", "c.dcm", "missing.dcm", "", "d.dcm", "a2.dcm"],
            "finding": ["Pneumothorax | Effusion", "Cardiomegaly", "No Finding", "Edema", "Edema", "", "Edema"],
            "split": ["train", "valid", "test", "train", "train", "train", "holdout"],
            "PatientID": [PATIENT_SECRET] * 7,
            "age": ["", "", "45", "", "", "", ""],
            "ward": ["icu", "er", "icu", "er", "er", "er", "er"],
        }
    ).to_csv(labels, index=False)
    return FakeDataset(
        "dicom",
        root,
        {
            "a.dcm": {"labels": {"Pneumothorax", "Effusion"}, "split": "train", "view_position": "PA", "sex": "F",
                      "age_band": "30-39", "device": "FakeVendor", "ward": "icu"},
            "b.dcm": {"labels": {"Cardiomegaly"}, "split": "val", "view_position": "AP", "sex": "M",
                      "age_band": "60-69", "ward": "er"},
            # The CSV's age wins over the (empty) header; the header fills the rest.
            "c.dcm": {"labels": {"No Finding"}, "split": "test", "view_position": "", "sex": "M",
                      "age_band": "40-49", "ward": "icu"},
        },
        {"missing_image": 1, "no_path": 1, "no_label": 1, "bad_split": 1},
        has_split=True,
        cli_args=["--labels", str(labels), "--keep-column", "ward"],
    )


MAKERS = {
    "nih": make_nih,
    "chexpert": make_chexpert,
    "mimic": make_mimic,
    "padchest": make_padchest,
    "siim": make_siim,
    "dicom": make_dicom_folder,
}


def _options(fake: FakeDataset) -> dict:
    if fake.layout == "dicom":
        return {"labels": fake.root / "labels.csv", "keep_columns": ["ward"]}
    return {}


def _rows_by_name(table: pd.DataFrame, root: Path, base: Path | None = None) -> dict[str, dict]:
    """Manifest rows keyed like FakeDataset.rows: the path below the root (CheXpert) or the file name."""
    out = {}
    for row in table.to_dict("records"):
        path = Path(row["path"]) if base is None else base / row["path"]
        relative = path.resolve().relative_to(root.resolve()).as_posix()
        key = relative if relative.startswith(("train/", "valid/")) else path.name
        out[key] = row
    return out


def _check_rows(got: dict[str, dict], fake: FakeDataset) -> None:
    assert set(got) == set(fake.rows)
    for name, expected in fake.rows.items():
        row = got[name]
        assert set(row["label"].split("|")) == expected["labels"], name
        for column, value in expected.items():
            if column != "labels":
                assert row[column] == value, (name, column)
        if not fake.has_split:
            assert "split" not in row
        if "report" not in expected:
            assert row["report"] == ""


# --------------------------------------------------------------------------------------------------
# Tests


def test_registry_covers_the_layouts() -> None:
    assert set(RECIPES) == set(MAKERS)


@pytest.mark.parametrize("layout", list(MAKERS))
def test_builder_reads_the_layout(layout: str, tmp_path: Path) -> None:
    fake = MAKERS[layout](tmp_path)
    result = build_manifest(layout, fake.root, **_options(fake))
    table = result.table
    assert set(table.columns) <= ALLOWED_COLUMNS | {"ward"}
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in table["path"])
    _check_rows(_rows_by_name(table, fake.root), fake)
    assert result.dropped == fake.dropped
    assert all(result.examples[reason] for reason in result.dropped)
    # No patient identifier in any column but the path (which some releases build from them).
    assert not table.drop(columns=["path"]).astype(str).apply(lambda c: c.str.contains(PATIENT_SECRET)).any().any()


@pytest.mark.parametrize("layout", list(MAKERS))
def test_cli_writes_a_manifest_that_loads(layout: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    fake = MAKERS[layout](tmp_path)
    out = tmp_path / "out" / f"{layout}.csv"
    # Images below the manifest's folder get relative paths.
    out_inside = fake.root.parent / f"{layout}.csv"
    code = main(["manifest", layout, "--root", str(fake.root), "--out", str(out_inside), *fake.cli_args])
    printed = capsys.readouterr().out
    assert code == 0, printed
    written = pd.read_csv(out_inside, dtype=str, keep_default_na=False)
    assert not any(Path(p).is_absolute() for p in written["path"])
    assert not any(c.lower().replace(" ", "").replace("_", "") in ("patientid", "subjectid") for c in written.columns)
    manifest = Manifest.read(out_inside)
    assert len(manifest) == len(fake.rows) and not manifest.problems
    _check_rows(_rows_by_name(written, fake.root, base=out_inside.parent), fake)
    for reason, count in fake.dropped.items():
        assert f"{reason}: {count}:" in printed
    assert f"in the manifest: {len(fake.rows)}" in printed
    # Elsewhere: absolute paths, still loadable.
    assert main(["manifest", layout, "--root", str(fake.root), "--out", str(out), *fake.cli_args]) == 0
    capsys.readouterr()
    assert all(Path(p).is_absolute() for p in pd.read_csv(out)["path"])
    assert len(Manifest.read(out)) == len(fake.rows)


def test_cli_prints_label_and_split_counts(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    fake = make_nih(tmp_path)
    assert main(["manifest", "nih", "--root", str(fake.root), "--out", str(tmp_path / "m.csv")]) == 0
    printed = capsys.readouterr().out
    assert "splits: test=1, train=2" in printed
    labels_line = next(line for line in printed.splitlines() if line.startswith("labels: "))
    assert sorted(labels_line.removeprefix("labels: ").split(", ")) == sorted(
        ["Cardiomegaly=1", "Effusion=1", "No Finding=1", "Pleural_Thickening=1"]
    )


def test_siim_stage_2_csv_and_a_second_root(tmp_path: Path) -> None:
    # torchxrayvision caches the first image-folder walk module-wide; a second root must still be found.
    first = make_siim(tmp_path)
    second = make_siim(tmp_path, stage_2=True)
    assert len(build_siim(first.root).table) == 3
    result = build_siim(second.root)
    assert all(Path(p).is_relative_to(second.root) for p in result.table["path"])
    _check_rows(_rows_by_name(result.table, second.root), second)


def test_siim_all_negative_csv_is_not_all_positive(tmp_path: Path) -> None:
    root = tmp_path / "siim"
    _dicom(root / "x" / "1.2.3.dcm")
    _dicom(root / "y" / "1.2.4.dcm")
    pd.DataFrame({"ImageId": ["1.2.3", "1.2.4"], " EncodedPixels": ["-1", "-1"]}).to_csv(
        root / "train-rle.csv", index=False
    )
    assert build_siim(root, read_headers=False).table["label"].tolist() == ["No Finding", "No Finding"]


def test_missing_label_csv_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "mimic"
    (root / "files").mkdir(parents=True)
    with pytest.raises(IngestError, match="mimic-cxr-2.0.0-chexpert.csv.gz") as caught:
        build_mimic(root)
    assert caught.value.reason == "missing_file"
    code = main(["manifest", "nih", "--root", str(root), "--labels", str(tmp_path / "nope.csv"),
                 "--out", str(tmp_path / "m.csv")])
    err = capsys.readouterr().err
    assert code == 2
    assert "nope.csv" in err and "Traceback" not in err
    assert not (tmp_path / "m.csv").exists()


def test_missing_root_and_columns_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(IngestError, match="root folder not found"):
        build_manifest("padchest", tmp_path / "absent")
    fake = make_nih(tmp_path)
    table = pd.read_csv(fake.root / "Data_Entry_2017_v2020.csv").drop(columns=["Finding Labels"])
    table.to_csv(fake.root / "Data_Entry_2017_v2020.csv", index=False)
    with pytest.raises(IngestError, match="'Finding Labels'"):
        build_manifest("nih", fake.root)
    plain = make_dicom_folder(tmp_path)
    with pytest.raises(IngestError, match="no label column 'diagnosis'"):
        build_dicom_folder(plain.root, plain.root / "labels.csv", label_column="diagnosis")
    with pytest.raises(IngestError, match="identifier"):
        build_dicom_folder(plain.root, plain.root / "labels.csv", keep_columns=["PatientID"])
    with pytest.raises(IngestError, match="needs a labels CSV"):
        build_dicom_folder(plain.root)


def test_cli_refuses_options_the_layout_does_not_take(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    fake = make_nih(tmp_path)
    code = main(["manifest", "nih", "--root", str(fake.root), "--meta", "x.csv", "--out", str(tmp_path / "m.csv")])
    assert code == 2 and "does not take --meta" in capsys.readouterr().err


def test_cli_nothing_found_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    pd.DataFrame({"path": ["a.dcm"], "label": ["Edema"]}).to_csv(root / "labels.csv", index=False)
    code = main(["manifest", "dicom", "--root", str(root), "--labels", str(root / "labels.csv"),
                 "--out", str(tmp_path / "m.csv")])
    assert code == 1 and "missing_image: 1" in capsys.readouterr().out
    assert not (tmp_path / "m.csv").exists()


@pytest.mark.parametrize(
    ("age", "band"),
    [(0, "0-9"), (49.9, "40-49"), (89, "80-89"), (90, "90+"), (414, ""), (-1, ""), (float("nan"), ""),
     (None, ""), ("058Y", "50-59"), ("006M", "0-9"), ("", ""), ("abc", "")],
)
def test_age_band(age: object, band: str) -> None:
    assert age_band(age) == band


def test_siim_falls_back_to_torchxrayvision_labels(tmp_path: Path) -> None:
    root = tmp_path / "siim"
    negative = "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819"  # "-1" in the bundled CSV
    positive = "1.2.276.0.7230010.3.1.4.8323329.4904.1517875185.355709"  # has a mask there
    _dicom(root / "a" / f"{negative}.dcm")
    _dicom(root / "b" / f"{positive}.dcm")
    result = build_siim(root, read_headers=False)
    assert result.sources[0].endswith("siim-pneumothorax-train-rle.csv.gz")
    labels = {Path(p).name: lb for p, lb in zip(result.table["path"], result.table["label"])}
    assert labels == {f"{negative}.dcm": "No Finding", f"{positive}.dcm": "Pneumothorax"}
    assert result.dropped["missing_image"] > 10_000


def test_chexpert_labels_option_picks_the_split(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    fake = make_chexpert(tmp_path)
    out = tmp_path / "valid-only.csv"
    assert main(["manifest", "chexpert", "--root", str(fake.root), "--labels", str(fake.root / "valid.csv"),
                 "--out", str(out)]) == 0
    capsys.readouterr()
    manifest = Manifest.read(out)
    assert manifest.table["split"].tolist() == ["val"]
    assert manifest.table["labels"].tolist() == [["Pneumothorax"]]
    renamed = fake.root / "labels.csv"
    renamed.write_bytes((fake.root / "valid.csv").read_bytes())
    with pytest.raises(IngestError, match="'train' or 'valid'"):
        build_manifest("chexpert", fake.root, labels=renamed)
