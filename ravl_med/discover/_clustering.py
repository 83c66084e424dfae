"""K-Medoids on cosine distance with the silhouette sweep over k (RaVL stage 1, step 3).

Two modes, same result type:

* **exact** (n <= ``exact_max_regions``): the full (n, n) float32 distance matrix
  D = clip(1 - E E^T, 0, 1), built in row blocks; FasterPAM (``kmedoids`` package) for every k,
  warm-started from the solution for k - 1 plus one greedy BUILD step (fewer swaps than a fresh
  BUILD, same local optimum quality); exact silhouette on D.
* **sampled** (CLARA-style, n above the threshold): ``n_samples`` random samples of
  ``sample_size`` regions; FasterPAM on each sample's (s, s) matrix for every k (warm-started as
  above); every candidate medoid set is scored by its total cost over *all* regions in one blocked
  pass; the best set per k is kept. The silhouette for each k is estimated on a fixed random
  evaluation sample of ``silhouette_sample_size`` regions labelled by their nearest medoid (the
  Monte-Carlo estimate scikit-learn's ``silhouette_score(sample_size=...)`` also uses). Memory is
  O(n * D) for the embeddings plus O(s^2 + block * k) -- never O(n^2).

Distance products are always blocked (``block_rows`` rows at a time) and never ``X @ X.T`` on one
buffer: numpy's syrk path can crash with multithreaded OpenBLAS above ~32k rows (numpy #19685).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["ClusteringResult", "cluster_regions", "cosine_distance_matrix", "nearest_medoid"]

#: Candidates scored by the greedy BUILD step that warm-starts k from k - 1.
_BUILD_CANDIDATES = 2048


@dataclass
class ClusteringResult:
    """Outcome of the k sweep.

    Attributes:
        k: chosen number of clusters (the k with the highest silhouette), or None when no k was valid.
        labels: (n,) int64 cluster of each region (None when k is None).
        medoids: (k,) int64 region indices of the medoids.
        similarity: (n,) float32 cosine similarity of each region to its own medoid.
        silhouettes: {k: silhouette} for every k swept (NaN where undefined).
        losses: {k: total K-Medoids cost over all regions} for every k swept.
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


