"""RaVL stage-1 discovery, baselines and Precision@k on synthetic data with a known answer."""

from __future__ import annotations

import inspect
import json
import tracemalloc
import typing

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from ravl_med.discover import (
    DISCOVERY_METHODS,
    OUTCOMES,
    DiscoveryConfig,
    DistillingFailuresDiscoverer,
    DominoDiscoverer,
    GeorgeDiscoverer,
    RandomDiscoverer,
    RaVLDiscoverer,
    _clustering,
    build_discoverer,
    cosine_distance_matrix,
    counter_examples,
    estimator_class,
    nearest_medoid,
    precision_at_k,
    quadrant_is_spurious,
    region_overlaps_mask,
)
from ravl_med.discover._groups import group_statistics, validate_inputs
from ravl_med.discover.synthetic import make_planted_spurious
from ravl_med.stages.config import AUDIT_METHODS, AuditConfig


@pytest.fixture(scope="module")
def planted3():
    return make_planted_spurious(n_images=400, n_classes=3, spurious_class=2, dim=64, random_state=1)


@pytest.fixture(scope="module")
def ravl3(planted3):
    return RaVLDiscoverer(n_boot=200).fit(*planted3.fit_args(), class_names=["a", "b", "c"])


# -- RaVL on the planted feature ------------------------------------------------------------------


def test_ravl_ranks_planted_cluster_first(planted3, ravl3):
    assert ravl3.outcome_ == "found"
    top = ravl3.ranked_clusters_[0]
    assert top.attribute == 2 and top.attribute_name == "c"
    assert top.influence >= 0.25
    assert precision_at_k(ravl3.top_ranked_regions(), planted3.region_is_spurious, k=10) == 1.0
    # The whole top cluster is the planted feature.
    assert planted3.region_is_spurious[ravl3.ranked_regions_[0]].all()
    # Scores are sorted descending and every kept cluster passed both filters.
    scores = [c.score for c in ravl3.ranked_clusters_]
    assert scores == sorted(scores, reverse=True)
    assert all(c.influence >= 0.25 for c in ravl3.ranked_clusters_)
    assert set(ravl3.kept_) <= set(ravl3.candidates_)


def test_ravl_learned_attributes_shapes(planted3, ravl3):
    k, c = ravl3.n_clusters_, 3
    assert k in range(6, 16) and set(ravl3.silhouette_) == set(range(6, 16))
    assert ravl3.labels_.shape == (planted3.region_embeddings.shape[0],)
    assert ravl3.medoids_.shape == (k,) and ravl3.cluster_gaps_.shape == (k, c) and ravl3.influence_.shape == (k, c)
    assert (ravl3.labels_[ravl3.medoids_] == np.arange(k)).all()
    # Regions within a cluster sorted by similarity to the medoid, medoid first.
    top = ravl3.ranked_clusters_[0]
    regions = ravl3.ranked_regions_[0]
    assert regions[0] == top.medoid
    assert np.all(np.diff(ravl3.similarity_[regions]) <= 1e-6)


def test_ravl_table_and_json(ravl3):
    top = ravl3.ranked_clusters_[0]
    rows = {row.class_index: row for row in top.table}
    # The feature helps its class and hurts the others.
    assert rows[2].gap > 0 and rows[0].gap < 0 and rows[1].gap < 0
    for row in top.table:
        assert row.acc_in_ci[0] <= row.acc_in <= row.acc_in_ci[1]
        assert row.acc_out_ci[0] <= row.acc_out <= row.acc_out_ci[1]
        assert row.gap_ci[0] <= row.gap + 1e-9 and row.gap - 1e-9 <= row.gap_ci[1]
    assert top.score == pytest.approx(sum(abs(r.gap) for r in top.table))
    payload = json.loads(json.dumps(ravl3.to_dict(), allow_nan=False))
    assert payload["outcome"] == "found" and payload["ranked_clusters"][0]["attribute_name"] == "c"
    assert payload["params"]["influence_threshold"] == 0.25


