"""Candidate regions: regular (optionally overlapping, multi-scale) grids of boxes, content-driven
proposals (superpixel boxes), and their crops.

Boxes follow the convention of :mod:`ravl_med.data.transforms.spatial`: float (R, 4) tensors of
(x0, y0, x1, y1) in image pixels. Attach them before or after the letterbox resize; the spatial
dictionary transforms move them with the image.

A sample's region keys: ``regions`` (R, 4), ``regions_scale`` (R,) int64 level (grid levels first,
in ``grid_sizes`` order, then proposal scales) and ``regions_family`` (R,) int64, an index into
:data:`REGION_FAMILIES`. Counts differ between images once proposals are on.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Literal

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_tensor, ensure_tuple
from torchvision.ops import roi_align

__all__ = [
    "REGION_FAMILIES",
    "CropRegions",
    "CropRegionsd",
    "RegionGrid",
    "RegionGridd",
    "RegionProposals",
    "RegionProposalsd",
    "content_bounds",
    "propose_regions",
    "region_grid",
]

Within = Literal["content", "image"]
ProposalMethod = Literal["slic", "felzenszwalb"]

#: ``regions_family`` codes: position in this tuple.
REGION_FAMILIES: tuple[str, ...] = ("grid", "proposal")


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


def content_bounds(img, within: Within = "content") -> list[float]:
    """The area candidate regions cover: (x0, y0, x1, y1) pixels of ``img`` (C, H, W).

    ``content``: the letterboxed image content (metadata ``content_box``, set by
    :class:`~ravl_med.data.transforms.spatial.Letterbox`), the full array when there is none;
    ``image``: the full array.
    """
    meta = img.meta if isinstance(img, MetaTensor) else {}
    if within == "content" and "content_box" in meta:
        return [float(v) for v in meta["content_box"]]
    return [0.0, 0.0, float(img.shape[-1]), float(img.shape[-2])]


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
        return content_bounds(img, self.within)

    def __call__(self, img) -> torch.Tensor:
        return region_grid(self.bounds(img), self.grid_sizes, self.overlap)[0]


def _put_regions(d: dict, box_key: str, boxes: torch.Tensor, levels: torch.Tensor, family: int) -> None:
    """Appends boxes of one family to the sample's region keys (boxes already there come first)."""
    families = torch.full((boxes.shape[0],), family, dtype=torch.int64)
    if box_key in d:
        boxes = torch.cat([torch.as_tensor(d[box_key], dtype=torch.float32).reshape(-1, 4), boxes])
        levels = torch.cat([torch.as_tensor(d[f"{box_key}_scale"], dtype=torch.int64).reshape(-1), levels])
        # Samples from before families existed: their boxes are grid boxes.
        before = d.get(f"{box_key}_family", torch.zeros(boxes.shape[0] - families.shape[0], dtype=torch.int64))
        families = torch.cat([torch.as_tensor(before, dtype=torch.int64).reshape(-1), families])
    d[box_key], d[f"{box_key}_scale"], d[f"{box_key}_family"] = boxes, levels, families


class RegionGridd(MapTransform):
    """Attaches grid boxes to a sample: ``data[box_key]`` (R, 4), ``data[box_key + "_scale"]`` (R,) and
    ``data[box_key + "_family"]`` (R,) (``grid``, see :data:`REGION_FAMILIES`).

    Args:
        ref_key: image the grid is laid on.
        box_key: where the boxes go.
        grid_sizes, overlap, within: as :class:`RegionGrid`.
        append: add to boxes already under ``box_key`` (their levels stay; new ones start after them)
            instead of replacing them.
    """

    def __init__(
        self,
        ref_key: str = "image",
        box_key: str = "regions",
        grid_sizes: Sequence[int] = (4,),
        overlap: float = 0.0,
        within: Within = "content",
        append: bool = False,
    ) -> None:
        super().__init__(ref_key)
        self.ref_key, self.box_key, self.append = ref_key, box_key, bool(append)
        self.grid = RegionGrid(grid_sizes, overlap, within)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        if not self.append:
            for suffix in ("", "_scale", "_family"):
                d.pop(f"{self.box_key}{suffix}", None)
        boxes, levels = region_grid(self.grid.bounds(d[self.ref_key]), self.grid.grid_sizes, self.grid.overlap)
        _put_regions(d, self.box_key, boxes, levels + _next_level(d, self.box_key), REGION_FAMILIES.index("grid"))
        return d


def _next_level(d: Mapping, box_key: str) -> int:
    levels = d.get(f"{box_key}_scale")
    return int(torch.as_tensor(levels).max()) + 1 if levels is not None and len(levels) else 0


