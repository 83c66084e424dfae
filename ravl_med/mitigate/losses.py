"""RaVL stage 2: the region-aware fine-tuning loss, open_clip style (one place for the equations).

With s(r, y) = <f(r), g(y)> (cosine), m(R, y) = max_{r in R} s(r, y), tau the region temperature,
R_i / S_i the relevant / spurious regions of image i and S_B the union of the S_i over the batch B:

    L_R = -mean_i log( exp(m(R_i,y_i)/tau) /
                       ( sum_{j in B} exp(m(R_i,y_j)/tau) + sum_{r in S_B} exp(max_{j in B} s(r,y_j)/tau) ) )
    L_A = -mean_i log( exp(m(R_i,y_i)/tau) /
                       ( exp(m(R_i,y_i)/tau) + sum_{k in B, y_k != y_i} exp(m(R_k,y_i)/tau)
                         + sum_{r in S_B} exp(s(r,y_i)/tau) ) )
    L   = lambda * L_CLIP + (1 - lambda) * (L_R + L_A)

(``docs/ravl-method.md``, stage 2). Reading choices, each documented here so that they can be
changed in one place:

* ``sum_{j in B}`` runs over every image of the batch with a known label (labels repeated in the
  batch are counted once per image, as written), including images without relevant regions: their
  label is still a batch label. ``max_{j in B}`` runs over the same labels.
* Images with no relevant region, or with an unknown label (< 0), drop out of the means (their
  m(R_i, .) is undefined); in L_A they are never a k either. Their spurious regions stay in S_B.
* When no image of the batch has a relevant region, both region terms are 0 (connected to the graph).
* Region and class text embeddings are L2-normalised here, so s is a cosine whatever the caller passes.
* tau is fixed (default 0.07), not the model's learned ``logit_scale`` (which only enters L_CLIP).

Region terms are computed on this process's batch only; under DDP, L_CLIP is gathered across
processes as usual.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ravl_med.models.losses import LabelAwareClipLoss

__all__ = ["RegionAwareLoss", "pack_regions", "region_text_terms"]


def pack_regions(
    region_features: Sequence[torch.Tensor], region_is_spurious: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Packs per-image region tensors.

    Args:
        region_features: B tensors (R_i, D).
        region_is_spurious: B bool tensors (R_i,).

    Returns:
        ``(features (M, D), region_image (M,) int64, is_spurious (M,) bool)``, M = sum R_i.
    """
    if len(region_features) != len(region_is_spurious):
        raise ValueError(f"{len(region_features)} region tensors but {len(region_is_spurious)} masks")
    device = region_features[0].device if len(region_features) else None
    image = torch.cat([torch.full((f.shape[0],), i, dtype=torch.int64, device=device)
                       for i, f in enumerate(region_features)])
    spurious = torch.cat([torch.as_tensor(s, dtype=torch.bool, device=device).reshape(-1) for s in region_is_spurious])
    if spurious.shape[0] != image.shape[0]:
        raise ValueError(f"masks hold {spurious.shape[0]} values for {image.shape[0]} regions")
    return torch.cat(list(region_features)), image, spurious


