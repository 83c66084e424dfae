"""Null models: is a clustering, or a cluster's accuracy gap, more than chance?

Measured (issue 14): on pure-noise embeddings RaVL kept two clusters at silhouette 0.0008, and on
phantom models that had learned no shortcut it reported a finding every time, from gaps of about
0.05 measured on 4-7 images. Two permutation tests answer the two questions an auditor asks:

* :func:`structure_test` ("are there clusters at all?"): the silhouette of k-medoids at the chosen
  k on a sample of the regions, against the silhouettes of the same fit on copies whose embedding
  coordinates are permuted independently (each coordinate keeps its values, the regions lose their
  joint structure). No better than every copy: ``no_structure``.
* :func:`gap_pvalues` ("is this cluster's gap chance?"): a cluster's gap score
  G(c) = sum_y w_y |acc(I) - acc(O)| against its distribution when, within each class, which images
  were classified correctly is shuffled (sizes |I|, |O| and every class's accuracy kept). Holm's
  step-down correction over the clusters tested controls the chance of any false finding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._groups import DiscoveryInputs

__all__ = ["StructureTest", "gap_pvalues", "holm", "structure_test"]


@dataclass(frozen=True)
class StructureTest:
    """Result of :func:`structure_test`.

    Attributes:
        silhouette: silhouette of the k-medoids fit on the sample.
        null_silhouettes: (R,) silhouettes of the same fit on coordinate-permuted copies.
        p_value: (1 + #{null >= observed}) / (1 + R).
        n_regions: regions in the sample.
    """

    silhouette: float
    null_silhouettes: np.ndarray
    p_value: float
    n_regions: int

    @property
    def structured(self) -> bool:
        """The observed silhouette beats every permuted copy."""
        return bool(np.isfinite(self.silhouette) and np.all(self.silhouette > self.null_silhouettes))


def _fit_silhouette(embeddings: np.ndarray, k: int, seed: int) -> float:
    import kmedoids

    from ._clustering import _silhouette, cosine_distance_matrix

    distances = cosine_distance_matrix(embeddings)
    fit = kmedoids.fasterpam(distances, k, max_iter=100, init="build", random_state=seed, n_cpu=1)
    return _silhouette(distances, np.asarray(fit.labels, dtype=np.int64), n_cpu=1)


def structure_test(embeddings: np.ndarray, k: int, *, n_null: int = 19, sample_size: int = 1500,
                   random_state: int | None = 0) -> StructureTest:
    """Silhouette at ``k`` vs coordinate-permuted copies (see the module docstring).

    Args:
        embeddings: (M, D) unit-norm region embeddings.
        k: the number of clusters the sweep chose.
        n_null: permuted copies R (19: the observed must beat all of them, p = 0.05).
        sample_size: regions sampled (without replacement) for every fit; cost O(sample_size^2).
        random_state: seed of the sample, the permutations and the fits.

    Returns:
        :class:`StructureTest`.
    """
    rng = np.random.default_rng(random_state)
    n = embeddings.shape[0]
    rows = np.sort(rng.choice(n, min(sample_size, n), replace=False))
    sample = np.asarray(embeddings[rows], dtype=np.float32)
    seed = int(rng.integers(2**31))
    observed = _fit_silhouette(sample, k, seed)
    nulls = np.empty(n_null)
    for r in range(n_null):
        shuffled = rng.permuted(sample, axis=0)  # each coordinate permuted on its own
        shuffled /= np.maximum(np.linalg.norm(shuffled, axis=1, keepdims=True), 1e-12)
        nulls[r] = _fit_silhouette(shuffled, k, seed)
    nulls = np.nan_to_num(nulls, nan=-1.0)
    p_value = (1 + int(np.sum(nulls >= observed))) / (1 + n_null) if np.isfinite(observed) else 1.0
    return StructureTest(observed, nulls, p_value, int(rows.size))


def gap_pvalues(region_group: np.ndarray, groups: np.ndarray, inputs: DiscoveryInputs, *,
                n_permutations: int = 1000, random_state: int | None = 0,
                max_work: float = 2e8, chunk_values: int = 2**24) -> tuple[np.ndarray, int]:
    """Permutation p-value of each group's gap score G (see the module docstring).

    Args:
        region_group: (M,) group of each region, -1 for none.
        groups: (T,) the group ids to test.
        inputs: the validated discovery inputs (labels, correctness).
        n_permutations: B shuffles of the correctness within each class.
        random_state: seed.
        max_work: bound on N * B shuffled values (and T * N * B multiply-adds); B is lowered to fit, not
            below 99 (the second return value). 2e8: all 9,999 permutations up to 20,000 images.
        chunk_values: shuffled values held at once (float32; 2^24: 64 MiB), so memory does not grow with B.

    Returns:
        (T,) p-values (1 + #{G_null >= G}) / (1 + B) and the B used.
    """
    groups = np.asarray(groups, dtype=np.int64)
    n, c = inputs.n_images, inputs.n_classes
    if groups.size == 0 or n == 0:
        return np.ones(groups.size), 0
    b = int(max(99, min(n_permutations, max_work // max(1, n))))
    region_group = np.asarray(region_group, dtype=np.int64)
    presence = np.zeros((groups.size, n), dtype=np.float64)
    lookup = np.full(max(int(groups.max()), int(region_group.max(initial=-1))) + 1, -1, dtype=np.int64)
    lookup[groups] = np.arange(groups.size)
    tested = np.flatnonzero(region_group >= 0)
    tested = tested[lookup[region_group[tested]] >= 0]
    presence[lookup[region_group[tested]], inputs.region_image[tested]] = 1.0
    rng = np.random.default_rng(random_state)
    observed = np.zeros(groups.size)
    null = np.zeros((groups.size, b))
    correct = inputs.correct.astype(np.float32)
    for y in range(c):
        members = np.flatnonzero(inputs.image_labels == y)
        if members.size == 0:
            continue
        p = presence[:, members].astype(np.float32)    # (T, n_y)
        n_in = p.sum(axis=1, dtype=np.float64)
        n_out = members.size - n_in
        compared = (n_in > 0) & (n_out > 0)
        if not compared.any():
            continue
        weight = 2.0 * np.minimum(n_in, n_out) / members.size
        total = float(correct[members].sum(dtype=np.float64))

        def gap(correct_in: np.ndarray) -> np.ndarray:
            acc_in = correct_in / np.maximum(n_in, 1)[:, None]
            acc_out = (total - correct_in) / np.maximum(n_out, 1)[:, None]
            return np.where(compared[:, None], weight[:, None] * np.abs(acc_in - acc_out), 0.0)

        observed += gap((p @ correct[members]).astype(np.float64)[:, None])[:, 0]
        rows = max(1, chunk_values // members.size)
        for start in range(0, b, rows):  # (rows, n_y) shuffles at a time: bounded memory
            shuffled = rng.permuted(np.tile(correct[members], (min(rows, b - start), 1)), axis=1)
            null[:, start:start + shuffled.shape[0]] += gap((p @ shuffled.T).astype(np.float64))
    exceed = (null >= observed[:, None] - 1e-12).sum(axis=1)
    return (1.0 + exceed) / (1.0 + b), b


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error control), same order as the input."""
    p = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    m = p.size
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out = np.empty(m)
    out[order] = np.minimum(adjusted, 1.0)
    return out
