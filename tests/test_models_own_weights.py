"""Bring-your-own pretrained models, in the layouts they are published in, loaded offline.

Each format is built here with random weights of the right architecture, then loaded through the
registry from a local path with its sha256, every socket connection refused:

* an open_clip model folder (``local-dir:<folder>``; BiomedCLIP's layout): equal to open_clip's own
  ``create_model_and_transforms("local-dir:<folder>")`` and ``get_tokenizer``;
* an OpenAI-CLIP-layout ``.pt`` (``openai-clip``; CheXzero's layout): equal to open_clip's
  ``load_openai_model``;
* a MedCLIP-style hybrid state dict (``medclip-effnet-minilm``): equal to the model that was saved.

The README's "Audit your own model" YAML lines are checked against the audit's model loader.
"""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.model import CLIP, convert_weights_to_fp16
from open_clip.openai import load_openai_model
from open_clip.transformer import QuickGELU
from safetensors.torch import save_file

from ravl_med.config import ConfigError, load_config
from ravl_med.models import ChecksumError, WeightsError, create_backbone, file_sha256, get_backbone_spec
from ravl_med.stages.audit import _load_model
from ravl_med.stages.config import AuditConfig
from tests.packages import HYBRID_PACKAGES, requires

pytestmark = pytest.mark.usefixtures("no_network", "one_torch_thread")

