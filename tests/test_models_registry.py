"""Backbone registry: every config builds offline; preprocessing shapes and normalisation."""

from __future__ import annotations

import pytest
import torch

from ravl_med.models import (
    RadiographPreprocess,
    create_backbone,
    get_backbone_spec,
    list_backbones,
)

TINY = ("tiny-rn", "tiny-vit")
STANDARD = ("RN50", "RN101", "ViT-B-32", "ViT-B-16")


def test_registry_lists_all_configs():
    names = list_backbones()
    assert set(TINY) | set(STANDARD) <= set(names)
    assert names == sorted(names)


@pytest.mark.parametrize("name", TINY)
def test_tiny_backbone_forward(name):
    torch.manual_seed(0)
    model, preprocess, tokenizer = create_backbone(name)
    assert not model.training
    spec = get_backbone_spec(name)
    images = preprocess(torch.rand(4, 1, 100, 100))
    assert images.shape == (4, 3, spec.image_size, spec.image_size)
    tokens = tokenizer(["a chest x-ray showing cardiomegaly.", "no finding"])
    assert tokens.shape == (2, spec.text_cfg["context_length"])
    with torch.no_grad():
        assert model.encode_image(images).shape == (4, spec.embed_dim)
        assert model.encode_text(tokens).shape == (2, spec.embed_dim)


@pytest.mark.parametrize("name", STANDARD)
def test_standard_backbone_builds(name):
    model, preprocess, tokenizer = create_backbone(name)
    parameters = sum(p.numel() for p in model.parameters())
    assert 80e6 < parameters < 200e6, parameters
    assert preprocess.image_size == 224
    assert tokenizer(["pneumothorax"]).shape == (1, 77)


def test_open_clip_scheme_and_unknown_name():
    assert get_backbone_spec("open_clip:RN50x4").image_size == 288
    with pytest.raises(KeyError, match="tiny-rn"):
        get_backbone_spec("no-such-backbone")


def test_preprocess_repeats_grey_and_normalises():
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    preprocess = RadiographPreprocess(32, mean, std)
    image = torch.full((1, 32, 32), 0.7)
    out = preprocess(image)
    assert out.shape == (3, 32, 32)
    for c in range(3):
        torch.testing.assert_close(out[c], torch.full((32, 32), (0.7 - mean[c]) / std[c]))


def test_preprocess_resizes_batches_and_scales_boxes():
    preprocess = RadiographPreprocess(64, (0.5,) * 3, (0.5,) * 3)
    out = preprocess(torch.rand(2, 1, 128, 128))
    assert out.shape == (2, 3, 64, 64)
    assert out.min() >= -1.0 - 1e-5 and out.max() <= 1.0 + 1e-5
    boxes = preprocess.scale_boxes(torch.tensor([[0.0, 0.0, 128.0, 64.0]]), 128, 128)
    torch.testing.assert_close(boxes, torch.tensor([[0.0, 0.0, 64.0, 32.0]]))
    with pytest.raises(ValueError, match="expected"):
        preprocess(torch.rand(2, 2, 8, 8))
