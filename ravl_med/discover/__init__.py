"""Stage 1 of RaVL: discover the image feature a fine-tuned model spuriously ties to a class.

:class:`RaVLDiscoverer` clusters region embeddings and ranks the clusters that help one class and
hurt another; the baselines (:class:`RandomDiscoverer`, :class:`DistillingFailuresDiscoverer`,
:class:`GeorgeDiscoverer`, :class:`DominoDiscoverer`) share its ``fit`` signature and outputs, so
:func:`precision_at_k` compares like with like. They are scikit-learn estimators (keyword-only
parameters, checked by ``fit``); :data:`DISCOVERY_METHODS` names them and :func:`build_discoverer`
makes one from an audit's settings; :class:`DiscoveryConfig` declares RaVL's parameters.

The names below are imported from their modules on first use, so that ``import
ravl_med.discover.config`` (which :mod:`ravl_med.config` does) loads neither the estimators nor
scikit-learn.
"""

from __future__ import annotations

from ravl_med._lazy import lazy_exports

#: Public name -> the module (in this package) that defines it.
_EXPORTS: dict[str, str] = {
    "OUTCOMES": "_base",
    "BaseDiscoverer": "_base",
    "scores_from_embeddings": "_base",
    "ClusteringResult": "_clustering",
    "cluster_regions": "_clustering",
    "cosine_distance_matrix": "_clustering",
    "nearest_medoid": "_clustering",
    "ClassStats": "_groups",
    "RankedCluster": "_groups",
    "counter_examples": "_groups",
    "DistillingFailuresDiscoverer": "baselines",
    "DominoDiscoverer": "baselines",
    "GeorgeDiscoverer": "baselines",
    "RandomDiscoverer": "baselines",
    "DiscoveryConfig": "config",
    "precision_at_k": "metrics",
    "quadrant_is_spurious": "metrics",
    "region_overlaps_mask": "metrics",
    "RaVLDiscoverer": "ravl",
    "DISCOVERY_METHODS": "registry",
    "build_discoverer": "registry",
    "estimator_class": "registry",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