def _greedy_add(distances: np.ndarray, medoids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One BUILD step: add the candidate that lowers the total cost most (candidates sub-sampled).

    With no medoids yet, the first pick is the candidate with the smallest total distance.
    """
    n = distances.shape[0]
    current = distances[:, medoids].min(axis=1) if medoids.size else np.full(n, np.inf, dtype=np.float32)
    pool = np.setdiff1d(np.arange(n), medoids)
    if pool.size > _BUILD_CANDIDATES:
        pool = rng.choice(pool, _BUILD_CANDIDATES, replace=False)
    gains = np.zeros(pool.size, dtype=np.float64)
    for start in range(0, pool.size, 256):
        cols = distances[:, pool[start:start + 256]]
        if medoids.size:
            gains[start:start + 256] = np.maximum(current[:, None] - cols, 0.0).sum(axis=0)
        else:
            gains[start:start + 256] = -cols.sum(axis=0, dtype=np.float64)
    return np.append(medoids, pool[int(np.argmax(gains))]).astype(np.int64)


def _sampled_build(distances: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """BUILD initialisation with sub-sampled candidates: O(k n * 2048) instead of O(k n^2)."""
    medoids = np.zeros(0, dtype=np.int64)
    for _ in range(k):
        medoids = _greedy_add(distances, medoids, rng)
    return medoids


def _sweep_fasterpam(distances: np.ndarray, ks: list[int], warm_start: bool, max_iter: int,
                     rng: np.random.Generator, n_cpu: int) -> dict[int, tuple[np.ndarray, np.ndarray, float]]:
    """FasterPAM for each k on one distance matrix -> {k: (medoids, labels, loss)}."""
    import kmedoids

    solutions: dict[int, tuple[np.ndarray, np.ndarray, float]] = {}
    previous: np.ndarray | None = None
    for k in ks:
        # Warm start from k - 1 plus one greedy step; else a sampled BUILD (a full BUILD is O(k n^2)
        # and measured 5x slower than the FasterPAM fit it initialises at 10^4 regions).
        if warm_start and previous is not None and previous.size == k - 1:
            init = _greedy_add(distances, previous, rng)
        else:
            init = _sampled_build(distances, k, rng)
        # No random_state: with given medoids it would only shuffle the processing order (slower).
        result = kmedoids.fasterpam(distances, init, max_iter=max_iter, n_cpu=n_cpu)
        medoids = np.asarray(result.medoids, dtype=np.int64)
        solutions[k] = (medoids, np.asarray(result.labels, dtype=np.int64), float(result.loss))
        previous = medoids
    return solutions


def _valid_ks(ks: list[int], n: int, notes: list[str]) -> list[int]:
    # The silhouette is defined for 2 <= k <= n - 1.
    valid = [k for k in ks if 2 <= k <= n - 1]
    dropped = sorted(set(ks) - set(valid))
    if dropped:
        notes.append(f"k values {dropped} dropped: the silhouette needs 2 <= k <= n_regions - 1 (n_regions = {n}).")
    return valid


def cluster_regions(embeddings: np.ndarray, ks: list[int], *, exact_max_regions: int = 20000,
                    n_samples: int = 5, sample_size: int = 4000, silhouette_sample_size: int = 5000,
                    warm_start: bool = True, max_iter: int = 100, block_rows: int = 8192,
                    random_state: int | None = 0, n_cpu: int = 1) -> ClusteringResult:
    """K-Medoids over the k sweep, choosing k by silhouette on cosine distance.

    Args:
        embeddings: (n, D) L2-normalised region embeddings (float32 preferred; not copied when so).
        ks: the k values to sweep, e.g. ``range(2C, 5C + 1)``.
        exact_max_regions: the full distance matrix is used up to this many regions.
        n_samples: CLARA samples (sampled mode).
        sample_size: regions per CLARA sample.
        silhouette_sample_size: regions on which the silhouette is estimated (sampled mode).
        warm_start: start k from the medoids for k - 1 plus one greedy BUILD step.
        max_iter: FasterPAM iterations.
        block_rows: rows per blocked distance product.
        random_state: seed.
        n_cpu: threads for ``kmedoids`` (-1: automatic; 1 measured fastest on the 2-core machine).

    Returns:
        :class:`ClusteringResult`.
    """
    rng = np.random.default_rng(random_state)
    n = embeddings.shape[0]
    notes: list[str] = []
    ks = _valid_ks(sorted({int(k) for k in ks}), n, notes)
    exact = n <= exact_max_regions
    mode = "exact" if exact else "sampled"
    if not ks:
        return ClusteringResult(None, None, None, None, {}, {}, mode, notes)

    silhouettes: dict[int, float] = {}
    losses: dict[int, float] = {}
    if exact:
        distances = cosine_distance_matrix(embeddings, block_rows=block_rows)
        solutions = _sweep_fasterpam(distances, ks, warm_start, max_iter, rng, n_cpu)
        for k, (_, labels, loss) in solutions.items():
            silhouettes[k] = _silhouette(distances, labels, n_cpu)
            losses[k] = loss
        del distances
        best_medoids = {k: sol[0] for k, sol in solutions.items()}
    else:
        best_medoids = _clara(embeddings, ks, n_samples, sample_size, warm_start, max_iter, block_rows,
                              rng, n_cpu, losses)
        size = min(silhouette_sample_size, n)
        evaluation = np.sort(rng.choice(n, size, replace=False))
        eval_embeddings = np.asarray(embeddings[evaluation], dtype=np.float32)
        eval_distances = cosine_distance_matrix(eval_embeddings, block_rows=block_rows)
        for k in ks:
            eval_labels, _ = nearest_medoid(eval_embeddings, embeddings[best_medoids[k]], block_rows)
            silhouettes[k] = _silhouette(eval_distances, eval_labels, n_cpu)
        del eval_distances
        notes.append(f"sampled K-Medoids (CLARA-style): {n_samples} samples of {min(sample_size, n)} regions "
                     f"for {n} regions; silhouette estimated on {size} random regions.")

    finite = {k: s for k, s in silhouettes.items() if np.isfinite(s)}
    if not finite:
        notes.append("the silhouette is undefined for every k (all regions alike or one cluster used).")
        return ClusteringResult(None, None, None, None, silhouettes, losses, mode, notes)
    k_best = max(finite, key=lambda k: (finite[k], -k))  # ties -> the smaller k
    medoids = np.asarray(best_medoids[k_best], dtype=np.int64)
    labels, similarity = nearest_medoid(embeddings, embeddings[medoids], block_rows)
    # A medoid always belongs to its own cluster (duplicate points could otherwise tie elsewhere).
    labels[medoids] = np.arange(medoids.size)
    return ClusteringResult(k_best, labels, medoids, similarity, silhouettes, losses, mode, notes)


def _clara(embeddings: np.ndarray, ks: list[int], n_samples: int, sample_size: int, warm_start: bool,
           max_iter: int, block_rows: int, rng: np.random.Generator, n_cpu: int,
           losses: dict[int, float]) -> dict[int, np.ndarray]:
    """CLARA: medoid candidates from samples, each scored on all regions in one blocked pass."""
    n = embeddings.shape[0]
    size = min(sample_size, n)
    candidates: list[tuple[int, np.ndarray]] = []  # (k, global medoid indices)
    for _ in range(max(1, n_samples)):
        sample = np.sort(rng.choice(n, size, replace=False))
        distances = cosine_distance_matrix(np.asarray(embeddings[sample], dtype=np.float32), block_rows=block_rows)
        for k, (medoids, _, _) in _sweep_fasterpam(distances, ks, warm_start, max_iter, rng, n_cpu).items():
            candidates.append((k, sample[medoids]))
        del distances
    # One pass over all regions scores every candidate set: costs[j] = sum_i min_m D(i, m).
    columns = np.concatenate([m for _, m in candidates])
    offsets = np.cumsum([0] + [m.size for _, m in candidates])
    medoid_t = np.ascontiguousarray(np.asarray(embeddings[columns], dtype=np.float32).T)
    costs = np.zeros(len(candidates), dtype=np.float64)
    for start in range(0, n, block_rows):
        sims = np.asarray(embeddings[start:start + block_rows], dtype=np.float32) @ medoid_t
        for j in range(len(candidates)):
            best = sims[:, offsets[j]:offsets[j + 1]].max(axis=1)
            costs[j] += float(np.clip(1.0 - best, 0.0, 1.0).sum())
    chosen: dict[int, np.ndarray] = {}
    for j, (k, medoids) in enumerate(candidates):
        if k not in losses or costs[j] < losses[k]:
            losses[k] = float(costs[j])
            chosen[k] = medoids
    return chosen
