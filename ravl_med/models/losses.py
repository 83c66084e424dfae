"""Contrastive image-text losses, open_clip style: ``forward(image_features, text_features, logit_scale, ...)``.

* :class:`ClipLoss` is open_clip's symmetric InfoNCE, reused as is: row i of the image-text
  similarity matrix has its positive at column i.
* :class:`LabelAwareClipLoss` (MedCLIP-style) replaces the one-hot targets by a distribution over
  the batch built from label agreement: pairs that share a class count as positives, so two reports
  of the same finding are not pushed apart. With all-distinct labels it is exactly InfoNCE.

Under ``torch.distributed`` (``world_size > 1``) features are gathered from every process (with
gradients), so the similarity matrix spans the global batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from open_clip.loss import ClipLoss

__all__ = ["ClipLoss", "LabelAwareClipLoss", "label_targets"]


def label_targets(labels: torch.Tensor) -> torch.Tensor:
    """Row-normalised label-agreement matrix.

    Args:
        labels: (N,) int64 class indices; a negative value (unknown label) matches only itself.

    Returns:
        (N, N) float32, row i uniform over the j with ``labels[j] == labels[i]`` (always including
        j = i); symmetric when every class's count is the same, rows sum to 1.
    """
    labels = labels.reshape(-1)
    same = labels[:, None] == labels[None, :]
    same &= (labels[:, None] >= 0) | torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    same = same.float()
    return same / same.sum(dim=1, keepdim=True)


class LabelAwareClipLoss(ClipLoss):
    """Symmetric InfoNCE with soft targets from label agreement (MedCLIP-style).

    loss = (CE(logits_per_image, T) + CE(logits_per_text, T)) / 2 with T = :func:`label_targets`
    (soft cross-entropy: -sum_j T_ij log softmax_j(logits_ij), averaged over rows). Without
    ``labels`` it falls back to plain InfoNCE.

    Args:
        rank, world_size: the process's place in ``torch.distributed``; features and labels are
            gathered from all processes when ``world_size > 1``.
    """

    def __init__(self, rank: int = 0, world_size: int = 1) -> None:
        super().__init__(local_loss=False, gather_with_grad=True, rank=rank, world_size=world_size)

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor,
        labels: torch.Tensor | None = None,
        logit_bias: torch.Tensor | None = None,
        output_dict: bool = False,
    ):
        """Args:
            image_features: (B, D) L2-normalised image embeddings.
            text_features: (B, D) L2-normalised text embeddings of the paired reports.
            logit_scale: scalar, the inverse temperature (already exponentiated).
            labels: (B,) int64 class index per pair (negative: unknown), or ``None``.
            logit_bias: optional scalar added to the logits.
            output_dict: return ``{"contrastive_loss": loss}`` instead of the scalar.

        Returns:
            scalar loss (nats).
        """
        if labels is None:
            return super().forward(image_features, text_features, logit_scale, logit_bias, output_dict)
        logits_per_image, logits_per_text = self.get_logits(image_features, text_features, logit_scale, logit_bias)
        labels = labels.to(image_features.device)
        if self.world_size > 1:
            gathered = [torch.empty_like(labels) for _ in range(self.world_size)]
            dist.all_gather(gathered, labels)
            labels = torch.cat(gathered)
        targets = label_targets(labels).to(logits_per_image.dtype)
        loss = (
            -(targets * F.log_softmax(logits_per_image, dim=1)).sum(dim=1).mean()
            - (targets * F.log_softmax(logits_per_text, dim=1)).sum(dim=1).mean()
        ) / 2
        # Label agreement is symmetric, so the row-normalised targets of text i over images are the
        # same matrix as those of image i over texts.
        return {"contrastive_loss": loss} if output_dict else loss