# --------------------------------------------------------------------------------------------- #
# Content-driven proposals


def _segment(plane: np.ndarray, method: ProposalMethod, granularity: float, compactness: float, sigma: float,
             min_segment: int) -> np.ndarray:
    """(h, w) float64 -> (h, w) int labels >= 1 (skimage; both methods are deterministic)."""
    from skimage.segmentation import felzenszwalb, slic  # scikit-image loads only when proposals are asked for

    if method == "slic":
        return slic(plane, n_segments=int(granularity), compactness=compactness, sigma=sigma, channel_axis=None,
                    start_label=1, enforce_connectivity=True)
    return felzenszwalb(plane, scale=granularity, sigma=sigma, min_size=min_segment) + 1


def _drop_near_duplicates(boxes: torch.Tensor, max_iou: float) -> torch.Tensor:
    """Indices of the boxes kept, greedily in order: a box goes when its IoU with a kept one exceeds
    ``max_iou`` or is 1 (an exact duplicate, whatever ``max_iou``). torchvision's non-maximum
    suppression with scores falling in list order (so the earlier, coarser box wins)."""
    from torchvision.ops import nms

    scores = -torch.arange(boxes.shape[0], dtype=torch.float64)
    return nms(boxes.double(), scores, min(max_iou, 1.0 - 1e-9))


