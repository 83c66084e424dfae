"""How stable is a discovered cluster? Refit on random halves of the images and look for it again.

A cluster that only one draw of images produces is weak evidence. For each resample, half of the
images of every class are drawn at random (without replacement); the discoverer is fitted again on
their regions; a kept cluster is *found again* when some kept cluster of the refit shares at least
half of its regions with it (Jaccard >= 0.5, computed on the regions both fits saw). The stability
of a cluster is the share of resamples in which it was found again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ._groups import DiscoveryInputs

__all__ = ["JACCARD_MATCH", "cluster_stability"]

#: A refit's cluster matches an original one when their Jaccard index (on shared regions) reaches this.
JACCARD_MATCH = 0.5


def _half_of_each_class(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    chosen = [rng.choice(members, max(1, members.size // 2), replace=False)
              for y in np.unique(labels) if (members := np.flatnonzero(labels == y)).size]
    return np.sort(np.concatenate(chosen))


def cluster_stability(make_discoverer: Callable[[], object], clusters: Sequence[np.ndarray], region_embeddings,
                      inputs: DiscoveryInputs, *, n_resamples: int = 20,
                      random_state: int | None = 0) -> np.ndarray:
    """Stability of each cluster (see the module docstring).

    Args:
        make_discoverer: returns a fresh, unfitted discoverer with ``fit`` and, after it, ``labels_``,
            ``ranked_clusters_`` (RaVL without its own stability measurement).
        clusters: the original clusters, each an (n_c,) array of region indices.
        region_embeddings: (M, D) the embeddings the original fit used.
        inputs: the original fit's validated inputs.
        n_resamples: refits.
        random_state: seed of the draws (refit i uses seed ``random_state + i``).

    Returns:
        (len(clusters),) float in [0, 1].
    """
    rng = np.random.default_rng(random_state)
    found = np.zeros(len(clusters))
    member_sets = [np.asarray(c, dtype=np.int64) for c in clusters]
    for i in range(n_resamples):
        images = _half_of_each_class(inputs.image_labels, rng)
        new_index = np.full(inputs.n_images, -1, dtype=np.int64)
        new_index[images] = np.arange(images.size)
        regions = np.flatnonzero(new_index[inputs.region_image] >= 0)
        refit = make_discoverer()
        if hasattr(refit, "random_state") and random_state is not None:
            refit.random_state = int(random_state) + i + 1
        refit.fit(region_embeddings[regions], new_index[inputs.region_image[regions]], inputs.image_labels[images],
                  inputs.image_scores[images], inputs.region_scores[regions], class_names=inputs.class_names)
        kept = [regions[refit.labels_ == c.cluster] for c in refit.ranked_clusters_]
        for j, members in enumerate(member_sets):
            shared = np.intersect1d(members, regions, assume_unique=True)
            if shared.size == 0:
                continue
            for other in kept:
                union = np.union1d(shared, other).size
                if union and np.intersect1d(shared, other, assume_unique=True).size / union >= JACCARD_MATCH:
                    found[j] += 1
                    break
    return found / max(n_resamples, 1)
