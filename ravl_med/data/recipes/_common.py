"""What every dataset recipe shares: the result, cell parsing, file lookup and the final table.

The layout modules (:mod:`~ravl_med.data.recipes.csv_layouts`,
:mod:`~ravl_med.data.recipes.dicom_layouts`) build a frame with ``_file`` (the image found, or
``None``), ``_listed`` (the name as listed) and ``label``; :func:`finish` turns it into the manifest.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ravl_med.data.errors import IngestError
from ravl_med.data.manifest import ATTRIBUTE_COLUMNS, SPLITS
from ravl_med.xrv import torchxrayvision

__all__ = [
    "DROP_REASONS",
    "NO_FINDING",
    "FileFinder",
    "RecipeResult",
    "age_band",
    "cell_text",
    "check_root",
    "find_file",
    "finish",
    "load_xrv",
    "require_columns",
    "sex_code",
    "split_name",
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

_SPLIT_ALIASES = {"validate": "val", "valid": "val", "validation": "val", "training": "train", "": ""}
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


def sex_code(value: object) -> str:
    """``M``, ``F`` or ``O`` (DICOM's codes) from the datasets' spellings; ``""`` when unknown."""
    if not isinstance(value, str):
        return ""
    value = value.strip().upper()
    return {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F", "O": "O", "OTHER": "O"}.get(value, "")


def cell_text(value: object) -> str:
    """A cell as clean text; NaN and None become ``""``."""
    if value is None:
        return ""
    try:
        if pd.isna(value):
            return ""
    except (TypeError, ValueError):  # a sequence (e.g. a multi-valued DICOM element): not missing
        pass
    return str(value).strip()


def split_name(value: object) -> str:
    """The manifest's split name, or ``"?"`` for a value that is not one."""
    text = cell_text(value).lower()
    text = _SPLIT_ALIASES.get(text, text)
    return text if text in ("", *SPLITS) else "?"


def check_root(root: str | Path) -> Path:
    """The dataset folder, absolute; :class:`~ravl_med.data.errors.IngestError` when it is not one."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise IngestError("missing_file", f"dataset root folder not found: {root}")
    return root.resolve()


def _bundled(name: str) -> Path:
    """A label file that ships with torchxrayvision."""
    xrv_datasets = torchxrayvision().datasets

    return Path(xrv_datasets.datapath) / name


def find_file(
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


def require_columns(path: Path, required: Iterable[str | tuple[str, ...]], what: str) -> list[str]:
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


def load_xrv(class_name: str, csv_for_errors: Path, **kwargs):
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


class FileFinder:
    """Finds listed images: first at the expected places, then by file name anywhere under the root.

    The by-name index is built on first need (one walk of the tree), so layouts that match the
    expected places never pay for it.
    """

    def __init__(self, root: Path, index: dict[str, str] | None = None) -> None:
        self.root = root
        self._index = index

    def by_name(self, name: str) -> Path | None:
        """The first file called ``name`` under the root (folders walked in sorted order), or ``None``."""
        if self._index is None:
            self._index = {}
            for dirpath, dirnames, filenames in os.walk(self.root):
                dirnames.sort()
                for filename in sorted(filenames):
                    self._index.setdefault(filename, os.path.join(dirpath, filename))
        found = self._index.get(name)
        return Path(found) if found else None

    def find(self, candidates: Iterable[Path], name: str | None = None) -> Path | None:
        """The first of ``candidates`` that is a file, else :meth:`by_name` of ``name`` (if given)."""
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


def finish(
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
