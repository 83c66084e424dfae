"""Hybrid text tower: a local Hugging Face encoder with masked pooling, and its tokenizer.

The model and tokenizer are read from a local folder (``local_files_only``), never from the hub;
pooling is the mean over unpadded tokens (sentence-transformers style) or the CLS token, followed by a
:class:`~ravl_med.models.hybrid.projection.ProjectionHead`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ravl_med.models.hybrid.projection import ProjectionHead
from ravl_med.models.weights import ChecksumError, file_sha256, resolve_checkpoint, resolve_local_path

__all__ = ["POOLINGS", "TEXT_TOWERS", "HFTextTower", "HFTokenizer"]

TEXT_TOWERS = ("hf",)
POOLINGS = ("mean", "cls")


def _quietly(load: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Calls a transformers loader without its per-call progress bar (restored afterwards)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return load(*args, **kwargs)
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


class HFTokenizer:
    """Strings -> fixed-length input ids, with open_clip's tokenizer calling convention.

    Args:
        folder: local Hugging Face model folder holding the tokenizer files.
        context_length: L, the padded/truncated length.

    Attributes:
        pad_token_id: the id the text tower reads as padding (its attention mask is ``ids != pad``).
    """

    def __init__(self, folder: str | Path, context_length: int = 128) -> None:
        from transformers import AutoTokenizer

        self.folder = resolve_local_path(folder, "text tower folder")
        self.context_length = int(context_length)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.folder), local_files_only=True)
        if self.tokenizer.pad_token_id is None:
            raise ValueError(f"the tokenizer in {self.folder} has no pad token; the text tower needs one")
        self.pad_token_id = int(self.tokenizer.pad_token_id)

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        """Args:
            texts: a string or N strings.
            context_length: override of L.

        Returns:
            (N, L) int64 input ids, padded with ``pad_token_id``, truncated to L.
        """
        if isinstance(texts, str):
            texts = [texts]
        length = int(context_length or self.context_length)
        encoded = self.tokenizer(
            list(texts), padding="max_length", truncation=True, max_length=length, return_tensors="pt"
        )
        return encoded["input_ids"].long()


class HFTextTower(nn.Module):
    """A local Hugging Face encoder, masked pooling and a projection head.

    Args:
        folder: local model folder (``config.json`` + weights); never a hub name.
        embed_dim: joint dimension D.
        pad_token_id: the padding id; the attention mask is ``input_ids != pad_token_id``.
        pooling: ``"mean"`` over unpadded tokens (sentence-transformers style) or ``"cls"``.
        projection: see :class:`ProjectionHead`.
        checkpoint_sha256: expected hex digest of the folder's weight file.
    """

    def __init__(
        self,
        folder: str | Path,
        embed_dim: int,
        pad_token_id: int,
        pooling: str = "mean",
        projection: str = "linear",
        checkpoint_sha256: str | None = None,
    ) -> None:
        super().__init__()
        from transformers import AutoModel

        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.folder = resolve_local_path(folder, "text tower folder")
        if checkpoint_sha256 is not None:
            weights_file = resolve_checkpoint(self.folder)
            actual = file_sha256(weights_file)
            if actual != checkpoint_sha256.strip().lower():
                raise ChecksumError(
                    f"sha256 mismatch for {weights_file}: expected {checkpoint_sha256.strip().lower()}, got {actual}"
                )
        self.model = _quietly(AutoModel.from_pretrained, str(self.folder), local_files_only=True, dtype=torch.float32)
        self.pad_token_id, self.pooling = int(pad_token_id), pooling
        self.output_dim = int(embed_dim)
        self.proj = ProjectionHead(int(self.model.config.hidden_size), self.output_dim, projection)

    def pooled(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(N, L) input ids -> (N, hidden) pooled encoder output (before the projection)."""
        mask = (input_ids != self.pad_token_id).long()
        hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state  # (N, L, hidden)
        if self.pooling == "cls":
            return hidden[:, 0]
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(N, L) input ids -> (N, D) unnormalised embeddings."""
        return self.proj(self.pooled(input_ids))
