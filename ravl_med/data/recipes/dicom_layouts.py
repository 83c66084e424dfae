"""Layouts of DICOM files whose headers fill the subgroup attributes: SIIM-ACR and the plain folder.

Neither label CSV carries view, sex, age or device, so with ``read_headers`` they come from each
image's DICOM header (:func:`_fill_from_dicom`; only where the CSV leaves them empty). Images are
found by file name anywhere under the root.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ravl_med.data.errors import IngestError
from ravl_med.data.manifest import ATTRIBUTE_COLUMNS, LABEL_SEPARATOR
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
from ravl_med.xrv import torchxrayvision

__all__ = ["build_dicom_folder", "build_siim"]

#: Columns of the plain layout's CSV that are copied as they are (besides path and label).
_PASSTHROUGH_COLUMNS = ("report", "split", *ATTRIBUTE_COLUMNS)
_PATH_COLUMN_CANDIDATES = ("path", "file", "filename", "file_name", "image", "image_path", "dicom")
_LABEL_COLUMN_CANDIDATES = ("label", "labels", "finding", "findings", "class")
#: Column names that would carry a person's identity; the plain layout refuses to keep them.
_IDENTIFIER_NAME = re.compile(r"patient|subject|mrn|accession|name|birth|\bid\b|_id$", re.IGNORECASE)
_DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")


def _dicom_attributes(path: Path) -> dict[str, str]:
    """View position, sex, age band and manufacturer from a DICOM header (empty when unreadable)."""
    if path.suffix.lower() not in _DICOM_SUFFIXES and path.suffix:
        return {}
    import pydicom

    try:
        ds = pydicom.dcmread(
            path, stop_before_pixels=True, force=True,
            specific_tags=["ViewPosition", "PatientSex", "PatientAge", "Manufacturer"],
        )
    except Exception:  # noqa: BLE001 - attributes are best-effort; `ravl-med validate` judges the file itself
        return {}
    return {
        "view_position": cell_text(ds.get("ViewPosition", "")),
        "sex": sex_code(cell_text(ds.get("PatientSex", ""))),
        "age_band": age_band(cell_text(ds.get("PatientAge", ""))),
        "device": cell_text(ds.get("Manufacturer", "")),
    }


def _fill_from_dicom(frame: pd.DataFrame, columns: Sequence[str]) -> None:
    """Adds the DICOM header attributes to ``frame`` where the table left them empty."""
    headers = [_dicom_attributes(p) if isinstance(p, Path) else {} for p in frame["_file"]]
    for column in columns:
        from_dicom = [h.get(column, "") for h in headers]
        if not any(from_dicom):
            continue
        if column in frame.columns:
            given = frame[column].fillna("").astype(str).tolist()
            frame[column] = [g or d for g, d in zip(given, from_dicom)]
        else:
            frame[column] = from_dicom


def build_siim(
    root: str | Path,
    labels: str | Path | None = None,
    *,
    relative_to: str | Path | None = None,
    read_headers: bool = True,
    site: str = "SIIM-ACR",
) -> RecipeResult:
    """SIIM-ACR pneumothorax (Kaggle 2019) through ``torchxrayvision.datasets.SIIM_Pneumothorax_Dataset``.

    An image is ``Pneumothorax`` when any of its rows has a mask (``EncodedPixels`` other than -1),
    else ``No Finding``. Several rows of one image (several annotated regions) become one manifest
    row; the extra rows are counted as ``duplicate_row``.

    Args:
        root: folder holding the DICOMs anywhere below it (the release's
            ``dicom-images-train/<study>/<series>/<ImageId>.dcm``); found by file name.
        labels: ``train-rle.csv`` (columns ``ImageId``, `` EncodedPixels``) or ``stage_2_train.csv``
            (``EncodedPixels``); default: either in ``root``, else torchxrayvision's copy of
            ``train-rle.csv``.
        relative_to: write paths relative to this folder (default: absolute).
        read_headers: read ``ViewPosition``, ``PatientSex``, ``PatientAge`` and ``Manufacturer``
            from each DICOM header (the CSV has none of them).
        site: value of the ``site`` column.

    Returns:
        The manifest (no split: the labelled release is one training set), with ``site`` and, when
        ``read_headers``, ``view_position``, ``sex``, ``age_band`` and ``device``.

    Raises:
        IngestError: the root or label CSV is missing or lacks a needed column.
    """
    root = check_root(root)
    csv = find_file(
        root, labels, ("train-rle.csv", "stage_2_train.csv"), "SIIM label CSV", "--labels",
        bundled="siim-pneumothorax-train-rle.csv.gz",
    )
    require_columns(csv, ["ImageId", (" EncodedPixels", "EncodedPixels")], "SIIM label CSV")
    ds, file_map = _load_siim(root, csv)
    table = ds.csv.reset_index(drop=True)
    ids = table["ImageId"].astype(str).str.strip()
    has_mask = np.asarray(ds.labels)[:, 0] == 1.0
    encoded = table[" EncodedPixels"]
    if pd.api.types.is_numeric_dtype(encoded):
        # Every row is -1, so pandas read the column as numbers and the class's test against the
        # string "-1" marked every image positive.
        has_mask = encoded.astype(str).str.strip().ne("-1").to_numpy()
    positive = pd.Series(has_mask).groupby(ids.to_numpy()).transform("any").to_numpy()
    finder = FileFinder(root, index=file_map)
    frame = pd.DataFrame(
        {
            "_listed": [f"{i}.dcm" for i in ids],
            "_file": [finder.by_name(f"{i}.dcm") for i in ids],
            "label": np.where(positive, ds.pathologies[0], NO_FINDING),
            "site": site,
        }
    )
    first = ~ids.duplicated().to_numpy()
    result = RecipeResult(table=pd.DataFrame(), sources=[str(csv)])
    result._drop("duplicate_row", frame.loc[~first, "_listed"].tolist())
    frame = frame.loc[first].reset_index(drop=True)
    if read_headers:
        _fill_from_dicom(frame, ("view_position", "sex", "age_band", "device"))
    return finish(frame, result, relative_to, has_split=False)


def _load_siim(root: Path, csv: Path):
    """torchxrayvision's ``SIIM_Pneumothorax_Dataset`` on ``csv`` and its file map (name -> path under ``root``)."""
    # The class expects the stage-1 column name (leading space included) and a bare "-1" for "no
    # mask"; stage 2 dropped that space and Kaggle's own train-rle.csv writes " -1". Both are
    # normalised in memory so that the class's rule reads them right.
    rle = pd.read_csv(csv, dtype=str, keep_default_na=False)
    rle.columns = [str(c).strip() for c in rle.columns]
    rle = rle.rename(columns={"EncodedPixels": " EncodedPixels"})
    rle["ImageId"] = rle["ImageId"].str.strip()
    rle[" EncodedPixels"] = rle[" EncodedPixels"].str.strip()
    source = io.StringIO(rle.to_csv(index=False))
    xrv_datasets = torchxrayvision().datasets

    # The class caches its walk of the image folder module-wide, whatever the folder; start clean
    # and leave nothing behind, so a second dataset root is never matched against the first one's files.
    xrv_datasets._cache_dict.pop("siim_file_map", None)
    try:
        ds = load_xrv("SIIM_Pneumothorax_Dataset", csv, imgpath=str(root), csvpath=source)
        file_map = dict(ds.file_map)
    finally:
        xrv_datasets._cache_dict.pop("siim_file_map", None)
    return ds, file_map


