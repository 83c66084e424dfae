"""K-Medoids on cosine distance with the silhouette sweep over k (RaVL stage 1, step 3).

Two modes, same result type, same steps: choose k on a set of regions, then label every region by
its nearest medoid.

* **exact** (n <= ``exact_max_regions``): the set is all n regions. The full (n, n) distance matrix
  D = clip(1 - E E^T, 0, 1) (float32, built in row blocks, held once as float64 for ``kmedoids``);
  FasterPAM (``kmedoids`` package) once per k from a k-medoids++ start; exact silhouette on D; the
  k with the highest silhouette wins.
* **sampled** (n above the threshold): the set is a random *k-selection sample* of
  ``silhouette_sample_size`` regions: FasterPAM once per k on its (s, s) matrix and the silhouette
  of each k on the same sample (the Monte-Carlo estimate scikit-learn's
  ``silhouette_score(sample_size=...)`` also uses). Only the chosen k is refit, CLARA-style, on
  ``n_samples`` further random samples of ``sample_size`` regions; every candidate medoid set (the
  selection sample's too) is scored by its total cost over *all* regions in one blocked pass and the
  cheapest is kept. Memory is O(n * D) for the embeddings plus O(s^2 + sample_size^2 +
  block * k * (n_samples + 1)) -- never O(n^2).

Why: the authors' sweep (alternating K-Medoids and scikit-learn's silhouette on the full matrix for
every k) costs O(n^2) per k; a FasterPAM pass costs O(n^2) too, with a larger constant, so fitting
every k on all regions is slower than their sweep, not faster (``docs/ravl-method.md``). Here the
per-k work is O(s^2) and only the O(n * k * D) assignment touches all regions; measured with
``benchmarks/discovery_scaling.py --compare`` (planted 512-d data, 2 shared cores) against a
faithful re-implementation of the authors' sweep on the same data, in the same run.

Distance products are always blocked (``block_rows`` rows at a time) and never ``X @ X.T`` on one
buffer: numpy's syrk path can crash with multithreaded OpenBLAS above ~32k rows (numpy #19685).
Results depend only on ``random_state`` (``kmedoids`` runs with ``n_cpu`` threads; 1 by default).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["ClusteringResult", "cluster_regions", "cosine_distance_matrix", "nearest_medoid"]

#: Candidates scored by the greedy BUILD step that warm-starts k from k - 1 (``warm_start=True``).
_BUILD_CANDIDATES = 2048


@dataclass
class ClusteringResult:
    """Outcome of the k sweep.

    Attributes:
        k: chosen number of clusters (the k with the highest silhouette), or None when no k was valid.
        labels: (n,) int64 cluster of each region (None when k is None).
        medoids: (k,) int64 region indices of the medoids.
        similarity: (n,) float32 cosine similarity of each region to its own medoid.
        silhouettes: {k: silhouette} for every k swept (NaN where undefined); exact in exact mode,
            estimated on the selection sample in sampled mode.
        losses: {k: total K-Medoids cost (sum of cosine distances to the nearest medoid) over all
            regions} for every k swept; in sampled mode exact for the chosen k only, the others
            estimated as n / s times the cost on the selection sample of s regions.
        mode: "exact" or "sampled".
        notes: human-readable remarks (e.g. ks dropped because n is too small).
    """

    k: int | None
    labels: np.ndarray | None
    medoids: np.ndarray | None
    similarity: np.ndarray | None
    silhouettes: dict[int, float]
    losses: dict[int, float]
    mode: str
    notes: list[str] = field(default_factory=list)


def cosine_distance_matrix(a: np.ndarray, b: np.ndarray | None = None, block_rows: int = 4096) -> np.ndarray:
    """D = clip(1 - A B^T, 0, 1) in float32, built ``block_rows`` rows at a time.

    Args:
        a: (n, D) L2-normalised rows.
        b: (m, D) L2-normalised rows; default ``a``.
        block_rows: rows of A per product.

    Returns:
        (n, m) float32 distances in [0, 1].
    """
    a = np.asarray(a, dtype=np.float32)
    # A contiguous copy of B^T: a product is then never numpy's syrk special case (numpy #19685).
    bt = np.ascontiguousarray((a if b is None else np.asarray(b, dtype=np.float32)).T)
    out = np.empty((a.shape[0], bt.shape[1]), dtype=np.float32)
    for start in range(0, a.shape[0], block_rows):
        block = out[start:start + block_rows]
        np.matmul(a[start:start + block_rows], bt, out=block)
        np.subtract(1.0, block, out=block)
        np.clip(block, 0.0, 1.0, out=block)
    return out


def nearest_medoid(embeddings: np.ndarray, medoid_embeddings: np.ndarray, block_rows: int = 8192, *,
                   dtype: type = np.float32, normalise: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Assign every row to its most similar medoid, blocked (memory O(block_rows * k)).

    The one nearest-medoid rule of the package: the clustering (float32, rows already unit-norm)
    and the stage-2 labelling of training regions (float64, rows normalised here, so its labels
    do not depend on the embeddings' norms) differ only by ``dtype`` and ``normalise``.

    Args:
        embeddings: (n, D) rows (L2-normalised unless ``normalise``).
        medoid_embeddings: (k, D) medoid rows (L2-normalised unless ``normalise``).
        block_rows: rows per product.
        dtype: the arithmetic's floating type (both inputs are converted to it).
        normalise: L2-normalise the rows of both inputs first (norms floored at 1e-12).

    Returns:
        labels (n,) int64 (ties go to the lower medoid index) and the cosine similarity to the
        assigned medoid (n,) in ``dtype``.
    """
    medoids = np.asarray(medoid_embeddings, dtype=dtype)
    if normalise:
        medoids = _unit(medoids)
    mt = np.ascontiguousarray(medoids.T)
    n = embeddings.shape[0]
    labels = np.empty(n, dtype=np.int64)
    similarity = np.empty(n, dtype=dtype)
    for start in range(0, n, block_rows):
        block = np.asarray(embeddings[start:start + block_rows], dtype=dtype)
        sims = (_unit(block) if normalise else block) @ mt
        best = sims.argmax(axis=1)
        labels[start:start + block_rows] = best
        similarity[start:start + block_rows] = sims[np.arange(sims.shape[0]), best]
    return labels, similarity


