"""From the ingestion output to an image tower's input: grey [0, 1] -> normalised tensor.

Ingestion (:mod:`ravl_med.data.pipeline`) yields (1, S, S) float tensors in [0, 1], letterboxed, so
the only steps left are channel repetition (or averaging, for 1-channel towers), a resize when S
differs from the tower's input size, and the per-channel normalisation the tower was trained with.
Tensors in, tensors out (no PIL), so the same module runs on a GPU batch.

Each backbone config declares its input convention; :meth:`RadiographPreprocess.from_config` reads
it. Named presets (``image_scaling``) cover conventions that are not a plain mean/std:

* ``"xrv"``: torchxrayvision's 1-channel input with pixel values in [-1024, 1024]
  (``2048 * x - 1024``, i.e. mean 0.5 and std 1/2048 on the [0, 1] image).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.utils import convert_to_tensor
from torch import nn

__all__ = ["SCALING_PRESETS", "RadiographPreprocess"]

#: Named input conventions: preset -> (channels, mean, std) applied to [0, 1] images.
SCALING_PRESETS: dict[str, tuple[int, tuple[float, ...], tuple[float, ...]]] = {
    # torchxrayvision: (x - 0.5) * 2048 maps [0, 1] onto [-1024, 1024].
    "xrv": (1, (0.5,), (1.0 / 2048.0,)),
}


class RadiographPreprocess(nn.Module):
    """(1, S, S) or (B, 1, S, S) images in [0, 1] -> (K, N, N) or (B, K, N, N) normalised tensors.

    K = ``channels``: 3 (grey repeated; a 3-channel input is accepted as is) or 1 (a 3-channel input
    is averaged to grey). When S != N the image is resized with antialiased bilinear interpolation;
    candidate boxes must then be scaled by N / S as well (see :meth:`scale_boxes`).

    Args:
        image_size: the tower's input side N, pixels.
        mean: per-channel mean subtracted after repetition (``channels`` values).
        std: per-channel standard deviation divided by (``channels`` values).
        channels: the tower's input channels K, 1 or 3.
    """

    def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float], channels: int = 3) -> None:
        super().__init__()
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean and std need {channels} values each, got {list(mean)} and {list(std)}")
        if any(float(v) <= 0 for v in std):
            raise ValueError(f"std values must be > 0, got {list(std)}")
        self.image_size = int(image_size)
        self.channels = int(channels)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, channels, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, channels, 1, 1), persistent=False)

    @classmethod
    def from_config(
        cls,
        image_size: int,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        channels: int | None = None,
        scaling: str | None = None,
    ) -> "RadiographPreprocess":
        """Builds the preprocessing a backbone config declares.

        Args:
            image_size: input side N, pixels.
            mean, std: per-channel normalisation; ignored when ``scaling`` names a preset.
            channels: 1 or 3; default 3, or the preset's.
            scaling: a key of :data:`SCALING_PRESETS` (e.g. ``"xrv"``), or ``None`` for mean/std.

        Raises:
            ValueError: unknown preset, or values that do not fit the channel count.
        """
        if scaling is not None:
            if scaling not in SCALING_PRESETS:
                raise ValueError(f"unknown image_scaling {scaling!r}; known: {sorted(SCALING_PRESETS)}")
            preset_channels, mean, std = SCALING_PRESETS[scaling]
            if channels is not None and channels != preset_channels:
                raise ValueError(f"image_scaling {scaling!r} needs {preset_channels} channel(s), config says {channels}")
            channels = preset_channels
        if mean is None or std is None:
            raise ValueError("a preprocessing config needs image_mean and image_std, or image_scaling")
        return cls(image_size, tuple(mean), tuple(std), channels=3 if channels is None else int(channels))

    def forward(self, image) -> torch.Tensor:
        """Args:
            image: (C, H, W) or (B, C, H, W) float in [0, 1], C in {1, 3}; MetaTensor or tensor.

        Returns:
            float32 tensor of the same rank, ``channels`` channels, side ``image_size``, normalised.
        """
        x = convert_to_tensor(image, dtype=torch.float32, track_meta=False)
        single = x.ndim == 3
        if single:
            x = x[None]
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"expected (1|3, H, W) or (B, 1|3, H, W), got shape {tuple(image.shape)}")
        x = x.to(self.mean.device)
        if x.shape[1] != self.channels:
            x = x.expand(-1, 3, -1, -1) if self.channels == 3 else x.mean(dim=1, keepdim=True)
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
        return f"image_size={self.image_size}, channels={self.channels}"
