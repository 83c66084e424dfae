"""Layouts whose label CSV carries the subgroup attributes: NIH, CheXpert, MIMIC-CXR-JPG, PadChest.

Each is parsed by its torchxrayvision class (``NIH_Dataset``, ``CheX_Dataset``, ``MIMIC_Dataset``,
``PC_Dataset``): a class is positive where the class's ``labels`` matrix holds 1 (0 and NaN are not
positive; a row with no positive class is ``No Finding``), and the images (PNG or JPEG) are found at
the paths the CSV implies, else by file name under the root.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ravl_med.data.errors import IngestError
from ravl_med.data.manifest import LABEL_SEPARATOR
from ravl_med.data.recipes._common import (
    NO_FINDING,
    FileFinder,
    RecipeResult,
    age_band,
    cell_text,
    check_root,
    find_file,
    finish,
    load_xrv,
    require_columns,
    sex_code,
    split_name,
)

__all__ = ["build_chexpert", "build_mimic", "build_nih", "build_padchest"]


def _view(value: object) -> str:
    """torchxrayvision's ``view`` column, with its ``UNKNOWN`` placeholder as empty."""
    text = cell_text(value)
    return "" if text.upper() == "UNKNOWN" else text


def _label_strings(labels: np.ndarray, pathologies: Sequence[str]) -> list[str]:
    """``|``-joined positive classes per row (value exactly 1; NaN is not positive)."""
    positive = np.asarray(labels, dtype=np.float64) == 1.0
    names = list(pathologies)
    return [
        LABEL_SEPARATOR.join(n for n, on in zip(names, row) if on) or NO_FINDING for row in positive
    ]


@contextlib.contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def build_nih(
    root: str | Path,
    labels: str | Path | None = None,
    *,
    relative_to: str | Path | None = None,
    site: str = "NIH",
) -> RecipeResult:
    """NIH ChestX-ray14 through ``torchxrayvision.datasets.NIH_Dataset``.

    Args:
        root: the release folder. Images (``00000001_000.png``, ...) are looked up in ``root/images/``,
            ``root/`` and then by name anywhere below (the release ships them as
            ``images_001/images/`` ... ``images_012/images/``). ``train_val_list.txt`` and
            ``test_list.txt`` in ``root``, when present, give the split (``train``/``test``).
        labels: ``Data_Entry_2017_v2020.csv`` or ``Data_Entry_2017.csv``; default: that file in
            ``root``, else the copy that ships with torchxrayvision.
        relative_to: write paths relative to this folder (default: absolute).
        site: value of the ``site`` column.

    Returns:
        The manifest with ``view_position`` (PA/AP), ``sex``, ``age_band`` and ``site``.

    Raises:
        IngestError: the root or label CSV is missing, or the CSV lacks a column the class needs.
    """
    root = check_root(root)
    csv = find_file(
        root, labels, ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv.gz"),
        "NIH label CSV", "--labels", bundled="Data_Entry_2017_v2020.csv.gz",
    )
    require_columns(
        csv, ["Image Index", "Finding Labels", "Patient ID", "Patient Age", ("Patient Gender", "Patient Sex"),
              "View Position"], "NIH label CSV",
    )
    result = RecipeResult(table=pd.DataFrame(), sources=[str(csv)])
    ds = load_xrv("NIH_Dataset", csv, imgpath=str(root), csvpath=str(csv), views=["*"], unique_patients=False)
    table = ds.csv.reset_index(drop=True)
    result._drop_filtered(csv, "Image Index", table["Image Index"].astype(str))

    split_of: dict[str, str] = {}
    for name, split in (("train_val_list.txt", "train"), ("test_list.txt", "test")):
        if (root / name).is_file():
            result.sources.append(str(root / name))
            split_of.update({line.strip(): split for line in (root / name).read_text().splitlines() if line.strip()})

    finder = FileFinder(root)
    names = table["Image Index"].astype(str).tolist()
    frame = pd.DataFrame(
        {
            "_listed": names,
            "_file": [finder.find((root / "images" / n, root / n), n) for n in names],
            "label": _label_strings(ds.labels, ds.pathologies),
            "view_position": [_view(v) for v in table["view"]],
            "sex": [sex_code(v) for v in table["Patient Gender"]],
            "age_band": [age_band(v) for v in table["Patient Age"]],
            "site": site,
        }
    )
    if split_of:
        frame["split"] = [split_of.get(n, "") for n in names]
    return finish(frame, result, relative_to, has_split=bool(split_of))


