"""The region-aware loss (RaVL stage 2) on hand-computed cases: two images, three regions, D = 2.

Expected values are written out from the equations of ``docs/ravl-method.md`` with ``math``, not
from the implementation.
"""

from __future__ import annotations

import math

import pytest
import torch

from ravl_med.mitigate.losses import RegionAwareLoss, region_text_terms

TAU = 0.07
# Class texts y0 = (1, 0), y1 = (0, 1). Image 0 (label 0): r0 relevant, r1 spurious; image 1 (label 1): r2 relevant.
TEXTS = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
REGIONS = torch.tensor([[0.6, 0.8], [0.8, 0.6], [-0.6, 0.8]], dtype=torch.float64)
REGION_IMAGE = torch.tensor([0, 0, 1])
SPURIOUS = torch.tensor([False, True, False])
LABELS = torch.tensor([0, 1])


def e(x: float) -> float:
    return math.exp(x / TAU)


def nll(numerator: float, denominator: float) -> float:
    return -math.log(numerator / denominator)


def test_region_to_text_term_by_hand():
    # s(r0,y0)=.6 s(r0,y1)=.8 | s(r1,y0)=.8 s(r1,y1)=.6 | s(r2,y0)=-.6 s(r2,y1)=.8; S_B = {r1}, max_j s(r1,y_j)=.8
    image0 = nll(e(0.6), e(0.6) + e(0.8) + e(0.8))
    image1 = nll(e(0.8), e(-0.6) + e(0.8) + e(0.8))
    loss_r, _, used = region_text_terms(REGIONS, REGION_IMAGE, SPURIOUS, TEXTS, LABELS, TAU)
    assert int(used) == 2
    assert float(loss_r) == pytest.approx((image0 + image1) / 2, rel=1e-10)


def test_text_to_region_term_by_hand():
    # label y0: own m(R0,y0)=.6, other image m(R1,y0)=-.6, spurious s(r1,y0)=.8
    image0 = nll(e(0.6), e(0.6) + e(-0.6) + e(0.8))
    # label y1: own m(R1,y1)=.8, other image m(R0,y1)=.8, spurious s(r1,y1)=.6
    image1 = nll(e(0.8), e(0.8) + e(0.8) + e(0.6))
    _, loss_a, _ = region_text_terms(REGIONS, REGION_IMAGE, SPURIOUS, TEXTS, LABELS, TAU)
    assert float(loss_a) == pytest.approx((image0 + image1) / 2, rel=1e-10)


def test_same_label_images_are_not_negatives_in_text_to_region():
    labels = torch.tensor([1, 1])
    # both images labelled y1: no k with y_k != y_i, so L_A only sees own region and S_B
    image0 = nll(e(0.8), e(0.8) + e(0.6))  # m(R0,y1)=.8, s(r1,y1)=.6
    image1 = nll(e(0.8), e(0.8) + e(0.6))  # m(R1,y1)=.8
    _, loss_a, _ = region_text_terms(REGIONS, REGION_IMAGE, SPURIOUS, TEXTS, labels, TAU)
    assert float(loss_a) == pytest.approx((image0 + image1) / 2, rel=1e-10)
    # L_R counts the label once per image of the batch: denominators hold two copies of y1
    image0_r = nll(e(0.8), 2 * e(0.8) + e(0.6))  # max_j s(r1, y_j) = s(r1, y1) = .6
    loss_r, _, _ = region_text_terms(REGIONS, REGION_IMAGE, SPURIOUS, TEXTS, labels, TAU)
    assert float(loss_r) == pytest.approx((image0_r + image0_r) / 2, rel=1e-10)


