"""Dataset manifests: one CSV row per radiograph, checked on load.

Format (UTF-8 CSV with a header row):

============== ========== ==============================================================
column         required   meaning
============== ========== ==============================================================
path           yes        image file, absolute or relative to the manifest's folder
label          yes        class name(s); several labels separated by ``|`` (read and counted here;
                          one class per row for fine-tuning, the audit and mitigation, see
                          :func:`require_single_labels`)
report         no         free-text report paired with the image (for fine-tuning)
split          no         ``train``, ``val`` or ``test`` (empty: ``train``)
key            no         opaque per-image key; made from the path when absent
site, view_position, sex, age_band, device
               no         subgroup attributes (free text)
anything else  no         kept as a further subgroup attribute (e.g. ``artefact_drain``)
============== ========== ==============================================================

Phantom and digits manifests add ``artefact`` (the planted feature's name) and ``artefact_present``
(0/1 per image); :func:`feature_presence` reads them for per-group accuracy.

Bad rows are not fatal: :meth:`Manifest.read` keeps the good rows and lists the others in
``problems`` (reason codes of :mod:`ravl_med.data.errors`), so a caller can quarantine them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ravl_med.data.errors import REASONS, IngestError

__all__ = [
    "ATTRIBUTE_COLUMNS",
    "IMAGE_SUFFIXES",
    "LABEL_SEPARATOR",
    "SPLITS",
    "Manifest",
    "Problem",
    "GROUND_TRUTH_COLUMNS",
    "empty_split_message",
    "known_attributes",
    "feature_presence",
    "image_key",
    "require_single_labels",
    "write_problems",
]

LABEL_SEPARATOR = "|"
SPLITS = ("train", "val", "test")
ATTRIBUTE_COLUMNS = ("site", "view_position", "sex", "age_band", "device")
CORE_COLUMNS = ("key", "path", "label", "report", "split")
#: Suffixes a folder scan picks up besides suffix-less files that start like DICOM.
IMAGE_SUFFIXES = (".dcm", ".dicom", ".dic", ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".nii", ".nii.gz")


def image_key(relative_path: str) -> str:
    """Opaque, stable per-image key: the first 16 hex digits of SHA-256 of the relative path.

    Paths of hospital exports often embed patient IDs; the key does not, and it stays the same
    when the dataset folder moves.
    """
    return hashlib.sha256(relative_path.replace("\\", "/").encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Problem:
    """One refused file or manifest row, as written to the quarantine file."""

    path: str
    reason: str
    detail: str
    key: str = ""
    row: int | None = None  # 0-based data row of the manifest, when the problem is a row

    @classmethod
    def from_error(cls, err: IngestError, path: str, key: str = "", row: int | None = None) -> Problem:
        return cls(path=path, reason=err.reason, detail=err.detail, key=key, row=row)


def write_problems(problems: Sequence[Problem], path: str | Path) -> Path:
    """Writes the quarantine list as CSV (``.csv``) or JSON (any other suffix); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame([asdict(p) for p in problems], columns=["path", "reason", "detail", "key", "row"])
    table["row"] = table["row"].astype("Int64")
    if path.suffix.lower() == ".csv":
        table.to_csv(path, index=False)
    else:
        table.to_json(path, orient="records", indent=2)
    return path