def test_ravl_is_deterministic(planted3, ravl3):
    again = RaVLDiscoverer(n_boot=200).fit(*planted3.fit_args(), class_names=["a", "b", "c"])  # as ravl3
    assert np.array_equal(again.labels_, ravl3.labels_)
    assert again.to_dict()["ranked_clusters"] == ravl3.to_dict()["ranked_clusters"]


def test_k_range_inclusive_parameter():
    assert RaVLDiscoverer().k_values(3) == list(range(6, 16))
    assert RaVLDiscoverer(k_range_inclusive=False).k_values(3) == list(range(6, 15))


def test_fit_embeddings_uses_zero_shot_scores(planted3):
    disc = RaVLDiscoverer(n_stability=0, n_boot=50).fit_embeddings(
        planted3.region_embeddings, planted3.region_image, planted3.image_labels,
        planted3.image_embeddings, planted3.text_embeddings)
    assert disc.outcome_ == "found" and disc.ranked_clusters_[0].attribute == 2


@pytest.mark.parametrize("exact_max_regions, mode", [(20000, "exact"), (DiscoveryConfig().exact_max_regions, "sampled")])
def test_two_class_8k_regions_exact_path_finds_cluster(exact_max_regions, mode):
    """The case where the authors' code picked a wrong cluster or raised IndexError (method spec).

    Both paths: 8000 regions used the exact path until the default switch moved to 1000 regions.
    """
    data = make_planted_spurious(n_images=2000, regions_per_image=4, n_classes=2, spurious_class=1, dim=64,
                                 random_state=3)
    disc = RaVLDiscoverer(n_stability=0, n_boot=100, exact_max_regions=exact_max_regions).fit(*data.fit_args())
    assert data.region_embeddings.shape[0] == 8000 and disc.clustering_mode_ == mode
    assert disc.outcome_ == "found" and disc.ranked_clusters_[0].attribute == 1
    assert precision_at_k(disc.top_ranked_regions(), data.region_is_spurious) == 1.0


# -- hand-computed gap and influence ---------------------------------------------------------------


def _hand_case():
    # 6 images, 2 classes; cluster 0 = "feature" regions, cluster 1 = the rest.
    # class 0 images 0-2: 0 and 1 have the feature and are wrong (predicted 1); 2 is right.
    # class 1 images 3-5: 3 has the feature and is right; 4 right; 5 wrong.
    labels = np.array([0, 0, 0, 1, 1, 1])
    predicted = np.array([1, 1, 0, 1, 1, 0])
    image_scores = np.eye(2)[predicted] * 0.8 + 0.1
    region_image = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5])
    region_group = np.array([0, 1, 0, 1, 1, 1, 0, 1, 1, 1, 1])
    # Score for class 1 (the predicted class of the wrong class-0 images): image 0's feature region
    # scores highest, image 1's does not.
    p1 = np.array([0.9, 0.2, 0.3, 0.7, 0.5, 0.5, 0.9, 0.1, 0.5, 0.5, 0.5])
    region_scores = np.stack([1 - p1, p1], axis=1)
    return region_image, labels, image_scores, region_scores, region_group


def test_gap_and_influence_by_hand():
    region_image, labels, image_scores, region_scores, region_group = _hand_case()
    inputs = validate_inputs(region_image.size, region_image, labels, image_scores, region_scores)
    stats = group_statistics(region_group, 2, inputs)
    # Cluster 0, class 0: I = {0, 1} acc 0, O = {2} acc 1, w = 2*1/3 -> gap = -2/3.
    assert stats.n_in[0, 0] == 2 and stats.n_out[0, 0] == 1
    assert stats.gap[0, 0] == pytest.approx(-2 / 3)
    # Cluster 0, class 1: I = {3} acc 1, O = {4, 5} acc 1/2, w = 2/3 -> gap = 1/3.
    assert stats.gap[0, 1] == pytest.approx((2 / 3) * 0.5)
    assert stats.is_candidate[0]
    assert stats.gap_score[0] == pytest.approx(2 / 3 + 1 / 3)
    assert stats.attribute[0] == 1
    # Influence (cluster 0, class 0): wrong images with > 1 region and a region in c = {0, 1};
    # top region for class 1: image 0 -> region 0 (cluster 0), image 1 -> region 3 (cluster 1).
    assert stats.n_influence[0, 0] == 2 and stats.influence[0, 0] == pytest.approx(0.5)
    assert np.isnan(stats.influence[0, 1])  # gap > 0: not a hurt class
    assert stats.group_influence[0] == pytest.approx(0.5)
    # Cluster 1 holds a region of every image: O empty for both classes -> all skipped.
    assert np.isnan(stats.gap[1]).all() and not stats.is_candidate[1]


