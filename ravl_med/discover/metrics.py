"""Discovery metric (RaVL stage 1, step 7): Precision@k against ground-truth spurious regions.

Which regions "contain" the spurious feature comes from the generator's mask (phantom benchmark:
:func:`region_overlaps_mask`) or from the quadrant labels (digits setting: :func:`quadrant_is_spurious`).
The default mask rule, "visible", is fitted to by-eye labels of audit crops
(``tests/data/hit_rule_labels.csv``, ``benchmarks/hit_rule_agreement.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = ["CONTRAST_WINDOW", "OVERLAP_RULES", "RULE_THRESHOLDS", "VISIBLE_CONTRAST", "contrast_mask", "precision_at_k",
           "quadrant_is_spurious", "region_overlaps_mask"]

#: "visible" (project default): a reviewer looking at the crop would see the feature (enough of the
#: feature's contrasting pixels inside the region, relative to its side; see :func:`region_overlaps_mask`);
#: "feature": the region holds >= threshold of the feature's pixels; "region": the feature covers
#: >= threshold of the region; "either" (the default before "visible") / "both": those two combined;
#: "any": any overlap.
OVERLAP_RULES = ("visible", "either", "both", "feature", "region", "any")

#: Each rule's threshold when none is given. "visible": fitted together with :data:`VISIBLE_CONTRAST`
#: on the even crop ids of the by-eye labels (``benchmarks/hit_rule_agreement.py`` prints the fit and
#: the held-out agreement).
RULE_THRESHOLDS = {"visible": 0.20, "either": 0.25, "both": 0.25, "feature": 0.25, "region": 0.25,
                   "any": 0.0}

#: "visible": a feature pixel shows when it differs by this much (intensity in [0, 1]) from the mean of
#: the non-feature pixels in its :data:`CONTRAST_WINDOW` x :data:`CONTRAST_WINDOW` neighbourhood.
VISIBLE_CONTRAST = 0.10
CONTRAST_WINDOW = 7


def precision_at_k(ranked_region_indices, region_is_spurious, k: int = 10, strict: bool = True) -> float:
    """Fraction of the k top-ranked regions that contain the spurious feature.

    Args:
        ranked_region_indices: (n,) region indices, best first (e.g. ``disc.top_ranked_regions()``).
        region_is_spurious: (M,) bool ground truth per region.
        k: cut-off (paper: 10).
        strict: divide by k even when fewer than k regions are ranked (missing ranks count as misses,
            so an empty ranking scores 0); False divides by min(k, n) (NaN when n = 0).

    Returns:
        Precision in [0, 1].
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    ranked = np.asarray(ranked_region_indices, dtype=np.int64).reshape(-1)[:k]
    truth = np.asarray(region_is_spurious, dtype=bool).reshape(-1)
    hits = float(truth[ranked].sum()) if ranked.size else 0.0
    denominator = k if strict else ranked.size
    return hits / denominator if denominator else float("nan")


def _integral(values: np.ndarray) -> np.ndarray:
    """(H + 1, W + 1) summed-area table of an (H, W) array (bool counts as 0/1), zero first row and column."""
    values = np.asarray(values)
    dtype = np.int64 if values.dtype == bool else np.float64
    out = np.zeros((values.shape[0] + 1, values.shape[1] + 1), dtype=dtype)
    out[1:, 1:] = values.astype(dtype).cumsum(0).cumsum(1)
    return out