def _unit(rows: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm (floored at 1e-12), in the rows' dtype."""
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def _silhouette(distances: np.ndarray, labels: np.ndarray, n_cpu: int) -> float:
    """Mean silhouette on a precomputed distance matrix; NaN when undefined (< 2 clusters used)."""
    import kmedoids

    _, labels = np.unique(labels, return_inverse=True)  # kmedoids wants 0..k-1 with none empty
    n_clusters = int(labels.max(initial=0)) + 1
    if n_clusters < 2 or n_clusters > distances.shape[0] - 1:
        return float("nan")
    value = float(kmedoids.silhouette(distances, labels.astype(np.int64), n_cpu=n_cpu)[0])
    return value if np.isfinite(value) else float("nan")


def _kmedoids_plus_plus(distances: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-medoids++ seeding (k-means++ on a distance matrix, greedy with 2 + log k trials per pick).

    Args:
        distances: (s, s) distances.
        k: medoids to pick (k <= s).
        rng: the random source.

    Returns:
        (k,) int64 distinct row indices. Rows at distance 0 from every pick (duplicates) are only
        used once nothing else is left.
    """
    n = distances.shape[0]
    trials = 2 + int(np.log(k))
    medoids = np.empty(k, dtype=np.int64)
    medoids[0] = rng.integers(n)
    closest = np.square(distances[medoids[0]], dtype=np.float64)
    potential = float(closest.sum())
    for i in range(1, k):
        if potential <= 0.0:  # every row coincides with a pick: fill with unused rows, in order
            medoids[i:] = np.setdiff1d(np.arange(n), medoids[:i])[:k - i]
            break
        candidates = np.minimum(np.searchsorted(np.cumsum(closest), rng.random(trials) * potential), n - 1)
        trial = np.minimum(closest, np.square(distances[candidates], dtype=np.float64))
        potentials = trial.sum(axis=1)
        best = int(np.argmin(potentials))
        medoids[i], closest, potential = candidates[best], trial[best], float(potentials[best])
    unique = np.unique(medoids)
    if unique.size < k:  # a zero-probability draw at a cumsum edge: replace the repeats
        medoids = np.concatenate([unique, np.setdiff1d(np.arange(n), unique)[:k - unique.size]])
    return medoids


def _greedy_add(distances: np.ndarray, medoids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One BUILD step: add the candidate that lowers the total cost most (candidates sub-sampled)."""
    n = distances.shape[0]
    current = distances[:, medoids].min(axis=1)
    pool = np.setdiff1d(np.arange(n), medoids)
    if pool.size > _BUILD_CANDIDATES:
        pool = rng.choice(pool, _BUILD_CANDIDATES, replace=False)
    gains = np.zeros(pool.size, dtype=np.float64)
    for start in range(0, pool.size, 256):
        cols = distances[:, pool[start:start + 256]]
        gains[start:start + 256] = np.maximum(current[:, None] - cols, 0.0).sum(axis=0)
    return np.append(medoids, pool[int(np.argmax(gains))]).astype(np.int64)


def _fasterpam(distances: np.ndarray, k: int, init: np.ndarray | None, max_iter: int, rng: np.random.Generator,
               n_cpu: int) -> tuple[np.ndarray, np.ndarray, float]:
    """FasterPAM for one k from ``init`` (k-medoids++ when None) -> (medoids, labels, loss)."""
    import kmedoids

    if init is None:
        init = _kmedoids_plus_plus(distances, k, rng)
    # No random_state: with given medoids it would only shuffle the processing order (slower).
    result = kmedoids.fasterpam(distances, init, max_iter=max_iter, n_cpu=n_cpu)
    return (np.asarray(result.medoids, dtype=np.int64), np.asarray(result.labels, dtype=np.int64),
            float(result.loss))


def _sweep_fasterpam(distances: np.ndarray, ks: list[int], warm_start: bool, max_iter: int,
                     rng: np.random.Generator, n_cpu: int) -> dict[int, tuple[np.ndarray, np.ndarray, float]]:
    """FasterPAM once per k on one (s, s) float64 matrix -> {k: (medoids, labels, loss)}.

    Each k starts from k-medoids++ (``warm_start``: from the k - 1 solution plus one greedy BUILD
    step). A k-medoids++ start leaves FasterPAM ~2 passes of O(s^2) to converge; the full BUILD
    the old code approximated costs O(k s^2) and bought no better optimum on the planted data.
    """
    solutions: dict[int, tuple[np.ndarray, np.ndarray, float]] = {}
    previous: np.ndarray | None = None
    for k in ks:
        warm = warm_start and previous is not None and previous.size == k - 1
        solutions[k] = _fasterpam(distances, k, _greedy_add(distances, previous, rng) if warm else None,
                                  max_iter, rng, n_cpu)
        previous = solutions[k][0]
    return solutions


def _valid_ks(ks: list[int], n: int, notes: list[str], where: str = "n_regions") -> list[int]:
    # The silhouette is defined for 2 <= k <= n - 1.
    valid = [k for k in ks if 2 <= k <= n - 1]
    dropped = sorted(set(ks) - set(valid))
    if dropped:
        notes.append(f"k values {dropped} dropped: the silhouette needs 2 <= k <= {where} - 1 ({where} = {n}).")
    return valid


def _distances64(embeddings: np.ndarray, rows: np.ndarray | None, block_rows: int) -> np.ndarray:
    """The (s, s) cosine distances of ``embeddings[rows]`` (all rows when None) as float64.

    ``kmedoids`` converts float32 input to float64 on every call; converting once serves every k.
    """
    chosen = embeddings if rows is None else embeddings[rows]
    return cosine_distance_matrix(np.asarray(chosen, dtype=np.float32), block_rows=block_rows).astype(np.float64)


def cluster_regions(embeddings: np.ndarray, ks: list[int], *, exact_max_regions: int = 4000,
                    n_samples: int = 2, sample_size: int = 2000, silhouette_sample_size: int = 1000,
                    warm_start: bool = False, max_iter: int = 100, block_rows: int = 8192,
                    random_state: int | None = 0, n_cpu: int = 1) -> ClusteringResult:
    """K-Medoids over the k sweep, choosing k by silhouette on cosine distance.

    Args:
        embeddings: (n, D) L2-normalised region embeddings (float32 preferred; not copied when so).
        ks: the k values to sweep, e.g. ``range(2C, 5C + 1)``.
        exact_max_regions: k is chosen on all n regions (full (n, n) matrix, 12 n^2 bytes at its peak)
            up to this many regions; the sampled mode above.
        n_samples: further samples the chosen k is fitted on in sampled mode (CLARA); the medoid set
            with the lowest cost over all regions, the selection sample's included, is kept.
        sample_size: regions per further sample (sampled mode); FasterPAM costs O(sample_size^2).
        silhouette_sample_size: s, the k-selection sample (sampled mode): one FasterPAM fit per k and
            the silhouette of each k on these s random regions, O(s^2) per k.
        warm_start: start k from the medoids for k - 1 plus one greedy BUILD step (default: a fresh
            k-medoids++ start per k, so each k's fit does not depend on the other ks swept).
        max_iter: FasterPAM iterations.
        block_rows: rows per blocked distance product.
        random_state: seed (the result is a function of it, the data and the ks).
        n_cpu: threads for ``kmedoids`` (-1: automatic; 1 measured fastest on the 2-core machine).

    Returns:
        :class:`ClusteringResult`.
    """
    rng = np.random.default_rng(random_state)
    n = embeddings.shape[0]
    notes: list[str] = []
    exact = n <= exact_max_regions
    mode = "exact" if exact else "sampled"
    size = n if exact else min(silhouette_sample_size, n)
    ks = _valid_ks(sorted({int(k) for k in ks}), size, notes,
                   "n_regions" if size == n else "the k-selection sample (silhouette_sample_size)")
    if not ks:
        return ClusteringResult(None, None, None, None, {}, {}, mode, notes)

    # The k sweep: every k on the same (size, size) matrix -- all regions, or one random sample.
    selection = None if size == n else rng.choice(n, size, replace=False)
    distances = _distances64(embeddings, selection, block_rows)
    solutions = _sweep_fasterpam(distances, ks, warm_start, max_iter, rng, n_cpu)
    silhouettes = {k: _silhouette(distances, labels, n_cpu) for k, (_, labels, _) in solutions.items()}
    del distances
    # Sampled: n / s times the sample's cost estimates the total; the chosen k's is replaced by its exact cost.
    losses = {k: loss * n / size for k, (_, _, loss) in solutions.items()}
    best_medoids = {k: m if selection is None else selection[m] for k, (m, _, _) in solutions.items()}

    finite = {k: s for k, s in silhouettes.items() if np.isfinite(s)}
    if not finite:
        notes.append("the silhouette is undefined for every k (all regions alike or one cluster used).")
        return ClusteringResult(None, None, None, None, silhouettes, losses, mode, notes)
    k_best = max(finite, key=lambda k: (finite[k], -k))  # ties -> the smaller k
    medoids = np.asarray(best_medoids[k_best], dtype=np.int64)
    if not exact:
        medoids, losses[k_best] = _clara(embeddings, k_best, medoids, n_samples, sample_size, max_iter, block_rows,
                                         rng, n_cpu)
        notes.append(f"sampled K-Medoids (CLARA-style) for {n} regions: k chosen on {size} random regions "
                     f"(FasterPAM and silhouette per k); k = {k_best} refitted on {n_samples} further sample(s) "
                     f"of {min(max(sample_size, k_best + 1), n)} regions and the medoids with the lowest cost over "
                     "all regions kept; the losses of the other k are sample estimates.")
    labels, similarity = nearest_medoid(embeddings, embeddings[medoids], block_rows)
    # A medoid always belongs to its own cluster (duplicate points could otherwise tie elsewhere).
    labels[medoids] = np.arange(medoids.size)
    return ClusteringResult(k_best, labels, medoids, similarity, silhouettes, losses, mode, notes)


def _clara(embeddings: np.ndarray, k: int, first: np.ndarray, n_samples: int, sample_size: int, max_iter: int,
           block_rows: int, rng: np.random.Generator, n_cpu: int) -> tuple[np.ndarray, float]:
    """CLARA for one k: ``first`` plus one FasterPAM fit per further sample, each medoid set scored
    by its total cost over all regions in one blocked pass -> (cheapest medoids, their cost)."""
    n = embeddings.shape[0]
    size = min(max(sample_size, k + 1), n)
    candidates = [np.asarray(first, dtype=np.int64)]
    for _ in range(n_samples):
        sample = rng.choice(n, size, replace=False)
        medoids, _, _ = _fasterpam(_distances64(embeddings, sample, block_rows), k, None, max_iter, rng, n_cpu)
        candidates.append(sample[medoids])
    # costs[j] = sum_i min_m D(i, m) over all regions i, every candidate in one product per block.
    medoid_t = np.ascontiguousarray(np.asarray(embeddings[np.concatenate(candidates)], dtype=np.float32).T)
    costs = np.zeros(len(candidates), dtype=np.float64)
    for start in range(0, n, block_rows):
        sims = np.asarray(embeddings[start:start + block_rows], dtype=np.float32) @ medoid_t
        for j in range(len(candidates)):
            best = sims[:, j * k:(j + 1) * k].max(axis=1)
            costs[j] += float(np.clip(1.0 - best, 0.0, 1.0).sum(dtype=np.float64))
    j = int(np.argmin(costs))  # ties -> the earlier candidate
    return candidates[j], float(costs[j])