def test_single_region_images_are_not_eligible_for_influence():
    region_image, labels, image_scores, region_scores, region_group = _hand_case()
    keep = region_image != 1  # image 1 keeps no region; image 0 keeps both
    keep[2] = True            # ... image 1 keeps only its feature region (a single region)
    inputs = validate_inputs(int(keep.sum()), region_image[keep], labels, image_scores, region_scores[keep])
    stats = group_statistics(region_group[keep], 2, inputs)
    assert stats.n_influence[0, 0] == 1 and stats.influence[0, 0] == pytest.approx(1.0)


# -- legitimate outcomes never crash --------------------------------------------------------------


def _check_outcome(disc):
    assert disc.outcome_ in OUTCOMES and disc.notes_
    json.dumps(disc.to_dict(), allow_nan=False)


def test_counter_examples_by_hand():
    """Images of the tied class without a region in the cluster: each by its region nearest the centre, ranked."""
    centre = np.array([1.0, 0.0])
    # (image, embedding) per region; a region's cosine to the centre is its first coordinate over its norm.
    regions = [(0, [1.0, 0.0]), (0, [0.0, 1.0]),            # image 0: class 0, in the cluster (region 0)
               (1, [0.6, 0.8]), (1, [0.8, 0.6]),            # image 1: class 0, best region 3 (0.8)
               (2, [0.1, 1.0]), (2, [3.0, 0.3]),            # image 2: class 0, best region 5 (0.995; norm ignored)
               (3, [1.0, 0.0]),                             # image 3: class 1, other class
               (4, [0.0, -1.0]), (4, [-1.0, 0.0])]          # image 4: class 0, best region 7 (0.0)
    region_image = np.array([i for i, _ in regions])
    embeddings = np.array([e for _, e in regions])
    labels = np.array([0, 0, 0, 1, 0])
    found = counter_examples(embeddings, region_image, labels, [0], 0, centre, 10)
    assert found.tolist() == [5, 3, 7] and found.dtype == np.int64
    assert counter_examples(embeddings, region_image, labels, [0], 0, centre, 2).tolist() == [5, 3]
    # Block boundaries do not change the answer.
    assert counter_examples(embeddings, region_image, labels, [0], 0, centre, 10, block_rows=2).tolist() == [5, 3, 7]
    # Every image of class 0 has a region in the cluster: nothing to show.
    assert counter_examples(embeddings, region_image, labels, [0, 2, 4, 7], 0, centre, 10).size == 0


def test_random_embeddings_do_not_crash():
    rng = np.random.default_rng(0)
    m, n, c = 600, 150, 3
    emb = rng.standard_normal((m, 32)).astype(np.float32)
    region_image = rng.integers(n, size=m)
    scores = rng.dirichlet(np.ones(c), size=n)
    disc = RaVLDiscoverer(n_stability=0, n_boot=50).fit(emb, region_image, rng.integers(c, size=n), scores,
                                         rng.dirichlet(np.ones(c), size=m))
    _check_outcome(disc)
    assert any("unit-norm" in note for note in disc.notes_)