def build_chexpert(
    root: str | Path,
    labels: str | Path | Sequence[str | Path] | None = None,
    *,
    relative_to: str | Path | None = None,
    site: str = "CheXpert",
) -> RecipeResult:
    """CheXpert (full or ``-small``) through ``torchxrayvision.datasets.CheX_Dataset``.

    Uncertain labels (-1) and blanks are not positive; ``No Finding`` = 1 makes every class but
    ``Support Devices`` negative (torchxrayvision's rule).

    Args:
        root: the release folder (``CheXpert-v1.0-small/``, holding ``train.csv``, ``valid.csv``,
            ``train/`` and ``valid/``) or its parent. The CSV's ``Path`` column
            (``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg``) is resolved against
            both.
        labels: one or more label CSVs. The file name picks the split: ``valid`` in it gives ``val``,
            anything else ``train`` (torchxrayvision needs ``train`` or ``valid`` in the name).
            Default: ``train.csv`` and ``valid.csv`` in ``root``, else torchxrayvision's copy of
            ``train.csv``.
        relative_to: write paths relative to this folder (default: absolute).
        site: value of the ``site`` column.

    Returns:
        The manifest with ``split``, ``view_position`` (PA, AP, L, ...), ``sex``, ``age_band``, ``site``.

    Raises:
        IngestError: the root or a label CSV is missing or unusable.
    """
    root = check_root(root)
    if labels is None:
        csvs = [root / n for n in ("train.csv", "valid.csv") if (root / n).is_file()]
        if not csvs:
            csvs = [find_file(root, None, ("train.csv", "valid.csv"), "CheXpert label CSV", "--labels",
                               bundled="chexpert_train.csv.gz")]
    else:
        given = [labels] if isinstance(labels, (str, Path)) else list(labels)
        csvs = [find_file(root, g, (), "CheXpert label CSV", "--labels") for g in given]
    required = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding"]
    result = RecipeResult(table=pd.DataFrame(), sources=[str(c) for c in csvs])
    frames = []
    finder = FileFinder(root)
    for csv in csvs:
        if "train" not in csv.name and "valid" not in csv.name:
            raise IngestError(
                "bad_row",
                f"CheXpert label CSV {csv}: torchxrayvision's CheX_Dataset takes the split from the file name, "
                "which must contain 'train' or 'valid' (the release's train.csv / valid.csv)",
            )
        require_columns(csv, required, "CheXpert label CSV")
        # The class derives patient IDs from "train"/"valid" anywhere in the CSV path it is given; a
        # folder such as /data/training/ would mislead it, so it gets the bare file name.
        with _working_directory(csv.parent):
            ds = load_xrv("CheX_Dataset", csv, imgpath=str(root), csvpath=csv.name, views=["*"],
                           unique_patients=False)
        table = ds.csv.reset_index(drop=True)
        result._drop_filtered(csv, "Path", table["Path"].astype(str))
        listed = table["Path"].astype(str).tolist()
        split = "val" if "valid" in csv.name.lower() else "train"
        frames.append(
            pd.DataFrame(
                {
                    "_listed": listed,
                    "_file": [finder.find(_chexpert_candidates(root, p)) for p in listed],
                    "label": _label_strings(ds.labels, ds.pathologies),
                    "split": split,
                    "view_position": [_view(v) for v in table["view"]],
                    "sex": [sex_code(v) for v in table["Sex"]],
                    "age_band": [age_band(v) for v in table["Age"]],
                    "site": site,
                }
            )
        )
    return finish(pd.concat(frames, ignore_index=True), result, relative_to, has_split=True)


def _chexpert_candidates(root: Path, listed: str) -> list[Path]:
    parts = Path(listed).parts
    candidates = [root.joinpath(*parts[1:])] if len(parts) > 1 else []
    return [*candidates, root / listed]