def test_images_without_relevant_regions_drop_out():
    # image 1 has only a spurious region (r2 marked spurious): it leaves the means, but its label stays
    # a batch label in L_R and its region joins S_B.
    spurious = torch.tensor([False, True, True])
    s_b_best = [max(0.8, 0.6), max(-0.6, 0.8)]  # max_j s(r, y_j) for r1, r2
    loss_r_expected = nll(e(0.6), e(0.6) + e(0.8) + e(s_b_best[0]) + e(s_b_best[1]))
    loss_a_expected = nll(e(0.6), e(0.6) + e(0.8) + e(-0.6))  # no other usable image; S_B: s(r1,y0), s(r2,y0)
    loss_r, loss_a, used = region_text_terms(REGIONS, REGION_IMAGE, spurious, TEXTS, LABELS, TAU)
    assert int(used) == 1
    assert float(loss_r) == pytest.approx(loss_r_expected, rel=1e-10)
    assert float(loss_a) == pytest.approx(loss_a_expected, rel=1e-10)
    # unknown label: the image drops out the same way
    loss_r2, _, used2 = region_text_terms(REGIONS, REGION_IMAGE, SPURIOUS, TEXTS, torch.tensor([0, -1]), TAU)
    assert int(used2) == 1 and math.isfinite(float(loss_r2))


def test_no_relevant_region_gives_zero_with_a_graph():
    regions = REGIONS.clone().requires_grad_(True)
    loss_r, loss_a, used = region_text_terms(regions, REGION_IMAGE, torch.ones(3, dtype=torch.bool), TEXTS, LABELS, TAU)
    assert int(used) == 0 and float(loss_r.detach()) == 0.0 and float(loss_a.detach()) == 0.0
    (loss_r + loss_a).backward()
    assert torch.equal(regions.grad, torch.zeros_like(regions))


def test_total_with_clip_term_by_hand_and_list_input():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    text = torch.tensor([[0.8, 0.6], [0.6, 0.8]], dtype=torch.float64)
    scale = torch.tensor(10.0, dtype=torch.float64)
    # logits = 10 * image @ text.T = [[8, 6], [6, 8]]: every row and column has the positive at 8
    clip = -math.log(math.exp(8) / (math.exp(8) + math.exp(6)))
    loss_r = (nll(e(0.6), e(0.6) + 2 * e(0.8)) + nll(e(0.8), e(-0.6) + 2 * e(0.8))) / 2
    loss_a = (nll(e(0.6), e(0.6) + e(-0.6) + e(0.8)) + nll(e(0.8), 2 * e(0.8) + e(0.6))) / 2
    loss = RegionAwareLoss(lambda_=0.8, temperature=TAU)
    packed = loss(image, text, scale, REGIONS, SPURIOUS, TEXTS, LABELS, region_image=REGION_IMAGE, output_dict=True)
    assert float(packed["clip_loss"]) == pytest.approx(0.8 * clip, rel=1e-10)
    assert float(sum(packed.values())) == pytest.approx(0.8 * clip + 0.2 * (loss_r + loss_a), rel=1e-10)
    listed = loss(image, text, scale, [REGIONS[:2], REGIONS[2:]], [SPURIOUS[:2], SPURIOUS[2:]], TEXTS, LABELS)
    assert float(listed) == pytest.approx(float(sum(packed.values())), rel=1e-12)


def test_output_dict_holds_the_weighted_terms_of_the_scalar_loss():
    # Regression: the dict held the unweighted terms plus the total, so an open_clip-style loop that
    # sums it (total_loss = sum(losses.values())) ignored lambda and counted the loss twice.
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    text = torch.tensor([[0.8, 0.6], [0.6, 0.8]], dtype=torch.float64)
    scale = torch.tensor(10.0, dtype=torch.float64)
    for lambda_ in (0.0, 0.3, 0.8, 1.0):
        loss = RegionAwareLoss(lambda_=lambda_, temperature=TAU)
        args = (image, text, scale, REGIONS, SPURIOUS, TEXTS, LABELS)
        parts = loss(*args, region_image=REGION_IMAGE, output_dict=True)
        scalar = loss(*args, region_image=REGION_IMAGE)
        assert set(parts) == {"clip_loss", "region_loss"}
        assert torch.equal(sum(parts.values()), scalar)
        loss_r, loss_a, _ = region_text_terms(REGIONS, REGION_IMAGE, SPURIOUS, TEXTS, LABELS, TAU)
        assert float(parts["region_loss"]) == pytest.approx((1 - lambda_) * float(loss_r + loss_a), rel=1e-12)


