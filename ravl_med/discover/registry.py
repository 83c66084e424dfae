"""The discovery methods by name, and the one place a discoverer is made from an audit's settings."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from ._base import BaseDiscoverer
from .baselines import (
    DistillingFailuresDiscoverer,
    DominoDiscoverer,
    GeorgeDiscoverer,
    RandomDiscoverer,
)
from .config import DiscoveryConfig
from .ravl import RaVLDiscoverer

__all__ = ["DISCOVERY_METHODS", "build_discoverer"]

#: Method name -> estimator class, RaVL first (the order audits and benchmark tables list them in).
DISCOVERY_METHODS: Mapping[str, type[BaseDiscoverer]] = MappingProxyType({
    "ravl": RaVLDiscoverer,
    "random": RandomDiscoverer,
    "distilling_failures": DistillingFailuresDiscoverer,
    "george": GeorgeDiscoverer,
    "domino": DominoDiscoverer,
})

# Set per method by build_discoverer's own arguments, not by DiscoveryConfig.
_SHARED = {"n_boot", "n_top_regions"}


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
    if method not in DISCOVERY_METHODS:
        raise ValueError(f"methods: unknown method {method!r}; allowed: {', '.join(DISCOVERY_METHODS)}")
    common = {"n_boot": n_boot, "n_top_regions": n_top_regions, "random_state": random_state}
    if method == "ravl":
        return RaVLDiscoverer(**discovery.model_dump(exclude=_SHARED), **common)
    return DISCOVERY_METHODS[method](**common)
