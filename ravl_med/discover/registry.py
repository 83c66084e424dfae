"""The discovery methods by name, and the one place a discoverer is made from an audit's settings.

The registry maps each name to where its estimator class lives and imports it on use: importing
the estimators loads scikit-learn (seconds), and the command-line parser reads the names for
``--help`` and config validation.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

from .config import DiscoveryConfig

if TYPE_CHECKING:
    from ._base import BaseDiscoverer

__all__ = ["DISCOVERY_METHODS", "build_discoverer", "estimator_class"]

#: Method name -> ``module:class`` of its estimator, RaVL first (the order audits and benchmark tables
#: list them in).
DISCOVERY_METHODS: Mapping[str, str] = MappingProxyType({
    "ravl": "ravl_med.discover.ravl:RaVLDiscoverer",
    "random": "ravl_med.discover.baselines:RandomDiscoverer",
    "distilling_failures": "ravl_med.discover.baselines:DistillingFailuresDiscoverer",
    "george": "ravl_med.discover.baselines:GeorgeDiscoverer",
    "domino": "ravl_med.discover.baselines:DominoDiscoverer",
})

# Set per method by build_discoverer's own arguments, not by DiscoveryConfig.
_SHARED = {"n_boot", "n_top_regions"}


def estimator_class(method: str) -> type[BaseDiscoverer]:
    """The estimator class of ``method`` (imported now).

    Raises:
        ValueError: unknown ``method``.
    """
    if method not in DISCOVERY_METHODS:
        raise ValueError(f"methods: unknown method {method!r}; allowed: {', '.join(DISCOVERY_METHODS)}")
    module, name = DISCOVERY_METHODS[method].split(":")
    return getattr(importlib.import_module(module), name)


def build_discoverer(method: str, *, discovery: DiscoveryConfig, n_boot: int, n_top_regions: int,
                     random_state: int | None) -> BaseDiscoverer:
    """An unfitted discoverer of ``method``.

    Args:
        method: a name of :data:`DISCOVERY_METHODS`.
        discovery: RaVL's parameters (used by ``ravl`` only; the baselines keep their own defaults).
        n_boot: bootstrap resamples for the per-class tables (every method).
        n_top_regions: regions listed per cluster (every method).
        random_state: seed (every method).

    Returns:
        the estimator, parameters set, not fitted.

    Raises:
        ValueError: unknown ``method``.
    """
    cls = estimator_class(method)
    common = {"n_boot": n_boot, "n_top_regions": n_top_regions, "random_state": random_state}
    if method == "ravl":
        return cls(**discovery.model_dump(exclude=_SHARED), **common)
    return cls(**common)