def _looks_like_image(path: Path) -> bool:
    name = path.name.lower()
    if name.endswith(IMAGE_SUFFIXES):
        return True
    if "." in name:  # some other document type (.csv, .txt, ...)
        return False
    try:
        with path.open("rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


@dataclass
class Manifest:
    """A checked manifest.

    Attributes:
        table: one row per usable entry with columns ``key``, ``path`` (absolute), ``labels``
            (list of str), ``label`` (as written), ``report``, ``split`` and the attribute columns.
        root: folder that relative paths are resolved against.
        problems: rows that were refused, with reasons.
        classes: the class names labels were checked against (empty: not checked).
        defines_splits: some row names its split (otherwise every row counts as ``train``).
    """

    table: pd.DataFrame
    root: Path
    problems: list[Problem] = field(default_factory=list)
    classes: tuple[str, ...] = ()
    defines_splits: bool = True

    def evaluated_split(self, split: str | None) -> str | None:
        """The split an evaluation of ``split`` reads: ``split``, or ``None`` (every row) when the
        manifest defines no splits (e.g. ``ravl-med manifest dicom`` of a hospital's folder)."""
        return split if self.defines_splits else None

    @property
    def attribute_columns(self) -> list[str]:
        """Subgroup attribute columns present in this manifest."""
        return [c for c in self.table.columns if c not in (*CORE_COLUMNS, "labels")]

    def __len__(self) -> int:
        return len(self.table)

    @classmethod
    def read(cls, path: str | Path, classes: Iterable[str] = ()) -> Manifest:
        """Reads and checks a manifest CSV.

        Args:
            path: the CSV file.
            classes: allowed class names; labels outside them are refused as ``unknown_label``.

        Raises:
            IngestError: ``missing_file`` when the CSV does not exist; ``bad_row`` when it is not a
                readable CSV or lacks a required column.
        """
        path = Path(path)
        if not path.is_file():
            raise IngestError("missing_file", f"manifest not found: {path}")
        try:
            raw = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
        except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
            raise IngestError("bad_row", f"manifest {path} is not a readable CSV: {err}") from err
        raw.columns = [str(c).strip() for c in raw.columns]
        missing = [c for c in ("path", "label") if c not in raw.columns]
        if missing:
            raise IngestError(
                "bad_row", f"manifest {path} lacks required column(s) {missing}; it has {list(raw.columns)}"
            )
        return cls.from_frame(raw, root=path.parent, classes=classes)

    @classmethod
    def from_frame(cls, raw: pd.DataFrame, root: str | Path, classes: Iterable[str] = ()) -> Manifest:
        """Checks a manifest held as a data frame of strings (see :meth:`read`)."""
        root = Path(root).resolve()
        allowed = tuple(classes)
        table = raw.copy()
        for column in ("report", "split", "key"):
            if column not in table.columns:
                table[column] = ""
        table = table.fillna("").astype(str)
        problems: list[Problem] = []
        keep: list[int] = []
        seen: set[str] = set()
        rows = []
        for index, row in enumerate(table.to_dict("records")):
            relative = row["path"].strip()
            resolved = (root / relative).resolve() if relative else root
            key = row["key"].strip() or image_key(_relative(str(resolved), root))
            labels = [part.strip() for part in row["label"].split(LABEL_SEPARATOR) if part.strip()]
            split = row["split"].strip().lower() or "train"
            reason, detail = None, ""
            if not relative:
                reason, detail = "bad_row", "empty path"
            elif str(resolved) in seen:
                reason, detail = "duplicate_path", "the same image is listed in an earlier row"
            elif not labels:
                reason = "missing_label"
            elif allowed and (unknown := [lb for lb in labels if lb not in allowed]):
                reason, detail = "unknown_label", f"{unknown} not in the configured classes {list(allowed)}"
            elif split not in SPLITS:
                reason, detail = "bad_row", f"split {row['split']!r} is not one of {list(SPLITS)}"
            if reason is not None:
                problems.append(Problem(path=str(resolved), reason=reason, detail=detail or REASONS[reason], key=key, row=index))
                continue
            seen.add(str(resolved))
            keep.append(index)
            rows.append({**row, "key": key, "path": str(resolved), "labels": labels, "split": split})
        columns = [*CORE_COLUMNS, "labels", *[c for c in table.columns if c not in CORE_COLUMNS]]
        defines_splits = bool(table["split"].str.strip().ne("").any())
        return cls(table=pd.DataFrame(rows, columns=columns), root=root, problems=problems, classes=allowed,
                   defines_splits=defines_splits)

    @classmethod
    def from_folder(cls, folder: str | Path) -> Manifest:
        """A label-free manifest of every image file under ``folder`` (recursive, sorted).

        Picked up: files with an image suffix (:data:`IMAGE_SUFFIXES`) and suffix-less files that
        start like DICOM. Labels are empty; use it for validation, not training.
        """
        folder = Path(folder).resolve()
        if not folder.is_dir():
            raise IngestError("missing_file", f"folder not found: {folder}")
        paths = sorted(p for p in folder.rglob("*") if p.is_file() and _looks_like_image(p))
        rows = [
            {"key": image_key(str(p.relative_to(folder))), "path": str(p), "label": "", "report": "", "split": "",
             "labels": []}
            for p in paths
        ]
        return cls(table=pd.DataFrame(rows, columns=[*CORE_COLUMNS, "labels"]), root=folder)

    def write(self, path: str | Path, relative_to: str | Path | None = None) -> Path:
        """Writes the manifest CSV; paths are made relative to ``relative_to`` (default: its folder)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        base = Path(relative_to or path.parent).resolve()
        table = self.table.drop(columns=["labels"]).copy()
        table["path"] = [_relative(p, base) for p in table["path"]]
        table.to_csv(path, index=False)
        return path


def require_single_labels(table: pd.DataFrame, source: str) -> None:
    """Refuses rows with several labels where one class per image is needed (a class index, a group).

    Fine-tuning, the audit and mitigation classify each image into one class; taking the first of
    several labels would silently change the data, so such rows stop the run instead.

    Args:
        table: rows of a checked :class:`Manifest` (its ``labels`` and ``path`` columns).
        source: what the rows are, for the message (e.g. ``"m.csv, split 'test'"``).

    Raises:
        IngestError: ``bad_row`` naming how many rows carry several labels and one of them.
    """
    several = [(path, labels) for path, labels in zip(table["path"], table["labels"]) if len(labels) > 1]
    if several:
        path, labels = several[0]
        raise IngestError("bad_row", f"{source}: {len(several)} row(s) with several labels, e.g. {path}: "
                          f"{LABEL_SEPARATOR.join(labels)!r}; fine-tuning, the audit and mitigation use one class "
                          "per image: keep one label per row")


def empty_split_message(path: str | Path, split: str | None, classes: Sequence[str]) -> str:
    """Why ``split`` of the manifest at ``path`` has no row usable with ``classes``, as one line.

    Names the labels the rows of that split carry (with counts) and the configured classes, or,
    when the split has no rows at all, the rows per split.

    Args:
        path: the manifest CSV.
        split: ``train``, ``val``, ``test``, or ``None`` for every row.
        classes: the configured class names.
    """
    table = Manifest.read(path).table  # labels not checked against the classes
    rows = table if split is None else table[table["split"] == split]
    head = f"{path}: no usable rows" + ("" if split is None else f" in split {split!r}")
    if rows.empty:
        splits = ", ".join(f"{name} {count}" for name, count in table["split"].value_counts().items())
        return f"{head}: the manifest has no labelled row there (rows per split: {splits or 'none'})"
    counts = pd.Series([label for labels in rows["labels"] for label in labels]).value_counts()
    labels = ", ".join(f"{label!r} ({count})" for label, count in counts.items())
    return f"{head}: its rows there are labelled {labels}; the configured classes are " + ", ".join(map(repr, classes))


#: Ground truth of the synthetic datasets (phantom, digits): where the planted feature is. Audits and
#: mitigation methods never read these; only the benchmark's scoring does.
GROUND_TRUTH_COLUMNS = ("artefact", "artefact_present", "square_quadrant", "digit_quadrant", "regions", "lung_mask")
GROUND_TRUTH_PREFIXES = ("mask_",)


def known_attributes(table: pd.DataFrame, max_values: int = 20) -> list[str]:
    """The subgroup attribute columns of a manifest table worth an accuracy per value (site, device, view, ...).

    Args:
        table: :attr:`Manifest.table`, or the rows of one split of it.
        max_values: columns with more distinct values are identifiers or free text, not subgroups.

    Left out: the core columns, the synthetic datasets' ground truth (:data:`GROUND_TRUTH_COLUMNS`,
    ``mask_*``), and columns with a single value.
    """
    return [c for c in table.columns
            if c not in (*CORE_COLUMNS, "labels") and c not in GROUND_TRUTH_COLUMNS and not c.startswith(GROUND_TRUTH_PREFIXES)
            and 1 < table[c].astype(str).str.strip().nunique() <= max_values]


def feature_presence(manifest: Manifest | str | Path, keys: Iterable[str]) -> tuple[np.ndarray, str] | None:
    """Which images carry the planted feature, from the manifest's ``artefact_present`` column.

    Args:
        manifest: a :class:`Manifest` or the path of a manifest CSV.
        keys: N image keys.

    Returns:
        (present, name): (N,) bool per key, and the feature's name (the most common non-empty
        ``artefact`` value, else ``"feature"``); ``None`` when the manifest has no
        ``artefact_present`` column or a key is not in it.
    """
    table = manifest.table if isinstance(manifest, Manifest) else Manifest.read(manifest).table
    if "artefact_present" not in table:
        return None
    present = dict(zip(table["key"], table["artefact_present"].astype(str).str.strip()))
    try:
        flags = np.array([present[str(k)] in ("1", "1.0", "true", "True") for k in keys], dtype=bool)
    except KeyError:
        return None
    name = "feature"
    if "artefact" in table:
        names = table["artefact"].astype(str)
        names = names[names.str.strip() != ""]
        if len(names):
            name = str(names.value_counts().index[0])
    return flags, name


def _relative(path: str, base: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(base))
    except ValueError:
        return str(Path(path).resolve())