def build_dicom_folder(
    root: str | Path,
    labels: str | Path | None = None,
    *,
    path_column: str | None = None,
    label_column: str | None = None,
    label_separator: str = LABEL_SEPARATOR,
    keep_columns: Sequence[str] = (),
    relative_to: str | Path | None = None,
    read_headers: bool = True,
    site: str | None = None,
) -> RecipeResult:
    """A plain folder of DICOM files (PNG/JPEG work too) plus a labels CSV.

    Args:
        root: the image folder.
        labels: the CSV (required): one row per image, with a file column (a path relative to
            ``root``, or a bare file name found anywhere below it; ``.dcm`` may be left off) and a
            label column (class names separated by ``label_separator``). Optional columns
            ``report``, ``split``, ``site``, ``view_position``, ``sex``, ``age_band`` (or ``age`` in
            years) and ``device`` are copied.
        path_column: the file column; default: the first of path, file, filename, file_name, image,
            image_path, dicom (any case).
        label_column: the label column; default: the first of label, labels, finding, findings, class.
        label_separator: separator of several labels in one cell.
        keep_columns: further CSV columns to copy as subgroup attributes. Names that look like
            identifiers (patient, subject, MRN, accession, name, birth, ``*_id``) are refused.
        relative_to: write paths relative to this folder (default: absolute).
        read_headers: fill ``view_position``, ``sex``, ``age_band`` and ``device`` from DICOM
            headers where the CSV leaves them empty.
        site: value of the ``site`` column where the CSV has none.

    Returns:
        The manifest; ``split`` only when the CSV has that column.

    Raises:
        IngestError: the folder or CSV is missing, a column is not found, or a kept column looks
            like an identifier.
    """
    root = check_root(root)
    if labels is None:
        raise IngestError("missing_file", "the dicom layout needs a labels CSV; name it with --labels")
    csv = find_file(root, labels, (), "labels CSV", "--labels")
    raw = _read_labels_csv(csv)
    path_col = _pick_column(raw, path_column, _PATH_COLUMN_CANDIDATES, "file", csv, "--path-column")
    label_col = _pick_column(raw, label_column, _LABEL_COLUMN_CANDIDATES, "label", csv, "--label-column")
    _check_keep_columns(raw, keep_columns, csv)
    result = RecipeResult(table=pd.DataFrame(), sources=[str(csv)])

    listed = raw[path_col].str.strip()
    empty_path = (listed == "").to_numpy()
    result._drop("no_path", [f"row {i}" for i in np.flatnonzero(empty_path)])
    label_lists = [
        [part.strip() for part in cell.split(label_separator) if part.strip()] if label_separator else [cell.strip()]
        for cell in raw[label_col]
    ]
    no_label = np.array([not parts for parts in label_lists]) & ~empty_path
    result._drop("no_label", listed[no_label].tolist())
    keep = ~empty_path & ~no_label

    finder = FileFinder(root)
    frame = pd.DataFrame({"_listed": listed, "label": [LABEL_SEPARATOR.join(p) for p in label_lists]})
    _copy_attributes(frame, raw, keep_columns, site)
    has_split = "split" in frame.columns
    if has_split:
        frame["split"] = [split_name(v) for v in frame["split"]]
        bad = (frame["split"] == "?").to_numpy() & keep
        result._drop("bad_split", listed[bad].tolist())
        keep &= ~bad
    frame = frame.loc[keep].reset_index(drop=True)
    frame["_file"] = [
        finder.find((root / v, root / f"{v}.dcm"), None) or finder.by_name(Path(v).name)
        or finder.by_name(f"{Path(v).name}.dcm")
        for v in frame["_listed"]
    ]
    if read_headers:
        _fill_from_dicom(frame, ("view_position", "sex", "age_band", "device"))
    return finish(frame, result, relative_to, has_split=has_split)