def test_identical_embeddings_report_no_structure():
    m, n = 40, 10
    emb = np.tile(np.eye(8, dtype=np.float32)[0], (m, 1))
    disc = RaVLDiscoverer(n_stability=0, n_boot=10).fit(emb, np.arange(m) % n, np.arange(n) % 2, np.full((n, 2), 0.5),
                                         np.full((m, 2), 0.5))
    _check_outcome(disc)
    assert disc.outcome_ == "no_structure" and disc.ranked_clusters_ == [] and disc.top_ranked_regions().size == 0
    assert precision_at_k(disc.top_ranked_regions(), np.zeros(m, bool)) == 0.0


def test_single_class():
    data = make_planted_spurious(n_images=60, n_classes=1, spurious_class=0, dim=16)
    disc = RaVLDiscoverer(n_stability=0, n_boot=10).fit(*data.fit_args())
    _check_outcome(disc)
    assert disc.outcome_ in ("no_candidate", "no_structure")
    assert any("single class" in note for note in disc.notes_)


def test_class_without_images():
    data = make_planted_spurious(n_images=200, n_classes=2, spurious_class=1, dim=32)
    image_scores = np.hstack([data.image_scores, np.full((data.image_scores.shape[0], 1), 1e-6)])
    region_scores = np.hstack([data.region_scores, np.full((data.region_scores.shape[0], 1), 1e-6)])
    disc = RaVLDiscoverer(n_stability=0, n_boot=20).fit(data.region_embeddings, data.region_image, data.image_labels,
                                         image_scores, region_scores, class_names=["x", "y", "ghost"])
    _check_outcome(disc)
    assert any("ghost" in note for note in disc.notes_)
    assert disc.outcome_ == "found" and disc.ranked_clusters_[0].attribute == 1
    ghost = disc.ranked_clusters_[0].table[2]
    assert ghost.skipped == "no images of this class" and ghost.gap is None


def test_all_clusters_fail_the_filters():
    data = make_planted_spurious(n_images=150, n_classes=2, dim=32, plant=False, distractor=0.0)
    disc = RaVLDiscoverer(n_stability=0, n_boot=10).fit(*data.fit_args())
    _check_outcome(disc)
    assert disc.outcome_ == "no_candidate" and disc.candidates_.size == 0
    planted = make_planted_spurious(n_images=150, n_classes=2, spurious_class=1, dim=32)
    strict = RaVLDiscoverer(n_stability=0, n_boot=10, influence_threshold=1.01).fit(*planted.fit_args())
    _check_outcome(strict)
    assert strict.outcome_ == "no_influential" and strict.candidates_.size > 0


def test_too_few_regions():
    disc = RaVLDiscoverer().fit(np.eye(3, dtype=np.float32), [0, 1, 2], [0, 1, 0], np.eye(2)[[0, 1, 0]],
                                np.eye(2)[[0, 1, 0]])
    _check_outcome(disc)
    assert disc.outcome_ == "too_few_regions"


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        RaVLDiscoverer().fit(np.eye(3), [0, 1, 5], [0, 1, 0], np.eye(2)[[0, 1, 0]], np.eye(2)[[0, 1, 0]])
    with pytest.raises(ValueError):
        RaVLDiscoverer().fit(np.eye(3), [0, 1, 2], [0, 1, 0], np.eye(2)[[0, 1, 0]], np.eye(3))


# -- scale: blocked distances and the CLARA path ------------------------------------------------


def test_blocked_distances_match_dense():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    expected = np.clip(1 - x.astype(np.float64) @ x.T.astype(np.float64), 0, 1)
    np.testing.assert_allclose(cosine_distance_matrix(x, block_rows=64), expected, atol=1e-5)


