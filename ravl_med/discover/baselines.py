"""Discovery baselines with RaVL's ``fit`` signature and outputs, so Precision@k compares like with like.

* :class:`RandomDiscoverer`: regions in random order.
* :class:`DistillingFailuresDiscoverer` (Jain et al. 2023): per class, a linear SVM on image
  embeddings separating correct from incorrect predictions; images ranked by decision value.
* :class:`GeorgeDiscoverer` (Sohoni et al. 2020): per-class clustering of image embeddings
  (KMeans, k by silhouette); clusters ranked by accuracy, worst first.
* :class:`DominoDiscoverer` (Eyuboglu et al. 2022): an error-aware Gaussian mixture on image
  embeddings plus the label and the prediction; slices ranked by error rate.

Image-level methods turn a ranked image group into a ranked region list by the project's choice
(method spec): take the group's top ``n_images`` images and rank all their regions by the regions'
zero-shot score for the wrong class, max_{q != y} p(q | r) with y the image's label.
"""

from __future__ import annotations

import warnings
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ._base import BaseDiscoverer
from ._groups import DiscoveryInputs

__all__ = [
    "DistillingFailuresDiscoverer",
    "DominoDiscoverer",
    "GeorgeDiscoverer",
    "RandomDiscoverer",
    "wrong_class_scores",
]


def wrong_class_scores(inputs: DiscoveryInputs) -> np.ndarray:
    """(M,) max over classes q != y(image) of p(q | region); 0 with a single class."""
    scores = np.array(inputs.region_scores, dtype=np.float64, copy=True)
    if scores.shape[1] < 2:
        return np.zeros(scores.shape[0])
    scores[np.arange(scores.shape[0]), inputs.image_labels[inputs.region_image]] = -np.inf
    return scores.max(axis=1)


def _image_embeddings(image_embeddings, region_embeddings, inputs: DiscoveryInputs, notes: list) -> np.ndarray:
    if image_embeddings is not None:
        out = np.asarray(image_embeddings, dtype=np.float32)
        if out.shape[0] != inputs.n_images:
            raise ValueError(f"image_embeddings has {out.shape[0]} rows for {inputs.n_images} images")
        return out
    # Fallback: mean of the image's region embeddings, renormalised.
    notes.append("no image_embeddings given: each image is represented by the mean of its region embeddings.")
    regions = np.asarray(region_embeddings, dtype=np.float32)
    out = np.zeros((inputs.n_images, regions.shape[1]), dtype=np.float32)
    np.add.at(out, inputs.region_image, regions)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


# Parameter types and bounds (checked by ``fit``); the defaults are the constructors'.
Count = Annotated[int, Field(ge=1)]


class _Parameters(BaseModel):
    """Parameters every baseline has."""

    model_config = ConfigDict(extra="forbid")

    n_boot: Annotated[int, Field(ge=0)]
    n_top_regions: Count
    random_state: Annotated[int, Field(ge=0)] | None


class _DistillingFailuresParameters(_Parameters):
    svm_c: Annotated[float, Field(gt=0)]
    n_images: Count


class _GeorgeParameters(_Parameters):
    n_clusters: Annotated[int, Field(ge=2)] | Literal["auto"]
    max_clusters: Annotated[int, Field(ge=2)]
    n_images: Count
    min_cluster_size: Count


class _DominoParameters(_Parameters):
    n_components: Count
    n_slices: Count
    n_pca: Count
    y_weight: Annotated[int, Field(ge=0)]
    y_hat_weight: Annotated[int, Field(ge=0)]
    n_images: Count
    min_slice_size: Count


class _ImageLevelDiscoverer(BaseDiscoverer):
    """Shared machinery: ranked image groups -> ranked region lists and per-group tables."""

    def fit(self, region_embeddings, region_image, image_labels, image_scores, region_scores, *,
            class_names=None, image_embeddings=None):
        """Rank groups of images, then their regions (same signature as :meth:`RaVLDiscoverer.fit`).

        Args:
            region_embeddings: (M, D) region embeddings.
            region_image: (M,) image index of each region.
            image_labels: (N,) class of each image.
            image_scores: (N, C) zero-shot probabilities of each image.
            region_scores: (M, C) zero-shot probabilities of each region.
            class_names: C names (optional).
            image_embeddings: (N, D) image embeddings; default the mean of each image's regions.

        Returns:
            self.
        """
        inputs = self._start(region_embeddings, region_image, image_labels, image_scores, region_scores, class_names)
        embeddings = _image_embeddings(image_embeddings, region_embeddings, inputs, self.notes_)
        rng = np.random.default_rng(self.random_state)
        groups = self._image_groups(embeddings, inputs, rng)  # [(ranked images, score, description)]
        if not groups:
            self.outcome_ = "no_selection"
            self.notes_.append(f"{type(self).__name__} selected no group of images.")
            return self._finish()
        wrong = wrong_class_scores(inputs)
        order_by_image = np.argsort(inputs.region_image, kind="stable")
        starts = np.searchsorted(inputs.region_image[order_by_image], np.arange(inputs.n_images + 1))
        region_group = np.full(inputs.region_image.shape[0], -1, dtype=np.int64)
        ranked_regions, scores = [], []
        for g, (images, score, _) in enumerate(groups):
            chosen = np.asarray(images, dtype=np.int64)[: self.n_images]
            regions = np.concatenate([order_by_image[starts[i]:starts[i + 1]] for i in chosen]) if chosen.size \
                else np.zeros(0, dtype=np.int64)
            regions = regions[np.argsort(-wrong[regions], kind="stable")]
            region_group[regions[region_group[regions] < 0]] = g
            ranked_regions.append(regions)
            scores.append(score)
        self.group_descriptions_ = [d for _, _, d in groups]
        self._ranked(region_group, list(range(len(groups))), np.asarray(scores, dtype=np.float64),
                     ranked_regions, inputs)
        self.outcome_ = "found"
        return self._finish()

    def _extra_dict(self) -> dict:
        return {"groups": list(getattr(self, "group_descriptions_", []))}