def build_mimic(
    root: str | Path,
    labels: str | Path | None = None,
    meta: str | Path | None = None,
    splits: str | Path | None = None,
    *,
    relative_to: str | Path | None = None,
    reports: bool = True,
    site: str = "MIMIC-CXR",
) -> RecipeResult:
    """MIMIC-CXR-JPG through ``torchxrayvision.datasets.MIMIC_Dataset``.

    Labels are per study (CheXpert labeler: 1 positive, 0 negative, -1 uncertain); every image of a
    study gets the study's labels.

    Args:
        root: the release folder (``mimic-cxr-jpg/2.0.0/``, holding ``files/``) or ``files/`` itself.
            Images are ``files/p10/p10000032/s50414267/<dicom_id>.jpg``.
        labels: the label CSV (``mimic-cxr-2.0.0-chexpert.csv.gz`` or ``-negbio``); default: the
            CheXpert one in ``root``.
        meta: ``mimic-cxr-2.0.0-metadata.csv.gz`` (one row per image, with ``ViewPosition``);
            default: in ``root``.
        splits: ``mimic-cxr-2.0.0-split.csv.gz``; default: in ``root`` if there (``validate`` becomes
            ``val``); without it there is no ``split`` column.
        relative_to: write paths relative to this folder (default: absolute).
        reports: fill ``report`` from ``files/pXX/pSUBJECT/sSTUDY.txt`` where those free-text reports
            (from MIMIC-CXR's ``mimic-cxr-reports``) have been unpacked next to the images.
        site: value of the ``site`` column.

    Returns:
        The manifest with ``view_position`` and ``site`` (the JPG release has no sex or age).

    Raises:
        IngestError: the root or a CSV is missing or lacks a needed column.
    """
    root = check_root(root)
    csv, meta_csv, split_csv = _mimic_csvs(root, labels, meta, splits)
    result = RecipeResult(table=pd.DataFrame(), sources=[str(csv), str(meta_csv)])
    ds = load_xrv(
        "MIMIC_Dataset", csv, imgpath=str(root), csvpath=str(csv), metacsvpath=str(meta_csv), views=["*"],
        unique_patients=False,
    )
    table = ds.csv.reset_index(drop=True)
    label_strings = _label_strings(ds.labels, ds.pathologies)
    # A study without any image in the metadata comes out of the class's left join with no dicom_id.
    has_image = table["dicom_id"].notna().to_numpy()
    result._drop(
        "no_image_record", [f"s{_int_text(s)}" for s in table.loc[~has_image, "study_id"]]
    )
    table = table.loc[has_image].reset_index(drop=True)
    label_strings = [s for s, keep in zip(label_strings, has_image) if keep]

    files = root / "files" if (root / "files").is_dir() else root
    subjects = [_int_text(s) for s in table["subject_id"]]
    studies = [_int_text(s) for s in table["study_id"]]
    dicom_ids = table["dicom_id"].astype(str).tolist()
    study_dirs = [files / f"p{sub[:2]}" / f"p{sub}" / f"s{stu}" for sub, stu in zip(subjects, studies)]
    frame = pd.DataFrame(
        {
            "_listed": [str(Path(d.name) / f"{i}.jpg") for d, i in zip(study_dirs, dicom_ids)],
            "_file": [_existing(d / f"{i}.jpg") for d, i in zip(study_dirs, dicom_ids)],
            "label": label_strings,
            "view_position": [_view(v) for v in table["view"]],
            "site": site,
        }
    )
    if reports:
        cache: dict[Path, str] = {}
        frame["report"] = [_report(d.with_suffix(".txt"), cache) for d in study_dirs]
    if split_csv is not None:
        frame = _add_mimic_split(frame, split_csv, dicom_ids, result)
    return finish(frame, result, relative_to, has_split=split_csv is not None)


def _mimic_csvs(
    root: Path, labels: str | Path | None, meta: str | Path | None, splits: str | Path | None
) -> tuple[Path, Path, Path | None]:
    """The label, metadata and (optional) split CSVs of MIMIC-CXR-JPG; the first two checked for columns."""
    csv = find_file(
        root, labels, ("mimic-cxr-2.0.0-chexpert.csv.gz", "mimic-cxr-2.0.0-chexpert.csv"), "MIMIC-CXR label CSV",
        "--labels",
    )
    meta_csv = find_file(
        root, meta, ("mimic-cxr-2.0.0-metadata.csv.gz", "mimic-cxr-2.0.0-metadata.csv"), "MIMIC-CXR metadata CSV",
        "--meta",
    )
    require_columns(csv, ["subject_id", "study_id", "No Finding"], "MIMIC-CXR label CSV")
    require_columns(meta_csv, ["dicom_id", "subject_id", "study_id", "ViewPosition", "StudyDate"],
                     "MIMIC-CXR metadata CSV")
    if splits is not None:
        split_csv = find_file(root, splits, (), "MIMIC-CXR split CSV", "--splits")
    else:
        split_csv = next(
            (root / n for n in ("mimic-cxr-2.0.0-split.csv.gz", "mimic-cxr-2.0.0-split.csv") if (root / n).is_file()),
            None,
        )
    return csv, meta_csv, split_csv