TEXTS = ["no finding", "a chest x-ray showing a left pneumothorax with a chest drain"]
TINY_TEXT = {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}
#: open_clip model_cfg values: a tiny ViT, and a BiomedCLIP-shaped timm ViT image tower (tiny variant).
MODEL_CFGS = {
    "vit": {"embed_dim": 32, "text_cfg": TINY_TEXT,
            "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16}},
    "timm": {"embed_dim": 32, "text_cfg": TINY_TEXT,
             "vision_cfg": {"timm_model_name": "vit_tiny_patch16_224", "timm_model_pretrained": False,
                            "timm_pool": "", "timm_proj": "linear", "image_size": 224}},
}  # fmt: skip
PREPROCESS_CFG = {"mean": [0.49, 0.49, 0.49], "std": [0.25, 0.26, 0.27], "interpolation": "bicubic"}


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    return message


def _embeddings(model, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(tokens)


def _grey_images(side: int, batch: int = 2) -> torch.Tensor:
    """(B, 1, S, S) in [0, 1], what ingestion yields."""
    return torch.rand(batch, 1, side, side, generator=torch.Generator().manual_seed(7))


def _write_folder_config(folder: Path, model_cfg: dict) -> None:
    config = {"model_cfg": model_cfg, "preprocess_cfg": PREPROCESS_CFG}
    (folder / "open_clip_config.json").write_text(json.dumps(config))


def _open_clip_folder(folder: Path, model_cfg: dict, weights_name: str) -> Path:
    """An open_clip model folder with random weights; returns the weights file."""
    torch.manual_seed(0)
    model = CLIP(**model_cfg)
    folder.mkdir(parents=True, exist_ok=True)
    _write_folder_config(folder, model_cfg)
    state = {key: value.detach().clone().contiguous() for key, value in model.state_dict().items()}
    weights = folder / weights_name
    if weights.suffix == ".safetensors":
        save_file(state, str(weights))
    else:
        torch.save(state, weights)
    return weights


@pytest.fixture(scope="module")
def openai_layout(tmp_path_factory):
    """A tiny OpenAI-CLIP-layout ViT state dict, float16 where OpenAI's are: (path, sha256)."""
    torch.manual_seed(1)
    model = CLIP(
        32,
        vision_cfg={"image_size": 64, "layers": 2, "width": 64, "patch_size": 16},
        text_cfg={"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2},
        quick_gelu=True,
    )
    convert_weights_to_fp16(model)
    path = tmp_path_factory.mktemp("chexzero") / "best_64_0.0001_original_17000_0.863.pt"
    torch.save(model.state_dict(), path)
    return path, file_sha256(path)


# 1. open_clip model folder ------------------------------------------------------------------- #


@pytest.mark.parametrize(
    ("architecture", "weights_name"),
    [("vit", "open_clip_model.safetensors"), ("vit", "open_clip_pytorch_model.bin"),
     ("timm", "open_clip_model.safetensors")],
)
def test_open_clip_folder_equals_open_clip_loader(tmp_path, architecture, weights_name):
    folder = tmp_path / "my-clip"
    weights = _open_clip_folder(folder, MODEL_CFGS[architecture], weights_name)
    digest = file_sha256(weights)
    model, preprocess, tokenizer = create_backbone(f"local-dir:{folder}", checkpoint=folder, sha256=digest)
    reference, _, _ = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    reference.eval()
    reference_tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")

    assert torch.equal(tokenizer(TEXTS), reference_tokenizer(TEXTS))
    side = MODEL_CFGS[architecture]["vision_cfg"]["image_size"]
    assert preprocess.image_size == side
    for ours, theirs in ((preprocess.mean, "mean"), (preprocess.std, "std")):
        expected = torch.tensor(reference.visual.preprocess_cfg[theirs])
        torch.testing.assert_close(ours.flatten(), expected, rtol=0, atol=0)
    images, tokens = preprocess(_grey_images(side)), tokenizer(TEXTS)
    for actual, expected in zip(_embeddings(model, images, tokens), _embeddings(reference, images, tokens)):
        torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)


def test_open_clip_folder_errors_are_one_line(tmp_path):
    folder = tmp_path / "my-clip"
    weights = _open_clip_folder(folder, MODEL_CFGS["vit"], "open_clip_model.safetensors")
    with pytest.raises(ChecksumError) as error:
        create_backbone(f"local-dir:{folder}", checkpoint=folder, sha256="0" * 64)
    assert file_sha256(weights) in _one_line(error)
    with pytest.raises(FileNotFoundError) as error:
        create_backbone(f"local-dir:{tmp_path / 'nowhere'}")
    assert "open_clip model folder not found" in _one_line(error)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError) as error:
        create_backbone(f"local-dir:{empty}")
    assert "no open_clip_config.json, so not an open_clip model folder" in _one_line(error)
    (empty / "open_clip_config.json").write_text(json.dumps({"preprocess_cfg": PREPROCESS_CFG}))
    with pytest.raises(ValueError) as error:
        create_backbone(f"local-dir:{empty}")
    assert "no 'model_cfg'" in _one_line(error)
    with pytest.raises(FileNotFoundError) as error:
        create_backbone(f"local-dir:{folder}", checkpoint=empty)  # a folder without weights
    assert "no checkpoint file" in _one_line(error)


def test_open_clip_folder_with_a_hub_text_tower_is_refused(tmp_path):
    """BiomedCLIP's text tower is a Hugging Face model named by its hub id: refused, in one line."""
    folder = tmp_path / "biomedclip-like"
    folder.mkdir()
    hub_id = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"
    model_cfg = {**MODEL_CFGS["timm"], "text_cfg": {"hf_model_name": hub_id, "hf_tokenizer_name": hub_id,
                                                    "hf_proj_type": "mlp", "context_length": 256}}  # fmt: skip
    _write_folder_config(folder, model_cfg)
    with pytest.raises(ValueError) as error:
        create_backbone(f"local-dir:{folder}")
    assert hub_id in _one_line(error) and "Hugging Face" in str(error.value)


# 2. OpenAI-CLIP layout (CheXzero) ------------------------------------------------------------ #


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")  # open_clip tries it first
def test_openai_layout_equals_open_clip_loader(openai_layout):
    path, digest = openai_layout
    model, preprocess, tokenizer = create_backbone("openai-clip", checkpoint=path, sha256=digest)
    reference = load_openai_model(str(path), precision="fp32", device="cpu")

    assert isinstance(model.transformer.resblocks[0].mlp.gelu, QuickGELU)  # as OpenAI trained it
    assert preprocess.image_size == 64
    torch.testing.assert_close(preprocess.mean.flatten(), torch.tensor(OPENAI_DATASET_MEAN), rtol=0, atol=0)
    torch.testing.assert_close(preprocess.std.flatten(), torch.tensor(OPENAI_DATASET_STD), rtol=0, atol=0)
    assert torch.equal(tokenizer(TEXTS), open_clip.tokenize(TEXTS))  # CLIP BPE at 77 tokens
    images, tokens = preprocess(_grey_images(64)), tokenizer(TEXTS)
    for actual, expected in zip(_embeddings(model, images, tokens), _embeddings(reference, images, tokens)):
        torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)


def test_openai_layout_keeps_float32_weights(tmp_path, openai_layout):
    """open_clip's builder rounds weights to float16; a float32 file is loaded as stored."""
    stored = torch.load(openai_layout[0])
    state = {key: value.float() + 1e-4 * torch.randn(value.shape) for key, value in stored.items()}
    path = tmp_path / "float32.pt"
    torch.save(state, path)
    model, _, _ = create_backbone("openai-clip", checkpoint=path)
    for key, value in model.state_dict().items():
        if key in state:
            assert value.dtype == torch.float32 and torch.equal(value, state[key]), key


def test_openai_layout_errors_are_one_line(tmp_path, openai_layout):
    path, digest = openai_layout
    with pytest.raises(ChecksumError) as error:
        create_backbone("openai-clip", checkpoint=path, sha256="f" * 64)
    assert digest in _one_line(error)
    with pytest.raises(ValueError) as error:
        create_backbone("openai-clip")
    assert "reads its architecture from the checkpoint" in _one_line(error)
    with pytest.raises(ValueError, match="infers it from the checkpoint"):
        get_backbone_spec("openai-clip")
    other = tmp_path / "hybrid-like.pt"
    torch.save({"visual.backbone.conv.weight": torch.zeros(2, 2), "text.proj.weight": torch.zeros(2, 2)}, other)
    with pytest.raises(WeightsError) as error:
        create_backbone("openai-clip", checkpoint=other)
    assert "not an OpenAI-CLIP-layout state dict" in _one_line(error)
    scripted = tmp_path / "ViT-B-32.pt"  # OpenAI's original files are TorchScript archives
    with pytest.warns(FutureWarning):
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), scripted)
    with pytest.raises(WeightsError) as error:
        create_backbone("openai-clip", checkpoint=scripted)
    assert "TorchScript archive" in _one_line(error) and "torch.jit.load" in str(error.value)