class RandomDiscoverer(BaseDiscoverer):
    """Random baseline: one group holding every region, in random order.

    Args:
        n_boot: bootstrap resamples for the per-class table.
        n_top_regions: regions listed in ``RankedCluster.top_regions``.
        random_state: seed.
    """

    _parameter_model = _Parameters

    def __init__(self, *, n_boot: int = 200, n_top_regions: int = 25, random_state: int | None = 0):
        self.n_boot = n_boot
        self.n_top_regions = n_top_regions
        self.random_state = random_state

    def fit(self, region_embeddings, region_image, image_labels, image_scores, region_scores, *,
            class_names=None, image_embeddings=None) -> RandomDiscoverer:
        """Same signature as :meth:`RaVLDiscoverer.fit`; returns self."""
        inputs = self._start(region_embeddings, region_image, image_labels, image_scores, region_scores, class_names)
        n = inputs.region_image.shape[0]
        if n == 0:
            self.outcome_ = "too_few_regions"
            self.notes_.append("no regions to rank.")
            return self._finish()
        order = np.random.default_rng(self.random_state).permutation(n)
        self._ranked(np.zeros(n, dtype=np.int64), [0], np.zeros(1), [order], inputs)
        self.outcome_ = "found"
        return self._finish()


class DistillingFailuresDiscoverer(_ImageLevelDiscoverer):
    """Distilling Failures: per-class linear SVM (correct vs incorrect) on image embeddings.

    Groups are classes with both correct and incorrect images, ordered by error rate (worst
    first); within a class, images by SVM decision value toward "incorrect", descending.

    Args:
        svm_c: LinearSVC regularisation C.
        n_images: top images per group whose regions are ranked.
        n_boot, n_top_regions, random_state: as :class:`RaVLDiscoverer`.
    """

    _parameter_model = _DistillingFailuresParameters

    def __init__(self, *, svm_c: float = 1.0, n_images: int = 10, n_boot: int = 200, n_top_regions: int = 25,
                 random_state: int | None = 0):
        self.svm_c = svm_c
        self.n_images = n_images
        self.n_boot = n_boot
        self.n_top_regions = n_top_regions
        self.random_state = random_state

    def _image_groups(self, embeddings, inputs, rng):
        from sklearn.svm import LinearSVC

        groups = []
        for y in range(inputs.n_classes):
            images = np.flatnonzero(inputs.image_labels == y)
            wrong = ~inputs.correct[images]
            if images.size == 0 or wrong.all() or not wrong.any():
                if images.size:
                    self.notes_.append(f"class {inputs.class_names[y]}: all predictions "
                                       f"{'wrong' if wrong.all() else 'right'}; no SVM fitted.")
                continue
            svm = LinearSVC(C=self.svm_c, class_weight="balanced", random_state=self.random_state, max_iter=5000)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # ConvergenceWarning on tiny groups
                svm.fit(embeddings[images], wrong.astype(int))
            decision = svm.decision_function(embeddings[images])
            ranked = images[np.argsort(-decision, kind="stable")]
            groups.append((ranked, float(wrong.mean()), {"class": y, "error_rate": float(wrong.mean())}))
        groups.sort(key=lambda g: -g[1])
        return groups