def test_clara_path_finds_cluster_with_bounded_memory(monkeypatch):
    data = make_planted_spurious(n_images=15000, regions_per_image=4, n_classes=2, spurious_class=1, dim=32,
                                 random_state=5)
    n = data.region_embeddings.shape[0]
    assert n == 60000
    calls = []
    original = _clustering.cosine_distance_matrix

    def guarded(a, b=None, block_rows=4096):
        calls.append(a.shape[0])
        assert a.shape[0] <= 5000, "an (n x n) distance matrix was requested"
        return original(a, b, block_rows)

    monkeypatch.setattr(_clustering, "cosine_distance_matrix", guarded)
    tracemalloc.start()
    disc = RaVLDiscoverer(n_stability=0, exact_max_regions=20000, clara_samples=3, clara_sample_size=2000,
                          silhouette_sample_size=3000, n_boot=50).fit(*data.fit_args())
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert disc.clustering_mode_ == "sampled" and calls
    assert disc.outcome_ == "found" and disc.ranked_clusters_[0].attribute == 1
    assert precision_at_k(disc.top_ranked_regions(), data.region_is_spurious) == 1.0
    # An n x n float32 matrix would be 14.4 GB; the sampled path stays far below even 1 GB.
    assert peak < 400 * 2**20, f"peak traced memory {peak / 2**20:.0f} MiB"


# -- metrics ------------------------------------------------------------------------------------


def test_precision_at_k():
    truth = np.array([True, False, True, True, False])
    assert precision_at_k([0, 2, 3, 1, 4], truth, k=3) == 1.0
    assert precision_at_k([1, 0], truth, k=2) == 0.5
    assert precision_at_k([0], truth, k=4) == 0.25
    assert precision_at_k([0], truth, k=4, strict=False) == 1.0
    assert precision_at_k([], truth, k=10) == 0.0


def test_region_overlap_rules():
    mask = np.zeros((8, 8), dtype=bool)
    mask[0:4, 0:4] = True  # 16-pixel feature in the top-left corner
    boxes = np.array([
        [0, 0, 8, 8],  # holds all of it, but the feature covers 1/4 of the region
        [0, 0, 2, 2],  # holds 1/4 of the feature, fully covered
        [3, 3, 8, 8],  # 1 pixel: 1/16 of the feature, 1/25 of the region
        [4, 4, 8, 8],  # no overlap
        [0, 0, 1, 8],  # 4 pixels = 1/4 of the feature, region 4/8 covered
    ], dtype=np.float32)
    region_image = np.zeros(5, dtype=int)
    either = region_overlaps_mask(boxes, region_image, [mask], rule="either")
    assert either.tolist() == [True, True, False, False, True]
    assert region_overlaps_mask(boxes, region_image, [mask], rule="any").tolist() == [True, True, True, False, True]
    assert region_overlaps_mask(boxes, region_image, [mask], rule="region", threshold=0.5).tolist() == \
        [False, True, False, False, True]
    assert region_overlaps_mask(boxes, region_image, [mask], rule="feature", threshold=0.5).tolist() == \
        [True, False, False, False, False]
    assert not region_overlaps_mask(boxes, region_image, [None], rule="either").any()
    with pytest.raises(ValueError):
        region_overlaps_mask(boxes, region_image, [mask], rule="nope")


def test_quadrant_rule():
    region_quadrant = np.tile(np.arange(4), 3)
    region_image = np.repeat(np.arange(3), 4)
    got = quadrant_is_spurious(region_quadrant, region_image, [2, -1, 0])
    assert np.flatnonzero(got).tolist() == [2, 8]


# -- baselines -----------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [RandomDiscoverer, DistillingFailuresDiscoverer, GeorgeDiscoverer, DominoDiscoverer])
def test_baselines_return_ranked_regions(cls, planted3):
    disc = cls().fit(*planted3.fit_args(), image_embeddings=planted3.image_embeddings)
    _check_outcome_or_found(disc)
    assert disc.outcome_ == "found" and disc.ranked_regions_
    m = planted3.region_embeddings.shape[0]
    for regions, cluster in zip(disc.ranked_regions_, disc.ranked_clusters_):
        assert regions.dtype == np.int64 and ((0 <= regions) & (regions < m)).all()
        assert len(np.unique(regions)) == len(regions)
        assert len(cluster.table) == 3
    p = precision_at_k(disc.top_ranked_regions(), planted3.region_is_spurious)
    assert 0.0 <= p <= 1.0
    json.dumps(disc.to_dict(), allow_nan=False)