# 3. MedCLIP-style hybrid state dict ----------------------------------------------------------- #

needs_hybrid_packages = requires(HYBRID_PACKAGES)


@needs_hybrid_packages
def test_medclip_style_state_dict_loads_with_sha256(tmp_path):
    torch.manual_seed(2)
    saved, preprocess, tokenizer = create_backbone("medclip-effnet-minilm")
    with torch.no_grad():
        for parameter in saved.parameters():  # weights that differ from the packaged initialisation
            parameter.add_(0.01 * torch.randn_like(parameter))
    folder = tmp_path / "my-medclip"
    folder.mkdir()
    torch.save(saved.state_dict(), folder / "pytorch_model.bin")  # a user's plain torch.save
    digest = file_sha256(folder / "pytorch_model.bin")
    assert {key.split(".")[0] for key in saved.state_dict()} == {"visual", "text", "logit_scale"}

    loaded, _, _ = create_backbone("medclip-effnet-minilm", checkpoint=folder, sha256=digest)
    images, tokens = preprocess(_grey_images(224)), tokenizer(TEXTS)
    for actual, expected in zip(_embeddings(loaded, images, tokens), _embeddings(saved, images, tokens)):
        torch.testing.assert_close(actual, expected, rtol=0, atol=0)

    # MedCLIP's own module names (vision_model.*, text_model.*) are not this model's: one line says which.
    renamed = {key.replace("visual.", "vision_model.", 1).replace("text.", "text_model.", 1): value
               for key, value in saved.state_dict().items()}  # fmt: skip
    torch.save(renamed, tmp_path / "medclip-names.bin")
    with pytest.raises(WeightsError) as error:
        create_backbone("medclip-effnet-minilm", checkpoint=tmp_path / "medclip-names.bin")
    assert "missing keys" in _one_line(error) and "unexpected keys" in str(error.value)
    assert "unexpected keys start with: text_model, vision_model; missing ones with: text, visual" in str(error.value)


# 4. The README's YAML lines, through the audit's model loader --------------------------------- #


@pytest.mark.parametrize("layout", ["local-dir", "openai-clip"])
def test_documented_audit_yaml_loads_the_model(tmp_path, layout, openai_layout):
    if layout == "local-dir":
        folder = tmp_path / "my-clip"
        weights = _open_clip_folder(folder, MODEL_CFGS["vit"], "open_clip_model.safetensors")
        lines = f"backbone: local-dir:{folder}\ncheckpoint: {folder}\nsha256: {file_sha256(weights)}\n"
    else:
        path, digest = openai_layout
        lines = f"backbone: openai-clip\ncheckpoint: {path}\nsha256: {digest}\n"
    config_file = tmp_path / "my-audit.yaml"
    config_file.write_text(lines + "classes: [no finding, pneumothorax]\n")
    config = load_config(config_file, AuditConfig)
    model, preprocess, tokenizer, digest, notes = _load_model(config, "cpu")
    assert digest == config.sha256 and not notes  # verified: no "unverified" note
    with torch.no_grad():
        model(preprocess(_grey_images(preprocess.image_size)), tokenizer(TEXTS))


def test_audit_model_errors_are_one_config_line(tmp_path):
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    (folder / "weights.safetensors").write_bytes(b"")
    config_file = tmp_path / "my-audit.yaml"
    config_file.write_text(f"backbone: local-dir:{folder}\ncheckpoint: {folder}\nclasses: [no finding]\n")
    with pytest.raises(ConfigError) as error:
        _load_model(load_config(config_file, AuditConfig), "cpu")
    assert "no open_clip_config.json" in _one_line(error)


def test_audit_refuses_a_region_mode_the_tower_lacks_in_one_line(tmp_path):
    folder = tmp_path / "biomedclip-shaped"
    _open_clip_folder(folder, MODEL_CFGS["timm"], "open_clip_model.safetensors")
    config_file = tmp_path / "my-audit.yaml"
    config_file.write_text(f"backbone: local-dir:{folder}\ncheckpoint: {folder}\nclasses: [no finding]\n")
    config = load_config(config_file, AuditConfig)
    assert config.region_mode == "one_pass"
    with pytest.raises(ConfigError) as error:
        _load_model(config, "cpu")
    assert _one_line(error).startswith("region_mode: one-pass region embeddings need") and "crop" in _one_line(error)
    config.region_mode = "crop"
    _load_model(config, "cpu")  # the documented way out works
