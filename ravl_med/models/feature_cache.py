"""Outputs of frozen model parts, computed once and reused every epoch of a fine-tuning run.

Two caches, both in memory, both exact only while what they cache cannot change:

* :class:`TextEmbeddingCache`: a frozen text tower (``freeze_text``) is a fixed function of the
  text, so each distinct training text is encoded once (the MedCLIP setting: 800 phantom reports,
  10 epochs, 1 text pass instead of 10). Trailing columns that are padding in every row of a batch
  are trimmed first when the tower reads padding from its ``pad_token_id`` (the hybrid's Hugging
  Face tower: the attention mask hides padding as keys, and positions are absolute, so the unpadded
  tokens see the same inputs; the embeddings agree up to float rounding).
* :class:`FrozenFeatureCache`: a locked CNN image tower's frozen input-side prefix
  (:meth:`~ravl_med.models.hybrid.CNNImageTower.frozen_features`, BatchNorm on running statistics)
  is a fixed function of the image, so its feature maps are computed once per image key. Valid
  only while an image key always names the same pixels: random augmentation, or mitigation's
  counterfactual region swaps (a new paste every epoch), break it; the trainer then trains uncached.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FrozenFeatureCache", "TextEmbeddingCache", "trim_padding"]


def trim_padding(tokens: torch.Tensor, pad_token_id: int) -> torch.Tensor:
    """(N, L) ids -> (N, L') with the trailing columns that are padding in every row removed (L' >= 1)."""
    used = (tokens != pad_token_id).any(dim=0).nonzero()
    length = int(used.max()) + 1 if used.numel() else 1
    return tokens[:, :length]


class TextEmbeddingCache:
    """Unit text embeddings of a frozen text tower, one encoding per distinct string.

    Args:
        model: anything with ``encode_text((N, L) ids) -> (N, D)``; its text tower must not train
            while the cache is used (``freeze_text``).
        tokenizer: strings -> (N, L) int64 ids (the backbone's).
        pad_token_id: padding id of the text tower, when it masks padding (trailing padding is then
            trimmed before encoding); ``None``: the ids are encoded as they are. Default: the
            ``text.pad_token_id`` of the model when it has one (the hybrid's tower).
    """

    def __init__(self, model: nn.Module, tokenizer: Callable[[list[str]], torch.Tensor],
                 pad_token_id: int | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        if pad_token_id is None:
            pad_token_id = getattr(getattr(model, "text", None), "pad_token_id", None)
        self.pad_token_id = pad_token_id
        self._embeddings: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._embeddings)

    @torch.no_grad()
    def __call__(self, texts: Sequence[str], device: torch.device | str = "cpu") -> torch.Tensor:
        """B strings -> (B, D) float32 unit embeddings on ``device`` (new strings encoded together, once)."""
        new = sorted({text for text in texts if text not in self._embeddings})
        if new:
            tokens = self.tokenizer(new)
            if self.pad_token_id is not None:
                tokens = trim_padding(tokens, self.pad_token_id)
            parameter = next(self.model.parameters())
            encoded = F.normalize(self.model.encode_text(tokens.to(parameter.device)).float(), dim=-1)
            self._embeddings.update(zip(new, encoded.cpu()))
        return torch.stack([self._embeddings[text] for text in texts]).to(device)


class FrozenFeatureCache:
    """Feature maps of a locked image tower's frozen prefix, one computation per image key.

    Args:
        tower: a :class:`~ravl_med.models.hybrid.CNNImageTower` after ``lock``; its
            ``frozen_features`` must be a fixed function of the image (it is, after ``lock``).
    """

    def __init__(self, tower: nn.Module) -> None:
        if not hasattr(tower, "frozen_features") or not hasattr(tower, "forward_from_frozen"):
            raise TypeError(f"{type(tower).__name__} has no frozen prefix to cache (a hybrid CNN tower has)")
        self.tower = tower
        self._maps: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._maps)

    @torch.no_grad()
    def __call__(self, keys: Sequence[str], images: Callable[[list[int]], torch.Tensor],
                 device: torch.device | str = "cpu") -> torch.Tensor:
        """The frozen-prefix maps of B images.

        Args:
            keys: B image keys (one key, one fixed image).
            images: ``indices -> (n, K, H, W)`` preprocessed images of those batch positions, called
                once for the keys not yet cached (so cached images are never preprocessed again).
            device: where the result goes.

        Returns:
            (B, C, h, w) float32 maps (``tower.frozen_features`` of each image).
        """
        missing = [index for index, key in enumerate(keys) if str(key) not in self._maps]
        if missing:
            maps = self.tower.frozen_features(images(missing)).float()
            for index, features in zip(missing, maps.cpu()):
                self._maps[str(keys[index])] = features.clone()
        return torch.stack([self._maps[str(key)] for key in keys]).to(device)
