"""The Precision@k hit rule ("does this region contain the planted feature?") against by-eye labels.

``tests/data/hit_rule_labels.csv``: 298 crops of 128 px phantom radiographs (six artefacts, boxes of
the audit's 2 x 2 .. 6 x 6 grids with and without 50% overlap; two batches of image seeds, 14000+ and
15000+), each labelled "I can see the artefact in this crop" from mask-free contact sheets before any
rule was computed on them (``benchmarks/hit_rule_agreement.py`` draws them and prints every rule's
agreement).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ravl_med.discover.metrics import RULE_THRESHOLDS, contrast_mask, region_overlaps_mask
from ravl_med.phantom.render import render_phantom

LABELS = Path(__file__).parent / "data" / "hit_rule_labels.csv"


@pytest.fixture(scope="module")
def labelled_crops():
    """(boxes (M, 4), region_image (M,), masks, images, labels (M,) bool, odd ids (M,) bool) of the labelled crops."""
    frame = pd.read_csv(LABELS)
    keys = list(dict.fromkeys(zip(frame.artefact, frame.seed, frame.finding, frame["size"])))
    phantoms = [render_phantom(int(seed), finding, artefact, int(size)) for artefact, seed, finding, size in keys]
    index = {key: k for k, key in enumerate(keys)}
    region_image = np.array([index[key] for key in zip(frame.artefact, frame.seed, frame.finding, frame["size"])])
    labels = frame.visible.map({"yes": True, "no": False}).to_numpy(dtype=bool)
    return (frame[["x0", "y0", "x1", "y1"]].to_numpy(dtype=np.float64), region_image,
            [p.artefact_mask for p in phantoms], [p.image for p in phantoms], labels, (frame.crop_id % 2 == 1).to_numpy())


def test_default_rule_agrees_with_the_labels(labelled_crops):
    boxes, region_image, masks, images, labels, odd = labelled_crops
    default = region_overlaps_mask(boxes, region_image, masks, images=images)
    either = region_overlaps_mask(boxes, region_image, masks, rule="either")
    agreement, held_out, old = (default == labels).mean(), (default[odd] == labels[odd]).mean(), (either == labels).mean()
    # Contrast and threshold were fitted on the even ids: 0.956 on all 298 labels, 0.946 on the odd ids
    # (benchmarks/hit_rule_agreement.py); "either", the rule before, agrees with 0.779.
    assert agreement >= 0.95, f"default rule agrees with {agreement:.3f} of the labels"
    assert held_out >= 0.94, f"default rule agrees with {held_out:.3f} of the held-out labels"
    assert agreement > old + 0.1, f"default {agreement:.3f} vs either {old:.3f}"


def test_at_224_px_the_rule_is_strict_not_loose():
    # 96 crops of 224-px phantoms, labelled by eye by another reviewer (tests/data/hit_rule_labels_224.csv).
    # The rule, fitted at 128 px, misses 17 crops the reviewer could see and calls none visible that the
    # reviewer could not: P@10 of 224-px audits is a lower bound. Measured, not fixed (BENCHMARKS.md).
    frame = pd.read_csv(LABELS.parent / "hit_rule_labels_224.csv")
    keys = list(dict.fromkeys(zip(frame.artefact, frame.seed, frame.finding, frame["size"])))
    phantoms = [render_phantom(int(seed), finding, artefact, int(size)) for artefact, seed, finding, size in keys]
    index = {key: k for k, key in enumerate(keys)}
    region_image = np.array([index[key] for key in zip(frame.artefact, frame.seed, frame.finding, frame["size"])])
    labels = frame.visible.map({"yes": True, "no": False}).to_numpy(dtype=bool)
    hits = region_overlaps_mask(frame[["x0", "y0", "x1", "y1"]].to_numpy(dtype=np.float64), region_image,
                                [p.artefact_mask for p in phantoms], images=[p.image for p in phantoms])
    assert (frame["size"] == 224).all() and len(frame) == 96
    assert (hits & ~labels).sum() <= 2, "the rule calls crops visible that the reviewer could not see"
    assert (hits == labels).mean() >= 0.8


def _wire_image(mask: np.ndarray, value: float = 0.9, background: float = 0.3) -> np.ndarray:
    """An image on which the mask's pixels stand out."""
    return np.where(mask, value, background)


def test_thin_diagonal_line_crossing_a_box_corner():
    mask = np.eye(128, dtype=bool)  # a bright 1-px wire across the image, 128 px
    boxes = np.array([
        [40, 20, 72, 52],  # 12 px of the wire cross the corner (10 inside the outer ring): 9% of it, 1% of the box
        [49, 20, 81, 52],  # 3 px clipped
        [0, 0, 32, 32],    # 32 px along the diagonal
    ], dtype=np.float64)
    region_image = np.zeros(3, dtype=int)
    assert region_overlaps_mask(boxes, region_image, [mask], images=[_wire_image(mask)]).tolist() == [True, False, True]
    assert region_overlaps_mask(boxes, region_image, [mask], rule="either").tolist() == [False, False, True]


