"""Reading every image of a manifest through the ingestion pipeline, with per-file errors.

Used by ``ravl-med validate`` (read, summarise, quarantine) and ``ravl-med ingest`` (the same, plus
writing each model-ready image). Images are processed in a ``torch.utils.data.DataLoader`` so the
work spreads over ``workers`` processes; a file that fails becomes a :class:`~ravl_med.data.manifest.Problem`
and the scan goes on.

Burned-in text is looked for twice, as the audit does for its gallery images: the DICOM header's
BurnedInAnnotation (warning ``burned_in_annotation``) and, with ``text_check``, the pixels of the
ingested image, scaled back to the file's own resolution when ingestion enlarged it
(:func:`~ravl_med.data.burned_text.find_burned_in_text`; warning ``burned_in_text``). An image
flagged by both gets both warnings, so each file's warnings name the sources that flagged it;
:meth:`ScanResult.summary` counts images by source.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ravl_med.config import IngestConfig
from ravl_med.data.errors import WARNINGS, IngestError
from ravl_med.data.manifest import Manifest, Problem
from ravl_med.data.pipeline import ingest_transforms, run_ingest_transforms

__all__ = ["ScanResult", "scan_manifest"]

#: Per-image fields a scan records (never patient identifiers).
RECORD_FIELDS = (
    "key",
    "path",
    "split",
    "label",
    "source_format",
    "modality",
    "photometric_interpretation",
    "transfer_syntax",
    "view_position",
    "rows",
    "columns",
    "pixel_spacing_row_mm",
    "pixel_spacing_col_mm",
    "voi_applied",
    "burned_in_annotation",
)

SampleSink = Callable[[dict, dict], dict]


class _ScanDataset(Dataset):
    """Item i -> ("ok", record) or ("error", Problem); never raises for a bad file."""

    def __init__(self, manifest: Manifest, config: IngestConfig, sink: SampleSink | None,
                 text_check: bool = False) -> None:
        self.rows = manifest.table.to_dict("records")
        self.config, self.sink, self.text_check = config, sink, text_check
        self.transform = None  # built lazily in each worker process

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int):
        if self.transform is None:
            logging.getLogger("monai").setLevel(logging.ERROR)
            self.transform = ingest_transforms(self.config, regions=False)
        row = self.rows[index]
        try:
            sample = run_ingest_transforms(self.transform, {"image": row["path"]})
        except IngestError as err:
            return "error", Problem.from_error(err, path=row["path"], key=row["key"])
        record = _record(sample["image"].meta, row)
        if self.text_check:
            from ravl_med.data.burned_text import at_stored_resolution, find_burned_in_text

            stored = max(int(v) for v in sample["image"].meta["original_shape"])
            pixels = at_stored_resolution(np.asarray(sample["image"], dtype=np.float32)[0], stored)
            found = find_burned_in_text(pixels)
            record["text_lines"] = len(found.lines)
            record["text_line_box"] = ",".join(map(str, found.lines[0].box)) if found.lines else ""
            record["text_check_side"] = int(pixels.shape[-1])
        if self.sink is not None:
            try:
                record.update(self.sink(sample, row))
            except OSError as err:  # an output problem is the run's problem, not the image's
                raise RuntimeError(f"cannot write the output for image {row['key']}: {err}") from err
        return "ok", record


def _record(meta: dict, row: dict) -> dict:
    rows, cols = (int(v) for v in meta["original_shape"])
    spacing = np.asarray(meta.get("pixel_spacing", (np.nan, np.nan)), dtype=float)
    return {
        "key": row["key"],
        "path": row["path"],
        "split": row.get("split", ""),
        "label": row.get("label", ""),
        "source_format": str(meta.get("source_format", "")),
        "modality": str(meta.get("modality", "")),
        "photometric_interpretation": str(
            "MONOCHROME1" if meta.get("inverted_monochrome1") else meta.get("photometric_interpretation", "")
        ),
        "transfer_syntax": str(meta.get("transfer_syntax", "")),
        # The manifest's own view position wins; DICOM's fills the gap.
        "view_position": str(row.get("view_position") or meta.get("view_position", "")),
        "rows": rows,
        "columns": cols,
        "pixel_spacing_row_mm": float(spacing[0]),
        "pixel_spacing_col_mm": float(spacing[1]),
        "voi_applied": str(meta.get("voi_applied", "")),
        "burned_in_annotation": str(meta.get("burned_in_annotation", "")),
    }


@dataclass
class ScanResult:
    """What a scan found.

    Attributes:
        records: one row per usable image (columns :data:`RECORD_FIELDS` plus what the sink added).
        problems: refused manifest rows and files, in manifest order.
        warnings: usable images with something to check (e.g. unexpected modality, burned-in text).
        text_check: whether the pixels were checked for burned-in text (column ``text_lines``: lines of
            text-like marks found in each ingested image).
    """

    records: pd.DataFrame
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    text_check: bool = False

    @property
    def usable(self) -> int:
        return len(self.records)

    def summary(self) -> dict:
        """Counts for the report: per label, split, view, format, photometric, transfer syntax, size."""
        table = self.records
        labels: Counter[str] = Counter()
        for label in table.get("label", pd.Series(dtype=str)):
            labels.update(part.strip() for part in str(label).split("|") if part.strip())

        def counts(column: str) -> dict[str, int]:
            if column not in table or table.empty:
                return {}
            return {str(k) or "(none)": int(v) for k, v in table[column].fillna("").value_counts().items()}

        sizes = {}
        if not table.empty:
            sizes = {
                "rows": _describe(table["rows"]),
                "columns": _describe(table["columns"]),
                "most_common": {f"{r}x{c}": int(n) for (r, c), n in Counter(zip(table["rows"], table["columns"])).most_common(5)},
            }
        return {
            "usable": self.usable,
            "refused": len(self.problems),
            "warnings": len(self.warnings),
            "refused_by_reason": dict(Counter(p.reason for p in self.problems).most_common()),
            "labels": dict(labels.most_common()),
            "splits": counts("split"),
            "view_positions": counts("view_position"),
            "formats": counts("source_format"),
            "modalities": counts("modality"),
            "photometric_interpretations": counts("photometric_interpretation"),
            "transfer_syntaxes": counts("transfer_syntax"),
            "voi_applied": counts("voi_applied"),
            "burned_in_annotation": counts("burned_in_annotation"),
            "burned_in_text": self._burned_in_text(),
            "image_sizes": sizes,
        }

    def _burned_in_text(self) -> dict:
        """Usable images that may hold burned-in text, by source, as the audit's ``burned_in_annotation``
        counts its gallery images: ``images`` (either source), ``dicom_attribute`` (BurnedInAnnotation YES),
        ``pixel_check`` (``None``: not run)."""
        flagged = {reason: {w.path for w in self.warnings if w.reason == reason}
                   for reason in ("burned_in_annotation", "burned_in_text")}
        return {"images": len(flagged["burned_in_annotation"] | flagged["burned_in_text"]),
                "dicom_attribute": len(flagged["burned_in_annotation"]),
                "pixel_check": len(flagged["burned_in_text"]) if self.text_check else None}


def _describe(values: pd.Series) -> dict[str, int]:
    return {"min": int(values.min()), "median": int(values.median()), "max": int(values.max())}


def scan_manifest(
    manifest: Manifest,
    config: IngestConfig | None = None,
    *,
    workers: int = 0,
    sink: SampleSink | None = None,
    progress: bool = True,
    description: str = "reading images",
    text_check: bool = False,
) -> ScanResult:
    """Runs every manifest row through the ingestion pipeline (without the region grid).

    Args:
        manifest: the checked manifest; its own ``problems`` are carried into the result.
        config: ingestion settings.
        workers: DataLoader worker processes (0: in this process).
        sink: called in the worker as ``sink(sample, manifest_row) -> extra record fields`` for each
            usable image (``ravl-med ingest`` writes the image there). Must be picklable.
        progress: show a progress bar.
        description: progress bar label.
        text_check: also look for burned-in text in each ingested image's pixels (per image 0.02-0.07 s at
            224 px, 0.09-0.27 s at 512 px; 11% and 42% of reading and ingesting the real samples on a
            loaded core: ``benchmarks/validate_text_check.py``).
    """
    config = config or IngestConfig()
    dataset = _ScanDataset(manifest, config, sink, text_check)
    loader = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers, collate_fn=_identity)
    records: list[dict] = []
    problems: list[Problem] = list(manifest.problems)
    warnings: list[Problem] = []
    expected = set(config.quality.expected_modalities)
    with torch.inference_mode():
        for status, item in tqdm(loader, total=len(dataset), desc=description, unit="img", disable=not progress):
            if status == "error":
                problems.append(item)
                continue
            records.append(item)
            if item["source_format"] == "DICOM" and expected and item["modality"] not in expected:
                warnings.append(
                    Problem(
                        path=item["path"],
                        key=item["key"],
                        reason="unexpected_modality",
                        detail=f"modality {item['modality'] or '(empty)'} is not one of {sorted(expected)}",
                    )
                )
            if item["burned_in_annotation"] == "YES":
                warnings.append(Problem(path=item["path"], key=item["key"], reason="burned_in_annotation",
                                        detail=WARNINGS["burned_in_annotation"]))
            if item.get("text_lines"):
                warnings.append(Problem(
                    path=item["path"], key=item["key"], reason="burned_in_text",
                    detail=f"the pixel check found {item['text_lines']} line(s) of text-like marks in the "
                           f"ingested image (first at x0,y0,x1,y1 = {item['text_line_box']} px of "
                           f"{item['text_check_side']} x {item['text_check_side']}): "
                           + WARNINGS["burned_in_text"]))
    columns = list(RECORD_FIELDS) + sorted({k for r in records for k in r} - set(RECORD_FIELDS))
    return ScanResult(records=pd.DataFrame(records, columns=columns), problems=problems, warnings=warnings,
                      text_check=text_check)


def _identity(item):
    return item
