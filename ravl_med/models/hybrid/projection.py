"""The projection head that maps a hybrid tower's pooled features into the joint space."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PROJECTIONS", "ProjectionHead"]

PROJECTIONS = ("linear", "mlp")


class ProjectionHead(nn.Module):
    """Maps pooled tower features (N, C) to the joint space (N, D).

    Args:
        in_dim: C.
        out_dim: D.
        kind: ``"linear"`` (one bias-free linear map, as CLIP) or ``"mlp"`` (linear, GELU, linear:
            the MedCLIP-style head).
    """

    def __init__(self, in_dim: int, out_dim: int, kind: str = "linear") -> None:
        super().__init__()
        if kind not in PROJECTIONS:
            raise ValueError(f"projection must be one of {PROJECTIONS}, got {kind!r}")
        self.kind = kind
        if kind == "linear":
            self.layers = nn.Sequential(nn.Linear(in_dim, out_dim, bias=False))
        else:
            self.layers = nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C) -> (N, D)."""
        return self.layers(x)