class GeorgeDiscoverer(_ImageLevelDiscoverer):
    """GEORGE-style: per-class KMeans of image embeddings; clusters ranked by accuracy, worst first.

    Args:
        n_clusters: clusters per class, or "auto" (2..max_clusters by silhouette).
        max_clusters: upper end of the "auto" sweep.
        n_images: top images (closest to the centroid) per cluster whose regions are ranked.
        min_cluster_size: clusters smaller than this are not ranked.
        n_boot, n_top_regions, random_state: as :class:`RaVLDiscoverer`.
    """

    _parameter_model = _GeorgeParameters

    def __init__(self, *, n_clusters: int | str = "auto", max_clusters: int = 5, n_images: int = 10,
                 min_cluster_size: int = 3, n_boot: int = 200, n_top_regions: int = 25,
                 random_state: int | None = 0):
        self.n_clusters = n_clusters
        self.max_clusters = max_clusters
        self.n_images = n_images
        self.min_cluster_size = min_cluster_size
        self.n_boot = n_boot
        self.n_top_regions = n_top_regions
        self.random_state = random_state

    def _kmeans(self, x, rng):
        from sklearn.cluster import KMeans
        from sklearn.metrics import silhouette_score

        ks = [self.n_clusters] if self.n_clusters != "auto" else list(range(2, self.max_clusters + 1))
        ks = [k for k in ks if 2 <= k <= x.shape[0] - 1]
        best = None
        for k in ks:
            model = KMeans(n_clusters=k, n_init=3, random_state=int(rng.integers(2**31 - 1))).fit(x)
            if len(ks) == 1:
                return model
            if len(np.unique(model.labels_)) < 2:
                continue
            score = silhouette_score(x, model.labels_, sample_size=min(2000, x.shape[0]),
                                     random_state=int(rng.integers(2**31 - 1)))
            if best is None or score > best[0]:
                best = (score, model)
        return None if best is None else best[1]

    def _image_groups(self, embeddings, inputs, rng):
        groups = []
        for y in range(inputs.n_classes):
            images = np.flatnonzero(inputs.image_labels == y)
            model = self._kmeans(embeddings[images], rng) if images.size >= 3 else None
            if model is None:
                continue
            distance = model.transform(embeddings[images])
            for k in range(model.n_clusters):
                members = np.flatnonzero(model.labels_ == k)
                if members.size < self.min_cluster_size:
                    continue
                ranked = images[members[np.argsort(distance[members, k], kind="stable")]]
                accuracy = float(inputs.correct[images[members]].mean())
                groups.append((ranked, 1.0 - accuracy, {"class": y, "subcluster": k, "accuracy": accuracy,
                                                        "n_images": int(members.size)}))
        groups.sort(key=lambda g: (-g[1], -g[2]["n_images"]))
        return groups


class DominoDiscoverer(_ImageLevelDiscoverer):
    """Domino-style error-aware slicing: a Gaussian mixture on image embeddings, label and prediction.

    Embeddings are reduced by PCA and whitened; the label one-hot and the predicted probabilities are
    appended ``y_weight`` and ``y_hat_weight`` times (repeating a column multiplies its weight in the
    mixture's log-likelihood, as Domino's likelihood weights do). Components are ranked by error
    rate; within a slice, images by posterior probability.

    Args:
        n_components: mixture components (capped at N // 2).
        n_slices: slices reported (the worst by error rate).
        n_pca: PCA dimensions of the embedding part.
        y_weight, y_hat_weight: weights of the label and prediction terms.
        n_images: top images per slice whose regions are ranked.
        min_slice_size: slices smaller than this are not ranked.
        n_boot, n_top_regions, random_state: as :class:`RaVLDiscoverer`.
    """

    _parameter_model = _DominoParameters

    def __init__(self, *, n_components: int = 25, n_slices: int = 5, n_pca: int = 64, y_weight: int = 10,
                 y_hat_weight: int = 10, n_images: int = 10, min_slice_size: int = 3, n_boot: int = 200,
                 n_top_regions: int = 25, random_state: int | None = 0):
        self.n_components = n_components
        self.n_slices = n_slices
        self.n_pca = n_pca
        self.y_weight = y_weight
        self.y_hat_weight = y_hat_weight
        self.n_images = n_images
        self.min_slice_size = min_slice_size
        self.n_boot = n_boot
        self.n_top_regions = n_top_regions
        self.random_state = random_state

    def _image_groups(self, embeddings, inputs, rng):
        from sklearn.decomposition import PCA
        from sklearn.mixture import GaussianMixture

        n = inputs.n_images
        components = min(self.n_components, n // 2)
        if components < 1:
            self.notes_.append(f"{n} images: too few for a mixture model.")
            return []
        n_pca = max(1, min(self.n_pca, embeddings.shape[1], n - 1))
        z = PCA(n_components=n_pca, whiten=True, random_state=self.random_state).fit_transform(embeddings)
        onehot = np.eye(inputs.n_classes)[inputs.image_labels]
        features = np.hstack([z] + [onehot] * self.y_weight + [inputs.image_scores] * self.y_hat_weight)
        gmm = GaussianMixture(n_components=components, covariance_type="diag", reg_covar=1e-3,
                              random_state=int(rng.integers(2**31 - 1)), max_iter=200).fit(features)
        posterior = gmm.predict_proba(features)
        assignment = posterior.argmax(axis=1)
        groups = []
        for k in range(components):
            members = np.flatnonzero(assignment == k)
            if members.size < self.min_slice_size:
                continue
            error = 1.0 - float(inputs.correct[members].mean())
            ranked = members[np.argsort(-posterior[members, k], kind="stable")]
            groups.append((ranked, error, {"component": k, "error_rate": error, "n_images": int(members.size)}))
        groups.sort(key=lambda g: (-g[1], -g[2]["n_images"]))
        return groups[: self.n_slices]
