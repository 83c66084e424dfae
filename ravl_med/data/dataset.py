"""The dataset of image-report pairs that fine-tuning and the audit read: manifest rows -> tensors.

Each item goes through the ingestion ``Compose`` (:func:`~ravl_med.data.pipeline.ingest_transforms`)
and comes out as::

    {"image": (1, S, S) float32 in [0, 1], "regions": (R, 4) float32 boxes (x0, y0, x1, y1, pixels),
     "text": str, "label": int, "key": str,
     "burned_in_annotation": bool}                     (+ "tokens": (L,) int64 with a tokenizer)

``burned_in_annotation``: the DICOM header says the pixels hold burned-in text (BurnedInAnnotation YES).

``text`` is the report; an empty report falls back to a sentence naming the labels. ``label`` is the
index of the row's label in ``classes``, or -1 when it is not one of them. With ``classes`` given,
rows with several labels are refused (:func:`~ravl_med.data.manifest.require_single_labels`): one
class per image, never the first of several.

Training data should have been checked with ``ravl-med validate``: a file that fails to load here
stops the run with an :class:`~ravl_med.data.errors.IngestError` naming the row's key and reason,
instead of being skipped silently (a skipped file would change the batches and break resumption).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.utils import convert_to_tensor
from torch.utils.data import Dataset

from ravl_med.config import IngestConfig
from ravl_med.data.errors import IngestError
from ravl_med.data.manifest import Manifest, require_single_labels
from ravl_med.data.pipeline import ingest_transforms, run_ingest_transforms

__all__ = ["RadiographDataset", "collate", "label_sentence"]


def label_sentence(labels: Sequence[str]) -> str:
    """The fallback text of a row without a report, e.g. ``"a chest x-ray showing cardiomegaly."``."""
    if not labels:
        return "a chest x-ray."
    return f"a chest x-ray showing {' and '.join(labels)}."


class RadiographDataset(Dataset):
    """Manifest rows as model-ready image-text pairs (see the module docstring).

    Args:
        manifest: a :class:`Manifest` or the path of a manifest CSV (read with ``classes``).
        ingest_config: ingestion settings (image size S, intensity mapping, region grid).
        classes: class names; ``label`` is the index of a row's label in them.
        tokenizer: optional strings -> (n, L) int64 token ids; when given each item also holds
            ``tokens`` (L,), so DataLoader workers tokenise in parallel.
        split: keep only rows of this split (``train``/``val``/``test``); ``None`` keeps all.
        text: ``report`` (the row's report, the label sentence when it is empty) or ``labels``
            (always the label sentence).
        cache: keep loaded items in memory (per process; for small sets read many times).

    Raises:
        IngestError: ``bad_row`` when ``classes`` are given and a row (of ``split``) has several labels.
    """

    def __init__(
        self,
        manifest: Manifest | str | Path,
        ingest_config: IngestConfig | None = None,
        classes: Iterable[str] = (),
        tokenizer: Callable[[list[str]], torch.Tensor] | None = None,
        *,
        split: str | None = None,
        text: str = "report",
        cache: bool = False,
    ) -> None:
        if text not in ("report", "labels"):
            raise ValueError(f"text must be 'report' or 'labels', got {text!r}")
        self.text_source = text
        self.classes = tuple(classes)
        if not isinstance(manifest, Manifest):
            manifest = Manifest.read(manifest, classes=self.classes)
        table = manifest.table
        if split is not None:
            table = table[table["split"] == split]
        self.table = table.reset_index(drop=True)
        if self.classes:
            where = "every split" if split is None else f"split {split!r}"
            require_single_labels(self.table, f"manifest in {manifest.root}, {where}")
        self.ingest_config = ingest_config or IngestConfig()
        self.tokenizer = tokenizer
        self.split = split
        self.cache = cache
        self._items: dict[int, dict[str, Any]] = {}
        self._transform = None  # built lazily: MONAI Compose objects are rebuilt per worker process
        self._index = {name: i for i, name in enumerate(self.classes)}

    def __len__(self) -> int:
        return len(self.table)

    @property
    def labels(self) -> torch.Tensor:
        """(N,) int64 class index per row, -1 when not one of ``classes``."""
        return torch.tensor([self._label(row) for row in self.table["labels"]], dtype=torch.int64)

    @property
    def keys(self) -> list[str]:
        return list(self.table["key"])

    def _label(self, labels: Sequence[str]) -> int:
        return self._index.get(labels[0], -1) if len(labels) else -1

    def text(self, index: int) -> str:
        """The report of row ``index`` (see ``text``), or the label sentence."""
        row = self.table.iloc[index]
        report = str(row.get("report", "") or "").strip() if self.text_source == "report" else ""
        return report or label_sentence(list(row["labels"]))

    def _load(self, index: int) -> dict[str, Any]:
        if self._transform is None:
            logging.getLogger("monai").setLevel(logging.ERROR)
            self._transform = ingest_transforms(self.ingest_config)
        row = self.table.iloc[index]
        try:
            sample = run_ingest_transforms(self._transform, {"image": row["path"]})
        except IngestError as err:
            raise IngestError(
                err.reason,
                f"row key {row['key']} ({row['path']}): {err.detail}; check the manifest with 'ravl-med validate' "
                "and remove or fix the refused rows before training",
            ) from err
        burned = sample["image"].meta.get("burned_in_annotation") == "YES"
        stored_side = max(int(v) for v in sample["image"].meta["original_shape"])
        image = convert_to_tensor(sample["image"], dtype=torch.float32, track_meta=False)
        regions = convert_to_tensor(sample["regions"], dtype=torch.float32, track_meta=False)
        return {"image": image, "regions": regions, "burned_in_annotation": burned, "stored_side": stored_side}

    def loaded(self, index: int) -> dict[str, Any]:
        """Row ``index`` after ingestion: ``image`` (1, S, S) float32, ``regions`` (R, 4) pixel boxes,
        ``burned_in_annotation`` and ``stored_side`` (the file's longer side, pixels) (kept in memory when
        ``cache``)."""
        if index < 0 or index >= len(self):
            raise IndexError(f"index {index} out of range for {len(self)} rows")
        loaded = self._items.get(index)
        if loaded is None:
            loaded = self._load(index)
            if self.cache:
                self._items[index] = loaded
        return loaded

    def __getitem__(self, index: int) -> dict[str, Any]:
        loaded = self.loaded(index)
        row = self.table.iloc[index]
        item = {
            "image": loaded["image"],
            "regions": loaded["regions"],
            "text": self.text(index),
            "label": self._label(row["labels"]),
            "key": str(row["key"]),
            "burned_in_annotation": loaded["burned_in_annotation"],
        }
        if self.tokenizer is not None:
            item["tokens"] = self.tokenizer([item["text"]])[0]
        return item


def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batches dataset items.

    Returns:
        ``image`` (B, 1, S, S) float32, ``regions`` list of B (R_i, 4) tensors (counts may differ),
        ``text`` list of B str, ``label`` (B,) int64, ``key`` list of B str, ``tokens`` (B, L) int64
        when the items have them, and ``spurious`` list of B (R_i,) bool when they have region labels
        (counterfactual training, :mod:`ravl_med.mitigate.counterfactual`).
    """
    if not items:
        raise ValueError("collate needs at least one item")
    batch: dict[str, Any] = {
        "image": torch.stack([item["image"] for item in items]),
        "regions": [item["regions"] for item in items],
        "text": [item["text"] for item in items],
        "label": torch.tensor([item["label"] for item in items], dtype=torch.int64),
        "key": [item["key"] for item in items],
    }
    if "tokens" in items[0]:
        batch["tokens"] = torch.stack([item["tokens"] for item in items])
    if "spurious" in items[0]:
        batch["spurious"] = [item["spurious"] for item in items]
    return batch
