"""Backbone registry, open_clip style: architectures are JSON data, loaded at import.

Each ``configs/<name>.json`` holds either full open_clip tower configs::

    {"embed_dim": 64, "vision_cfg": {...}, "text_cfg": {...}, "image_mean": [...], "image_std": [...]}

or a reference to one of open_clip's own model configs, with optional overrides::

    {"open_clip_config": "RN50", "image_mean": [...], "image_std": [...]}

Any open_clip architecture is also reachable as ``open_clip:<name>`` (e.g. ``open_clip:RN50x4``).
Models are always built with random initialisation (no ``pretrained`` download); weights come only
from a local ``checkpoint`` (:mod:`ravl_med.models.weights`).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.model import CLIP
from open_clip.tokenizer import SimpleTokenizer

from ravl_med.models.preprocess import RadiographPreprocess
from ravl_med.models.weights import load_checkpoint

__all__ = [
    "CONFIG_DIR",
    "BackboneSpec",
    "add_backbone_config",
    "create_backbone",
    "get_backbone_spec",
    "list_backbones",
]

CONFIG_DIR = Path(__file__).with_name("configs")
OPEN_CLIP_SCHEME = "open_clip:"
_KNOWN_KEYS = {
    "description", "open_clip_config", "embed_dim", "vision_cfg", "text_cfg", "quick_gelu",
    "image_mean", "image_std", "init_logit_scale",
}  # fmt: skip


@dataclass(frozen=True)
class BackboneSpec:
    """A resolved backbone configuration.

    Attributes:
        name: registry name.
        embed_dim: joint embedding dimension D.
        vision_cfg, text_cfg: open_clip tower configs (``CLIPVisionCfg``/``CLIPTextCfg`` fields).
        image_mean, image_std: per-channel normalisation of the 3-channel input.
        quick_gelu: use QuickGELU (OpenAI-trained weights need it).
        tokenizer_name: open_clip model name for :func:`open_clip.get_tokenizer`, or ``None`` for
            the CLIP BPE tokenizer at the text tower's context length.
        description: one line for listings.
    """

    name: str
    embed_dim: int
    vision_cfg: dict[str, Any]
    text_cfg: dict[str, Any]
    image_mean: tuple[float, float, float] = OPENAI_DATASET_MEAN
    image_std: tuple[float, float, float] = OPENAI_DATASET_STD
    quick_gelu: bool = False
    tokenizer_name: str | None = None
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def image_size(self) -> int:
        size = self.vision_cfg.get("image_size", 224)
        return int(size[0] if isinstance(size, (list, tuple)) else size)


_REGISTRY: dict[str, dict[str, Any]] = {}


def _spec_from_dict(name: str, raw: Mapping[str, Any]) -> BackboneSpec:
    unknown = set(raw) - _KNOWN_KEYS
    if unknown:
        raise ValueError(f"backbone config {name!r}: unknown keys {sorted(unknown)}; allowed {sorted(_KNOWN_KEYS)}")
    base: dict[str, Any] = {}
    tokenizer_name = None
    if "open_clip_config" in raw:
        reference = raw["open_clip_config"]
        base = open_clip.get_model_config(reference)
        if base is None:
            raise ValueError(f"backbone config {name!r}: open_clip has no model config {reference!r}")
        tokenizer_name = reference
    merged = {**copy.deepcopy(base), **{k: copy.deepcopy(v) for k, v in raw.items() if k != "open_clip_config"}}
    for key in ("embed_dim", "vision_cfg", "text_cfg"):
        if key not in merged:
            raise ValueError(f"backbone config {name!r}: missing {key!r}")
    if merged["text_cfg"].get("hf_model_name") or merged["text_cfg"].get("hf_tokenizer_name"):
        raise ValueError(f"backbone config {name!r}: Hugging Face text towers are not supported offline here")
    if merged["vision_cfg"].get("timm_model_name") and merged["vision_cfg"].get("timm_model_pretrained"):
        raise ValueError(f"backbone config {name!r}: timm_model_pretrained would download weights")
    return BackboneSpec(
        name=name,
        embed_dim=int(merged["embed_dim"]),
        vision_cfg=merged["vision_cfg"],
        text_cfg=merged["text_cfg"],
        image_mean=tuple(merged.get("image_mean", OPENAI_DATASET_MEAN)),
        image_std=tuple(merged.get("image_std", OPENAI_DATASET_STD)),
        quick_gelu=bool(merged.get("quick_gelu", False)),
        tokenizer_name=tokenizer_name,
        description=str(merged.get("description", "")),
        extra={k: merged[k] for k in ("init_logit_scale",) if k in merged},
    )


def add_backbone_config(path: str | Path) -> list[str]:
    """Registers every ``*.json`` in a folder (or one JSON file); returns the names added.

    Each config is validated when added, so a bad file fails at import, not at first use.
    """
    path = Path(path)
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    added = []
    for file in files:
        raw = json.loads(file.read_text(encoding="utf-8"))
        _spec_from_dict(file.stem, raw)
        _REGISTRY[file.stem] = raw
        added.append(file.stem)
    return added


def list_backbones() -> list[str]:
    """Names of the registered backbone configs, sorted."""
    return sorted(_REGISTRY)


def get_backbone_spec(name: str) -> BackboneSpec:
    """The resolved configuration of a registered name or ``open_clip:<name>``.

    Raises:
        KeyError: unknown name (the message lists the registered ones).
    """
    if name.startswith(OPEN_CLIP_SCHEME):
        return _spec_from_dict(name, {"open_clip_config": name[len(OPEN_CLIP_SCHEME) :]})
    if name not in _REGISTRY:
        raise KeyError(f"unknown backbone {name!r}; registered: {', '.join(list_backbones())} (or open_clip:<name>)")
    return _spec_from_dict(name, _REGISTRY[name])


def _tokenizer(spec: BackboneSpec) -> Callable[..., torch.Tensor]:
    if spec.tokenizer_name is not None:
        return open_clip.get_tokenizer(spec.tokenizer_name)
    return SimpleTokenizer(context_length=int(spec.text_cfg.get("context_length", 77)))


def create_backbone(
    name: str,
    checkpoint: str | Path | None = None,
    sha256: str | None = None,
    device: str | torch.device = "cpu",
    strict: bool = True,
) -> tuple[CLIP, RadiographPreprocess, Callable[..., torch.Tensor]]:
    """Builds a registered backbone, optionally filled with local weights.

    Args:
        name: registered name (see :func:`list_backbones`) or ``open_clip:<name>``.
        checkpoint: local checkpoint file or folder; ``None`` keeps the random initialisation.
            Nothing is ever downloaded.
        sha256: expected hex digest of the checkpoint file.
        device: where the model and the preprocessing buffers live.
        strict: refuse checkpoints with missing or unexpected keys.

    Returns:
        ``(model, preprocess, tokenizer)``: an open_clip ``CLIP`` in eval mode (call ``.train()``
        to fine-tune); a module turning (1, S, S) / (B, 1, S, S) [0, 1] images into normalised
        (3, N, N) / (B, 3, N, N) input, N = the tower's input size; a callable mapping a string or
        list of strings to (n, context_length) int64 token ids.
    """
    spec = get_backbone_spec(name)
    model = CLIP(
        embed_dim=spec.embed_dim,
        vision_cfg=copy.deepcopy(spec.vision_cfg),
        text_cfg=copy.deepcopy(spec.text_cfg),
        quick_gelu=spec.quick_gelu,
        **spec.extra,
    )
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, sha256=sha256, strict=strict)
    model = model.to(device).eval()
    preprocess = RadiographPreprocess(spec.image_size, spec.image_mean, spec.image_std).to(device)
    return model, preprocess, _tokenizer(spec)


add_backbone_config(CONFIG_DIR)
