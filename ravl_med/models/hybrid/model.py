"""The hybrid model: an image tower, a text tower and a learnable temperature (:class:`HybridCLIP`),
and :func:`build_hybrid`, which builds one offline from a registry config's tower configs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ravl_med.models.hybrid.image import (
    KEY_MAPS,
    VISION_TOWERS,
    CNNImageTower,
    TimmImageTower,
    XrvDenseNetImageTower,
)
from ravl_med.models.hybrid.projection import PROJECTIONS
from ravl_med.models.hybrid.text import POOLINGS, TEXT_TOWERS, HFTextTower, HFTokenizer

__all__ = ["HybridCLIP", "build_hybrid", "validate_hybrid_config"]

_VISION_KEYS = {
    "tower", "timm_model_name", "in_chans", "image_size", "checkpoint", "checkpoint_sha256", "key_map",
    "projection",
}  # fmt: skip
_TEXT_KEYS = {"tower", "hf_model_path", "checkpoint_sha256", "context_length", "pooling", "projection"}


class HybridCLIP(nn.Module):
    """Image tower + text tower + learnable temperature, with open_clip ``CLIP``'s interface.

    Args:
        visual: the image tower, (B, K, H, W) -> (B, D).
        text: the text tower, (N, L) ids -> (N, D).
        init_logit_scale: initial log inverse temperature, default log(1 / 0.07).

    Attributes:
        visual, text: the towers; ``logit_scale``: scalar parameter; ``output_dict``: return a dict
            from :meth:`forward` instead of a tuple (as open_clip).
    """

    def __init__(
        self, visual: CNNImageTower, text: HFTextTower, init_logit_scale: float = math.log(1 / 0.07)
    ) -> None:
        super().__init__()
        if visual.output_dim != text.output_dim:
            raise ValueError(f"tower dimensions differ: image {visual.output_dim} vs text {text.output_dim}")
        self.visual, self.text = visual, text
        self.embed_dim = visual.output_dim
        self.logit_scale = nn.Parameter(torch.ones([]) * init_logit_scale)
        self.output_dict = False
        #: Keep the text tower in eval mode whatever ``train()`` says (set when it is frozen): its dropout
        #: off, so that a frozen tower is a fixed function of the text (and its outputs can be cached).
        self.text_eval = False

    def train(self, mode: bool = True) -> "HybridCLIP":
        super().train(mode)
        if self.text_eval:
            self.text.eval()
        return self

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """(B, K, H, W) preprocessed images -> (B, D) embeddings (unit rows if ``normalize``)."""
        features = self.visual(image)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """(N, L) token ids from the backbone's tokenizer -> (N, D) embeddings."""
        features = self.text(text)
        return F.normalize(features, dim=-1) if normalize else features

    def forward(self, image: torch.Tensor | None = None, text: torch.Tensor | None = None):
        """Returns ``(image_features (B, D), text_features (N, D), logit_scale.exp())``, unit rows.

        As open_clip, a missing input gives ``None`` in its place, and ``output_dict`` switches to a
        dict with the keys ``image_features``, ``text_features``, ``logit_scale``.
        """
        image_features = self.encode_image(image, normalize=True) if image is not None else None
        text_features = self.encode_text(text, normalize=True) if text is not None else None
        if self.output_dict:
            return {
                "image_features": image_features,
                "text_features": text_features,
                "logit_scale": self.logit_scale.exp(),
            }
        return image_features, text_features, self.logit_scale.exp()

    def lock_image_tower(self, unlocked_groups: int = 0, freeze_bn_stats: bool = True) -> int:
        """Freezes the image backbone but its last ``unlocked_groups`` layer groups (as open_clip).

        The projection head stays trainable. BatchNorm layers of the frozen groups stay in eval mode
        (pretrained running statistics, never updated, never batch statistics), whatever
        ``freeze_bn_stats`` says: it is accepted for open_clip's signature; a frozen prefix must be
        a fixed function of the image to run without gradient and to be cached
        (:meth:`CNNImageTower.lock`).

        Args:
            unlocked_groups: trailing groups left trainable (0: the whole backbone is frozen); for
                timm towers the groups are timm's coarse ones (EfficientNet-Lite0: stem, 7 stages,
                the last with ``conv_head``: 8).
            freeze_bn_stats: kept for open_clip's signature; frozen groups' statistics are always frozen.

        Returns:
            the number of frozen groups.
        """
        del freeze_bn_stats
        return self.visual.lock(unlocked_groups)

    def lock_text_tower(self, unlocked_layers: int = 0, freeze_layer_norm: bool = True) -> None:
        """Freezes the pretrained text encoder (the projection head stays trainable)."""
        if unlocked_layers:
            raise NotImplementedError("HybridCLIP locks the whole text encoder (unlocked_layers=0)")
        for parameter in self.text.model.parameters():
            parameter.requires_grad = False


