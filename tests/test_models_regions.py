"""Region embeddings: one pass vs whole-image encoding vs crop-and-re-encode.

Random initialisation is used throughout. open_clip zero-initialises the last BatchNorm of each
ResNet bottleneck, which makes a fresh RN tower nearly input-independent (every embedding agrees
with every other, so agreement tests would prove nothing); ``_wake`` randomises the BatchNorm
affine parameters and calibrates their statistics so that different images give different
embeddings (checked below).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ravl_med.data.transforms import region_grid
from ravl_med.models import create_backbone
from ravl_med.models.regions import RegionEmbedder


def _wake(model, size):
    for module in model.visual.modules():
        if isinstance(module, nn.BatchNorm2d):
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.normal_(module.bias, 0.0, 0.1)
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration batch
    model.train()
    with torch.no_grad():
        model.visual(torch.randn(4, 3, size, size))
    return model.eval()


def _images(batch, size):
    generator = torch.Generator().manual_seed(7)
    images = torch.rand(batch, 1, size, size, generator=generator)
    ramp = torch.linspace(0, 1, size)
    images[0] = ramp[None, :] * ramp[:, None]  # smooth image, unlike the noise ones
    return images


def _backbone(name, wake=True):
    torch.manual_seed(0)
    model, preprocess, _ = create_backbone(name)
    if wake and "vit" not in name.lower():
        _wake(model, preprocess.image_size)
    return model, preprocess


@pytest.mark.parametrize("name,batch", [("tiny-rn", 3), ("RN50", 2)])
def test_cnn_whole_image_box_matches_image_embedding(name, batch):
    model, preprocess = _backbone(name)
    size = preprocess.image_size
    images = preprocess(_images(batch, size))
    whole = torch.tensor([[0.0, 0.0, size, size]])
    with torch.no_grad():
        image_embeddings = F.normalize(model.encode_image(images), dim=-1)
        one_pass = torch.cat(RegionEmbedder(model)(images, [whole] * batch))
        crop = torch.cat(RegionEmbedder(model, "crop")(images, [whole] * batch))
    assert float(image_embeddings[0] @ image_embeddings[1]) < 0.9  # the tower does tell images apart
    cos_one_pass = (one_pass * image_embeddings).sum(dim=1)
    cos_crop = (crop * image_embeddings).sum(dim=1)
    print(f"{name} whole-image box: one-pass cos {cos_one_pass.tolist()}, crop cos {cos_crop.tolist()}")
    assert (cos_one_pass > 0.95).all() and (cos_crop > 0.95).all()


def test_shapes_several_boxes_and_one_pass_vs_crop():
    model, preprocess = _backbone("tiny-rn")
    size = preprocess.image_size
    images = preprocess(_images(3, size))
    grid, _ = region_grid([0, 0, size, size], (2, 4))
    boxes = [grid, grid[:5], torch.zeros((0, 4))]
    with torch.no_grad():
        one_pass = RegionEmbedder(model)(images, boxes)
        crop = RegionEmbedder(model, "crop", crop_batch_size=7)(images, boxes)
    assert [e.shape for e in one_pass] == [(20, 64), (5, 64), (0, 64)]
    assert [e.shape for e in crop] == [(20, 64), (5, 64), (0, 64)]
    torch.testing.assert_close(one_pass[0].norm(dim=1), torch.ones(20))
    # Regions of one image differ from each other, and one-pass tracks crop-and-re-encode.
    assert float((one_pass[1] @ one_pass[1].T).min()) < 0.99
    side_by_side = (one_pass[1] * crop[1]).sum(dim=1)
    print(f"tiny-rn 4x4+2x2 grid, one-pass vs crop cosine: mean {side_by_side.mean():.3f} min {side_by_side.min():.3f}")
    assert float(side_by_side.mean()) > 0.5
    # Batching does not change results.
    with torch.no_grad():
        alone = RegionEmbedder(model)(images[1:2], [grid[:5]])[0]
    torch.testing.assert_close(alone, one_pass[1], atol=1e-5, rtol=1e-4)


def test_gradients_flow_for_mitigation():
    model, preprocess = _backbone("tiny-rn")
    images = preprocess(_images(2, preprocess.image_size))
    boxes = [torch.tensor([[0.0, 0.0, 64.0, 64.0]])] * 2
    RegionEmbedder(model)(images, boxes)[0].sum().backward()
    assert model.visual.attnpool.c_proj.weight.grad is not None


@pytest.mark.parametrize("name", ["tiny-vit", "ViT-B-32"])
def test_vit_whole_image_box(name):
    model, preprocess = _backbone(name)
    size = preprocess.image_size
    images = preprocess(_images(2, size))
    whole = torch.tensor([[0.0, 0.0, size, size]])
    with torch.no_grad():
        image_embeddings = F.normalize(model.encode_image(images), dim=-1)
        masked = torch.cat(RegionEmbedder(model, vit_pool="masked_cls")(images, [whole] * 2))
        mean = torch.cat(RegionEmbedder(model, vit_pool="token_mean")(images, [whole] * 2))
    cos_masked = (masked * image_embeddings).sum(dim=1)
    cos_mean = (mean * image_embeddings).sum(dim=1)
    print(f"{name} whole-image box: masked_cls cos {cos_masked.tolist()}, token_mean cos {cos_mean.tolist()}")
    # masked_cls with every token allowed is the ordinary forward pass.
    assert (cos_masked > 0.999).all()
    # token_mean pools patch tokens where the image uses the class token: at random initialisation
    # the two are nearly unrelated (measured 0.06-0.54), so only sanity is asserted here.
    assert torch.isfinite(cos_mean).all() and (cos_mean.abs() <= 1.0 + 1e-5).all()


def test_vit_small_box_uses_nearest_token_and_matches_shapes():
    model, preprocess = _backbone("tiny-vit")
    images = preprocess(_images(1, preprocess.image_size))
    # A 2-pixel box between patch centres (16 px patches, centres at 8, 24, ...).
    boxes = [torch.tensor([[10.0, 10.0, 12.0, 12.0], [0.0, 0.0, 64.0, 64.0]])]
    for pool in ("token_mean", "masked_cls"):
        with torch.no_grad():
            out = RegionEmbedder(model, vit_pool=pool)(images, boxes)[0]
        assert out.shape == (2, 64) and torch.isfinite(out).all()


def test_bad_arguments():
    model, _ = _backbone("tiny-rn", wake=False)
    with pytest.raises(ValueError, match="mode"):
        RegionEmbedder(model, mode="fast")
    with pytest.raises(ValueError, match="images"):
        RegionEmbedder(model)(torch.zeros(2, 3, 128, 128), [torch.zeros(1, 4)])


@pytest.mark.parametrize("training", [False, True])
def test_first_token_attention_pool_equals_open_clip_attnpool(training):
    from ravl_med.models.regions import _attention_pool_first_token

    torch.manual_seed(0)
    model, _, _ = create_backbone("tiny-rn")
    pool = model.visual.attnpool.train(training)
    side = round((pool.positional_embedding.shape[0] - 1) ** 0.5)
    x = torch.randn(6, pool.k_proj.in_features, side, side, requires_grad=True)
    expected, got = pool(x), _attention_pool_first_token(pool, x)
    assert torch.allclose(got, expected, atol=1e-5)
    (grad_expected,) = torch.autograd.grad(expected.square().sum(), x)
    (grad_got,) = torch.autograd.grad(got.square().sum(), x)
    assert torch.allclose(grad_got, grad_expected, atol=1e-5)
