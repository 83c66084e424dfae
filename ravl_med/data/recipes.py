"""Dataset recipes: manifests (see :mod:`ravl_med.data.manifest`) from public chest X-ray datasets on disk.

One builder per layout. The public datasets are parsed with torchxrayvision's own dataset classes
(``NIH_Dataset``, ``CheX_Dataset``, ``MIMIC_Dataset``, ``PC_Dataset``, ``SIIM_Pneumothorax_Dataset``),
so labels mean here what they mean there: a class is positive where the class's ``labels`` matrix
holds 1; 0 and NaN (negative, uncertain, not mentioned) are not positive, and a row with no positive
class is labelled ``No Finding``. Class names are torchxrayvision's (``Effusion``,
``Pleural_Thickening``, ...). The ``dicom`` layout is a plain folder of images plus a labels CSV.

Every builder returns a :class:`RecipeResult`: the manifest table (``path``, ``label``, ``report``,
``split`` where the dataset defines one, and the subgroup attributes ``view_position``, ``sex``,
``age_band``, ``site``, ``device`` where the dataset provides them) plus the count of dropped rows
per reason. Rows whose image is not on disk are dropped, counted and a few are kept as examples.
Patient and study identifiers are never copied into the table (file paths of some releases do embed
them; the manifest's ``key`` is a hash of the path for that reason).

Unusable input (missing root, label CSV or column) raises :class:`~ravl_med.data.errors.IngestError`
with a message that names the file or column, never a bare ``KeyError`` from deep in pandas.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ravl_med.data.errors import IngestError
from ravl_med.data.manifest import ATTRIBUTE_COLUMNS, LABEL_SEPARATOR, SPLITS
from ravl_med.xrv import torchxrayvision

__all__ = [
    "DROP_REASONS",
    "NO_FINDING",
    "RECIPES",
    "Recipe",
    "RecipeResult",
    "age_band",
    "build_chexpert",
    "build_dicom_folder",
    "build_manifest",
    "build_mimic",
    "build_nih",
    "build_padchest",
    "build_siim",
]

#: Label of a row with no positive class.
NO_FINDING = "No Finding"

#: Why a listed row is not in the manifest; :attr:`RecipeResult.dropped` counts use these codes.
DROP_REASONS: dict[str, str] = {
    "missing_image": "listed in the label CSV, but the image file is not on disk",
    "filtered_by_torchxrayvision": (
        "removed by the torchxrayvision class's own filters (PadChest: no labels, known-broken files, "
        "patients under 10 or without a birth year)"
    ),
    "no_image_record": "study in the MIMIC-CXR label CSV with no image in the metadata CSV",
    "duplicate_row": "the image is listed in an earlier row (SIIM: further annotations of one image, merged)",
    "no_path": "empty file name",
    "no_label": "empty label",
    "bad_split": f"split is not one of {list(SPLITS)} (or validate/valid/validation)",
}

#: Columns of the plain layout's CSV that are copied as they are (besides path and label).
_PASSTHROUGH_COLUMNS = ("report", "split", *ATTRIBUTE_COLUMNS)
_PATH_COLUMN_CANDIDATES = ("path", "file", "filename", "file_name", "image", "image_path", "dicom")
_LABEL_COLUMN_CANDIDATES = ("label", "labels", "finding", "findings", "class")
#: Column names that would carry a person's identity; the plain layout refuses to keep them.
_IDENTIFIER_NAME = re.compile(r"patient|subject|mrn|accession|name|birth|\bid\b|_id$", re.IGNORECASE)
_SPLIT_ALIASES = {"validate": "val", "valid": "val", "validation": "val", "training": "train", "": ""}
_DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
_MAX_EXAMPLES = 5


@dataclass
class RecipeResult:
    """A manifest built from a dataset on disk.

    Attributes:
        table: the manifest, one row per image found: ``path`` (absolute, or relative to the
            builder's ``relative_to``), ``label`` (``|``-separated), ``report``, ``split`` (only
            where the dataset defines one) and the attribute columns the dataset provides.
        dropped: rows left out, counted per reason code of :data:`DROP_REASONS`.
        examples: up to five listed file names per reason, for the report.
        sources: the label and metadata files that were read.
    """

    table: pd.DataFrame
    dropped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)

    @property
    def n_dropped(self) -> int:
        """Rows left out, all reasons together."""
        return sum(self.dropped.values())

    def _drop(self, reason: str, items: Sequence[str]) -> None:
        """Counts ``items`` (the dropped rows' listed names) under ``reason``, keeping a few as examples."""
        if not len(items):
            return
        self.dropped[reason] = self.dropped.get(reason, 0) + len(items)
        kept = self.examples.setdefault(reason, [])
        kept.extend(str(i) for i in list(items)[: max(0, _MAX_EXAMPLES - len(kept))])

    def _drop_filtered(self, csv: Path | str, column: str, kept: Iterable[str]) -> None:
        """Counts the rows of ``csv`` whose ``column`` value the torchxrayvision class left out."""
        listed = pd.read_csv(csv, usecols=[column], dtype=str, low_memory=False)[column].fillna("")
        remaining = pd.Series(list(kept), dtype=str).value_counts()
        # Multiset difference: a name listed twice and kept once still counts one dropped row.
        listed_counts = listed.value_counts()
        missing = (listed_counts - remaining.reindex(listed_counts.index, fill_value=0)).clip(lower=0)
        names = [name for name, n in missing.items() for _ in range(int(n))]
        self._drop("filtered_by_torchxrayvision", names)


# --------------------------------------------------------------------------------------------------
# Shared helpers


def age_band(age: object) -> str:
    """Decade band of an age in years: ``"40-49"``; ``"90+"`` from 90 on; ``""`` when unknown.

    Ages of 90 and over share one band, as in HIPAA's Safe Harbor rule, because they narrow a
    person down. Accepts numbers and DICOM age strings (``"058Y"``, ``"006M"``: under a year is 0).
    Values outside 0-120 years are treated as unknown (data-entry errors such as NIH's 414).
    """
    if age is None:
        return ""
    if isinstance(age, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([YMWDymwd]?)\s*", age)
        if not match:
            return ""
        years = float(match.group(1)) if match.group(2).upper() in ("", "Y") else 0.0
    else:
        try:
            years = float(age)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return ""
    if not np.isfinite(years) or years < 0 or years > 120:
        return ""
    if years >= 90:
        return "90+"
    low = int(years // 10) * 10
    return f"{low}-{low + 9}"


def _sex(value: object) -> str:
    """``M``, ``F`` or ``O`` (DICOM's codes) from the datasets' spellings; ``""`` when unknown."""
    if not isinstance(value, str):
        return ""
    value = value.strip().upper()
    return {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F", "O": "O", "OTHER": "O"}.get(value, "")


def _text(value: object) -> str:
    """A cell as clean text; NaN and None become ``""``."""
    if value is None:
        return ""
    try:
        if pd.isna(value):
            return ""
    except (TypeError, ValueError):  # a sequence (e.g. a multi-valued DICOM element): not missing
        pass
    return str(value).strip()


def _view(value: object) -> str:
    """torchxrayvision's ``view`` column, with its ``UNKNOWN`` placeholder as empty."""
    text = _text(value)
    return "" if text.upper() == "UNKNOWN" else text


def _split(value: object) -> str:
    """The manifest's split name, or ``"?"`` for a value that is not one."""
    text = _text(value).lower()
    text = _SPLIT_ALIASES.get(text, text)
    return text if text in ("", *SPLITS) else "?"


def _label_strings(labels: np.ndarray, pathologies: Sequence[str]) -> list[str]:
    """``|``-joined positive classes per row (value exactly 1; NaN is not positive)."""
    positive = np.asarray(labels, dtype=np.float64) == 1.0
    names = list(pathologies)
    return [
        LABEL_SEPARATOR.join(n for n, on in zip(names, row) if on) or NO_FINDING for row in positive
    ]


def _check_root(root: str | Path) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise IngestError("missing_file", f"dataset root folder not found: {root}")
    return root.resolve()


def _bundled(name: str) -> Path:
    """A label file that ships with torchxrayvision."""
    xrv_datasets = torchxrayvision().datasets

    return Path(xrv_datasets.datapath) / name


def _find_file(
    root: Path, given: str | Path | None, names: Sequence[str], what: str, option: str, bundled: str | None = None
) -> Path:
    """The file the user named, else the first of ``names`` in ``root``, else torchxrayvision's copy."""
    if given is not None:
        path = Path(given).expanduser()
        if not path.is_file():
            raise IngestError("missing_file", f"{what} not found: {path}")
        return path.resolve()
    for name in names:
        if (root / name).is_file():
            return root / name
    if bundled is not None:
        path = _bundled(bundled)
        if path.is_file():
            return path
    raise IngestError(
        "missing_file", f"no {what} found: looked for {', '.join(names)} in {root}; name it with {option}"
    )


def _read_header(path: Path, what: str) -> list[str]:
    try:
        return [str(c) for c in pd.read_csv(path, nrows=0).columns]
    except (OSError, UnicodeDecodeError, EOFError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise IngestError("bad_row", f"{what} {path} is not a readable CSV: {err}") from err


def _require_columns(path: Path, required: Iterable[str | tuple[str, ...]], what: str) -> list[str]:
    """Checks the CSV header; a tuple entry means "one of these". Returns the header."""
    header = _read_header(path, what)
    missing = []
    for need in required:
        options = need if isinstance(need, tuple) else (need,)
        if not any(o in header for o in options):
            missing.append(" or ".join(repr(o) for o in options))
    if missing:
        raise IngestError("bad_row", f"{what} {path} lacks column(s) {', '.join(missing)}; it has {header}")
    return header


def _load_xrv(class_name: str, csv_for_errors: Path, **kwargs):
    """Builds a torchxrayvision dataset object (labels and table only; no image is read)."""
    xrv = torchxrayvision()

    cls = getattr(xrv.datasets, class_name)
    try:
        with warnings.catch_warnings():
            # pandas chatter from inside the library (dtype guesses, chained assignment); not actionable here.
            warnings.simplefilter("ignore")
            return cls(**kwargs)
    except (KeyError, ValueError, TypeError, AttributeError, IndexError, NotImplementedError) as err:
        raise IngestError(
            "bad_row", f"torchxrayvision's {class_name} cannot parse {csv_for_errors}: {type(err).__name__}: {err}"
        ) from err


@contextlib.contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


class _FileFinder:
    """Finds listed images: first at the expected places, then by file name anywhere under the root.

    The by-name index is built on first need (one walk of the tree), so layouts that match the
    expected places never pay for it.
    """

    def __init__(self, root: Path, index: dict[str, str] | None = None) -> None:
        self.root = root
        self._index = index

    def by_name(self, name: str) -> Path | None:
        if self._index is None:
            self._index = {}
            for dirpath, dirnames, filenames in os.walk(self.root):
                dirnames.sort()
                for filename in sorted(filenames):
                    self._index.setdefault(filename, os.path.join(dirpath, filename))
        found = self._index.get(name)
        return Path(found) if found else None

    def find(self, candidates: Iterable[Path], name: str | None = None) -> Path | None:
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        return self.by_name(name) if name else None


def _relative(path: Path, base: Path | None) -> str:
    if base is None:
        return str(path.resolve())
    try:
        return str(path.resolve().relative_to(base)).replace(os.sep, "/")
    except ValueError:
        return str(path.resolve())


def _finish(
    frame: pd.DataFrame, result: RecipeResult, relative_to: str | Path | None, has_split: bool
) -> RecipeResult:
    """Drops rows without an image file or duplicating an earlier one; orders and formats columns.

    ``frame`` holds ``_file`` (Path or None), ``_listed`` (the name as listed, for the report),
    ``label`` and any of ``report``, ``split`` and the attribute columns.
    """
    base = Path(relative_to).expanduser().resolve() if relative_to is not None else None
    present = frame["_file"].notna().to_numpy()
    result._drop("missing_image", frame.loc[~present, "_listed"].tolist())
    frame = frame.loc[present].copy()
    frame["path"] = [_relative(Path(p), base) for p in frame["_file"]]
    duplicate = frame["path"].duplicated().to_numpy()
    result._drop("duplicate_row", frame.loc[duplicate, "_listed"].tolist())
    frame = frame.loc[~duplicate]
    if "report" not in frame.columns:
        frame["report"] = ""
    columns = ["path", "label", "report"]
    if has_split:
        columns.append("split")
    columns += [c for c in ATTRIBUTE_COLUMNS if c in frame.columns]
    columns += [c for c in frame.columns if c not in columns and not c.startswith("_")]
    table = frame[columns].fillna("").astype(str).reset_index(drop=True)
    result.table = table
    return result


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
        "view_position": _text(ds.get("ViewPosition", "")),
        "sex": _sex(_text(ds.get("PatientSex", ""))),
        "age_band": age_band(_text(ds.get("PatientAge", ""))),
        "device": _text(ds.get("Manufacturer", "")),
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


# --------------------------------------------------------------------------------------------------
# Builders


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
    root = _check_root(root)
    csv = _find_file(
        root, labels, ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv.gz"),
        "NIH label CSV", "--labels", bundled="Data_Entry_2017_v2020.csv.gz",
    )
    _require_columns(
        csv, ["Image Index", "Finding Labels", "Patient ID", "Patient Age", ("Patient Gender", "Patient Sex"),
              "View Position"], "NIH label CSV",
    )
    result = RecipeResult(table=pd.DataFrame(), sources=[str(csv)])
    ds = _load_xrv("NIH_Dataset", csv, imgpath=str(root), csvpath=str(csv), views=["*"], unique_patients=False)
    table = ds.csv.reset_index(drop=True)
    result._drop_filtered(csv, "Image Index", table["Image Index"].astype(str))

    split_of: dict[str, str] = {}
    for name, split in (("train_val_list.txt", "train"), ("test_list.txt", "test")):
        if (root / name).is_file():
            result.sources.append(str(root / name))
            split_of.update({line.strip(): split for line in (root / name).read_text().splitlines() if line.strip()})

    finder = _FileFinder(root)
    names = table["Image Index"].astype(str).tolist()
    frame = pd.DataFrame(
        {
            "_listed": names,
            "_file": [finder.find((root / "images" / n, root / n), n) for n in names],
            "label": _label_strings(ds.labels, ds.pathologies),
            "view_position": [_view(v) for v in table["view"]],
            "sex": [_sex(v) for v in table["Patient Gender"]],
            "age_band": [age_band(v) for v in table["Patient Age"]],
            "site": site,
        }
    )
    if split_of:
        frame["split"] = [split_of.get(n, "") for n in names]
    return _finish(frame, result, relative_to, has_split=bool(split_of))


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
    root = _check_root(root)
    if labels is None:
        csvs = [root / n for n in ("train.csv", "valid.csv") if (root / n).is_file()]
        if not csvs:
            csvs = [_find_file(root, None, ("train.csv", "valid.csv"), "CheXpert label CSV", "--labels",
                               bundled="chexpert_train.csv.gz")]
    else:
        given = [labels] if isinstance(labels, (str, Path)) else list(labels)
        csvs = [_find_file(root, g, (), "CheXpert label CSV", "--labels") for g in given]
    required = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding"]
    result = RecipeResult(table=pd.DataFrame(), sources=[str(c) for c in csvs])
    frames = []
    finder = _FileFinder(root)
    for csv in csvs:
        if "train" not in csv.name and "valid" not in csv.name:
            raise IngestError(
                "bad_row",
                f"CheXpert label CSV {csv}: torchxrayvision's CheX_Dataset takes the split from the file name, "
                "which must contain 'train' or 'valid' (the release's train.csv / valid.csv)",
            )
        _require_columns(csv, required, "CheXpert label CSV")
        # The class derives patient IDs from "train"/"valid" anywhere in the CSV path it is given; a
        # folder such as /data/training/ would mislead it, so it gets the bare file name.
        with _working_directory(csv.parent):
            ds = _load_xrv("CheX_Dataset", csv, imgpath=str(root), csvpath=csv.name, views=["*"],
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
                    "sex": [_sex(v) for v in table["Sex"]],
                    "age_band": [age_band(v) for v in table["Age"]],
                    "site": site,
                }
            )
        )
    return _finish(pd.concat(frames, ignore_index=True), result, relative_to, has_split=True)


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
    root = _check_root(root)
    csv = _find_file(
        root, labels, ("mimic-cxr-2.0.0-chexpert.csv.gz", "mimic-cxr-2.0.0-chexpert.csv"), "MIMIC-CXR label CSV",
        "--labels",
    )
    meta_csv = _find_file(
        root, meta, ("mimic-cxr-2.0.0-metadata.csv.gz", "mimic-cxr-2.0.0-metadata.csv"), "MIMIC-CXR metadata CSV",
        "--meta",
    )
    _require_columns(csv, ["subject_id", "study_id", "No Finding"], "MIMIC-CXR label CSV")
    _require_columns(meta_csv, ["dicom_id", "subject_id", "study_id", "ViewPosition", "StudyDate"],
                     "MIMIC-CXR metadata CSV")
    split_csv = None
    if splits is not None:
        split_csv = _find_file(root, splits, (), "MIMIC-CXR split CSV", "--splits")
    else:
        split_csv = next(
            (root / n for n in ("mimic-cxr-2.0.0-split.csv.gz", "mimic-cxr-2.0.0-split.csv") if (root / n).is_file()),
            None,
        )
    result = RecipeResult(table=pd.DataFrame(), sources=[str(csv), str(meta_csv)])
    ds = _load_xrv(
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
        _require_columns(split_csv, ["dicom_id", "split"], "MIMIC-CXR split CSV")
        result.sources.append(str(split_csv))
        split_table = pd.read_csv(split_csv, usecols=["dicom_id", "split"], dtype=str)
        split_of = dict(zip(split_table["dicom_id"], split_table["split"]))
        frame["split"] = [_split(split_of.get(i, "")) for i in dicom_ids]
        bad = (frame["split"] == "?").to_numpy()
        result._drop("bad_split", frame.loc[bad, "_listed"].tolist())
        frame = frame.loc[~bad]
    return _finish(frame, result, relative_to, has_split=split_csv is not None)


def _int_text(value: object) -> str:
    """An ID column value as digits (pandas may have read it as float after a join)."""
    try:
        return str(int(float(value)))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return _text(value)


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
    root = _check_root(root)
    name = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
    csv = _find_file(root, labels, (name, f"{name}.gz"), "PadChest label CSV", "--labels", bundled=f"{name}.gz")
    header = _require_columns(
        csv, ["ImageID", "StudyDate_DICOM", "PatientID", "PatientBirth", "PatientSex_DICOM", "Projection", "Labels"],
        "PadChest label CSV",
    )
    result = RecipeResult(table=pd.DataFrame(), sources=[str(csv)])
    ds = _load_xrv("PC_Dataset", csv, imgpath=str(root), csvpath=str(csv), views=["*"], unique_patients=False)
    table = ds.csv.reset_index(drop=True)
    result._drop_filtered(csv, "ImageID", table["ImageID"].astype(str))

    finder = _FileFinder(root)
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
            "sex": [_sex(v) for v in table["PatientSex_DICOM"]],
            "age_band": [age_band(v) for v in ages],
            "site": site,
        }
    )
    if "Manufacturer_DICOM" in header:
        frame["device"] = [_text(v) for v in table["Manufacturer_DICOM"]]
    if reports and "Report" in header:
        frame["report"] = [_text(v) for v in table["Report"]]
    return _finish(frame, result, relative_to, has_split=False)


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
    root = _check_root(root)
    csv = _find_file(
        root, labels, ("train-rle.csv", "stage_2_train.csv"), "SIIM label CSV", "--labels",
        bundled="siim-pneumothorax-train-rle.csv.gz",
    )
    _require_columns(csv, ["ImageId", (" EncodedPixels", "EncodedPixels")], "SIIM label CSV")
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
        ds = _load_xrv("SIIM_Pneumothorax_Dataset", csv, imgpath=str(root), csvpath=source)
        file_map = dict(ds.file_map)
    finally:
        xrv_datasets._cache_dict.pop("siim_file_map", None)
    table = ds.csv.reset_index(drop=True)
    ids = table["ImageId"].astype(str).str.strip()
    has_mask = np.asarray(ds.labels)[:, 0] == 1.0
    encoded = table[" EncodedPixels"]
    if pd.api.types.is_numeric_dtype(encoded):
        # Every row is -1, so pandas read the column as numbers and the class's test against the
        # string "-1" marked every image positive.
        has_mask = encoded.astype(str).str.strip().ne("-1").to_numpy()
    positive = pd.Series(has_mask).groupby(ids.to_numpy()).transform("any").to_numpy()
    finder = _FileFinder(root, index=file_map)
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
    return _finish(frame, result, relative_to, has_split=False)


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
    root = _check_root(root)
    if labels is None:
        raise IngestError("missing_file", "the dicom layout needs a labels CSV; name it with --labels")
    csv = _find_file(root, labels, (), "labels CSV", "--labels")
    try:
        raw = pd.read_csv(csv, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise IngestError("bad_row", f"labels CSV {csv} is not a readable CSV: {err}") from err
    raw.columns = [str(c).strip() for c in raw.columns]
    path_col = _pick_column(raw, path_column, _PATH_COLUMN_CANDIDATES, "file", csv, "--path-column")
    label_col = _pick_column(raw, label_column, _LABEL_COLUMN_CANDIDATES, "label", csv, "--label-column")
    for column in keep_columns:
        if column not in raw.columns:
            raise IngestError("bad_row", f"labels CSV {csv} has no column {column!r} to keep; it has {list(raw.columns)}")
        if _IDENTIFIER_NAME.search(column):
            raise IngestError("bad_row", f"column {column!r} looks like an identifier; manifests never carry those")
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

    finder = _FileFinder(root)
    frame = pd.DataFrame({"_listed": listed, "label": [LABEL_SEPARATOR.join(p) for p in label_lists]})
    lower = {c.lower(): c for c in raw.columns}
    for column in _PASSTHROUGH_COLUMNS:
        if column in lower:
            frame[column] = raw[lower[column]].str.strip()
    if "age_band" not in frame.columns and "age" in lower:
        frame["age_band"] = [age_band(v) for v in raw[lower["age"]]]
    if "sex" in frame.columns:
        frame["sex"] = [_sex(v) or v for v in frame["sex"]]
    for column in keep_columns:
        frame[column] = raw[column]
    if site is not None:
        frame["site"] = [s or site for s in frame["site"]] if "site" in frame.columns else site
    has_split = "split" in frame.columns
    if has_split:
        frame["split"] = [_split(v) for v in frame["split"]]
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
    return _finish(frame, result, relative_to, has_split=has_split)


def _pick_column(
    raw: pd.DataFrame, given: str | None, candidates: Sequence[str], what: str, csv: Path, option: str
) -> str:
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


# --------------------------------------------------------------------------------------------------
# Registry


@dataclass(frozen=True)
class Recipe:
    """One dataset layout.

    Attributes:
        name: the layout name on the command line.
        title: the dataset's name.
        builder: the function that builds its manifest.
        expects: the files it reads, in one line, for ``--help``.
        options: keyword arguments of ``builder`` the command line may pass (besides ``root``).
    """

    name: str
    title: str
    builder: Callable[..., RecipeResult]
    expects: str
    options: frozenset[str]


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            "nih", "NIH ChestX-ray14", build_nih,
            "ROOT with the PNGs (images/, images_0XX/images/ or flat); --labels Data_Entry_2017_v2020.csv "
            "(default: in ROOT, else torchxrayvision's copy); train_val_list.txt/test_list.txt in ROOT give the split",
            frozenset({"labels", "site"}),
        ),
        Recipe(
            "chexpert", "CheXpert", build_chexpert,
            "ROOT = CheXpert-v1.0[-small]/ (or its parent); --labels train.csv/valid.csv, repeatable "
            "(default: both in ROOT); the file name gives the split",
            frozenset({"labels", "site"}),
        ),
        Recipe(
            "mimic", "MIMIC-CXR-JPG", build_mimic,
            "ROOT = mimic-cxr-jpg/2.0.0/ with files/pXX/pSUBJECT/sSTUDY/DICOM_ID.jpg; --labels "
            "mimic-cxr-2.0.0-chexpert.csv.gz, --meta mimic-cxr-2.0.0-metadata.csv.gz, --splits "
            "mimic-cxr-2.0.0-split.csv.gz (defaults: in ROOT); reports from files/.../sSTUDY.txt if unpacked",
            frozenset({"labels", "meta", "splits", "reports", "site"}),
        ),
        Recipe(
            "padchest", "PadChest", build_padchest,
            "ROOT with the PNGs (numbered folders 0/ ... 54/, or flat); --labels "
            "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv[.gz] (default: in ROOT, else torchxrayvision's copy)",
            frozenset({"labels", "reports", "site"}),
        ),
        Recipe(
            "siim", "SIIM-ACR Pneumothorax", build_siim,
            "ROOT with the DICOMs anywhere below (dicom-images-train/...); --labels train-rle.csv or "
            "stage_2_train.csv (default: in ROOT, else torchxrayvision's copy)",
            frozenset({"labels", "read_headers", "site"}),
        ),
        Recipe(
            "dicom", "plain folder + labels CSV", build_dicom_folder,
            "ROOT with the images; --labels CSV (required) with a file column (path/file/filename/image) and a "
            "label column (label/labels/finding), names set with --path-column/--label-column",
            frozenset({"labels", "path_column", "label_column", "keep_columns", "read_headers", "site"}),
        ),
    )
}


def build_manifest(layout: str, root: str | Path, **options) -> RecipeResult:
    """Builds the manifest of a dataset in one of the :data:`RECIPES` layouts.

    Args:
        layout: a key of :data:`RECIPES`.
        root: the dataset folder.
        **options: keyword arguments of that layout's builder (``labels``, ``meta``, ``relative_to``, ...).

    Raises:
        IngestError: unknown layout, an option the layout does not take, or the builder's own errors.
    """
    if layout not in RECIPES:
        raise IngestError("bad_row", f"unknown dataset layout {layout!r}; known: {', '.join(RECIPES)}")
    recipe = RECIPES[layout]
    unknown = sorted(set(options) - recipe.options - {"relative_to"})
    if unknown:
        raise IngestError("bad_row", f"the {layout} layout does not take {', '.join(unknown)}")
    return recipe.builder(root, **options)