def region_text_terms(
    region_features: torch.Tensor,
    region_image: torch.Tensor,
    region_is_spurious: torch.Tensor,
    class_text_features: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 0.07,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L_R and L_A of one batch (see the module docstring).

    Args:
        region_features: (M, D) region embeddings of the batch (any norm; normalised here).
        region_image: (M,) int64 index in [0, B) of each region's image.
        region_is_spurious: (M,) bool, True for regions of S_i, False for R_i.
        class_text_features: (C, D) class text embeddings g(y) (normalised here).
        labels: (B,) int64 class index y_i per image (< 0: unknown).
        temperature: tau.

    Returns:
        ``(L_R, L_A, n_used)``: scalars (nats) and the number of images in the means (int64 scalar).
    """
    batch = labels.shape[0]
    labels = labels.to(region_features.device)
    region_image = region_image.to(region_features.device)
    spurious = region_is_spurious.to(region_features.device).bool()
    regions = F.normalize(region_features, dim=-1)
    texts = F.normalize(class_text_features.to(regions.dtype), dim=-1)
    known = labels >= 0
    batch_text = texts[labels.clamp(min=0)]  # (B, D): column j is y_j
    scores = regions @ batch_text.T  # (M, B): s(r, y_j)

    # m(R_i, y_j) for every image i (rows) and batch label j (columns); -inf where R_i is empty.
    relevant = ~spurious
    index = region_image[relevant][:, None].expand(-1, batch)
    best = scores.new_full((batch, batch), float("-inf")).scatter_reduce(
        0, index, scores[relevant], reduce="amax", include_self=False
    )
    has_relevant = torch.zeros(batch, dtype=torch.bool, device=regions.device)
    has_relevant[region_image[relevant]] = True
    used = has_relevant & known
    n_used = used.sum()
    if not bool(used.any()):
        zero = region_features.sum() * 0.0 + class_text_features.sum() * 0.0
        return zero, zero, n_used

    logits = best / temperature  # (B, B)
    positive = logits.diagonal()  # m(R_i, y_i) / tau
    spurious_scores = scores[spurious][:, known] / temperature  # (|S_B|, B_known): s(r, y_j) / tau

    # L_R: denominator over the batch labels j and over the spurious regions' best batch label.
    to_text = logits[:, known]  # (B, B_known)
    if spurious_scores.shape[0]:
        spurious_best = spurious_scores.amax(dim=1)  # (|S_B|,)
        to_text = torch.cat([to_text, spurious_best[None].expand(batch, -1)], dim=1)
    loss_r = (torch.logsumexp(to_text[used], dim=1) - positive[used]).mean()

    # L_A: label y_i against the relevant regions of images with another label and every spurious region.
    other = used[:, None] & (labels[:, None] != labels[None, :])  # (K, I): image k usable and y_k != y_i
    to_regions = logits.T.masked_fill(~other.T, float("-inf"))  # (I, K): m(R_k, y_i) / tau
    parts = [positive[:, None], to_regions]
    if spurious_scores.shape[0]:
        parts.append((scores[spurious] / temperature).T)  # (I, |S_B|): s(r, y_i) / tau
    to_region = torch.cat(parts, dim=1)
    loss_a = (torch.logsumexp(to_region[used], dim=1) - positive[used]).mean()
    return loss_r, loss_a, n_used


class RegionAwareLoss(nn.Module):
    """L = lambda * L_CLIP + (1 - lambda) * (L_R + L_A) (see the module docstring).

    L_CLIP is the fine-tuning recipe's own contrastive loss: the symmetric InfoNCE, or with
    ``label_aware`` the label-aware soft targets (pairs sharing a label are positives), so that RaVL
    and standard fine-tuning differ by the region terms only.

    Args:
        lambda_: weight of the image-report InfoNCE term, in [0, 1].
        temperature: tau of the region-text terms.
        rank, world_size: the process's place in ``torch.distributed`` (for L_CLIP's gather).
        label_aware: L_CLIP with label-aware targets (:class:`~ravl_med.models.losses.LabelAwareClipLoss`).
    """

    def __init__(self, lambda_: float = 0.8, temperature: float = 0.07, rank: int = 0, world_size: int = 1,
                 label_aware: bool = False) -> None:
        super().__init__()
        if not 0.0 <= lambda_ <= 1.0:
            raise ValueError(f"lambda_ must be in [0, 1], got {lambda_}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.lambda_, self.temperature = float(lambda_), float(temperature)
        self.label_aware = bool(label_aware)
        self.clip = LabelAwareClipLoss(rank=rank, world_size=world_size)  # plain InfoNCE when given no labels

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor,
        region_features: torch.Tensor | Sequence[torch.Tensor],
        region_is_spurious: torch.Tensor | Sequence[torch.Tensor],
        class_text_features: torch.Tensor,
        labels: torch.Tensor,
        region_image: torch.Tensor | None = None,
        logit_bias: torch.Tensor | None = None,
        output_dict: bool = False,
    ):
        """Args:
            image_features: (B, D) L2-normalised image embeddings.
            text_features: (B, D) L2-normalised embeddings of the paired reports.
            logit_scale: scalar inverse temperature of L_CLIP (already exponentiated).
            region_features: B tensors (R_i, D), or packed (M, D) with ``region_image``.
            region_is_spurious: B bool tensors (R_i,), or packed (M,) bool.
            class_text_features: (C, D) class text embeddings.
            labels: (B,) int64 class per image (< 0: unknown, out of the region terms).
            region_image: (M,) int64 image index per packed region (packed input only).
            logit_bias: optional scalar added to the L_CLIP logits.
            output_dict: return the weighted terms ``{"clip_loss": lambda * L_CLIP,
                "region_loss": (1 - lambda) * (L_R + L_A)}`` instead of their sum: as open_clip's losses,
                the values add up to L (bit for bit), so a loop that sums the dict trains on L.

        Returns:
            the scalar total L (nats), or the dict of its two terms.
        """
        if region_image is None:
            if isinstance(region_features, torch.Tensor):
                raise ValueError("packed region_features need region_image")
            region_features, region_image, region_is_spurious = pack_regions(region_features, region_is_spurious)
        elif not isinstance(region_is_spurious, torch.Tensor):
            region_is_spurious = torch.as_tensor(region_is_spurious, dtype=torch.bool)
        clip = self.clip(image_features, text_features, logit_scale, labels=labels if self.label_aware else None,
                         logit_bias=logit_bias)
        loss_r, loss_a, _ = region_text_terms(
            region_features, region_image, region_is_spurious, class_text_features, labels, self.temperature
        )
        clip_term = self.lambda_ * clip
        region_term = (1.0 - self.lambda_) * (loss_r + loss_a)
        if output_dict:
            return {"clip_loss": clip_term, "region_loss": region_term}
        return clip_term + region_term