def contrast_mask(image: np.ndarray, mask: np.ndarray, delta: float = VISIBLE_CONTRAST,
                  window: int = CONTRAST_WINDOW) -> np.ndarray:
    """The feature's pixels that stand out from their surroundings in the picture.

    A mask pixel counts when its intensity differs by at least ``delta`` from the mean of the
    *non*-feature pixels in the ``window`` x ``window`` square around it (the image itself where the
    square holds no such pixel): a faint token on a bright field, or a lead over the mediastinum, is in
    the mask but not in the picture.

    Args:
        image: (H, W) float intensities in [0, 1] (the ingested image the mask belongs to).
        mask: (H, W) bool feature mask.
        delta: contrast threshold, intensity units.
        window: side of the neighbourhood, pixels.

    Returns:
        (H, W) bool, a subset of ``mask``.
    """
    image = np.asarray(image, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    if image.shape != mask.shape:
        raise ValueError(f"image {image.shape} and mask {mask.shape} differ in shape")
    background = (~mask).astype(np.float64)
    total = ndimage.uniform_filter(image * background, window)
    weight = ndimage.uniform_filter(background, window)
    local = np.where(weight > 1e-9, total / np.maximum(weight, 1e-9), image)
    return mask & (np.abs(image - local) >= delta)


def region_overlaps_mask(boxes, region_image, masks: Sequence[np.ndarray | None], rule: str = "visible",
                         threshold: float | None = None, images: Sequence[np.ndarray | None] | None = None,
                         contrast: float = VISIBLE_CONTRAST) -> np.ndarray:
    """Which regions overlap the ground-truth spurious feature.

    Boxes are (x0, y0, x1, y1) in the mask's pixel frame with exclusive ends (the project's region
    convention); fractional coordinates are rounded to the nearest pixel edge and clipped to the mask.
    With n the feature pixels inside a (clipped) box of area A (pixels) and N the feature's pixels in
    the image, the rules at threshold t are:

    * "visible" (default): ``n_c >= t * sqrt(A)``, where n_c counts the feature's pixels that contrast
      with their surroundings in the image (:func:`contrast_mask`) inside the box less its outermost
      ring of pixels. A reviewer sees a feature in a crop when enough of it stands out, relative to the
      crop's side (the gallery zooms every crop to the same size): a thin tube by its length, a blob by
      its area; a feature drawn as bright as the anatomy under it, or a sliver on the crop's edge, does
      not show. Fitted to by-eye labels (``tests/data/hit_rule_labels.csv``). Needs ``images``.
    * "feature": ``n / N >= t``; "region": ``n / A >= t``; "either": one of the two (the default
      before "visible"; it misses crops that show a clear piece of a long thin feature); "both":
      the two; "any": ``n > 0``.

    Every rule also needs n > 0. Summed-area tables make each image's boxes O(1) each.

    Args:
        boxes: (M, 4) region boxes, pixels.
        region_image: (M,) image index of each region.
        masks: per image an (H, W) bool mask of the feature, or None / an empty mask where absent.
        rule: one of :data:`OVERLAP_RULES`.
        threshold: t for the rule; ``None``: the rule's :data:`RULE_THRESHOLDS` entry.
        images: per image the (H, W) float image in [0, 1] the mask belongs to ("visible" only; the
            other rules read masks alone).
        contrast: "visible": the ``delta`` of :func:`contrast_mask`.

    Returns:
        (M,) bool.

    Raises:
        ValueError: an unknown rule, mismatched lengths, or "visible" without the image of a mask.
    """
    if rule not in OVERLAP_RULES:
        raise ValueError(f"rule must be one of {OVERLAP_RULES}, got {rule!r}")
    threshold = RULE_THRESHOLDS[rule] if threshold is None else float(threshold)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    region_image = np.asarray(region_image, dtype=np.int64).reshape(-1)
    if region_image.shape[0] != boxes.shape[0]:
        raise ValueError("boxes and region_image disagree in length")
    out = np.zeros(boxes.shape[0], dtype=bool)
    order = np.argsort(region_image, kind="stable")
    present, starts = np.unique(region_image[order], return_index=True)
    for image, chunk in zip(present, np.split(order, starts[1:])):
        mask = masks[image]
        if mask is None:
            continue
        mask = np.asarray(mask, dtype=bool)
        total = int(mask.sum())
        if total == 0:
            continue
        h, w = mask.shape
        b = np.rint(boxes[chunk])
        x0, x1 = np.clip(b[:, 0], 0, w).astype(int), np.clip(b[:, 2], 0, w).astype(int)
        y0, y1 = np.clip(b[:, 1], 0, h).astype(int), np.clip(b[:, 3], 0, h).astype(int)
        x1, y1 = np.maximum(x1, x0), np.maximum(y1, y0)

        def box_sum(table: np.ndarray) -> np.ndarray:
            return table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]

        inside = box_sum(_integral(mask))
        area = (x1 - x0) * (y1 - y0)
        if rule == "visible":
            if images is None or images[image] is None:
                raise ValueError("the 'visible' rule needs the image of every mask (it counts the pixels that show)")
            shows = _integral(contrast_mask(images[image], mask, contrast))
            ix0, iy0 = np.minimum(x0 + 1, x1), np.minimum(y0 + 1, y1)  # the box less its outermost ring
            ix1, iy1 = np.maximum(x1 - 1, ix0), np.maximum(y1 - 1, iy0)
            visible = shows[iy1, ix1] - shows[iy0, ix1] - shows[iy1, ix0] + shows[iy0, ix0]
            hit = visible >= threshold * np.sqrt(area)
        else:
            feature_frac = inside / total
            region_frac = np.where(area > 0, inside / np.maximum(area, 1), 0.0)
            if rule == "either":
                hit = (feature_frac >= threshold) | (region_frac >= threshold)
            elif rule == "both":
                hit = (feature_frac >= threshold) & (region_frac >= threshold)
            elif rule == "feature":
                hit = feature_frac >= threshold
            elif rule == "region":
                hit = region_frac >= threshold
            else:
                hit = inside > 0
        out[chunk] = hit & (inside > 0)
    return out


def quadrant_is_spurious(region_quadrant, region_image, feature_quadrant) -> np.ndarray:
    """Digits setting: a region (a quadrant) is spurious when it is the quadrant holding the square.

    Args:
        region_quadrant: (M,) quadrant index (0-3) of each region.
        region_image: (M,) image index of each region.
        feature_quadrant: (N,) quadrant of the red square per image, -1 where absent (the digits
            manifest's ``square_quadrant`` column).

    Returns:
        (M,) bool.
    """
    region_quadrant = np.asarray(region_quadrant, dtype=np.int64)
    feature_quadrant = np.asarray(feature_quadrant, dtype=np.int64)
    square = feature_quadrant[np.asarray(region_image, dtype=np.int64)]
    return (square >= 0) & (square == region_quadrant)
