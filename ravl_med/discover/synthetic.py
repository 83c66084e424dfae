"""Synthetic region embeddings with a planted spurious feature (known answer), for tests and benchmarks.

Every image has one *core* region near its class text embedding t_y and background regions near one
of a few background directions. With probability ``feature_prob`` (independent of the class, as in
an evaluation set) one background region is replaced by the *spurious feature*: a direction that
correlates with the text of class ``spurious_class``. The image embedding mixes its regions with the
feature weighted up, so the feature pushes predictions toward the spurious class: images of that
class with the feature are right, images of other classes with it are often wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PlantedSpurious", "make_planted_spurious"]


@dataclass
class PlantedSpurious:
    """Arrays of a synthetic audit (M regions, N images, C classes, D dimensions).

    Attributes:
        region_embeddings: (M, D) float32 unit rows.
        region_image: (M,) int64.
        image_labels: (N,) int64.
        image_embeddings: (N, D) float32 unit rows.
        text_embeddings: (C, D) float32 unit rows.
        image_scores: (N, C) float32 zero-shot probabilities.
        region_scores: (M, C) float32 zero-shot probabilities.
        region_is_spurious: (M,) bool, True for the planted feature's regions.
        image_has_feature: (N,) bool.
        spurious_class: the class the feature is tied to.
        region_component: (M,) int64 planted component of each region: y in [0, C) for the core region
            of a class-y image, C + b for background direction b, C + n_backgrounds for the feature
            (the answer a clustering is scored against, e.g. by adjusted Rand index).
    """

    region_embeddings: np.ndarray
    region_image: np.ndarray
    image_labels: np.ndarray
    image_embeddings: np.ndarray
    text_embeddings: np.ndarray
    image_scores: np.ndarray
    region_scores: np.ndarray
    region_is_spurious: np.ndarray
    image_has_feature: np.ndarray
    spurious_class: int
    region_component: np.ndarray | None = None

    def fit_args(self) -> tuple:
        """Positional arguments of ``Discoverer.fit``."""
        return (self.region_embeddings, self.region_image, self.image_labels, self.image_scores, self.region_scores)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


def _softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits - logits.max(axis=1, keepdims=True)
    out = np.exp(logits)
    return (out / out.sum(axis=1, keepdims=True)).astype(np.float32)


def make_planted_spurious(n_images: int = 400, regions_per_image: int = 4, n_classes: int = 3,
                          spurious_class: int = 0, dim: int = 64, feature_prob: float = 0.5,
                          n_backgrounds: int = 3, noise: float = 0.35, feature_weight: float = 2.5,
                          feature_text_corr: float = 0.6, distractor: float = 1.8, temperature: float = 0.07,
                          plant: bool = True, random_state: int = 0, block_rows: int = 65536) -> PlantedSpurious:
    """Build a synthetic audit with a planted spurious feature.

    Args:
        n_images: N.
        regions_per_image: regions per image (>= 2: one core region plus backgrounds).
        n_classes: C.
        spurious_class: the class the feature pushes predictions toward.
        dim: D.
        feature_prob: probability that an image carries the feature (independent of its class).
        n_backgrounds: background directions.
        noise: per-dimension noise scale times sqrt(D) (0.35: within-cluster cosine ~ 0.9).
        feature_weight: weight of the feature region in the image embedding.
        feature_text_corr: cosine between the feature direction and t_spurious.
        distractor: each image embedding also gets u * t_q for a random other class q, u ~ U(0, distractor),
            so some images are wrong without the feature (and the feature can *help* its class).
        temperature: zero-shot temperature.
        plant: False gives the same data without any feature (a "nothing to find" control).
        random_state: seed.
        block_rows: rows generated at a time (bounds the float64 temporaries at 10^6 regions).

    Returns:
        :class:`PlantedSpurious`.
    """
    if regions_per_image < 2:
        raise ValueError("regions_per_image must be >= 2 (a core region and at least one background)")
    rng = np.random.default_rng(random_state)
    basis = np.linalg.qr(rng.standard_normal((dim, n_classes + n_backgrounds + 1)))[0].T.astype(np.float32)
    text = basis[:n_classes]
    backgrounds = basis[n_classes:n_classes + n_backgrounds]
    feature = _unit(feature_text_corr * text[spurious_class]
                    + np.sqrt(1.0 - feature_text_corr**2) * basis[-1])

    labels = rng.integers(n_classes, size=n_images)
    has_feature = (rng.random(n_images) < feature_prob) if plant else np.zeros(n_images, dtype=bool)
    feature_slot = rng.integers(1, regions_per_image, size=n_images)  # which background slot it replaces
    m = n_images * regions_per_image
    region_image = np.repeat(np.arange(n_images), regions_per_image)
    slot = np.tile(np.arange(regions_per_image), n_images)
    is_spurious = has_feature[region_image] & (slot == feature_slot[region_image])
    background_id = rng.integers(n_backgrounds, size=m)

    region_embeddings = np.empty((m, dim), dtype=np.float32)
    sigma = noise / np.sqrt(dim)
    for start in range(0, m, block_rows):
        rows = slice(start, min(m, start + block_rows))
        centre = backgrounds[background_id[rows]].copy()
        core = slot[rows] == 0
        centre[core] = text[labels[region_image[rows][core]]]
        centre[is_spurious[rows]] = feature
        region_embeddings[rows] = _unit(centre + sigma * rng.standard_normal(centre.shape, dtype=np.float32))

    weights = np.where(is_spurious, feature_weight, 1.0).astype(np.float32)
    weights[slot == 0] = 1.5
    # Regions are stored image by image, regions_per_image each: a reshape-and-sum per block of images.
    image_embeddings = np.empty((n_images, dim), dtype=np.float32)
    per_block = max(1, block_rows // regions_per_image)
    for first in range(0, n_images, per_block):
        rows = slice(first * regions_per_image, min(n_images, first + per_block) * regions_per_image)
        weighted = region_embeddings[rows] * weights[rows, None]
        image_embeddings[first:first + per_block] = weighted.reshape(-1, regions_per_image, dim).sum(axis=1)
    if n_classes > 1 and distractor > 0:
        other = (labels + rng.integers(1, n_classes, size=n_images)) % n_classes
        image_embeddings += rng.uniform(0.0, distractor, size=(n_images, 1)).astype(np.float32) * text[other]
    image_embeddings = _unit(image_embeddings)

    region_scores = np.empty((m, n_classes), dtype=np.float32)
    for start in range(0, m, block_rows):
        rows = slice(start, min(m, start + block_rows))
        region_scores[rows] = _softmax(region_embeddings[rows] @ text.T / temperature)
    image_scores = _softmax(image_embeddings @ text.T / temperature)
    component = np.where(slot == 0, labels[region_image], n_classes + background_id)
    component[is_spurious] = n_classes + n_backgrounds
    return PlantedSpurious(region_embeddings, region_image.astype(np.int64), labels.astype(np.int64),
                           image_embeddings, text, image_scores, region_scores, is_spurious, has_feature,
                           spurious_class, component.astype(np.int64))