def test_a_feature_as_bright_as_its_surroundings_does_not_show():
    mask = np.eye(128, dtype=bool)
    boxes = np.array([[0, 0, 32, 32]], dtype=np.float64)
    flat = np.full((128, 128), 0.5)
    assert not region_overlaps_mask(boxes, np.zeros(1, dtype=int), [mask], images=[flat]).any()
    assert region_overlaps_mask(boxes, np.zeros(1, dtype=int), [mask], images=[_wire_image(mask)]).all()


def test_a_sliver_on_the_crop_edge_does_not_show():
    mask = np.zeros((64, 64), dtype=bool)
    mask[10:40, 31] = True  # a bright vertical wire, 30 px long
    image = _wire_image(mask)
    boxes = np.array([[0, 10, 32, 42],    # the wire runs along the box's last column only
                      [0, 10, 34, 42]], dtype=np.float64)  # two columns further in, the wire is inside
    assert region_overlaps_mask(boxes, np.zeros(2, dtype=int), [mask], images=[image]).tolist() == [False, True]


def test_blob():
    rows, cols = np.ogrid[:64, :64]
    mask = (rows - 32) ** 2 + (cols - 32) ** 2 <= 36  # disk of radius 6
    boxes = np.array([
        [16, 16, 48, 48],  # the whole disk in a 32 px box
        [36, 36, 68, 68],  # clips its lower-right rim
        [28, 28, 36, 36],  # inside the disk
    ], dtype=np.float64)
    hits = region_overlaps_mask(boxes, np.zeros(3, dtype=int), [mask], images=[_wire_image(mask)])
    assert hits.tolist() == [True, False, True]


def test_empty_mask_and_boxes_outside_the_image():
    mask = np.zeros((32, 32), dtype=bool)
    mask[10:20, 10:20] = True
    image = _wire_image(mask)
    boxes = np.array([[40, 40, 60, 60], [-20, -20, -5, -5], [5, 5, 25, 25]], dtype=np.float64)
    region_image = np.array([0, 0, 1])
    assert region_overlaps_mask(boxes, region_image, [mask, np.zeros((32, 32), dtype=bool)],
                                images=[image, image]).tolist() == [False, False, False]
    assert region_overlaps_mask(boxes, region_image, [mask, None], images=[image, None]).tolist() == [False, False, False]
    assert region_overlaps_mask(boxes, np.zeros(3, dtype=int), [mask], images=[image]).tolist() == [False, False, True]


def test_visible_needs_the_images():
    mask = np.eye(32, dtype=bool)
    boxes = np.array([[0, 0, 16, 16]], dtype=np.float64)
    with pytest.raises(ValueError, match="needs the image"):
        region_overlaps_mask(boxes, np.zeros(1, dtype=int), [mask])
    assert region_overlaps_mask(boxes, np.zeros(1, dtype=int), [mask], rule="either").all()  # masks alone


def test_threshold_none_is_the_rules_own():
    mask = np.eye(64, dtype=bool)
    boxes = np.array([[0, 0, 32, 32], [20, 0, 52, 32], [26, 0, 58, 32]], dtype=np.float64)
    region_image = np.zeros(3, dtype=int)
    images = [_wire_image(mask)]
    for rule, threshold in RULE_THRESHOLDS.items():
        assert region_overlaps_mask(boxes, region_image, [mask], rule=rule, images=images).tolist() == \
            region_overlaps_mask(boxes, region_image, [mask], rule=rule, threshold=threshold, images=images).tolist()


def test_contrast_mask_keeps_only_the_pixels_that_stand_out():
    # A feature drawn as bright as its surroundings is in the mask but not in the picture, so none of its
    # pixels count; a bright one counts whole.
    image = np.full((32, 32), 0.5)
    mask = np.zeros((32, 32), dtype=bool)
    mask[8, 4:28] = True   # a faint wire: intensity unchanged
    mask[20, 4:28] = True  # a bright wire
    image[20, 4:28] = 0.9
    kept = contrast_mask(image, mask, delta=0.12)
    assert kept[20, 4:28].all() and not kept[8].any() and not (kept & ~mask).any()
    assert contrast_mask(image, mask, delta=0.0).sum() == mask.sum()
    with pytest.raises(ValueError, match="differ in shape"):
        contrast_mask(image[:10], mask)
