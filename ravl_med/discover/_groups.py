"""Per-cluster statistics (RaVL stage 1, steps 4-6), shared by RaVL and the baselines.

A "group" is a set of regions: a K-Medoids cluster for RaVL, the regions picked by an image-level
baseline for the others. Everything here works from ``region_group`` (M,) with -1 for "in no group".
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from ._clustering import nearest_medoid

__all__ = [
    "ClassStats",
    "DiscoveryInputs",
    "GroupStats",
    "RankedCluster",
    "counter_examples",
    "group_statistics",
    "one_per_image_first",
    "refuse_non_finite",
    "top_region_per_image",
    "validate_inputs",
]


@dataclass
class ClassStats:
    """One row of a cluster's per-class table.

    I = images of the class with at least one region in the cluster, O = those with none.

    Attributes:
        class_index: y.
        class_name: name of y (str(y) when no names were given).
        n_in, n_out: |I|, |O|.
        acc_in, acc_out: zero-shot accuracy on I and O (None when the set is empty).
        acc_in_ci, acc_out_ci: bootstrap 95% percentile intervals (None when the set is empty).
        weight: w = 2 min(|I|, |O|) / (|I| + |O|).
        gap: w (acc(I) - acc(O)); None when the class is skipped.
        gap_ci: bootstrap 95% interval of the gap (I and O resampled separately, w fixed).
        influence: influence(c, y) (None unless gap < 0 and an image was eligible).
        n_influence_images: images eligible for the influence score of this class.
        skipped: why the class was skipped (empty string when it was not).
    """

    class_index: int
    class_name: str
    n_in: int
    n_out: int
    acc_in: float | None
    acc_out: float | None
    acc_in_ci: tuple[float, float] | None
    acc_out_ci: tuple[float, float] | None
    weight: float
    gap: float | None
    gap_ci: tuple[float, float] | None
    influence: float | None
    n_influence_images: int
    skipped: str = ""


@dataclass
class RankedCluster:
    """One kept cluster (or baseline group), as the report shows it.

    Attributes:
        rank: 1-based position in the ranking.
        cluster: cluster id (index into ``medoids_`` / the group list).
        score: the ranking score (RaVL: G(c) = sum_y |gap(c, y)|; baselines: their own score).
        gap_score: G(c) for every method, so rankings can be compared.
        influence: influence(c) = max_y influence(c, y) (NaN reported as None).
        attribute: the spurious textual attribute: the class with the largest unweighted
            acc(I) - acc(O) (None when no class could be compared).
        attribute_name: its name.
        n_regions, n_images: regions in the cluster, images with at least one of them.
        medoid: region index of the medoid (None for baselines).
        table: per-class :class:`ClassStats`.
        top_regions: the first region indices of ``ranked_regions_`` for this cluster (gallery).
        p_value: permutation p-value of G (RaVL; None for baselines), see :mod:`ravl_med.discover.null`.
        p_adjusted: ``p_value`` after Holm's correction over the candidate clusters tested.
        stability: share of refits on random halves of the images that keep a matching cluster
            (RaVL; None when not measured).
    """

    rank: int
    cluster: int
    score: float
    gap_score: float
    influence: float | None
    attribute: int | None
    attribute_name: str | None
    n_regions: int
    n_images: int
    medoid: int | None
    table: list[ClassStats] = field(default_factory=list)
    top_regions: list[int] = field(default_factory=list)
    p_value: float | None = None
    p_adjusted: float | None = None
    stability: float | None = None

    def to_dict(self) -> dict:
        """JSON-serialisable dict (NaN -> None)."""
        return _clean(asdict(self))


def _clean(value):
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.ndarray):
        return _clean(value.tolist())
    return value


@dataclass
class DiscoveryInputs:
    """Validated ``fit`` inputs (see :func:`validate_inputs`)."""

    region_image: np.ndarray      # (M,) int64
    image_labels: np.ndarray      # (N,) int64
    image_scores: np.ndarray      # (N, C) float
    region_scores: np.ndarray     # (M, C) float
    predicted: np.ndarray         # (N,) int64 argmax of image_scores
    correct: np.ndarray           # (N,) bool
    class_names: list[str]
    notes: list[str]

    @property
    def n_images(self) -> int:
        return self.image_labels.shape[0]

    @property
    def n_classes(self) -> int:
        return self.image_scores.shape[1]


def refuse_non_finite(array, name: str, block_rows: int = 65536) -> None:
    """Raises a one-line ValueError when ``array`` (rows x columns) holds NaN or infinite values.

    Measured: one NaN row among 2,000 embeddings silently turned a correct finding into
    "no_candidate" (every region fell in one cluster). Checked a block of rows at a time, so a
    memory-mapped 10^6-row array is not loaded whole.
    """
    n = int(np.shape(array)[0])
    bad_rows, first = 0, None
    for start in range(0, n, block_rows):
        block = np.asarray(array[start:start + block_rows])
        bad = ~np.isfinite(block.reshape(block.shape[0], -1)).all(axis=1)
        if bad.any():
            bad_rows += int(bad.sum())
            first = start + int(np.argmax(bad)) if first is None else first
    if bad_rows:
        raise ValueError(f"{name}: {bad_rows} of {n} rows hold NaN or infinite values (first: row {first}); "
                         "they cannot be compared with the others. Check the model's outputs for those inputs.")


def validate_inputs(n_regions: int, region_image, image_labels, image_scores, region_scores,
                    class_names=None) -> DiscoveryInputs:
    """Check shapes and ranges of the arrays every discoverer takes.

    Args:
        n_regions: M, rows of the region embeddings.
        region_image: (M,) image index of each region, in [0, N).
        image_labels: (N,) class of each image, in [0, C).
        image_scores: (N, C) zero-shot probabilities of each image.
        region_scores: (M, C) zero-shot probabilities of each region.
        class_names: C names, optional.

    Returns:
        :class:`DiscoveryInputs`, with notes on legitimate oddities (classes without images).

    Raises:
        ValueError: on inconsistent shapes or out-of-range indices.
    """
    region_image = np.asarray(region_image).astype(np.int64, copy=False).reshape(-1)
    image_labels = np.asarray(image_labels).astype(np.int64, copy=False).reshape(-1)
    image_scores = np.asarray(image_scores, dtype=np.float64)
    region_scores = np.asarray(region_scores)
    if image_scores.ndim != 2 or image_scores.shape[1] < 1:
        raise ValueError(f"image_scores must be (N, C), got {image_scores.shape}")
    n_images, n_classes = image_scores.shape
    if image_labels.shape[0] != n_images:
        raise ValueError(f"image_labels has {image_labels.shape[0]} entries, image_scores {n_images} rows")
    if region_image.shape[0] != n_regions:
        raise ValueError(f"region_image has {region_image.shape[0]} entries for {n_regions} regions")
    if region_scores.shape != (n_regions, n_classes):
        raise ValueError(f"region_scores must be ({n_regions}, {n_classes}), got {region_scores.shape}")
    refuse_non_finite(image_scores, "image_scores")
    refuse_non_finite(region_scores, "region_scores")
    if n_regions and (region_image.min() < 0 or region_image.max() >= n_images):
        raise ValueError(f"region_image must index images in [0, {n_images})")
    if n_images and (image_labels.min() < 0 or image_labels.max() >= n_classes):
        raise ValueError(f"image_labels must be class indices in [0, {n_classes})")
    names = [str(c) for c in range(n_classes)] if class_names is None else [str(c) for c in class_names]
    if len(names) != n_classes:
        raise ValueError(f"{len(names)} class names for {n_classes} classes")
    predicted = image_scores.argmax(axis=1) if n_images else np.zeros(0, dtype=np.int64)
    notes = []
    counts = np.bincount(image_labels, minlength=n_classes)
    empty = [names[c] for c in range(n_classes) if counts[c] == 0]
    if empty:
        notes.append(f"classes with no images in the evaluation set (skipped everywhere): {empty}.")
    if n_classes == 1:
        notes.append("a single class: a spurious correlation needs a class it helps and one it hurts, "
                     "so no cluster can pass the gap filter.")
    return DiscoveryInputs(region_image, image_labels, image_scores, region_scores, predicted.astype(np.int64),
                           predicted == image_labels, names, notes)


def one_per_image_first(ranked_regions: np.ndarray, region_image: np.ndarray) -> np.ndarray:
    """Reorders a ranking so each image's best region precedes every image's second best, and so on.

    Overlapping candidate boxes of one image often land in one cluster together; without this they
    can fill the top k of a ranking (and its gallery) with views of a single image.

    Args:
        ranked_regions: (n,) region indices, best first.
        region_image: (M,) image index of every region.

    Returns:
        (n,) the same indices: first the best region of each image (in the original order), then the
        second best of each image, etc.
    """
    ranked_regions = np.asarray(ranked_regions, dtype=np.int64)
    if ranked_regions.size == 0:
        return ranked_regions
    images = np.asarray(region_image, dtype=np.int64)[ranked_regions]
    # Occurrence number of each region's image so far in the ranking (0 for an image's best region).
    order = np.argsort(images, kind="stable")
    sorted_images = images[order]
    starts = np.r_[0, np.flatnonzero(sorted_images[1:] != sorted_images[:-1]) + 1]
    run_start = np.repeat(starts, np.diff(np.r_[starts, sorted_images.size]))
    occurrence = np.empty_like(order)
    occurrence[order] = np.arange(order.size) - run_start
    return ranked_regions[np.argsort(occurrence, kind="stable")]


def counter_examples(region_embeddings, region_image, image_labels, cluster_regions, attribute: int, centre,
                     n: int, block_rows: int = 8192) -> np.ndarray:
    """The closest look-alikes of a cluster that are not in it: what a reviewer compares the cluster with.

    Among the images of class ``attribute`` (the class the cluster is tied to) that have no region in
    the cluster (the class's images "without the feature" of its table), each image's region most
    similar to ``centre`` (cosine similarity, blocked: memory O(block_rows)) stands for the image; the
    images are ranked by that similarity, most similar first. No ground truth is read.

    Args:
        region_embeddings: (M, D) region embeddings (rows need not be unit-norm).
        region_image: (M,) image index of every region.
        image_labels: (N,) class of every image.
        cluster_regions: (n_c,) region indices of the cluster.
        attribute: the class index the cluster is tied to.
        centre: (D,) the cluster's centre: its medoid's embedding.
        n: at most this many regions.
        block_rows: rows per similarity product.

    Returns:
        (<= n,) int64 region indices, one per image, most similar first (ties: lower region index);
        empty when every image of the class has a region in the cluster.
    """
    region_image = np.asarray(region_image, dtype=np.int64)
    image_labels = np.asarray(image_labels, dtype=np.int64)
    without = image_labels == attribute
    without[region_image[np.asarray(cluster_regions, dtype=np.int64)]] = False
    candidates = np.flatnonzero(without[region_image])
    if candidates.size == 0 or n <= 0:
        return np.zeros(0, dtype=np.int64)
    _, similarity = nearest_medoid(region_embeddings, np.asarray(centre)[None, :], block_rows, normalise=True)
    similarity = similarity[candidates]
    # Most similar first, ties by region index; the first row of each image is its best region.
    order = np.lexsort((candidates, -similarity))
    _, first = np.unique(region_image[candidates[order]], return_index=True)
    return candidates[order[np.sort(first)]][:n]


def top_region_per_image(inputs: DiscoveryInputs) -> tuple[np.ndarray, np.ndarray]:
    """For each image, the region with the highest score for the image's *predicted* class.

    Returns:
        top (N,) int64 region index (-1 for images without regions) and regions per image (N,) int64.
    """
    n = inputs.n_images
    counts = np.bincount(inputs.region_image, minlength=n)
    top = np.full(n, -1, dtype=np.int64)
    if inputs.region_image.size == 0:
        return top, counts
    value = inputs.region_scores[np.arange(inputs.region_image.size), inputs.predicted[inputs.region_image]]
    # Sort by image, then by score descending; the first row of each image is its top region.
    order = np.lexsort((-np.asarray(value, dtype=np.float64), inputs.region_image))
    images = inputs.region_image[order]
    first = np.ones(order.size, dtype=bool)
    first[1:] = images[1:] != images[:-1]
    top[images[first]] = order[first]
    return top, counts


@dataclass
class GroupStats:
    """Steps 4-5 for K groups over C classes (arrays are (K, C) unless said otherwise)."""

    n_in: np.ndarray
    n_out: np.ndarray
    correct_in: np.ndarray
    correct_out: np.ndarray
    acc_in: np.ndarray           # NaN when n_in == 0
    acc_out: np.ndarray          # NaN when n_out == 0
    weight: np.ndarray
    gap: np.ndarray              # NaN when the class is skipped
    influence: np.ndarray        # NaN unless gap < 0 and some image was eligible
    n_influence: np.ndarray      # eligible images per (group, class)
    group_influence: np.ndarray  # (K,) nanmax over classes, 0 when nothing was eligible
    gap_score: np.ndarray        # (K,) G = sum_y |gap|
    is_candidate: np.ndarray     # (K,) some gap > 0 and some gap < 0
    attribute: np.ndarray        # (K,) argmax_y unweighted acc(I) - acc(O); -1 when none
    n_regions: np.ndarray        # (K,)
    n_images: np.ndarray         # (K,)


def group_statistics(region_group: np.ndarray, n_groups: int, inputs: DiscoveryInputs) -> GroupStats:
    """Cluster performance gap, candidate filter and influence score for every group.

    Args:
        region_group: (M,) group of each region in [0, K), -1 for none.
        n_groups: K.
        inputs: validated inputs.

    Returns:
        :class:`GroupStats`.
    """
    n, c = inputs.n_images, inputs.n_classes
    region_group = np.asarray(region_group, dtype=np.int64)
    member = region_group >= 0
    presence = np.zeros((n_groups, n), dtype=bool)
    presence[region_group[member], inputs.region_image[member]] = True
    onehot = np.zeros((n, c), dtype=np.float64)
    onehot[np.arange(n), inputs.image_labels] = 1.0
    presence_f = presence.astype(np.float64)
    n_in = presence_f @ onehot
    correct_in = presence_f @ (onehot * inputs.correct[:, None])
    n_out = onehot.sum(axis=0)[None, :] - n_in
    correct_out = (onehot * inputs.correct[:, None]).sum(axis=0)[None, :] - correct_in
    with np.errstate(invalid="ignore", divide="ignore"):
        acc_in = np.where(n_in > 0, correct_in / np.maximum(n_in, 1), np.nan)
        acc_out = np.where(n_out > 0, correct_out / np.maximum(n_out, 1), np.nan)
        weight = np.where(n_in + n_out > 0, 2.0 * np.minimum(n_in, n_out) / np.maximum(n_in + n_out, 1), 0.0)
    compared = (n_in > 0) & (n_out > 0)
    raw = np.where(compared, acc_in - acc_out, np.nan)
    gap = np.where(compared, weight * raw, np.nan)
    with np.errstate(invalid="ignore"):
        is_candidate = np.any(gap > 0, axis=1) & np.any(gap < 0, axis=1)
    gap_score = np.nansum(np.abs(gap), axis=1) if c else np.zeros(n_groups)
    attribute = np.full(n_groups, -1, dtype=np.int64)
    has_raw = np.any(np.isfinite(raw), axis=1)
    if has_raw.any():
        attribute[has_raw] = np.nanargmax(np.where(np.isfinite(raw[has_raw]), raw[has_raw], -np.inf), axis=1)

    # Step 5: misclassified images of a hurt class, with > 1 region and a region in the group.
    top, region_count = top_region_per_image(inputs)
    top_group = np.where(top >= 0, region_group[np.maximum(top, 0)], -1)
    base = (~inputs.correct) & (region_count > 1)
    influence = np.full((n_groups, c), np.nan)
    n_influence = np.zeros((n_groups, c), dtype=np.int64)
    for k, y in zip(*np.nonzero(gap < 0)):
        eligible = base & presence[k] & (inputs.image_labels == y)
        count = int(eligible.sum())
        n_influence[k, y] = count
        if count:
            influence[k, y] = float(np.mean(top_group[eligible] == k))
    group_influence = np.array([np.nanmax(row) if np.any(np.isfinite(row)) else 0.0 for row in influence]) \
        if n_groups else np.zeros(0)
    n_regions = np.bincount(region_group[member], minlength=n_groups)[:n_groups]
    return GroupStats(n_in.astype(np.int64), n_out.astype(np.int64), correct_in.astype(np.int64),
                      correct_out.astype(np.int64), acc_in, acc_out, weight, gap, influence, n_influence,
                      group_influence, gap_score, is_candidate, attribute, n_regions, presence.sum(axis=1))


def _interval(samples: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(samples, [2.5, 97.5])
    return float(low), float(high)


def class_table(stats: GroupStats, group: int, inputs: DiscoveryInputs, n_boot: int,
                rng: np.random.Generator) -> list[ClassStats]:
    """Per-class table of one group with seeded bootstrap 95% intervals.

    Resampling a 0/1 outcome vector of size n with replacement gives a mean distributed as
    Binomial(n, p_hat) / n, so the bootstrap is drawn from that directly (same distribution,
    no O(n * n_boot) work). I and O are resampled separately; w is fixed.
    """
    rows = []
    for y in range(inputs.n_classes):
        n_in, n_out = int(stats.n_in[group, y]), int(stats.n_out[group, y])
        acc_in = float(stats.acc_in[group, y]) if n_in else None
        acc_out = float(stats.acc_out[group, y]) if n_out else None
        boot_in = rng.binomial(n_in, acc_in, n_boot) / n_in if n_in and n_boot else None
        boot_out = rng.binomial(n_out, acc_out, n_boot) / n_out if n_out and n_boot else None
        weight = float(stats.weight[group, y])
        skipped = ""
        if n_in == 0 and n_out == 0:
            skipped = "no images of this class"
        elif n_in == 0:
            skipped = "no image of this class has a region in the cluster: no gap"
        elif n_out == 0:
            skipped = "every image of this class has a region in the cluster: no gap"
        gap = None if skipped else float(stats.gap[group, y])
        gap_ci = _interval(weight * (boot_in - boot_out)) if (not skipped and boot_in is not None
                                                                and boot_out is not None) else None
        influence = stats.influence[group, y]
        rows.append(ClassStats(
            class_index=y, class_name=inputs.class_names[y], n_in=n_in, n_out=n_out, acc_in=acc_in,
            acc_out=acc_out, acc_in_ci=_interval(boot_in) if boot_in is not None else None,
            acc_out_ci=_interval(boot_out) if boot_out is not None else None, weight=weight, gap=gap,
            gap_ci=gap_ci, influence=float(influence) if np.isfinite(influence) else None,
            n_influence_images=int(stats.n_influence[group, y]), skipped=skipped))
    return rows
