"""Phantom rendering: reproducibility, anatomy, findings and artefacts in the right places."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ravl_med.phantom import (
    CLASSES,
    CustomArtefact,
    InjectArtefact,
    InjectArtefactd,
    Layout,
    render_phantom,
)
from ravl_med.phantom.anatomy import render_density, sample_patient
from ravl_med.phantom.artefacts import ARTEFACTS, get_artefact

SIZE = 128


def test_same_seed_same_pixels_and_masks():
    a = render_phantom((3, 0, 7), "pneumothorax", "chest_drain", SIZE)
    b = render_phantom((3, 0, 7), "pneumothorax", "chest_drain", SIZE)
    assert a.image.tobytes() == b.image.tobytes()
    assert np.array_equal(a.artefact_mask, b.artefact_mask) and np.array_equal(a.finding_mask, b.finding_mask)
    c = render_phantom((3, 0, 8), "pneumothorax", "chest_drain", SIZE)
    assert a.image.tobytes() != c.image.tobytes()


def test_anatomy_is_dark_lungs_in_bright_body_on_black_air():
    rng = np.random.default_rng(0)
    ph = render_phantom(0, "no finding", None, 256)
    img, lungs = ph.image, ph.lung_mask
    assert img.dtype == np.float32 and 0 <= img.min() and img.max() <= 1
    assert img[:8, :8].mean() < 0.1  # air above the shoulders
    assert img[lungs].mean() < img[200:, 100:156].mean() - 0.2  # lungs darker than the abdomen
    assert lungs[:, :128].any() and lungs[:, 128:].any()  # two lung fields
    density = render_density(sample_patient(rng), (SIZE, SIZE), rng)
    assert density.lungs.shape == (2, SIZE, SIZE) and density.heart.any()


@pytest.mark.parametrize("label", [c for c in CLASSES if c != "no finding"])
def test_each_finding_has_a_mask_where_it_belongs(label):
    for seed in range(3):
        ph = render_phantom((seed, 5), label, None, SIZE)
        mask = ph.finding_mask
        assert mask.any(), label
        rows = np.nonzero(mask)[0] / SIZE
        lung_rows = np.nonzero(ph.lung_mask)[0] / SIZE
        if label == "pleural effusion":  # basal: in the lower part of the lung
            assert (mask & ph.lung_mask).sum() == mask.sum()
            assert rows.mean() > np.percentile(lung_rows, 60)
        elif label == "pneumothorax":  # inside the lung field, apicolateral
            assert (mask & ph.lung_mask).sum() == mask.sum()
        elif label in ("nodule", "consolidation"):
            assert (mask & ph.lung_mask).sum() >= 0.8 * mask.sum()
        elif label == "cardiomegaly":
            cols = np.nonzero(mask)[1]
            assert (cols.max() - cols.min()) / SIZE > 0.35  # cardiothoracic ratio well above normal


def test_no_finding_has_empty_mask():
    assert not render_phantom(1, "no finding", None, SIZE).finding_mask.any()


@pytest.mark.parametrize("name", list(ARTEFACTS))
def test_each_artefact_has_a_bright_mask_that_obeys_its_default_rule(name):
    for seed in range(3):
        ph = render_phantom((seed, 9), "no finding", name, SIZE)
        mask = ph.artefact_mask
        assert mask.any(), name
        assert ph.image[mask].mean() > ph.image[~mask & ph.lung_mask].mean()
        overlap = (mask & ph.lung_mask).sum()
        rule = get_artefact(name).placement
        if rule == "outside_lungs":
            assert overlap == 0, name
        elif rule == "overlap_lungs":
            assert overlap > 0, name


@pytest.mark.parametrize("name", ["chest_drain", "clothing_clip", "ecg_leads", "laterality_marker"])
def test_placement_rules_can_be_switched(name):
    for seed in range(3):
        out = render_phantom((seed, 4), "nodule", get_artefact(name, placement="outside_lungs"), SIZE)
        assert out.artefact_mask.any() and not (out.artefact_mask & out.lung_mask).any()
    if name in ("clothing_clip", "laterality_marker"):
        inside = render_phantom(2, "nodule", get_artefact(name, placement="overlap_lungs"), SIZE)
        assert (inside.artefact_mask & inside.lung_mask).any()


def test_size_and_contrast_knobs():
    small = render_phantom(1, "no finding", get_artefact("pacemaker", scale=0.6), SIZE).artefact_mask.sum()
    big = render_phantom(1, "no finding", get_artefact("pacemaker", scale=1.5), SIZE).artefact_mask.sum()
    assert big > small
    dim = render_phantom(1, "no finding", get_artefact("pacemaker", level=0.5), SIZE)
    assert abs(np.median(dim.image[dim.artefact_mask]) - 0.5) < 0.1


@pytest.mark.parametrize("as_tensor", [False, True])
def test_inject_transforms_numpy_and_torch(as_tensor):
    image = np.full((1, 64, 64), 0.3, dtype=np.float32)
    patch = np.ones((6, 6), dtype=np.float32)
    data = torch.as_tensor(image) if as_tensor else image
    out, mask = InjectArtefact(CustomArtefact(patch, name="square"), seed=0)(data)
    assert type(out) is type(data) and out.shape == (1, 64, 64) and mask.shape == (1, 64, 64)
    out_np = np.asarray(out)
    assert int(np.asarray(mask).sum()) == 36 and np.allclose(out_np[np.asarray(mask)], 0.97)
    d = InjectArtefactd("image", CustomArtefact(lambda rng, shape, layout: np.pad(np.ones((4, 4)), ((0, 60), (0, 60)))),
                        mask_key="mask_artefact", seed=1)({"image": data, "other": 1})
    assert np.asarray(d["mask_artefact"])[0, :4, :4].all() and d["other"] == 1


def test_custom_artefact_respects_outside_lungs():
    lungs = np.zeros((64, 64), dtype=bool)
    lungs[10:50, 10:50] = True
    art = CustomArtefact(np.ones((5, 5)), placement="outside_lungs")
    _, mask = InjectArtefact(art, layout=Layout(lungs=lungs), seed=3)(np.zeros((64, 64), dtype=np.float32))
    assert mask.any() and not (mask & lungs).any()
