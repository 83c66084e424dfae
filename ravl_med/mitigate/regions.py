"""RaVL stage 2, step 1: label every fine-tuning region spurious or relevant by its nearest stage-1 medoid.

The stage-1 medoids come from the audit (``medoids.npz`` in its folder, written by ``ravl-med audit``
as :class:`~ravl_med.discover.medoids.Stage1Medoids`): the embeddings of *all* k medoids of the RaVL
clustering (nearest-medoid assignment needs every cluster, not only the kept ones), the ranks of the
kept clusters and which of them count as spurious.

Training regions are embedded with the *stage-1* model (the checkpoint the audit examined, before
any mitigation), once, before training; the labels are keyed by image key so that every batch can
look them up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ravl_med.discover import nearest_medoid
from ravl_med.discover.medoids import MEDOIDS_FILE, Stage1Medoids, stage1_medoids

__all__ = [
    "MEDOIDS_FILE",
    "Stage1Medoids",
    "images_with_spurious_region",
    "label_training_regions",
    "stage1_medoids",
    "training_region_labels",
]

def label_training_regions(
    region_embeddings: np.ndarray, medoid_embeddings: np.ndarray, spurious_cluster_ids: Sequence[int] | np.ndarray
) -> np.ndarray:
    """Spurious (True) or relevant (False) per region, by the nearest medoid in cosine similarity.

    Args:
        region_embeddings: (M, D) region embeddings from the stage-1 model.
        medoid_embeddings: (K, D) stage-1 medoid embeddings (row index = cluster id here).
        spurious_cluster_ids: row indices of ``medoid_embeddings`` whose clusters are spurious,
            or a (K,) bool mask.

    Returns:
        (M,) bool; ties go to the lower cluster id (the rule of :meth:`Stage1Medoids.predict`: float64,
        both sides L2-normalised).
    """
    regions = np.asarray(region_embeddings, dtype=np.float64)
    medoids = np.asarray(medoid_embeddings, dtype=np.float64)
    if regions.ndim != 2 or medoids.ndim != 2 or regions.shape[1] != medoids.shape[1] or not len(medoids):
        raise ValueError(f"need (M, D) regions and (K >= 1, D) medoids, got {regions.shape} and {medoids.shape}")
    flags = np.asarray(spurious_cluster_ids)
    if flags.dtype == bool:
        if flags.shape != (len(medoids),):
            raise ValueError(f"spurious mask must be ({len(medoids)},), got {flags.shape}")
        spurious = flags
    else:
        spurious = np.zeros(len(medoids), dtype=bool)
        spurious[flags.astype(np.int64)] = True
    if not len(regions):
        return np.zeros(0, dtype=bool)
    nearest, _ = nearest_medoid(regions, medoids, dtype=np.float64, normalise=True)
    return spurious[nearest]


def training_region_labels(
    model, preprocess, dataset, medoids: Stage1Medoids, *, batch_size: int = 32, device: str = "cpu",
    precision: str = "auto", progress: bool = False, cache_dir: str | Path | None = None,
    fingerprint: str | None = None,
) -> dict[str, np.ndarray]:
    """Embeds every region of ``dataset`` with the stage-1 ``model`` as the audit did and labels it (no gradients).

    The regions are embedded in ``medoids.region_mode``, the audit's: nearest medoids are only meaningful
    between embeddings made the same way (one-pass and crop embeddings of the same box differ).

    Args:
        model, preprocess: the stage-1 backbone and its preprocessing.
        dataset: a :class:`~ravl_med.data.dataset.RadiographDataset` (the training split).
        medoids: the audit's :class:`Stage1Medoids`.
        batch_size, device, precision, progress: as :func:`~ravl_med.models.embed.embed_dataset`.
        cache_dir, fingerprint: as :func:`~ravl_med.models.embed.embed_dataset`: with a cache folder,
            the embeddings are computed once per stage-1 model, split and ingestion settings, and every
            later method of the same setting reads them (the labels then cost a nearest-medoid search).

    Returns:
        image key -> (R_i,) bool, True for spurious regions, in the dataset's region order.
    """
    from ravl_med.models.embed import embed_dataset

    embeddings = embed_dataset(model, preprocess, dataset, mode=medoids.region_mode, batch_size=batch_size,
                               device=device, precision=precision, progress=progress, cache_dir=cache_dir,
                               fingerprint=fingerprint)
    flags = medoids.spurious[medoids.predict(embeddings.region_embeddings)]
    return {str(key): flags[embeddings.regions_of(i)] for i, key in enumerate(embeddings.keys)}


def images_with_spurious_region(keys: Sequence[str], region_labels: Mapping[str, np.ndarray]) -> np.ndarray:
    """(N,) bool: the image has at least one region labelled spurious (a key missing from ``region_labels``: none)."""
    return np.array([bool(np.any(region_labels.get(str(k), ()))) for k in keys], dtype=bool)
