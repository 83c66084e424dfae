"""Discovery metric (RaVL stage 1, step 7): Precision@k against ground-truth spurious regions.

Which regions "contain" the spurious feature comes from the generator's mask (phantom benchmark:
:func:`region_overlaps_mask`) or from the quadrant labels (digits setting: :func:`quadrant_is_spurious`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["OVERLAP_RULES", "precision_at_k", "quadrant_is_spurious", "region_overlaps_mask"]

#: "feature": the region holds >= threshold of the feature's pixels; "region": the feature covers
#: >= threshold of the region; "either" (project default) / "both": the two combined; "any": any overlap.
OVERLAP_RULES = ("either", "both", "feature", "region", "any")


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


def _integral(mask: np.ndarray) -> np.ndarray:
    out = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    out[1:, 1:] = np.asarray(mask, dtype=bool).cumsum(0).cumsum(1)
    return out


def region_overlaps_mask(boxes, region_image, masks: Sequence[np.ndarray | None], rule: str = "either",
                         threshold: float = 0.25) -> np.ndarray:
    """Which regions overlap the ground-truth spurious feature.

    Boxes are (x0, y0, x1, y1) in the mask's pixel frame with exclusive ends (the project's region
    convention); fractional coordinates are rounded to the nearest pixel edge and clipped to the mask.

    Args:
        boxes: (M, 4) region boxes.
        region_image: (M,) image index of each region.
        masks: per image an (H, W) bool mask of the feature, or None / an empty mask where absent.
        rule: one of :data:`OVERLAP_RULES` (default "either": the region holds >= threshold of the
            feature's pixels OR the feature covers >= threshold of the region).
        threshold: fraction for the rule (default 0.25).

    Returns:
        (M,) bool.
    """
    if rule not in OVERLAP_RULES:
        raise ValueError(f"rule must be one of {OVERLAP_RULES}, got {rule!r}")
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    region_image = np.asarray(region_image, dtype=np.int64).reshape(-1)
    if region_image.shape[0] != boxes.shape[0]:
        raise ValueError("boxes and region_image disagree in length")
    out = np.zeros(boxes.shape[0], dtype=bool)
    order = np.argsort(region_image, kind="stable")
    images, starts = np.unique(region_image[order], return_index=True)
    for image, chunk in zip(images, np.split(order, starts[1:])):
        mask = masks[image]
        if mask is None:
            continue
        mask = np.asarray(mask, dtype=bool)
        total = int(mask.sum())
        if total == 0:
            continue
        table = _integral(mask)
        h, w = mask.shape
        b = np.rint(boxes[chunk])
        x0, x1 = np.clip(b[:, 0], 0, w).astype(int), np.clip(b[:, 2], 0, w).astype(int)
        y0, y1 = np.clip(b[:, 1], 0, h).astype(int), np.clip(b[:, 3], 0, h).astype(int)
        x1, y1 = np.maximum(x1, x0), np.maximum(y1, y0)
        inside = table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]
        area = (x1 - x0) * (y1 - y0)
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