def _check_outcome_or_found(disc):
    assert disc.outcome_ in OUTCOMES


def test_image_level_baseline_without_image_embeddings(planted3):
    disc = DistillingFailuresDiscoverer().fit(*planted3.fit_args())
    assert disc.outcome_ == "found"
    assert any("mean of its region embeddings" in note for note in disc.notes_)
    # The failures of a hurt class are the feature's images; their top wrong-class region is the feature.
    assert precision_at_k(disc.top_ranked_regions(), planted3.region_is_spurious) >= 0.5


def test_baselines_handle_all_correct_predictions():
    data = make_planted_spurious(n_images=100, n_classes=2, dim=16, plant=False, distractor=0.0)
    disc = DistillingFailuresDiscoverer().fit(*data.fit_args())
    assert disc.outcome_ == "no_selection" and disc.top_ranked_regions().size == 0


# -- the scikit-learn contract, the parameter checks and the method registry ------------------------


def _tiny_fit_args():
    return np.eye(3, dtype=np.float32), [0, 1, 2], [0, 1, 0], np.eye(2)[[0, 1, 0]], np.eye(2)[[0, 1, 0]]


def test_reversed_k_range_is_refused_not_an_empty_sweep():
    # Regression: k_range=(5, 2) gave an empty k sweep, reported as "too few regions".
    with pytest.raises(ValueError, match=r"^RaVLDiscoverer: k_range: low 5 must not exceed high 2 \(got \(5, 2\)\)$"):
        RaVLDiscoverer(k_range=(5, 2)).fit(*_tiny_fit_args())


@pytest.mark.parametrize("estimator, parameter", [
    (RaVLDiscoverer(temperature=0.0), "temperature"),
    (RaVLDiscoverer(n_boot=-1), "n_boot"),
    (RaVLDiscoverer(influence_threshold=-0.1), "influence_threshold"),
    (RaVLDiscoverer(min_silhouette=1.0), "min_silhouette"),
    (RaVLDiscoverer(k_range=(0, 2)), "k_range[0]"),
    (RaVLDiscoverer(block_rows=0), "block_rows"),
    (RandomDiscoverer(n_top_regions=0), "n_top_regions"),
    (DistillingFailuresDiscoverer(svm_c=0.0), "svm_c"),
    (GeorgeDiscoverer(n_clusters=1), "n_clusters"),
    (DominoDiscoverer(n_pca=0), "n_pca"),
])
def test_bad_parameters_are_one_line_errors_naming_the_parameter(estimator, parameter):
    with pytest.raises(ValueError) as err:
        estimator.fit(*_tiny_fit_args())
    message = str(err.value)
    assert message.startswith(f"{type(estimator).__name__}: {parameter}: ") and "\n" not in message


def test_fit_embeddings_checks_the_temperature_first(planted3):
    with pytest.raises(ValueError, match="temperature"):
        RaVLDiscoverer(temperature=-1.0).fit_embeddings(
            planted3.region_embeddings, planted3.region_image, planted3.image_labels,
            planted3.image_embeddings, planted3.text_embeddings)


@pytest.mark.parametrize("method", list(DISCOVERY_METHODS))
def test_estimators_follow_the_scikit_learn_contract(method):
    cls = estimator_class(method)
    signature = inspect.signature(cls.__init__)
    assert all(p.kind is p.KEYWORD_ONLY for name, p in signature.parameters.items() if name != "self")
    with pytest.raises(TypeError):
        cls(1)
    estimator = cls(n_boot=7)
    params = estimator.get_params()
    assert params["n_boot"] == 7 and set(params) == set(signature.parameters) - {"self"}
    assert clone(estimator).get_params() == params
    # to_dict lists the parameters in signature order (scikit-learn's get_params sorts them).
    estimator.fit(*_tiny_fit_args())
    assert list(estimator.to_dict()["params"]) == [p for p in signature.parameters if p != "self"]


