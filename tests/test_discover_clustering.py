"""Region clustering (RaVL step 3): planted-cluster recovery on both paths, determinism, sample sizes."""

from __future__ import annotations

import numpy as np
import pytest

from ravl_med.discover import RaVLDiscoverer, _clustering, precision_at_k
from ravl_med.discover._clustering import _kmedoids_plus_plus, cluster_regions, cosine_distance_matrix
from ravl_med.discover.synthetic import make_planted_spurious


@pytest.fixture(scope="module")
def planted_6k():
    # 6000 regions, C = 3 (k swept over [6, 15]): 750 planted regions.
    return make_planted_spurious(n_images=1500, regions_per_image=4, n_classes=3, spurious_class=2, dim=64,
                                 random_state=11)


def _assert_recovered(disc, data, min_precision=1.0):
    assert disc.outcome_ == "found", disc.notes_
    top = disc.ranked_clusters_[0]
    assert top.attribute == data.spurious_class
    assert precision_at_k(disc.top_ranked_regions(), data.region_is_spurious, k=10) >= min_precision
    # The top cluster is (almost) only the planted feature, not the feature merged with something else.
    assert data.region_is_spurious[disc.ranked_regions_[0]].mean() >= 0.95


@pytest.mark.parametrize("exact_max_regions, mode", [(10000, "exact"), (None, "sampled")])
def test_planted_cluster_recovered_on_both_paths(planted_6k, exact_max_regions, mode):
    params = {} if exact_max_regions is None else {"exact_max_regions": exact_max_regions}
    disc = RaVLDiscoverer(n_stability=0, n_boot=50, **params).fit(*planted_6k.fit_args())
    assert disc.clustering_mode_ == mode
    _assert_recovered(disc, planted_6k)
    assert disc.n_clusters_ in range(6, 16)


def test_planted_cluster_recovered_with_ten_classes():
    # k swept over [20, 50] on a 1000-region sample: >= 20 sample regions per cluster at k = 50.
    data = make_planted_spurious(n_images=2000, regions_per_image=4, n_classes=10, spurious_class=1, dim=64,
                                 random_state=4)
    disc = RaVLDiscoverer(n_stability=0, n_boot=50).fit(*data.fit_args())
    assert disc.clustering_mode_ == "sampled"
    _assert_recovered(disc, data)


def test_same_random_state_same_clustering(planted_6k):
    ks = list(range(6, 16))
    first = cluster_regions(planted_6k.region_embeddings, ks, random_state=7)
    again = cluster_regions(planted_6k.region_embeddings, ks, random_state=7)
    assert first.mode == "sampled" and first.k == again.k
    assert np.array_equal(first.labels, again.labels) and np.array_equal(first.medoids, again.medoids)
    assert first.silhouettes == again.silhouettes and first.losses == again.losses
    exact = [cluster_regions(planted_6k.region_embeddings[:900], ks, random_state=7) for _ in range(2)]
    assert exact[0].mode == "exact" and np.array_equal(exact[0].labels, exact[1].labels)
    disc = [RaVLDiscoverer(n_stability=0, n_boot=20, random_state=3).fit(*planted_6k.fit_args()) for _ in range(2)]
    assert np.array_equal(disc[0].labels_, disc[1].labels_)
    assert disc[0].to_dict()["ranked_clusters"] == disc[1].to_dict()["ranked_clusters"]


def test_sampled_path_matrix_sizes_and_chosen_k_cost(planted_6k, monkeypatch):
    sizes = []
    original = _clustering.cosine_distance_matrix

    def recorded(a, b=None, block_rows=4096):
        sizes.append((a.shape[0], a.shape[0] if b is None else b.shape[0]))
        return original(a, b, block_rows)

    monkeypatch.setattr(_clustering, "cosine_distance_matrix", recorded)
    embeddings = planted_6k.region_embeddings
    result = cluster_regions(embeddings, list(range(6, 16)), silhouette_sample_size=700, sample_size=1200,
                             n_samples=2)
    # One (s, s) matrix for the whole k sweep, then one per further CLARA sample of the chosen k.
    assert sizes == [(700, 700), (1200, 1200), (1200, 1200)]
    assert set(result.silhouettes) == set(range(6, 16))
    # The chosen k's loss is its exact cost over all regions; the medoids are their own clusters' members.
    assert result.losses[result.k] == pytest.approx(float(np.sum(1.0 - result.similarity, dtype=np.float64)), rel=1e-4)
    assert np.array_equal(result.labels[result.medoids], np.arange(result.k))


def test_ks_larger_than_the_selection_sample_are_dropped_with_a_note(planted_6k):
    result = cluster_regions(planted_6k.region_embeddings, [4, 5, 40], silhouette_sample_size=30)
    assert set(result.silhouettes) == {4, 5} and result.mode == "sampled"
    assert any("[40] dropped" in note and "k-selection sample" in note for note in result.notes)


def test_kmedoids_plus_plus_picks_distinct_rows():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    picks = _kmedoids_plus_plus(cosine_distance_matrix(x).astype(np.float64), 10, np.random.default_rng(1))
    assert picks.dtype == np.int64 and np.unique(picks).size == 10
    # All rows alike (zero potential after the first pick): still k distinct rows.
    picks = _kmedoids_plus_plus(np.zeros((12, 12)), 5, np.random.default_rng(1))
    assert np.unique(picks).size == 5 and picks.max() < 12
