"""RaVL stage 1: region-level discovery of the feature a model spuriously ties to a class.

Follows ``docs/ravl-method.md`` (shared docs), steps 3-6:

3. K-Medoids on cosine distance D = clip(1 - E E^T, 0, 1), k swept over [2C, 5C] (inclusive by
   default; the authors' code used [2C, 5C), see ``k_range_inclusive``), k chosen by silhouette on D.
   FasterPAM per k on all regions up to ``exact_max_regions``; above it k is chosen on a random
   sample and the chosen k refit CLARA-style (memory independent of n^2; see
   :mod:`ravl_med.discover._clustering`).
4. gap(c, y) = w (acc(I) - acc(O)), w = 2 min(|I|, |O|) / (|I| + |O|); candidates need some gap > 0
   and some gap < 0; G(c) = sum_y |gap(c, y)|.
5. influence(c) = max_y over hurt classes of the fraction of misclassified multi-region images with a
   region in c whose top region (for the predicted class) lies in c; keep influence >= 0.25.
6. Kept clusters sorted by G; regions in a cluster sorted by cosine similarity to the medoid;
   attribute = class with the largest unweighted acc(I) - acc(O).

Example:
    >>> disc = RaVLDiscoverer().fit(region_embeddings, region_image, image_labels, image_scores, region_scores)
    >>> disc.outcome_, disc.ranked_clusters_[0].attribute_name, disc.top_ranked_regions(10)
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from pydantic import Field
from sklearn.utils.validation import check_is_fitted

from ._base import BaseDiscoverer, scores_from_embeddings
from ._clustering import cluster_regions, nearest_medoid
from ._groups import group_statistics
from .config import DiscoveryConfig
from .null import gap_pvalues, holm, structure_test
from .stability import cluster_stability

__all__ = ["RaVLDiscoverer"]


class _Parameters(DiscoveryConfig):
    """All of RaVLDiscoverer's parameters: an audit's ``discovery`` settings plus the engine's own knobs
    (not in audit configs) and the seed (an audit passes its ``seed``)."""

    warm_start: bool = False
    max_iter: Annotated[int, Field(ge=0)] = 100
    block_rows: Annotated[int, Field(ge=1)] = 8192
    random_state: Annotated[int, Field(ge=0)] | None = 0


#: The keyword defaults of RaVLDiscoverer (one declaration: DiscoveryConfig and _Parameters).
_DEFAULTS = _Parameters()


class RaVLDiscoverer(BaseDiscoverer):
    """Region-level spurious-correlation discovery (RaVL stage 1).

    Types, bounds and defaults of the parameters are declared once, by
    :class:`~ravl_med.discover.DiscoveryConfig` (what an audit config sets) and ``_Parameters``
    (``warm_start``, ``max_iter``, ``block_rows``, ``random_state``); :meth:`fit` refuses a value out
    of bounds with a one-line ValueError, e.g. ``k_range=(5, 2)``.

    Args:
        temperature: T for zero-shot scores (only used by :meth:`fit_embeddings`).
        k_range: (low, high) multipliers of C: k is swept over [low*C, high*C].
        k_range_inclusive: include high*C (project default True; the authors' code: False).
        influence_threshold: keep clusters with influence(c) >= this (paper: 0.25).
        min_silhouette: the best silhouette must exceed this, else "no structure" (paper: 0).
        exact_max_regions: k is chosen on all regions (full distance matrix, FasterPAM and exact
            silhouette per k) up to this many regions; above it on a random sample (sampled mode).
            1000: the all-region sweep costs O(n^2) per k, more than the authors' sweep.
        clara_samples: sampled mode: further samples the chosen k is refitted on (CLARA); the
            medoids with the lowest cost over all regions are kept.
        clara_sample_size: regions per further sample (2000: a 32 MB matrix, ~0.1 s per FasterPAM fit).
        silhouette_sample_size: sampled mode: the k-selection sample (FasterPAM and silhouette per k
            on these regions; 1000: ~30 ms per k on 2 cores).
        warm_start: start each k from the k - 1 medoids plus one greedy BUILD step (default: a fresh
            k-medoids++ start per k).
        max_iter: FasterPAM iterations.
        n_boot: bootstrap resamples for the 95% intervals of the per-class tables.
        n_top_regions: regions listed per cluster in ``RankedCluster.top_regions``.
        block_rows: rows per blocked distance product.
        n_jobs: threads for ``kmedoids`` (-1: automatic). 1 by default: the parallel FasterPAM was
            measured 1.5-3x slower than the sequential one on the 2-core machine.
        structure_null: coordinate-permuted copies the chosen clustering's silhouette must beat, else
            "no_structure" (0: no test); see :func:`~ravl_med.discover.null.structure_test`.
        structure_sample: regions sampled for the structure test's fits.
        n_permutations: within-class shuffles of the correctness for each candidate's p-value of G.
        alpha: a kept cluster needs a Holm-adjusted p-value <= alpha ("not_significant" otherwise).
        n_stability: refits on random halves of the images for each kept cluster's stability (0: none).
        min_stability: kept clusters found again in fewer than this share of the refits are not
            reported ("unstable" when none is left; 0, or ``n_stability`` 0: no such filter, with a note).
        random_state: seed for sampling, FasterPAM, the null models and the bootstrap.

    Attributes:
        n_clusters_: chosen k (None when no k was valid or the silhouette was undefined).
        silhouette_: {k: silhouette} for every k swept.
        loss_: {k: K-Medoids total cost}.
        clustering_mode_: "exact" or "sampled".
        labels_: (M,) cluster of each region (None when no clustering).
        medoids_: (k,) region indices of the medoids.
        medoid_embeddings_: (k, D) float32 unit-norm embeddings of the medoids (what :meth:`predict` uses).
        similarity_: (M,) cosine similarity of each region to its medoid.
        cluster_gaps_: (k, C) gap(c, y), NaN where the class was skipped.
        cluster_scores_: (k,) G(c).
        influence_: (k, C) influence(c, y), NaN where not defined.
        cluster_influence_: (k,) influence(c).
        candidates_: (n_cand,) clusters passing the gap filter.
        p_values_, p_adjusted_: (k,) permutation p-value of G and its Holm adjustment over the
            candidates (NaN for clusters that are not candidates).
        structure_: the :class:`~ravl_med.discover.null.StructureTest` (None when not run).
        kept_: clusters passing the gap filter, the influence threshold and the gap test.
        ranked_clusters_: list of :class:`RankedCluster`, kept clusters by G descending.
        ranked_regions_: list of (n_c,) region indices per ranked cluster, by similarity to the medoid.
        outcome_: "found", "no_structure", "no_candidate", "no_influential", "not_significant", "unstable" or
            "too_few_regions".
        notes_: human-readable reasons.
    """

    _parameter_model = _Parameters

    def __init__(self, *, temperature: float = _DEFAULTS.temperature, k_range: tuple[int, int] = _DEFAULTS.k_range,
                 k_range_inclusive: bool = _DEFAULTS.k_range_inclusive,
                 influence_threshold: float = _DEFAULTS.influence_threshold,
                 min_silhouette: float = _DEFAULTS.min_silhouette, exact_max_regions: int = _DEFAULTS.exact_max_regions,
                 clara_samples: int = _DEFAULTS.clara_samples, clara_sample_size: int = _DEFAULTS.clara_sample_size,
                 silhouette_sample_size: int = _DEFAULTS.silhouette_sample_size,
                 warm_start: bool = _DEFAULTS.warm_start, max_iter: int = _DEFAULTS.max_iter,
                 n_boot: int = _DEFAULTS.n_boot, n_top_regions: int = _DEFAULTS.n_top_regions,
                 block_rows: int = _DEFAULTS.block_rows, n_jobs: int = _DEFAULTS.n_jobs,
                 structure_null: int = _DEFAULTS.structure_null, structure_sample: int = _DEFAULTS.structure_sample,
                 n_permutations: int = _DEFAULTS.n_permutations, alpha: float = _DEFAULTS.alpha,
                 n_stability: int = _DEFAULTS.n_stability, min_stability: float = _DEFAULTS.min_stability,
                 random_state: int | None = _DEFAULTS.random_state):
        self.temperature = temperature
        self.k_range = k_range
        self.k_range_inclusive = k_range_inclusive
        self.influence_threshold = influence_threshold
        self.min_silhouette = min_silhouette
        self.exact_max_regions = exact_max_regions
        self.clara_samples = clara_samples
        self.clara_sample_size = clara_sample_size
        self.silhouette_sample_size = silhouette_sample_size
        self.warm_start = warm_start
        self.max_iter = max_iter
        self.n_boot = n_boot
        self.n_top_regions = n_top_regions
        self.block_rows = block_rows
        self.n_jobs = n_jobs
        self.structure_null = structure_null
        self.structure_sample = structure_sample
        self.n_permutations = n_permutations
        self.alpha = alpha
        self.n_stability = n_stability
        self.min_stability = min_stability
        self.random_state = random_state

    def k_values(self, n_classes: int) -> list[int]:
        """The swept k values for C classes."""
        low, high = self.k_range
        return list(range(low * n_classes, high * n_classes + (1 if self.k_range_inclusive else 0)))

    def fit(self, region_embeddings, region_image, image_labels, image_scores, region_scores, *,
            class_names=None, image_embeddings=None) -> RaVLDiscoverer:
        """Discover spurious clusters.

        Args:
            region_embeddings: (M, D) L2-normalised region embeddings (float32 avoids a copy; rows
                that are not unit-norm are normalised on a copy, with a note).
            region_image: (M,) index of each region's image in [0, N).
            image_labels: (N,) ground-truth class of each image in [0, C).
            image_scores: (N, C) zero-shot probabilities of each image (prediction = argmax).
            region_scores: (M, C) zero-shot probabilities of each region.
            class_names: C names for the report (optional).
            image_embeddings: ignored (accepted so every discoverer has the same signature).

        Returns:
            self.

        Raises:
            ValueError: a parameter out of bounds, or inconsistent inputs.
        """
        inputs = self._start(region_embeddings, region_image, image_labels, image_scores, region_scores, class_names)
        embeddings = self._unit_rows(region_embeddings)
        self.labels_ = self.medoids_ = self.similarity_ = self.medoid_embeddings_ = None
        self.n_clusters_ = None
        self.silhouette_, self.loss_ = {}, {}
        self.cluster_gaps_ = np.zeros((0, inputs.n_classes))
        self.influence_ = np.zeros((0, inputs.n_classes))
        self.cluster_scores_ = self.cluster_influence_ = np.zeros(0)
        self.candidates_ = self.kept_ = np.zeros(0, dtype=np.int64)
        self.p_values_ = self.p_adjusted_ = np.zeros(0)
        self.structure_ = None
        self.clustering_mode_ = "exact" if embeddings.shape[0] <= self.exact_max_regions else "sampled"

        result = cluster_regions(
            embeddings, self.k_values(inputs.n_classes), exact_max_regions=self.exact_max_regions,
            n_samples=self.clara_samples, sample_size=self.clara_sample_size,
            silhouette_sample_size=self.silhouette_sample_size, warm_start=self.warm_start,
            max_iter=self.max_iter, block_rows=self.block_rows, random_state=self.random_state, n_cpu=self.n_jobs)
        self.notes_ += result.notes
        self.silhouette_, self.loss_, self.clustering_mode_ = result.silhouettes, result.losses, result.mode
        if not result.silhouettes:
            self.outcome_ = "too_few_regions"
            self.notes_.append(f"{embeddings.shape[0]} regions: too few for any k in {self.k_values(inputs.n_classes)}.")
            return self._finish()
        if result.k is None or result.silhouettes[result.k] <= self.min_silhouette:
            self.outcome_ = "no_structure"
            best = max((s for s in result.silhouettes.values() if np.isfinite(s)), default=float("nan"))
            self.notes_.append(f"no structure found: no k gives a silhouette above {self.min_silhouette} "
                               f"(best {best:.4f}); no cluster is reported.")
            if result.k is not None:  # keep the clustering for inspection
                self._set_clustering(result, embeddings)
            return self._finish()
        self._set_clustering(result, embeddings)
        if self.structure_null:
            self.structure_ = structure_test(embeddings, result.k, n_null=self.structure_null,
                                             sample_size=self.structure_sample, random_state=self.random_state)
            if not self.structure_.structured:
                self.outcome_ = "no_structure"
                self.notes_.append(
                    f"no cluster structure: k-medoids at k = {result.k} on {self.structure_.n_regions} sampled regions "
                    f"has silhouette {self.structure_.silhouette:.4f}, no better than on "
                    f"{self.structure_null} copies with each embedding coordinate shuffled (best "
                    f"{float(self.structure_.null_silhouettes.max()):.4f}); no cluster is reported.")
                return self._finish()

        stats = group_statistics(self.labels_, result.k, inputs)
        self.cluster_gaps_, self.influence_ = stats.gap, stats.influence
        self.cluster_scores_, self.cluster_influence_ = stats.gap_score, stats.group_influence
        self.candidates_ = np.flatnonzero(stats.is_candidate)
        influential = stats.is_candidate & (stats.group_influence >= self.influence_threshold)
        self.p_values_, self.p_adjusted_ = np.full(result.k, np.nan), np.full(result.k, np.nan)
        if self.candidates_.size:
            p_values, n_used = gap_pvalues(self.labels_, self.candidates_, inputs,
                                           n_permutations=self.n_permutations, random_state=self.random_state)
            self.p_values_[self.candidates_] = p_values
            self.p_adjusted_[self.candidates_] = holm(p_values)
            if n_used < self.n_permutations:
                self.notes_.append(f"gap test: {n_used} permutations instead of {self.n_permutations} "
                                   "(bounded work for this many images).")
        significant = np.zeros(result.k, dtype=bool)
        significant[self.candidates_] = self.p_adjusted_[self.candidates_] <= self.alpha
        self.kept_ = np.flatnonzero(influential & significant)
        if self.candidates_.size == 0:
            self.outcome_ = "no_candidate"
            self.notes_.append(f"none of the {result.k} clusters helps one class (gap > 0) and hurts another "
                               "(gap < 0): no spurious correlation found.")
            return self._finish()
        if not influential.any():
            self.outcome_ = "no_influential"
            best = float(stats.group_influence[self.candidates_].max())
            self.notes_.append(f"{self.candidates_.size} candidate cluster(s) pass the gap filter but none reaches "
                               f"influence {self.influence_threshold} (best {best:.3f}).")
            return self._finish()
        if self.kept_.size == 0:
            self.outcome_ = "not_significant"
            best = float(np.nanmin(self.p_adjusted_[np.flatnonzero(influential)]))
            self.notes_.append(
                f"{int(influential.sum())} candidate cluster(s) pass the gap filter and the influence threshold, but "
                f"none of their accuracy gaps beats chance (smallest Holm-adjusted permutation p-value {best:.3f} > "
                f"alpha {self.alpha}): no spurious correlation is reported.")
            return self._finish()
        # Sort by G descending; ties by cluster id for determinism.
        order = sorted(self.kept_.tolist(), key=lambda c: (-stats.gap_score[c], c))
        stability = self._stability(order, region_embeddings, inputs) if self.n_stability else {}
        if not stability and self.min_stability:
            self.notes_.append(f"stability not measured (n_stability 0): clusters are reported without the "
                               f"min_stability {self.min_stability} filter.")
        unstable = {c for c, score in stability.items() if score < self.min_stability}
        if unstable:
            order = [c for c in order if c not in unstable]
            self.kept_ = np.asarray(sorted(order), dtype=np.int64)
            self.notes_.append(
                f"{len(unstable)} significant cluster(s) were found again in fewer than {self.min_stability:.0%} of "
                f"{self.n_stability} refits on random halves of the images (stability "
                f"{', '.join(f'{stability[c]:.2f}' for c in stability if c in unstable)}): unstable, not reported.")
        if not order:
            self.outcome_ = "unstable"
            self.notes_.append("no significant cluster is stable: no spurious correlation is reported.")
            return self._finish()
        ranked_regions = [self._cluster_regions(c) for c in range(result.k)]
        self._ranked(self.labels_, order, stats.gap_score, ranked_regions, inputs, medoids=self.medoids_, stats=stats)
        for cluster in self.ranked_clusters_:
            cluster.p_value = float(self.p_values_[cluster.cluster])
            cluster.p_adjusted = float(self.p_adjusted_[cluster.cluster])
            cluster.stability = stability.get(cluster.cluster)
        self.outcome_ = "found"
        self.notes_.append(f"{len(order)} cluster(s) kept out of {result.k} ({self.candidates_.size} passed the "
                           f"gap filter; kept ones have influence >= {self.influence_threshold}, a Holm-adjusted "
                           f"permutation p-value <= {self.alpha}"
                           + (f" and stability >= {self.min_stability}" if self.min_stability and stability else "")
                           + ").")
        if stability:
            caution = [c.rank for c in self.ranked_clusters_ if c.stability < 0.5]
            self.notes_.append(f"stability: each kept cluster was looked for again in {self.n_stability} refits on "
                               "random halves of the images (a match shares >= 50% of its regions, Jaccard)"
                               + (f"; cluster(s) {caution} were found again in fewer than half of them: unstable, "
                                  "treat with caution." if caution else "."))
        return self._finish()

    def _stability(self, clusters: list[int], region_embeddings, inputs) -> dict[int, float]:
        """{cluster: stability} of ``clusters``: refits on random halves of the images (see :mod:`.stability`)."""
        members = [np.flatnonzero(self.labels_ == c) for c in clusters]
        refit = self.get_params() | {"n_stability": 0, "min_stability": 0.0, "n_boot": 0, "structure_null": 0}
        scores = cluster_stability(
            lambda: type(self)(**refit), members, np.asarray(region_embeddings), inputs,
            n_resamples=self.n_stability, random_state=self.random_state)
        return {c: float(score) for c, score in zip(clusters, scores, strict=True)}

    def fit_embeddings(self, region_embeddings, region_image, image_labels, image_embeddings, text_embeddings, *,
                       class_names=None) -> RaVLDiscoverer:
        """:meth:`fit` from embeddings: zero-shot scores computed with ``temperature``.

        Args:
            region_embeddings: (M, D) region embeddings.
            region_image: (M,) image index of each region.
            image_labels: (N,) class of each image.
            image_embeddings: (N, D) image embeddings.
            text_embeddings: (C, D) class text embeddings.
            class_names: C names (optional).

        Returns:
            self.
        """
        self._check_parameters()  # temperature is used before fit checks it
        image_scores = scores_from_embeddings(image_embeddings, text_embeddings, self.temperature)
        region_scores = scores_from_embeddings(region_embeddings, text_embeddings, self.temperature)
        return self.fit(region_embeddings, region_image, image_labels, image_scores, region_scores,
                        class_names=class_names)

    def predict(self, region_embeddings) -> np.ndarray:
        """The cluster of each region: its nearest medoid in cosine similarity (as ``labels_`` in ``fit``).

        Args:
            region_embeddings: (M, D) region embeddings of the fitted model (rows need not be unit-norm:
                a row's norm does not change which medoid is nearest).

        Returns:
            (M,) int64 cluster ids in [0, ``n_clusters_``); ties go to the lower id.

        Raises:
            NotFittedError: ``fit`` has not run.
            ValueError: the fit kept no clustering (``medoid_embeddings_`` is None), or D differs.
        """
        check_is_fitted(self, "medoid_embeddings_")
        if self.medoid_embeddings_ is None:
            raise ValueError(f"no clustering to predict with (outcome {self.outcome_!r})")
        embeddings = np.asarray(region_embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or embeddings.shape[1] != self.medoid_embeddings_.shape[1]:
            raise ValueError(f"region_embeddings must be (M, {self.medoid_embeddings_.shape[1]}), "
                             f"got {embeddings.shape}")
        labels, _ = nearest_medoid(embeddings, self.medoid_embeddings_, self.block_rows)
        return labels

    # -- internals ------------------------------------------------------------------------------

    def _unit_rows(self, region_embeddings) -> np.ndarray:
        embeddings = np.asarray(region_embeddings, dtype=np.float32)
        if embeddings.ndim != 2:
            raise ValueError(f"region_embeddings must be (M, D), got {embeddings.shape}")
        if embeddings.shape[0]:
            rng = np.random.default_rng(0)
            probe = rng.choice(embeddings.shape[0], min(1000, embeddings.shape[0]), replace=False)
            norms = np.linalg.norm(embeddings[probe], axis=1)
            if np.any(np.abs(norms - 1.0) > 1e-3):
                self.notes_.append("region embeddings were not unit-norm: normalised on a copy.")
                out = np.empty_like(embeddings)
                for start in range(0, embeddings.shape[0], self.block_rows):
                    block = embeddings[start:start + self.block_rows]
                    out[start:start + self.block_rows] = block / np.maximum(
                        np.linalg.norm(block, axis=1, keepdims=True), 1e-12)
                embeddings = out
        return embeddings

    def _set_clustering(self, result, embeddings: np.ndarray) -> None:
        self.n_clusters_ = result.k
        self.labels_, self.medoids_, self.similarity_ = result.labels, result.medoids, result.similarity
        self.medoid_embeddings_ = embeddings[result.medoids]

    def _cluster_regions(self, cluster: int) -> np.ndarray:
        members = np.flatnonzero(self.labels_ == cluster)
        return members[np.argsort(-self.similarity_[members], kind="stable")]

    def _extra_dict(self) -> dict:
        return {
            "n_regions": None if self.labels_ is None else int(self.labels_.size),
            "clustering_mode": self.clustering_mode_,
            "n_clusters": self.n_clusters_,
            "k_swept": sorted(self.silhouette_),
            "silhouette": self.silhouette_,
            "candidates": self.candidates_.tolist(),
            "kept": self.kept_.tolist(),
            "p_values": {int(c): float(self.p_values_[c]) for c in self.candidates_},
            "p_adjusted": {int(c): float(self.p_adjusted_[c]) for c in self.candidates_},
            "structure_test": None if self.structure_ is None else {
                "silhouette": self.structure_.silhouette, "null_max": float(self.structure_.null_silhouettes.max()),
                "p_value": self.structure_.p_value, "n_regions": self.structure_.n_regions,
                "n_null": int(self.structure_.null_silhouettes.size)},
        }
