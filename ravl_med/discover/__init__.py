"""Stage 1 of RaVL: discover the image feature a fine-tuned model spuriously ties to a class.

:class:`RaVLDiscoverer` clusters region embeddings and ranks the clusters that help one class and
hurt another; the baselines (:class:`RandomDiscoverer`, :class:`DistillingFailuresDiscoverer`,
:class:`GeorgeDiscoverer`, :class:`DominoDiscoverer`) share its ``fit`` signature and outputs, so
:func:`precision_at_k` compares like with like.
"""

from ._base import OUTCOMES, BaseDiscoverer, scores_from_embeddings
from ._clustering import (
    ClusteringResult,
    cluster_regions,
    cosine_distance_matrix,
    nearest_medoid,
)
from ._groups import ClassStats, RankedCluster
from .baselines import (
    DistillingFailuresDiscoverer,
    DominoDiscoverer,
    GeorgeDiscoverer,
    RandomDiscoverer,
)
from .metrics import precision_at_k, quadrant_is_spurious, region_overlaps_mask
from .ravl import RaVLDiscoverer

__all__ = [
    "OUTCOMES", "BaseDiscoverer", "ClassStats", "ClusteringResult", "DistillingFailuresDiscoverer",
    "DominoDiscoverer", "GeorgeDiscoverer", "RaVLDiscoverer", "RandomDiscoverer", "RankedCluster",
    "cluster_regions", "cosine_distance_matrix", "nearest_medoid", "precision_at_k", "quadrant_is_spurious",
    "region_overlaps_mask", "scores_from_embeddings",
]
