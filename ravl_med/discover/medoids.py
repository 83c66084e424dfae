"""The stage-1 medoids an audit hands to mitigation (``medoids.npz`` in the audit folder).

Nearest-medoid labelling of training regions (stage 2, step 1) needs the embeddings of *all* k
medoids of the RaVL clustering, not only those of the kept clusters, plus which kept clusters count
as spurious. :func:`stage1_medoids` builds them from a fitted
:class:`~ravl_med.discover.ravl.RaVLDiscoverer` and the region embeddings it was fitted on.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ravl_med.data.atomic import atomic_path

from ._clustering import nearest_medoid

__all__ = ["MEDOIDS_FILE", "Stage1Medoids", "stage1_medoids"]

MEDOIDS_FILE = "medoids.npz"


@dataclass
class Stage1Medoids:
    """The stage-1 clustering as mitigation needs it.

    Attributes:
        embeddings: (K, D) float32 unit-norm medoid embeddings (stage-1 model), one per cluster.
        clusters: (K,) int64 cluster id of each row.
        rank: (K,) int64 1-based rank of the cluster among the kept clusters, 0 when not kept.
        spurious: (K,) bool, the clusters whose regions count as spurious (S_i).
        regions: how the clustered regions were made (image size and candidate-region settings, as
            the audit's ``ingest``: ``{"image_size": ..., "regions": {...}}``); mitigation must label
            training regions made the same way. ``None``: not recorded.
        outcome: the audit's outcome (one of ``ravl_med.discover.OUTCOMES``); ``None``: not recorded
            (files of earlier versions).
        tied_to: (K,) str, the class each kept cluster is tied to ("" when not kept or tied to none).
        region_mode: how the audit embedded the regions (``"one_pass"`` or ``"crop"``,
            :class:`~ravl_med.models.regions.RegionEmbedder`); mitigation embeds training regions the
            same way before the nearest-medoid search. Files of earlier versions: ``"one_pass"``.
    """

    embeddings: np.ndarray
    clusters: np.ndarray
    rank: np.ndarray
    spurious: np.ndarray
    regions: dict | None = None
    outcome: str | None = None
    tied_to: np.ndarray | None = None
    region_mode: str = "one_pass"

    def __post_init__(self) -> None:
        self.embeddings = np.asarray(self.embeddings, dtype=np.float32)
        k = self.embeddings.shape[0]
        self.clusters = np.asarray(self.clusters, dtype=np.int64).reshape(-1)
        self.rank = np.asarray(self.rank, dtype=np.int64).reshape(-1)
        self.spurious = np.asarray(self.spurious, dtype=bool).reshape(-1)
        self.tied_to = np.asarray([""] * k if self.tied_to is None else self.tied_to, dtype=str).reshape(-1)
        if self.embeddings.ndim != 2 or not (len(self.clusters) == len(self.rank) == len(self.spurious) == len(self.tied_to) == k):
            raise ValueError(f"medoids: embeddings (K, D) and K clusters/ranks/flags needed, got "
                             f"{self.embeddings.shape}, {len(self.clusters)}, {len(self.rank)}, {len(self.spurious)}")

    def predict(self, region_embeddings: np.ndarray) -> np.ndarray:
        """The row of each region's nearest medoid in cosine similarity: stage 2's labelling rule.

        float64, both sides L2-normalised (the arithmetic of
        :func:`~ravl_med.mitigate.regions.label_training_regions`); ``spurious[predict(x)]`` flags
        the spurious regions.

        Args:
            region_embeddings: (M, D) region embeddings from the stage-1 model (any norm).

        Returns:
            (M,) int64 row indices into ``embeddings`` / ``clusters`` / ``spurious``; ties go to the lower row.
        """
        regions = np.asarray(region_embeddings, dtype=np.float64)
        if regions.ndim != 2 or regions.shape[1] != self.embeddings.shape[1]:
            raise ValueError(f"region_embeddings must be (M, {self.embeddings.shape[1]}), got {regions.shape}")
        return nearest_medoid(regions, self.embeddings, dtype=np.float64, normalise=True)[0]

    def with_spurious_ranks(self, ranks: Iterable[int] | None) -> Stage1Medoids:
        """A copy where the kept clusters of these 1-based ranks are spurious (``None``: every kept one)."""
        chosen = self.rank > 0 if ranks is None else np.isin(self.rank, list(ranks)) & (self.rank > 0)
        return replace(self, spurious=chosen)

    @property
    def spurious_ranks(self) -> list[int]:
        """The 1-based ranks of the clusters marked spurious, ascending (the report's numbering)."""
        return sorted(int(r) for r in self.rank[self.spurious])

    @property
    def kept_ranks(self) -> list[int]:
        """The 1-based ranks of every kept cluster, ascending."""
        return sorted(int(r) for r in self.rank[self.rank > 0])

    def save(self, path: str | Path) -> Path:
        """Writes ``medoids.npz`` atomically (``path`` may be the folder)."""
        path = Path(path)
        if path.is_dir():
            path = path / MEDOIDS_FILE
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, embeddings=self.embeddings, clusters=self.clusters, rank=self.rank, spurious=self.spurious,
                     regions=np.array(json.dumps(self.regions, sort_keys=True)), outcome=np.array(self.outcome or ""),
                     tied_to=self.tied_to, region_mode=np.array(self.region_mode))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Stage1Medoids:
        """Reads ``medoids.npz`` (``path`` may be the audit folder)."""
        path = Path(path)
        if path.is_dir():
            path = path / MEDOIDS_FILE
        with np.load(path, allow_pickle=False) as data:
            # Files of earlier versions lack the later fields.
            regions = json.loads(str(data["regions"])) if "regions" in data else None
            outcome = (str(data["outcome"]) or None) if "outcome" in data else None
            tied_to = data["tied_to"] if "tied_to" in data else None
            region_mode = str(data["region_mode"]) if "region_mode" in data else "one_pass"
            return cls(data["embeddings"], data["clusters"], data["rank"], data["spurious"], regions, outcome, tied_to,
                       region_mode)


def stage1_medoids(discoverer, region_embeddings: np.ndarray, spurious_ranks: Iterable[int] | None = None, *,
                   regions: dict | None = None, outcome: str | None = None,
                   region_mode: str = "one_pass") -> Stage1Medoids:
    """The medoids of a fitted RaVL discoverer.

    Args:
        discoverer: a fitted :class:`~ravl_med.discover.ravl.RaVLDiscoverer` (``medoids_`` and
            ``ranked_clusters_`` set).
        region_embeddings: (M, D) the region embeddings it was fitted on (``EmbeddingSet.region_embeddings``).
        spurious_ranks: 1-based ranks of the kept clusters to treat as spurious; ``None``: all kept.
        regions: how the regions were made (see :attr:`Stage1Medoids.regions`).
        outcome: the audit's outcome when it overrides the discoverer's (e.g. too little data).
        region_mode: how the regions were embedded (see :attr:`Stage1Medoids.region_mode`).

    Returns:
        the :class:`Stage1Medoids` (no row spurious when the audit kept no cluster).
    """
    medoids = getattr(discoverer, "medoids_", None)
    if medoids is None:
        raise ValueError("the discoverer has no medoids_ (not fitted, or no cluster structure was found)")
    medoids = np.asarray(medoids, dtype=np.int64).reshape(-1)
    rank = np.zeros(len(medoids), dtype=np.int64)
    tied_to = np.full(len(medoids), "", dtype=object)
    for cluster in discoverer.ranked_clusters_:
        rank[int(cluster.cluster)] = int(cluster.rank)
        tied_to[int(cluster.cluster)] = cluster.attribute_name or ""
    embeddings = np.asarray(region_embeddings, dtype=np.float32)[medoids]
    stage1 = Stage1Medoids(embeddings, np.arange(len(medoids)), rank, rank > 0, regions, outcome or discoverer.outcome_,
                           tied_to.astype(str), region_mode)
    return stage1.with_spurious_ranks(spurious_ranks)


