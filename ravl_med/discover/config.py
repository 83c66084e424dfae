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
    #: Exact K-Medoids on the full distance matrix up to this many regions, sampled (CLARA) above.
    exact_max_regions: Annotated[int, Field(ge=2)] = 20000
    clara_samples: Annotated[int, Field(ge=1)] = 5
    clara_sample_size: Annotated[int, Field(ge=2)] = 4000
    silhouette_sample_size: Annotated[int, Field(ge=2)] = 5000
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
    n_permutations: Annotated[int, Field(ge=99)] = 999
    #: Family-wise error rate of the gap test (Holm over the candidate clusters); 1 keeps every candidate.
    alpha: Annotated[float, Field(gt=0, le=1)] = 0.05
    #: Stability: refits on this many random halves of the images (0: not measured).
    n_stability: Annotated[int, Field(ge=0)] = 20

    @field_validator("k_range")
    @classmethod
    def _ordered_k(cls, value: tuple[int, int]) -> tuple[int, int]:
        if value[0] > value[1]:
            raise ValueError(f"low {value[0]} must not exceed high {value[1]}")
        return value
