"""Candidate regions: regular (optionally overlapping, multi-scale) grids of boxes, and their crops.

Boxes follow the convention of :mod:`ravl_med.data.transforms.spatial`: float (R, 4) tensors of
(x0, y0, x1, y1) in image pixels. Attach them before or after the letterbox resize; the spatial
dictionary transforms move them with the image.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Literal

import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_tensor, ensure_tuple
from torchvision.ops import roi_align

__all__ = ["CropRegions", "CropRegionsd", "RegionGrid", "RegionGridd", "region_grid"]

Within = Literal["content", "image"]


def _axis_starts(length: float, cell: float, stride: float) -> torch.Tensor:
    count = max(1, int(round((length - cell) / stride)) + 1)
    if count == 1:
        return torch.zeros(1)
    # Spread the starts evenly so the last cell ends exactly at the far edge.
    return torch.linspace(0.0, length - cell, count)


def region_grid(
    bounds: Sequence[float], grid_sizes: Sequence[int] = (4,), overlap: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Regular grids of boxes covering ``bounds``.

    Args:
        bounds: (x0, y0, x1, y1) area to cover, pixels.
        grid_sizes: cells per side for each scale, e.g. ``(2, 4)`` gives 4 + 16 boxes without overlap.
        overlap: fraction of a cell shared with its neighbour, in [0, 1). With overlap o each scale
            has about (n - o) / (1 - o) cells per side.

    Returns:
        boxes (R, 4) float32 and the scale index of each box (R,) int64 (position in ``grid_sizes``).
    """
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    x0, y0, x1, y1 = (float(v) for v in bounds)
    width, height = x1 - x0, y1 - y0
    boxes, levels = [], []
    for level, n in enumerate(grid_sizes):
        if int(n) < 1:
            raise ValueError(f"grid sizes must be >= 1, got {n}")
        cell_w, cell_h = width / n, height / n
        xs = _axis_starts(width, cell_w, cell_w * (1.0 - overlap)) + x0
        ys = _axis_starts(height, cell_h, cell_h * (1.0 - overlap)) + y0
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        level_boxes = torch.stack([gx, gy, gx + cell_w, gy + cell_h], dim=-1).reshape(-1, 4)
        boxes.append(level_boxes)
        levels.append(torch.full((level_boxes.shape[0],), level, dtype=torch.int64))
    return torch.cat(boxes).float(), torch.cat(levels)


class RegionGrid(Transform):
    """Image (C, H, W) -> candidate boxes (R, 4) on a regular grid.

    Args:
        grid_sizes: cells per side for each scale.
        overlap: fraction of a cell shared with its neighbour, in [0, 1).
        within: ``content`` covers only the letterboxed image content (metadata ``content_box``, set
            by :class:`~ravl_med.data.transforms.spatial.Letterbox`), ``image`` the full array.
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, grid_sizes: Sequence[int] = (4,), overlap: float = 0.0, within: Within = "content") -> None:
        self.grid_sizes, self.overlap, self.within = tuple(int(n) for n in grid_sizes), float(overlap), within

    def bounds(self, img) -> list[float]:
        meta = img.meta if isinstance(img, MetaTensor) else {}
        if self.within == "content" and "content_box" in meta:
            return [float(v) for v in meta["content_box"]]
        return [0.0, 0.0, float(img.shape[-1]), float(img.shape[-2])]

    def __call__(self, img) -> torch.Tensor:
        return region_grid(self.bounds(img), self.grid_sizes, self.overlap)[0]


class RegionGridd(MapTransform):
    """Attaches grid boxes to a sample: ``data[box_key]`` (R, 4) and ``data[box_key + "_scale"]`` (R,).

    Args:
        ref_key: image the grid is laid on.
        box_key: where the boxes go.
        grid_sizes, overlap, within: as :class:`RegionGrid`.
    """

    def __init__(
        self,
        ref_key: str = "image",
        box_key: str = "regions",
        grid_sizes: Sequence[int] = (4,),
        overlap: float = 0.0,
        within: Within = "content",
    ) -> None:
        super().__init__(ref_key)
        self.ref_key, self.box_key = ref_key, box_key
        self.grid = RegionGrid(grid_sizes, overlap, within)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        boxes, levels = region_grid(self.grid.bounds(d[self.ref_key]), self.grid.grid_sizes, self.grid.overlap)
        d[self.box_key], d[f"{self.box_key}_scale"] = boxes, levels
        return d


class CropRegions(Transform):
    """Crops boxes out of an image and resamples each to ``size`` x ``size`` (RoIAlign, bilinear).

    ``__call__(img, boxes)``: img (C, H, W), boxes (R, 4) -> crops (R, C, size, size) float32.
    Large boxes are averaged over several sampling points per output pixel (adaptive
    ``sampling_ratio``), which anti-aliases the downsampling.

    Args:
        size: crop side length, pixels.
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, size: int = 64) -> None:
        self.size = int(size)

    def __call__(self, img, boxes: torch.Tensor) -> torch.Tensor:
        image = convert_to_tensor(img, dtype=torch.float32, track_meta=False)
        rois = torch.as_tensor(boxes, dtype=torch.float32, device=image.device)
        if rois.numel() == 0:
            return image.new_zeros((0, image.shape[0], self.size, self.size))
        return roi_align(image[None], [rois], output_size=self.size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)


class CropRegionsd(MapTransform):
    """Dictionary twin of :class:`CropRegions`: ``data[crop_key]`` = crops of ``data[box_key]``."""

    def __init__(self, ref_key: str = "image", box_key: str = "regions", crop_key: str = "region_crops", size: int = 64):
        super().__init__(ensure_tuple(ref_key))
        self.ref_key, self.box_key, self.crop_key = ref_key, box_key, crop_key
        self.crop = CropRegions(size)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        d[self.crop_key] = self.crop(d[self.ref_key], d[self.box_key])
        return d
