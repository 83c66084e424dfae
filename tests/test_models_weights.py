"""Offline weights: local files only, sha256 checks, clear errors, no network."""

from __future__ import annotations

import pytest
import torch

from ravl_med.models import (
    ChecksumError,
    WeightsError,
    create_backbone,
    file_sha256,
    load_state_dict,
    save_checkpoint,
)


def _outputs(model, seed=1):
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(2, 3, 128, 128, generator=generator)
    tokens = torch.randint(1, 1000, (2, 32), generator=generator)
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(tokens)


@pytest.fixture
def trained_tiny(tmp_path):
    torch.manual_seed(3)
    model, _, _ = create_backbone("tiny-rn")
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    return model


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_round_trip_gives_identical_outputs(tmp_path, trained_tiny, suffix):
    path = tmp_path / f"tiny{suffix}"
    digest = save_checkpoint(trained_tiny, path)
    assert digest == file_sha256(path)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind
    loaded, _, _ = create_backbone("tiny-rn", checkpoint=path, sha256=digest)
    for expected, actual in zip(_outputs(trained_tiny), _outputs(loaded)):
        torch.testing.assert_close(actual, expected, rtol=0, atol=0)


@pytest.mark.usefixtures("no_network")
def test_no_socket_opened(tmp_path, trained_tiny):
    path = tmp_path / "tiny.safetensors"
    save_checkpoint(trained_tiny, path)
    for name in ("tiny-rn", "RN50"):
        model, _, tokenizer = create_backbone(name, checkpoint=path if name == "tiny-rn" else None)
        tokenizer(["pleural effusion"])


def test_bad_sha256_refused(tmp_path, trained_tiny):
    path = tmp_path / "tiny.pt"
    actual = save_checkpoint(trained_tiny, path)
    wrong = "0" * 64
    with pytest.raises(ChecksumError) as error:
        create_backbone("tiny-rn", checkpoint=path, sha256=wrong)
    assert wrong in str(error.value) and actual in str(error.value)


def test_missing_path_named(tmp_path):
    missing = tmp_path / "nowhere" / "model.safetensors"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        create_backbone("tiny-rn", checkpoint=missing)
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        load_state_dict(tmp_path)


def test_folder_and_prefix_stripping(tmp_path, trained_tiny):
    wrapped = {"state_dict": {f"module.{k}": v for k, v in trained_tiny.state_dict().items()}}
    torch.save(wrapped, tmp_path / "checkpoint.pt")
    loaded, _, _ = create_backbone("tiny-rn", checkpoint=tmp_path)
    for expected, actual in zip(_outputs(trained_tiny), _outputs(loaded)):
        torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_key_mismatch_reported(tmp_path, trained_tiny):
    state = trained_tiny.state_dict()
    state.pop("logit_scale")
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "partial.pt"
    save_checkpoint(state, path)
    with pytest.raises(WeightsError, match=r"missing keys 1 \(logit_scale\).*unexpected keys 1 \(extra.weight\)"):
        create_backbone("tiny-rn", checkpoint=path)
    create_backbone("tiny-rn", checkpoint=path, strict=False)  # loads what matches
    with pytest.raises(WeightsError, match="shape mismatch"):
        create_backbone("tiny-vit", checkpoint=path, strict=False)
