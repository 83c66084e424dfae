"""Backbone registry, open_clip style: architectures are JSON data, loaded at import.

Each ``configs/<name>.json`` holds either full open_clip tower configs::

    {"embed_dim": 64, "vision_cfg": {...}, "text_cfg": {...}, "image_mean": [...], "image_std": [...]}

or a reference to one of open_clip's own model configs, with optional overrides::

    {"open_clip_config": "RN50", "image_mean": [...], "image_std": [...]}

or a MedCLIP-style hybrid of pretrained towers (:mod:`ravl_med.models.hybrid`)::

    {"kind": "hybrid", "embed_dim": 512, "vision_cfg": {"tower": "timm", ...},
     "text_cfg": {"tower": "hf", "hf_model_path": "/local/folder", ...}, "image_mean": [...], ...}

Every config declares its input convention: ``image_mean``/``image_std`` (one value per channel),
``image_channels`` (3 by default, 1 for grey towers) or a named ``image_scaling`` preset such as
``"xrv"`` (see :mod:`ravl_med.models.preprocess`).

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

from ravl_med.models.hybrid import HybridCLIP, build_hybrid, validate_hybrid_config
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
    "image_mean", "image_std", "init_logit_scale", "kind", "image_channels", "image_scaling",
}  # fmt: skip
KINDS = ("open_clip", "hybrid")


@dataclass(frozen=True)
class BackboneSpec:
    """A resolved backbone configuration.

    Attributes:
        name: registry name.
        embed_dim: joint embedding dimension D.
        vision_cfg, text_cfg: open_clip tower configs (``CLIPVisionCfg``/``CLIPTextCfg`` fields), or
            hybrid tower configs (:mod:`ravl_med.models.hybrid`) when ``kind == "hybrid"``.
        image_mean, image_std: per-channel normalisation of the input (``image_channels`` values).
        quick_gelu: use QuickGELU (OpenAI-trained weights need it).
        tokenizer_name: open_clip model name for :func:`open_clip.get_tokenizer`, or ``None`` for
            the CLIP BPE tokenizer at the text tower's context length.
        description: one line for listings.
        kind: ``"open_clip"`` (an open_clip ``CLIP``) or ``"hybrid"`` (a :class:`HybridCLIP`).
        image_channels: the image tower's input channels, 1 or 3.
        image_scaling: a named preprocessing preset (overrides mean/std), or ``None``.
    """

    name: str
    embed_dim: int
    vision_cfg: dict[str, Any]
    text_cfg: dict[str, Any]
    image_mean: tuple[float, ...] = OPENAI_DATASET_MEAN
    image_std: tuple[float, ...] = OPENAI_DATASET_STD
    quick_gelu: bool = False
    tokenizer_name: str | None = None
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    kind: str = "open_clip"
    image_channels: int = 3
    image_scaling: str | None = None

    @property
    def image_size(self) -> int:
        size = self.vision_cfg.get("image_size", 224)
        return int(size[0] if isinstance(size, (list, tuple)) else size)

    def preprocess(self) -> RadiographPreprocess:
        """The input preprocessing this config declares."""
        return RadiographPreprocess.from_config(
            self.image_size, self.image_mean, self.image_std, self.image_channels, self.image_scaling
        )


_REGISTRY: dict[str, dict[str, Any]] = {}


def _spec_from_dict(name: str, raw: Mapping[str, Any]) -> BackboneSpec:
    unknown = set(raw) - _KNOWN_KEYS
    if unknown:
        raise ValueError(f"backbone config {name!r}: unknown keys {sorted(unknown)}; allowed {sorted(_KNOWN_KEYS)}")
    kind = raw.get("kind", "open_clip")
    if kind not in KINDS:
        raise ValueError(f"backbone config {name!r}: kind must be one of {KINDS}, got {kind!r}")
    if kind == "hybrid":
        return _hybrid_spec_from_dict(name, raw)
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
    spec = BackboneSpec(
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
        image_channels=int(merged.get("image_channels", 3)),
        image_scaling=merged.get("image_scaling"),
    )
    _check_preprocess(name, spec)
    return spec


def _check_preprocess(name: str, spec: BackboneSpec) -> None:
    try:
        spec.preprocess()
    except ValueError as error:
        raise ValueError(f"backbone config {name!r}: {error}") from error


def _hybrid_spec_from_dict(name: str, raw: Mapping[str, Any]) -> BackboneSpec:
    if "open_clip_config" in raw or "quick_gelu" in raw:
        raise ValueError(f"backbone config {name!r}: a hybrid config takes no open_clip_config or quick_gelu")
    for key in ("embed_dim", "vision_cfg", "text_cfg"):
        if key not in raw:
            raise ValueError(f"backbone config {name!r}: missing {key!r}")
    validate_hybrid_config(name, raw["vision_cfg"], raw["text_cfg"])
    scaling = raw.get("image_scaling")
    if scaling is None and ("image_mean" not in raw or "image_std" not in raw):
        raise ValueError(f"backbone config {name!r}: a hybrid config needs image_mean and image_std, or image_scaling")
    spec = BackboneSpec(
        name=name,
        embed_dim=int(raw["embed_dim"]),
        vision_cfg=copy.deepcopy(dict(raw["vision_cfg"])),
        text_cfg=copy.deepcopy(dict(raw["text_cfg"])),
        image_mean=tuple(raw.get("image_mean", ())),
        image_std=tuple(raw.get("image_std", ())),
        description=str(raw.get("description", "")),
        extra={k: raw[k] for k in ("init_logit_scale",) if k in raw},
        kind="hybrid",
        image_channels=int(raw.get("image_channels", 1 if scaling == "xrv" else 3)),
        image_scaling=scaling,
    )
    _check_preprocess(name, spec)
    return spec


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
    image_checkpoint: str | Path | None = None,
    image_sha256: str | None = None,
) -> tuple[CLIP | HybridCLIP, RadiographPreprocess, Callable[..., torch.Tensor]]:
    """Builds a registered backbone, optionally filled with local weights.

    Args:
        name: registered name (see :func:`list_backbones`) or ``open_clip:<name>``.
        checkpoint: local checkpoint file or folder of the whole model (e.g. after fine-tuning);
            ``None`` keeps the initialisation (random for open_clip configs; the configured
            pretrained towers for hybrids). Nothing is ever downloaded.
        sha256: expected hex digest of the checkpoint file.
        device: where the model and the preprocessing buffers live.
        strict: refuse checkpoints with missing or unexpected keys.
        image_checkpoint: hybrids only: local weights of the image backbone alone (e.g. a
            torchxrayvision DenseNet state dict), overriding the config's ``vision_cfg["checkpoint"]``.
        image_sha256: expected hex digest of ``image_checkpoint``.

    Returns:
        ``(model, preprocess, tokenizer)``: an open_clip ``CLIP`` or a :class:`HybridCLIP`, in eval
        mode (call ``.train()`` to fine-tune); a module turning (1, S, S) / (B, 1, S, S) [0, 1]
        images into normalised (K, N, N) / (B, K, N, N) input, N = the tower's input size, K its
        channels; a callable mapping a string or list of strings to (n, context_length) int64 ids.

    Raises:
        FileNotFoundError: a local path (checkpoint, tower weights, text folder) that does not exist.
        ChecksumError, WeightsError: see :mod:`ravl_med.models.weights`.
    """
    spec = get_backbone_spec(name)
    tokenizer: Callable[..., torch.Tensor]
    if spec.kind == "hybrid":
        model, tokenizer = build_hybrid(
            spec.embed_dim,
            spec.vision_cfg,
            spec.text_cfg,
            image_checkpoint=image_checkpoint,
            image_sha256=image_sha256,
            **spec.extra,
        )
    else:
        if image_checkpoint is not None:
            raise ValueError(f"image_checkpoint is for hybrid backbones; {name!r} is an open_clip model (use checkpoint)")
        model = CLIP(
            embed_dim=spec.embed_dim,
            vision_cfg=copy.deepcopy(spec.vision_cfg),
            text_cfg=copy.deepcopy(spec.text_cfg),
            quick_gelu=spec.quick_gelu,
            **spec.extra,
        )
        tokenizer = _tokenizer(spec)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, sha256=sha256, strict=strict)
    model = model.to(device).eval()
    preprocess = spec.preprocess().to(device)
    return model, preprocess, tokenizer


add_backbone_config(CONFIG_DIR)
