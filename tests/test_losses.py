"""Contrastive losses: hand-computed small cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ravl_med.models.losses import ClipLoss, LabelAwareClipLoss, label_targets


def _features(seed: int = 0, n: int = 4, d: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=1), F.normalize(torch.randn(n, d, generator=g), dim=1)


def test_clip_loss_matches_a_hand_computed_two_pair_case():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    scale = torch.tensor(2.0)
    # logits = 2 * image @ text.T = [[2, 1.2], [0, 1.6]]
    row0 = -math.log(math.exp(2) / (math.exp(2) + math.exp(1.2)))
    row1 = -math.log(math.exp(1.6) / (math.exp(0) + math.exp(1.6)))
    col0 = -math.log(math.exp(2) / (math.exp(2) + math.exp(0)))
    col1 = -math.log(math.exp(1.6) / (math.exp(1.2) + math.exp(1.6)))
    expected = ((row0 + row1) / 2 + (col0 + col1) / 2) / 2
    assert ClipLoss()(image, text, scale).item() == pytest.approx(expected, rel=1e-6)


def test_label_targets_are_row_normalised_label_agreement():
    targets = label_targets(torch.tensor([0, 1, 0, -1, -1]))
    expected = torch.tensor(
        [
            [0.5, 0.0, 0.5, 0.0, 0.0],
            [0.0, 1.0, 0.0, 0.0, 0.0],
            [0.5, 0.0, 0.5, 0.0, 0.0],
            [0.0, 0.0, 0.0, 1.0, 0.0],  # unknown labels match only themselves
            [0.0, 0.0, 0.0, 0.0, 1.0],
        ]
    )
    assert torch.equal(targets, expected)


def test_label_aware_equals_infonce_with_distinct_labels_or_none():
    image, text = _features()
    scale = torch.tensor(10.0)
    plain = ClipLoss()(image, text, scale)
    assert torch.allclose(LabelAwareClipLoss()(image, text, scale, labels=torch.arange(4)), plain, atol=1e-6)
    assert torch.allclose(LabelAwareClipLoss()(image, text, scale), plain, atol=1e-6)
    assert torch.allclose(LabelAwareClipLoss()(image, text, scale, labels=torch.full((4,), -1)), plain, atol=1e-6)


def test_label_aware_hand_computed_shared_label_case():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 0])
    logits = image @ text.T  # scale 1
    log_p_image = logits.log_softmax(dim=1)
    log_p_text = logits.T.log_softmax(dim=1)
    t = torch.tensor([[0.5, 0, 0.5], [0, 1, 0], [0.5, 0, 0.5]])
    expected = (-(t * log_p_image).sum(1).mean() - (t * log_p_text).sum(1).mean()) / 2
    got = LabelAwareClipLoss()(image, text, torch.tensor(1.0), labels=labels)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    # Same-label pairs are positives: swapping the texts of the two class-0 pairs changes nothing.
    swapped = LabelAwareClipLoss()(image, text[[2, 1, 0]], torch.tensor(1.0), labels=labels)
    assert swapped.item() == pytest.approx(got.item(), rel=1e-6)


def test_label_aware_gradients_flow_and_output_dict():
    image, text = _features(1)
    image.requires_grad_(True)
    out = LabelAwareClipLoss()(image, text, torch.tensor(5.0), labels=torch.tensor([0, 0, 1, 1]), output_dict=True)
    out["contrastive_loss"].backward()
    assert image.grad is not None and torch.isfinite(image.grad).all()
