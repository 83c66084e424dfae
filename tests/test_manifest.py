"""Manifest CSV checks: bad rows are listed with reasons, good rows kept."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from ravl_med.data.errors import IngestError
from ravl_med.data.manifest import Manifest, Problem, image_key, write_problems


def _manifest(tmp_path: Path, rows: list[dict]) -> Path:
    path = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_rows_are_checked_and_problems_listed(tmp_path):
    path = _manifest(
        tmp_path,
        [
            {"path": "a.dcm", "label": "pneumothorax", "split": "train", "site": "A", "artefact_drain": "1"},
            {"path": "b.dcm", "label": "cardiomegaly|pleural effusion", "split": "TEST", "site": "B", "artefact_drain": "0"},
            {"path": "a.dcm", "label": "pneumothorax", "split": "train", "site": "A", "artefact_drain": "1"},
            {"path": "c.dcm", "label": "fracture", "split": "val", "site": "A", "artefact_drain": "0"},
            {"path": "d.dcm", "label": "", "split": "val", "site": "A", "artefact_drain": "0"},
            {"path": "e.dcm", "label": "pneumothorax", "split": "holdout", "site": "A", "artefact_drain": "0"},
            {"path": "", "label": "pneumothorax", "split": "", "site": "A", "artefact_drain": "0"},
            {"path": "sub/f.dcm", "label": " pneumothorax ", "split": "", "site": "C", "artefact_drain": "0"},
        ],
    )
    manifest = Manifest.read(path, classes=["pneumothorax", "cardiomegaly", "pleural effusion"])
    assert manifest.table["path"].tolist() == [str(tmp_path / "a.dcm"), str(tmp_path / "b.dcm"), str(tmp_path / "sub/f.dcm")]
    assert manifest.table["labels"].tolist() == [["pneumothorax"], ["cardiomegaly", "pleural effusion"], ["pneumothorax"]]
    assert manifest.table["split"].tolist() == ["train", "test", "train"]
    assert manifest.attribute_columns == ["site", "artefact_drain"]
    assert [(p.row, p.reason) for p in manifest.problems] == [
        (2, "duplicate_path"),
        (3, "unknown_label"),
        (4, "missing_label"),
        (5, "bad_row"),
        (6, "bad_row"),
    ]
    assert "fracture" in manifest.problems[1].detail
    assert manifest.table["key"].tolist()[0] == image_key("a.dcm")


def test_keys_are_opaque_and_stable():
    key = image_key("p10/p10000032/s50414267/img.dcm")
    assert len(key) == 16 and "10000032" not in key
    assert key == image_key("p10\\p10000032\\s50414267\\img.dcm")


def test_missing_columns_and_files_are_clear_errors(tmp_path):
    with pytest.raises(IngestError, match="manifest not found"):
        Manifest.read(tmp_path / "none.csv")
    path = tmp_path / "m.csv"
    path.write_text("file,finding\na.dcm,x\n")
    with pytest.raises(IngestError, match=r"lacks required column\(s\) \['path', 'label'\]"):
        Manifest.read(path)


def test_folder_scan_finds_images_recursively(tmp_path):
    (tmp_path / "x" / "y").mkdir(parents=True)
    for name in ("x/a.dcm", "x/y/b.PNG", "c.nii.gz", "notes.txt", "x/y/labels.csv"):
        (tmp_path / name).write_bytes(b"0")
    (tmp_path / "x" / "noext").write_bytes(b"\0" * 128 + b"DICM")
    (tmp_path / "x" / "other").write_bytes(b"not an image")
    found = Manifest.from_folder(tmp_path)
    assert sorted(Path(p).relative_to(tmp_path).as_posix() for p in found.table["path"]) == [
        "c.nii.gz", "x/a.dcm", "x/noext", "x/y/b.PNG",
    ]


def test_write_round_trip_and_quarantine_formats(tmp_path):
    path = _manifest(tmp_path, [{"path": "img/a.png", "label": "nodule", "report": "Nodule, right upper lobe."}])
    manifest = Manifest.read(path)
    again = Manifest.read(manifest.write(tmp_path / "copy.csv"))
    assert again.table.drop(columns=["labels"]).equals(manifest.table.drop(columns=["labels"]))
    problems = [Problem(path="x.dcm", reason="truncated", detail="ends early", key="k", row=3)]
    csv = pd.read_csv(write_problems(problems, tmp_path / "q.csv"))
    assert csv.to_dict("records") == [{"path": "x.dcm", "reason": "truncated", "detail": "ends early", "key": "k", "row": 3}]
    assert pd.read_json(write_problems(problems, tmp_path / "q.json")).loc[0, "reason"] == "truncated"


def test_keys_do_not_depend_on_how_the_path_is_written(tmp_path):
    # Regression: keys were hashed from the path as written, so "./a.png", "a.png" and the absolute
    # path of the same file got different keys.
    keys = []
    for written in ("a.png", "./a.png", str(tmp_path / "a.png")):
        keys.append(Manifest.read(_manifest(tmp_path, [{"path": written, "label": "x"}])).table["key"][0])
    assert keys == [image_key("a.png")] * 3
