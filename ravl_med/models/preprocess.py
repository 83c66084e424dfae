"""From the ingestion output to an image tower's input: grey [0, 1] -> normalised 3-channel tensor.

Ingestion (:mod:`ravl_med.data.pipeline`) yields (1, S, S) float tensors in [0, 1], letterboxed, so
the only steps left are channel repetition, a resize when S differs from the tower's input size, and
the per-channel normalisation the tower was trained with. Tensors in, tensors out (no PIL), so the
same module runs on a GPU batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.utils import convert_to_tensor
from torch import nn

__all__ = ["RadiographPreprocess"]


class RadiographPreprocess(nn.Module):
    """(1, S, S) or (B, 1, S, S) images in [0, 1] -> (3, N, N) or (B, 3, N, N) normalised tensors.

    A 3-channel input is accepted as is (no repetition). When S != N the image is resized with
    antialiased bilinear interpolation; candidate boxes must then be scaled by N / S as well (see
    :meth:`scale_boxes`).

    Args:
        image_size: the tower's input side N, pixels.
        mean: per-channel mean subtracted after repetition (3 values).
        std: per-channel standard deviation divided by (3 values).
    """

    def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 values each, got {list(mean)} and {list(std)}")
        self.image_size = int(image_size)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, image) -> torch.Tensor:
        """Args:
            image: (C, H, W) or (B, C, H, W) float in [0, 1], C in {1, 3}; MetaTensor or tensor.

        Returns:
            float32 tensor of the same rank, 3 channels, side ``image_size``, normalised.
        """
        x = convert_to_tensor(image, dtype=torch.float32, track_meta=False)
        single = x.ndim == 3
        if single:
            x = x[None]
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"expected (1|3, H, W) or (B, 1|3, H, W), got shape {tuple(image.shape)}")
        x = x.to(self.mean.device)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False, antialias=True)
        x = (x - self.mean) / self.std
        return x[0] if single else x

    def scale_boxes(self, boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Boxes (R, 4) x0,y0,x1,y1 in pixels of an (H, W) input -> pixels of the (N, N) output."""
        scale = torch.tensor(
            [self.image_size / width, self.image_size / height] * 2, dtype=torch.float32, device=boxes.device
        )
        return boxes.float() * scale

    def extra_repr(self) -> str:
        return f"image_size={self.image_size}"