def _add_mimic_split(
    frame: pd.DataFrame, split_csv: Path, dicom_ids: Sequence[str], result: RecipeResult
) -> pd.DataFrame:
    """``frame`` (one row per ``dicom_ids`` entry) with the split CSV's ``split``; rows with a bad one dropped."""
    require_columns(split_csv, ["dicom_id", "split"], "MIMIC-CXR split CSV")
    result.sources.append(str(split_csv))
    split_table = pd.read_csv(split_csv, usecols=["dicom_id", "split"], dtype=str)
    split_of = dict(zip(split_table["dicom_id"], split_table["split"]))
    frame["split"] = [split_name(split_of.get(i, "")) for i in dicom_ids]
    bad = (frame["split"] == "?").to_numpy()
    result._drop("bad_split", frame.loc[bad, "_listed"].tolist())
    return frame.loc[~bad]


def _int_text(value: object) -> str:
    """An ID column value as digits (pandas may have read it as float after a join)."""
    try:
        return str(int(float(value)))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return cell_text(value)


def _existing(path: Path) -> Path | None:
    return path if path.is_file() else None


def _report(path: Path, cache: dict[Path, str]) -> str:
    if path not in cache:
        try:
            cache[path] = path.read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            cache[path] = ""
    return cache[path]


def build_padchest(
    root: str | Path,
    labels: str | Path | None = None,
    *,
    relative_to: str | Path | None = None,
    reports: bool = True,
    site: str = "PadChest",
) -> RecipeResult:
    """PadChest through ``torchxrayvision.datasets.PC_Dataset``.

    The class maps PadChest's findings onto its class list (synonyms included) and leaves out rows
    without labels, a list of known-broken files and patients under 10; those are counted as
    ``filtered_by_torchxrayvision``.

    Args:
        root: the release folder. Images (``<ImageID>.png``) are looked up in ``root/<ImageDir>/``
            (the release's numbered folders ``0/`` ... ``54/``), ``root/`` and then by name below.
        labels: ``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv`` (or ``.csv.gz``); default:
            in ``root``, else the copy that ships with torchxrayvision.
        relative_to: write paths relative to this folder (default: absolute).
        reports: copy the CSV's ``Report`` column (note: PadChest's reports are stemmed Spanish
            with stop words removed, not the original text).
        site: value of the ``site`` column.

    Returns:
        The manifest with ``view_position`` (PadChest's ``Projection``: PA, L, AP, AP Supine, ...),
        ``sex``, ``age_band`` (age at the study), ``site`` and ``device`` (the DICOM manufacturer).

    Raises:
        IngestError: the root or label CSV is missing or lacks a needed column.
    """
    root = check_root(root)
    name = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
    csv = find_file(root, labels, (name, f"{name}.gz"), "PadChest label CSV", "--labels", bundled=f"{name}.gz")
    header = require_columns(
        csv, ["ImageID", "StudyDate_DICOM", "PatientID", "PatientBirth", "PatientSex_DICOM", "Projection", "Labels"],
        "PadChest label CSV",
    )
    result = RecipeResult(table=pd.DataFrame(), sources=[str(csv)])
    ds = load_xrv("PC_Dataset", csv, imgpath=str(root), csvpath=str(csv), views=["*"], unique_patients=False)
    table = ds.csv.reset_index(drop=True)
    result._drop_filtered(csv, "ImageID", table["ImageID"].astype(str))

    finder = FileFinder(root)
    names = table["ImageID"].astype(str).tolist()
    dirs = [_int_text(d) for d in table["ImageDir"]] if "ImageDir" in header else [""] * len(names)
    study_year = pd.to_numeric(table["StudyDate_DICOM"].astype(str).str[:4], errors="coerce")
    ages = study_year - pd.to_numeric(table["PatientBirth"], errors="coerce")
    frame = pd.DataFrame(
        {
            "_listed": names,
            "_file": [finder.find([root / d / n] if d else [], n) for d, n in zip(dirs, names)],
            "label": _label_strings(ds.labels, ds.pathologies),
            "view_position": [_view(v) for v in table["view"]],
            "sex": [sex_code(v) for v in table["PatientSex_DICOM"]],
            "age_band": [age_band(v) for v in ages],
            "site": site,
        }
    )
    if "Manufacturer_DICOM" in header:
        frame["device"] = [cell_text(v) for v in table["Manufacturer_DICOM"]]
    if reports and "Report" in header:
        frame["report"] = [cell_text(v) for v in table["Report"]]
    return finish(frame, result, relative_to, has_split=False)
