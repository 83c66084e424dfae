"""Masks named in a manifest, brought into the frame of their ingested image.

A manifest column (e.g. the phantom's ``mask_artefact``, ``mask_finding``, ``lung_mask``) names a
mask file per row, relative to the manifest's folder or absolute. Each mask goes through the same
ingestion transforms as its image (orientation, letterbox), so it lines up with the model-ready
image and with region boxes in its pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ravl_med.config import IngestConfig
from ravl_med.data.pipeline import ingest_transforms, run_ingest_transforms

__all__ = ["ingested_masks", "ingested_masks_and_images", "mask_path"]


def mask_path(value: object, root: Path) -> Path | None:
    """The mask file a manifest cell names (``None`` for an empty cell or NaN)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    text = str(value).strip()
    if not text:
        return None
    path = Path(text)
    return path if path.is_absolute() else root / path


def ingested_masks(
    table: pd.DataFrame, columns: Sequence[str], ingest: IngestConfig, root: str | Path
) -> list[np.ndarray | None]:
    """One bool (S, S) mask per row in the ingested image's frame, or ``None`` when the row has none.

    Args:
        table: manifest rows with ``key``, ``path`` (absolute image path) and the mask ``columns``.
        columns: mask columns tried in order; the first non-empty one is used per row.
        ingest: the ingestion settings the images went through (S = ``ingest.image_size``).
        root: folder relative mask paths are resolved against (the manifest's folder).

    Raises:
        FileNotFoundError: a named mask file does not exist (the message names the row key).
    """
    return ingested_masks_and_images(table, columns, ingest, root)[0]


def ingested_masks_and_images(
    table: pd.DataFrame, columns: Sequence[str], ingest: IngestConfig, root: str | Path
) -> tuple[list[np.ndarray | None], list[np.ndarray | None]]:
    """As :func:`ingested_masks`, plus each masked row's ingested image: (S, S) float32, the first
    channel, intensities in [0, 1] (what the region rules that look at the picture read); ``None``
    where the row has no mask."""
    root = Path(root)
    transform = ingest_transforms(ingest, mask_keys=("mask",), regions=False)
    masks: list[np.ndarray | None] = []
    images: list[np.ndarray | None] = []
    for _, row in table.iterrows():
        path = next((p for p in (mask_path(row[c], root) for c in columns) if p is not None), None)
        if path is None:
            masks.append(None)
            images.append(None)
            continue
        if not path.is_file():
            raise FileNotFoundError(f"mask of image {row['key']} not found: {path} (columns {list(columns)})")
        sample = run_ingest_transforms(transform, {"image": row["path"], "mask": str(path)})
        mask = np.asarray(sample["mask"])
        masks.append(mask.reshape(mask.shape[-2:]) > 0)
        image = np.asarray(sample["image"], dtype=np.float32)
        images.append(image.reshape(-1, *image.shape[-2:])[0])
    return masks, images
