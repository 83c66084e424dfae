"""Discovery that does not cry wolf: null models, non-finite input, stability, one region per image."""

from __future__ import annotations

import numpy as np
import pytest

from ravl_med.discover import RaVLDiscoverer, precision_at_k
from ravl_med.discover._groups import one_per_image_first, validate_inputs
from ravl_med.discover.null import gap_pvalues, holm, structure_test
from ravl_med.discover.synthetic import make_planted_spurious


def _noise(n_images=500, per_image=4, dim=64, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    m = n_images * per_image
    emb = rng.standard_normal((m, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    region_image = np.repeat(np.arange(n_images), per_image)
    labels = rng.integers(classes, size=n_images)
    image_scores = rng.dirichlet(np.ones(classes), size=n_images)
    region_scores = rng.dirichlet(np.ones(classes), size=m)
    return emb, region_image, labels, image_scores, region_scores


def test_pure_noise_embeddings_give_no_structure():
    disc = RaVLDiscoverer(n_boot=0, n_stability=0).fit(*_noise())
    assert disc.outcome_ == "no_structure"
    assert disc.ranked_clusters_ == []
    assert disc.structure_ is not None and not disc.structure_.structured
    assert any("coordinate shuffled" in n for n in disc.notes_)


def test_planted_feature_is_found_with_small_p_values_and_is_stable():
    data = make_planted_spurious(n_images=300, regions_per_image=4, n_classes=3, random_state=1)
    disc = RaVLDiscoverer(n_boot=0, n_stability=5).fit(*data.fit_args())
    assert disc.outcome_ == "found"
    assert disc.structure_.structured
    top = disc.ranked_clusters_[0]
    assert top.attribute == data.spurious_class
    assert precision_at_k(disc.top_ranked_regions(), data.region_is_spurious, 10) >= 0.9
    assert top.p_adjusted is not None and top.p_adjusted < 0.01
    assert top.stability is not None and top.stability >= 0.8
    record = disc.to_dict()
    assert record["ranked_clusters"][0]["p_value"] == pytest.approx(top.p_value)
    assert record["structure_test"]["p_value"] <= 0.05


def test_unstable_clusters_are_not_reported(monkeypatch):
    """Significant clusters that refits on half the images do not find again (stability < min_stability) are
    dropped; none left gives "unstable". The stability measure itself is tested above: here it is replaced."""
    from ravl_med.discover.report import OUTCOME_TEXT

    data = make_planted_spurious(n_images=300, regions_per_image=4, n_classes=3, random_state=1)
    every_candidate = {"n_boot": 0, "n_stability": 5, "alpha": 1.0, "influence_threshold": 0.0}  # 4 kept clusters

    def top_one_stable(make, clusters, *args, **kwargs):
        return np.array([0.2 if i else 1.0 for i in range(len(clusters))])  # clusters come ranked by G

    monkeypatch.setattr("ravl_med.discover.ravl.cluster_stability", top_one_stable)
    kept = RaVLDiscoverer(**every_candidate, min_stability=0).fit(*data.fit_args())
    assert kept.outcome_ == "found" and len(kept.ranked_clusters_) == 4
    assert [c.stability for c in kept.ranked_clusters_] == [1.0, 0.2, 0.2, 0.2]
    assert any("fewer than half of them: unstable, treat with caution" in note for note in kept.notes_)
    filtered = RaVLDiscoverer(**every_candidate).fit(*data.fit_args())  # min_stability 0.5, the default
    assert filtered.outcome_ == "found" and filtered.kept_.tolist() == [kept.ranked_clusters_[0].cluster]
    assert [(c.rank, c.cluster, c.stability) for c in filtered.ranked_clusters_] == [
        (1, kept.ranked_clusters_[0].cluster, 1.0)]
    assert any("3 significant cluster(s)" in note and "unstable, not reported" in note for note in filtered.notes_)

    monkeypatch.setattr("ravl_med.discover.ravl.cluster_stability", lambda make, clusters, *a, **k: np.full(len(clusters), 0.3))
    none_left = RaVLDiscoverer(**every_candidate).fit(*data.fit_args())
    assert none_left.outcome_ == "unstable" and none_left.ranked_clusters_ == [] and none_left.kept_.size == 0
    assert any("stability 0.30, 0.30, 0.30, 0.30" in note for note in none_left.notes_) and "unstable" in OUTCOME_TEXT
    assert none_left.to_dict()["outcome"] == "unstable"


def test_without_stability_refits_the_filter_is_off_and_says_so():
    data = make_planted_spurious(n_images=300, regions_per_image=4, n_classes=3, random_state=1)
    disc = RaVLDiscoverer(n_boot=0, n_stability=0).fit(*data.fit_args())
    assert disc.outcome_ == "found" and disc.ranked_clusters_[0].stability is None
    assert any("without the min_stability 0.5 filter" in note for note in disc.notes_)


def test_clusters_without_an_accuracy_gap_are_not_reported():
    # Structured embeddings, but the model's right and wrong answers are unrelated to any region:
    # shuffle the image scores across images of the same class.
    data = make_planted_spurious(n_images=400, regions_per_image=4, n_classes=3, plant=False, random_state=2)
    disc = RaVLDiscoverer(n_boot=0, n_stability=0).fit(*data.fit_args())
    assert disc.outcome_ in {"no_candidate", "no_influential", "not_significant"}
    assert disc.ranked_clusters_ == []


def test_gap_p_values_small_for_a_real_gap_and_uniformish_for_none():
    rng = np.random.default_rng(0)
    n = 200
    labels = np.repeat([0, 1], n // 2)
    present = rng.random(n) < 0.5
    # Class 0 images are right exactly when the feature is present: a real gap.
    predicted = np.where(labels == 0, np.where(present, 0, 1), 1)
    scores = np.eye(2)[predicted]
    region_image = np.arange(n)
    inputs = validate_inputs(n, region_image, labels, scores, np.full((n, 2), 0.5))
    groups = np.where(present, 0, 1)  # group 0: regions of images with the feature
    p_real, used = gap_pvalues(groups, np.array([0]), inputs, n_permutations=499, random_state=0)
    assert used == 499 and p_real[0] == pytest.approx(1 / 500)
    # A group drawn independently of correctness: the p-value is not small.
    random_groups = (rng.random(n) < 0.5).astype(np.int64)
    p_none, _ = gap_pvalues(random_groups, np.array([1]), inputs, n_permutations=499, random_state=0)
    assert p_none[0] > 0.05


def test_holm_adjustment():
    np.testing.assert_allclose(holm(np.array([0.01, 0.04, 0.03, 0.2])), [0.04, 0.09, 0.09, 0.2])
    assert holm(np.zeros(0)).size == 0


def test_structure_test_separates_clusters_from_noise():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4, 32))
    points = centres[rng.integers(4, size=600)] + 0.2 * rng.standard_normal((600, 32))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    assert structure_test(points.astype(np.float32), 4, n_null=9, random_state=0).structured
    noise = rng.standard_normal((600, 32))
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    assert not structure_test(noise.astype(np.float32), 4, n_null=9, random_state=0).structured


@pytest.mark.parametrize("where", ["region_embeddings", "image_scores", "region_scores"])
def test_non_finite_input_is_refused_with_a_clear_error(where):
    data = make_planted_spurious(n_images=100, random_state=0)
    args = list(data.fit_args())
    index = {"region_embeddings": 0, "image_scores": 3, "region_scores": 4}[where]
    args[index] = args[index].copy()
    args[index][7, 0] = np.nan
    with pytest.raises(ValueError, match=rf"{where}: 1 of \d+ rows hold NaN or infinite values \(first: row 7\)"):
        RaVLDiscoverer(n_boot=0, n_stability=0).fit(*args)


def test_one_region_per_image_first():
    region_image = np.array([0, 0, 0, 1, 1, 2])
    ranked = np.array([0, 1, 3, 2, 4, 5])  # image 0 twice before image 1
    np.testing.assert_array_equal(one_per_image_first(ranked, region_image), [0, 3, 5, 1, 4, 2])
    assert one_per_image_first(np.zeros(0, dtype=np.int64), region_image).size == 0


def test_top_regions_of_a_cluster_come_from_distinct_images():
    # Four regions per image, two of them views of the feature: the top 10 must be 10 images.
    data = make_planted_spurious(n_images=300, regions_per_image=4, n_classes=3, random_state=3)
    emb = data.region_embeddings.copy()
    spurious_images = np.unique(data.region_image[data.region_is_spurious])
    # Give every image with the feature a second, near-identical feature region (an overlapping box).
    for image in spurious_images:
        rows = np.flatnonzero(data.region_image == image)
        feature_row = rows[data.region_is_spurious[rows]][0]
        other = rows[(~data.region_is_spurious[rows]) & (rows != rows[0])][0]
        emb[other] = emb[feature_row]
    disc = RaVLDiscoverer(n_boot=0, n_stability=0).fit(emb, data.region_image, data.image_labels,
                                                       data.image_scores, data.region_scores)
    top = disc.top_ranked_regions(10)
    assert np.unique(data.region_image[top]).size == top.size == 10
