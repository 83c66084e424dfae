"""RaVL's discovery parameters, declared once (types, bounds, defaults).

:class:`DiscoveryConfig` is the ``discovery`` section of an audit config, and it is also where
:class:`~ravl_med.discover.RaVLDiscoverer` takes its keyword defaults from and what its ``fit``
checks the parameters with. Light on purpose (pydantic and :mod:`ravl_med.config` only):
``ravl-med --help`` reads the configs.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator

from ravl_med.config import StrictModel

__all__ = ["DiscoveryConfig"]


class DiscoveryConfig(StrictModel):
    """RaVL discovery parameters (the defaults of :class:`~ravl_med.discover.RaVLDiscoverer`)."""

    #: T of the zero-shot softmax p(q | x) = softmax(<e, t_q> / T).
    temperature: Annotated[float, Field(gt=0)] = 0.07
    #: k is swept over [low * C, high * C] (C = number of classes).
    k_range: tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]] = (2, 5)
    #: Include high * C in the sweep (the authors' code does not).
    k_range_inclusive: bool = True
    #: Keep clusters with influence >= this (paper: 0.25; influence lies in [0, 1], so above 1 keeps none).
    influence_threshold: Annotated[float, Field(ge=0)] = 0.25
    #: The best silhouette must exceed this, else "no structure" (paper: 0).
    min_silhouette: Annotated[float, Field(ge=-1, lt=1)] = 0.0
    #: k is chosen on all regions (full distance matrix) up to this many regions, on a sample above.
    #: All-region FasterPAM costs O(n^2) per k, more than the authors' whole per-k step (alternating
    #: K-Medoids + silhouette); the sampled mode costs O(s^2) per k (benchmarks/discovery_scaling.py --compare).
    #: 4000: below it the authors'-style sweep is itself fast (measured 2.9-5.1x at 4000), and on the digits
    #: setting (10 classes, k up to 50, ~2000 regions) the 1000-region sample tied the top cluster to the
    #: wrong class where the full matrix did not.
    exact_max_regions: Annotated[int, Field(ge=2)] = 4000
    #: Sampled mode: further random samples the chosen k is refitted on (CLARA); the medoids with the
    #: lowest cost over all regions, the k-selection sample's included, are kept (0: that sample's only).
    clara_samples: Annotated[int, Field(ge=0)] = 2
    #: Regions per further sample (a FasterPAM fit of the chosen k, O(size^2)).
    clara_sample_size: Annotated[int, Field(ge=2)] = 2000
    #: Sampled mode: s, the k-selection sample: a FasterPAM fit and the silhouette per k on s random
    #: regions (O(s^2) each; 1000 keeps >= 20 regions per cluster at k = 50).
    silhouette_sample_size: Annotated[int, Field(ge=2)] = 1000
    #: Bootstrap resamples for the 95% intervals of the per-class tables (every method).
    n_boot: Annotated[int, Field(ge=0)] = 1000
    #: Regions listed per cluster in the JSON (``top_regions``).
    n_top_regions: Annotated[int, Field(ge=1)] = 25
    #: Threads for K-Medoids (1 was measured fastest on 2 cores; -1: automatic).
    n_jobs: int = 1
    #: Structure null: the chosen clustering's silhouette must beat this many coordinate-permuted copies
    #: of the embeddings, else "no_structure" (``ravl_med.discover.null``; 0 switches the test off).
    structure_null: Annotated[int, Field(ge=0)] = 19
    #: Regions sampled for the structure null's fits (cost grows with its square).
    structure_sample: Annotated[int, Field(ge=10)] = 1500
    #: Gap null: shuffles of the correctness within each class for each candidate's permutation p-value.
    n_permutations: Annotated[int, Field(ge=99)] = 9999
    #: Family-wise error rate of the gap test (Holm over the candidate clusters); 1 keeps every candidate.
    #: 0.01, fixed on a pilot (BENCHMARKS.md): the demo's drain clusters had 0.0004-0.0012 over seeds 0-4,
    #: a negative control (model without the shortcut) an unstable cluster at 0.040.
    alpha: Annotated[float, Field(gt=0, le=1)] = 0.01
    #: Stability: refits on this many random halves of the images (0: not measured).
    n_stability: Annotated[int, Field(ge=0)] = 20
    #: A kept cluster must be found again in at least this share of the stability refits, else it is
    #: not reported ("unstable" when none is left; 0, or n_stability 0: no such filter). 0.5, fixed
    #: before the fresh negative controls of 2026-12-07 (BENCHMARKS.md): the first controls' two false
    #: alarms had stability 0.00 and 0.30, the valid settings' top clusters 0.85-1.00.
    min_stability: Annotated[float, Field(ge=0, le=1)] = 0.5

    @field_validator("k_range")
    @classmethod
    def _ordered_k(cls, value: tuple[int, int]) -> tuple[int, int]:
        if value[0] > value[1]:
            raise ValueError(f"low {value[0]} must not exceed high {value[1]}")
        return value