def _read_labels_csv(csv: Path) -> pd.DataFrame:
    """The plain layout's CSV, every cell a string (blanks as ``""``), column names stripped."""
    try:
        raw = pd.read_csv(csv, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise IngestError("bad_row", f"labels CSV {csv} is not a readable CSV: {err}") from err
    raw.columns = [str(c).strip() for c in raw.columns]
    return raw


def _check_keep_columns(raw: pd.DataFrame, keep_columns: Sequence[str], csv: Path) -> None:
    """Refuses a kept column that is not in the CSV or whose name looks like an identifier."""
    for column in keep_columns:
        if column not in raw.columns:
            raise IngestError("bad_row", f"labels CSV {csv} has no column {column!r} to keep; it has {list(raw.columns)}")
        if _IDENTIFIER_NAME.search(column):
            raise IngestError("bad_row", f"column {column!r} looks like an identifier; manifests never carry those")


def _copy_attributes(frame: pd.DataFrame, raw: pd.DataFrame, keep_columns: Sequence[str], site: str | None) -> None:
    """Adds the CSV's report, split and attribute columns (any case) and ``keep_columns`` to ``frame``.

    An ``age`` column in years becomes ``age_band`` when the CSV has none; sex spellings become
    DICOM codes where known; ``site`` fills the rows whose own site is empty.
    """
    lower = {c.lower(): c for c in raw.columns}
    for column in _PASSTHROUGH_COLUMNS:
        if column in lower:
            frame[column] = raw[lower[column]].str.strip()
    if "age_band" not in frame.columns and "age" in lower:
        frame["age_band"] = [age_band(v) for v in raw[lower["age"]]]
    if "sex" in frame.columns:
        frame["sex"] = [sex_code(v) or v for v in frame["sex"]]
    for column in keep_columns:
        frame[column] = raw[column]
    if site is not None:
        frame["site"] = [s or site for s in frame["site"]] if "site" in frame.columns else site


def _pick_column(
    raw: pd.DataFrame, given: str | None, candidates: Sequence[str], what: str, csv: Path, option: str
) -> str:
    """The CSV column named ``given``, else the first of ``candidates`` present (any case)."""
    if given is not None:
        if given not in raw.columns:
            raise IngestError("bad_row", f"labels CSV {csv} has no {what} column {given!r}; it has {list(raw.columns)}")
        return given
    lower = {c.lower(): c for c in raw.columns}
    for candidate in candidates:
        if candidate in lower:
            return lower[candidate]
    raise IngestError(
        "bad_row",
        f"labels CSV {csv} has no {what} column (looked for {', '.join(candidates)}); it has {list(raw.columns)}; "
        f"name it with {option}",
    )