def test_ravl_signature_is_declared_by_discovery_config():
    signature = inspect.signature(RaVLDiscoverer.__init__).parameters
    for name, field in DiscoveryConfig.model_fields.items():
        assert signature[name].default == field.default, name
    engine_only = set(signature) - {"self"} - set(DiscoveryConfig.model_fields)
    assert engine_only == {"warm_start", "max_iter", "block_rows", "random_state"}


def test_registry_names_the_audit_methods():
    assert tuple(DISCOVERY_METHODS) == AUDIT_METHODS
    (methods,) = typing.get_args(AuditConfig.model_fields["methods"].annotation)
    assert typing.get_args(methods) == AUDIT_METHODS
    discovery = DiscoveryConfig(k_range=(1, 3), n_boot=5)
    ravl = build_discoverer("ravl", discovery=discovery, n_boot=9, n_top_regions=4, random_state=3)
    assert ravl.get_params()["k_range"] == (1, 3) and ravl.n_boot == 9 and ravl.random_state == 3
    george = build_discoverer("george", discovery=discovery, n_boot=9, n_top_regions=4, random_state=3)
    assert isinstance(george, GeorgeDiscoverer) and (george.n_boot, george.n_top_regions) == (9, 4)
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        build_discoverer("nope", discovery=discovery, n_boot=9, n_top_regions=4, random_state=3)


# -- predict: the nearest medoid ----------------------------------------------------------------


def test_predict_assigns_the_fitted_regions_to_their_clusters(planted3, ravl3):
    assert np.array_equal(ravl3.predict(planted3.region_embeddings), ravl3.labels_)
    assert ravl3.medoid_embeddings_.shape == (ravl3.n_clusters_, planted3.region_embeddings.shape[1])
    # A medoid's own embedding, at any norm, belongs to its cluster.
    assert np.array_equal(ravl3.predict(3.0 * ravl3.medoid_embeddings_), np.arange(ravl3.n_clusters_))
    with pytest.raises(ValueError):
        ravl3.predict(np.zeros((2, 5)))
    with pytest.raises(NotFittedError):
        RaVLDiscoverer().predict(planted3.region_embeddings)
    with pytest.raises(ValueError, match="no clustering"):
        RaVLDiscoverer().fit(*_tiny_fit_args()).predict(np.eye(3))


def test_nearest_medoid_float64_is_the_labelling_arithmetic():
    # The stage-2 labelling (float64, both sides normalised) in blocks equals one unblocked product, bit for bit.
    rng = np.random.default_rng(0)
    regions = rng.standard_normal((20000, 32)).astype(np.float32) * rng.uniform(0.5, 2.0, (20000, 1)).astype(np.float32)
    medoids = rng.standard_normal((7, 32)).astype(np.float32)
    r64, m64 = regions.astype(np.float64), medoids.astype(np.float64)
    r64 = r64 / np.maximum(np.linalg.norm(r64, axis=1, keepdims=True), 1e-12)
    m64 = m64 / np.maximum(np.linalg.norm(m64, axis=1, keepdims=True), 1e-12)
    sims = r64 @ np.ascontiguousarray(m64.T)
    labels, similarity = nearest_medoid(regions, medoids, dtype=np.float64, normalise=True)
    assert similarity.dtype == np.float64
    assert np.array_equal(labels, sims.argmax(axis=1)) and np.array_equal(similarity, sims.max(axis=1))
    # The default is the clustering's float32 arithmetic on rows taken as unit-norm.
    labels32, similarity32 = nearest_medoid(regions, medoids, block_rows=4096)
    expected = regions @ np.ascontiguousarray(medoids.T)
    assert similarity32.dtype == np.float32 and np.array_equal(similarity32, expected.max(axis=1))
    assert np.array_equal(labels32, expected.argmax(axis=1))