def validate_hybrid_config(name: str, vision_cfg: Mapping[str, Any], text_cfg: Mapping[str, Any]) -> None:
    """Checks a hybrid config's structure (not its paths, which are checked when it is built).

    Raises:
        ValueError: unknown tower kind, unknown keys, a missing required key, or a bad option.
    """
    for label, cfg, allowed, towers in (
        ("vision_cfg", vision_cfg, _VISION_KEYS, VISION_TOWERS),
        ("text_cfg", text_cfg, _TEXT_KEYS, TEXT_TOWERS),
    ):
        unknown = set(cfg) - allowed
        if unknown:
            raise ValueError(f"backbone config {name!r}: {label} has unknown keys {sorted(unknown)}; allowed {sorted(allowed)}")
        if cfg.get("tower") not in towers:
            raise ValueError(f"backbone config {name!r}: {label}['tower'] must be one of {towers}, got {cfg.get('tower')!r}")
        if cfg.get("projection", "linear") not in PROJECTIONS:
            raise ValueError(f"backbone config {name!r}: {label}['projection'] must be one of {PROJECTIONS}")
    if vision_cfg["tower"] == "timm" and not vision_cfg.get("timm_model_name"):
        raise ValueError(f"backbone config {name!r}: a timm image tower needs 'timm_model_name'")
    if vision_cfg.get("key_map") is not None and vision_cfg["key_map"] not in KEY_MAPS:
        raise ValueError(f"backbone config {name!r}: unknown key_map {vision_cfg['key_map']!r}; known {sorted(KEY_MAPS)}")
    if not text_cfg.get("hf_model_path"):
        raise ValueError(f"backbone config {name!r}: a hf text tower needs 'hf_model_path' (a local folder)")
    if text_cfg.get("pooling", "mean") not in POOLINGS:
        raise ValueError(f"backbone config {name!r}: text_cfg['pooling'] must be one of {POOLINGS}")


def build_hybrid(
    embed_dim: int,
    vision_cfg: Mapping[str, Any],
    text_cfg: Mapping[str, Any],
    image_checkpoint: str | Path | None = None,
    image_sha256: str | None = None,
    init_logit_scale: float = math.log(1 / 0.07),
) -> tuple[HybridCLIP, HFTokenizer]:
    """Builds a :class:`HybridCLIP` and its tokenizer from tower configs, offline.

    Args:
        embed_dim: joint dimension D.
        vision_cfg, text_cfg: tower configs (see the module docstring).
        image_checkpoint: overrides ``vision_cfg["checkpoint"]`` (the image backbone's initial weights).
        image_sha256: digest for ``image_checkpoint`` (overrides ``vision_cfg["checkpoint_sha256"]``).
        init_logit_scale: initial log inverse temperature.

    Returns:
        ``(model, tokenizer)``.

    Raises:
        FileNotFoundError: a checkpoint path or text folder that does not exist (named).
        ChecksumError: a digest mismatch. WeightsError: weights that do not fit the tower.
    """
    checkpoint = image_checkpoint if image_checkpoint is not None else vision_cfg.get("checkpoint")
    sha256 = image_sha256 if image_checkpoint is not None else vision_cfg.get("checkpoint_sha256")
    projection = vision_cfg.get("projection", "linear")
    image_size = int(vision_cfg.get("image_size", 224))
    if vision_cfg["tower"] == "timm":
        visual: CNNImageTower = TimmImageTower(
            vision_cfg["timm_model_name"],
            embed_dim,
            image_size=image_size,
            in_chans=int(vision_cfg.get("in_chans", 3)),
            checkpoint=checkpoint,
            checkpoint_sha256=sha256,
            key_map=vision_cfg.get("key_map"),
            projection=projection,
        )
    elif vision_cfg["tower"] == "xrv_densenet":
        visual = XrvDenseNetImageTower(
            embed_dim, image_size=image_size, checkpoint=checkpoint, checkpoint_sha256=sha256, projection=projection
        )
    else:
        raise ValueError(f"unknown image tower {vision_cfg['tower']!r}; known {VISION_TOWERS}")
    tokenizer = HFTokenizer(text_cfg["hf_model_path"], int(text_cfg.get("context_length", 128)))
    text = HFTextTower(
        tokenizer.folder,
        embed_dim,
        pad_token_id=tokenizer.pad_token_id,
        pooling=text_cfg.get("pooling", "mean"),
        projection=text_cfg.get("projection", "linear"),
        checkpoint_sha256=text_cfg.get("checkpoint_sha256"),
    )
    return HybridCLIP(visual, text, init_logit_scale=init_logit_scale), tokenizer