def propose_regions(
    image,
    bounds: Sequence[float],
    method: ProposalMethod = "slic",
    granularity: Sequence[float] = (24,),
    compactness: float = 0.1,
    sigma: float = 1.0,
    min_size: float = 0.05,
    max_size: float = 0.75,
    margin: float = 0.1,
    max_iou: float = 0.9,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes around superpixels of the image content: regions that follow the image, not a grid.

    Each scale segments the content (the pixels inside ``bounds``) into superpixels; each superpixel's
    bounding box (``skimage.measure.regionprops``) grows by ``margin`` of its own side on every side,
    is clipped to ``bounds``, and is kept when its width and height, as fractions of the bounds'
    width and height, lie in [``min_size``, ``max_size``] (drops slivers and near-whole-image boxes).
    Near duplicates (IoU above ``max_iou`` with an earlier box, coarse scales first) are dropped.
    Content with no contrast (value range below 1e-6) has nothing to segment: no proposals.
    Nothing here knows what a shortcut looks like: the parameters are generic, there is no randomness.

    Args:
        image: (C, H, W) or (H, W) values, numpy or torch; channels are averaged. Intensities in [0, 1]
            (the model-ready image), which is what ``compactness`` is scaled for.
        bounds: (x0, y0, x1, y1) area to cover, pixels.
        method: ``slic`` (k-means superpixels of similar size) or ``felzenszwalb`` (graph-based; the
            segment count follows the image).
        granularity: one segmentation per entry, coarse to fine: SLIC's ``n_segments`` or Felzenszwalb's ``scale``
            (larger: bigger segments).
        compactness: SLIC's weight of space against intensity (larger: squarer superpixels).
        sigma: Gaussian smoothing before segmenting, pixels.
        min_size, max_size: kept box sides, fractions of the bounds' sides; Felzenszwalb's smallest
            segment is ``(min_size * shorter side) ** 2`` pixels.
        margin: growth of each box per side, fraction of its own side.
        max_iou: near-duplicate threshold in (0, 1]; 1 drops only exact duplicates.

    Returns:
        boxes (R, 4) float32 (R may be 0) and the scale index of each box (R,) int64 (position in ``granularity``).
    """
    from skimage.measure import regionprops

    plane = convert_to_tensor(image, dtype=torch.float64, track_meta=False)
    plane = (plane.mean(dim=0) if plane.ndim == 3 else plane).numpy()
    bx0, by0, bx1, by1 = (float(v) for v in bounds)
    height, width = plane.shape
    # Integer crop holding the (possibly fractional) bounds; boxes are clipped to the float bounds after.
    cx0, cy0 = max(0, int(np.floor(bx0))), max(0, int(np.floor(by0)))
    cx1, cy1 = min(width, int(np.ceil(bx1))), min(height, int(np.ceil(by1)))
    bw, bh = bx1 - bx0, by1 - by0
    empty = torch.zeros((0, 4), dtype=torch.float32), torch.zeros(0, dtype=torch.int64)
    if cx1 - cx0 < 2 or cy1 - cy0 < 2 or bw <= 0 or bh <= 0:
        return empty
    crop = np.ascontiguousarray(plane[cy0:cy1, cx0:cx1])
    if float(crop.max() - crop.min()) < 1e-6:
        return empty
    min_segment = max(1, int(round((min_size * min(bw, bh)) ** 2)))
    boxes, levels = [], []
    for level, amount in enumerate(granularity):
        labels = _segment(crop, method, amount, compactness, sigma, min_segment)
        for region in regionprops(labels):
            r0, c0, r1, c1 = region.bbox  # exclusive ends
            boxes.append([c0 + cx0, r0 + cy0, c1 + cx0, r1 + cy0])
            levels.append(level)
    if not boxes:
        return empty
    out = torch.tensor(boxes, dtype=torch.float64)
    grow = torch.cat([out[:, 2:] - out[:, :2]] * 2, dim=1) * margin * torch.tensor([-1.0, -1.0, 1.0, 1.0])
    out = out + grow
    out[:, 0::2] = out[:, 0::2].clamp(bx0, bx1)
    out[:, 1::2] = out[:, 1::2].clamp(by0, by1)
    fw, fh = (out[:, 2] - out[:, 0]) / bw, (out[:, 3] - out[:, 1]) / bh
    keep = (torch.minimum(fw, fh) >= min_size) & (torch.maximum(fw, fh) <= max_size)
    out, lv = out[keep], torch.as_tensor(levels, dtype=torch.int64)[keep]
    kept = _drop_near_duplicates(out, max_iou)
    return out[kept].float(), lv[kept]


class RegionProposals(Transform):
    """Image (C, H, W) -> candidate boxes (R, 4) around superpixels of its content (see :func:`propose_regions`).

    Args:
        method, granularity, compactness, sigma, min_size, max_size, margin, max_iou: as :func:`propose_regions`.
        within: ``content`` (the letterboxed content, metadata ``content_box``) or ``image`` (the full array).
    """

    backend = [TransformBackends.NUMPY]

    def __init__(
        self,
        method: ProposalMethod = "slic",
        granularity: Sequence[float] = (24,),
        compactness: float = 0.1,
        sigma: float = 1.0,
        min_size: float = 0.05,
        max_size: float = 0.75,
        margin: float = 0.1,
        max_iou: float = 0.9,
        within: Within = "content",
    ) -> None:
        if method not in ("slic", "felzenszwalb"):
            raise ValueError(f"method must be 'slic' or 'felzenszwalb', got {method!r}")
        if not 0.0 < min_size <= max_size <= 1.0:
            raise ValueError(f"need 0 < min_size <= max_size <= 1, got {min_size} and {max_size}")
        if not 0.0 < max_iou <= 1.0:
            raise ValueError(f"max_iou must be in (0, 1], got {max_iou}")
        self.method, self.within = method, within
        self.granularity = tuple(float(g) for g in ensure_tuple(granularity))
        self.options = {"compactness": float(compactness), "sigma": float(sigma), "min_size": float(min_size),
                        "max_size": float(max_size), "margin": float(margin), "max_iou": float(max_iou)}

    def propose(self, img) -> tuple[torch.Tensor, torch.Tensor]:
        """Boxes (R, 4) and their scale index (R,)."""
        return propose_regions(img, content_bounds(img, self.within), self.method, self.granularity, **self.options)

    def __call__(self, img) -> torch.Tensor:
        return self.propose(img)[0]


class RegionProposalsd(MapTransform):
    """Attaches proposal boxes to a sample, after any boxes already there (e.g. from :class:`RegionGridd`).

    Writes ``data[box_key]``, ``data[box_key + "_scale"]`` (proposal scales numbered after the levels
    already there) and ``data[box_key + "_family"]`` (``proposal``). A sample that ends with no box at
    all (proposals only, on content without contrast) gets one box, the whole content, so every image
    keeps at least one region.

    Args:
        ref_key: image the proposals are made on.
        box_key: where the boxes go.
        kwargs: as :class:`RegionProposals`.
    """

    def __init__(self, ref_key: str = "image", box_key: str = "regions", **kwargs) -> None:
        super().__init__(ref_key)
        self.ref_key, self.box_key = ref_key, box_key
        self.proposals = RegionProposals(**kwargs)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        img = d[self.ref_key]
        boxes, levels = self.proposals.propose(img)
        start = _next_level(d, self.box_key)
        if boxes.shape[0] == 0 and not len(d.get(self.box_key, ())):
            boxes = torch.tensor([content_bounds(img, self.proposals.within)], dtype=torch.float32)
            levels = torch.zeros(1, dtype=torch.int64)
        _put_regions(d, self.box_key, boxes, levels + start, REGION_FAMILIES.index("proposal"))
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