def test_label_aware_clip_term_follows_the_recipe():
    # Regression: RaVL's L_CLIP ignored the recipe's label-aware targets, so with repeated label
    # sentences it pushed apart the very pairs standard fine-tuning treats as positives.
    from ravl_med.models.losses import LabelAwareClipLoss

    image = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6]], dtype=torch.float64)
    text = torch.tensor([[0.8, 0.6], [0.6, 0.8], [0.8, 0.6]], dtype=torch.float64, requires_grad=True)
    scale = torch.tensor(10.0, dtype=torch.float64)
    labels = torch.tensor([0, 1, 0])  # images 0 and 2 share a label (and the same label sentence)
    flags = torch.zeros(3, dtype=torch.bool)
    aware = RegionAwareLoss(lambda_=1.0, temperature=TAU, label_aware=True)
    out = aware(image, text, scale, REGIONS, flags, TEXTS, labels, region_image=torch.arange(3), output_dict=True)
    expected = LabelAwareClipLoss()(image, text, scale, labels=labels)
    assert float(out["clip_loss"]) == pytest.approx(float(expected), rel=1e-12)
    (aware_grad,) = torch.autograd.grad(sum(out.values()), text)
    plain = RegionAwareLoss(lambda_=1.0, temperature=TAU)(image, text, scale, REGIONS, flags, TEXTS, labels,
                                                          region_image=torch.arange(3))
    (plain_grad,) = torch.autograd.grad(plain, text)
    # plain InfoNCE treats text 2 as a negative of image 0 (same label): their gradients differ there
    assert not torch.allclose(aware_grad, plain_grad)


def test_region_terms_are_scale_free_and_parameters_checked():
    loss_r, loss_a, _ = region_text_terms(REGIONS * 3.0, REGION_IMAGE, SPURIOUS, TEXTS * 0.5, LABELS, TAU)
    ref_r, ref_a, _ = region_text_terms(REGIONS, REGION_IMAGE, SPURIOUS, TEXTS, LABELS, TAU)
    assert float(loss_r) == pytest.approx(float(ref_r)) and float(loss_a) == pytest.approx(float(ref_a))
    with pytest.raises(ValueError):
        RegionAwareLoss(lambda_=1.5)
    with pytest.raises(ValueError):
        RegionAwareLoss(temperature=0.0)


def test_gradcheck_float64():
    gen = torch.Generator().manual_seed(0)
    batch, dim, classes = 3, 4, 3
    image = torch.randn(batch, dim, dtype=torch.float64, generator=gen, requires_grad=True)
    text = torch.randn(batch, dim, dtype=torch.float64, generator=gen, requires_grad=True)
    regions = torch.randn(7, dim, dtype=torch.float64, generator=gen, requires_grad=True)
    class_text = torch.randn(classes, dim, dtype=torch.float64, generator=gen, requires_grad=True)
    region_image = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    spurious = torch.tensor([False, True, False, False, True, True, True])  # image 2: spurious only
    labels = torch.tensor([0, 1, 2])
    loss = RegionAwareLoss(lambda_=0.5, temperature=0.5)

    def total(i, t, r, c):
        return loss(i, t, torch.tensor(2.0, dtype=torch.float64), r, spurious, c, labels, region_image=region_image)

    def terms(r, c):
        out = region_text_terms(r, region_image, spurious, c, labels, 0.5)
        return out[0], out[1]

    assert torch.autograd.gradcheck(total, (image, text, regions, class_text))
    assert torch.autograd.gradcheck(terms, (regions, class_text))
