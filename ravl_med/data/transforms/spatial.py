"""Spatial transforms that keep region boxes and masks aligned with the image.

Images are channel-first (C, H, W). Boxes are float tensors of shape (R, 4) holding
(x0, y0, x1, y1) in pixels of the image they belong to, x along columns and y along rows, with
pixel (row r, column c) covering [c, c + 1) x [r, r + 1) (the torchvision ``roi_align`` convention).
Dictionary twins take ``box_keys`` (moved with the image) and extra image-like ``keys`` such as masks
(moved with the same operation; masks use nearest-neighbour interpolation).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Resize, SpatialPad, Transform
from monai.utils import TransformBackends, ensure_tuple

__all__ = [
    "DisplayFlip",
    "Letterbox",
    "Letterboxd",
    "RadiologicalOrientation",
    "RadiologicalOrientationd",
    "display_flip_from_orientation",
]


@dataclass(frozen=True)
class DisplayFlip:
    """The axis operations that bring a stored image to radiological display, applied in this order.

    Attributes:
        transpose: swap rows and columns first.
        flip_rows: then reverse the row order (top <-> bottom).
        flip_cols: then reverse the column order (left <-> right).
    """

    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False

    @property
    def identity(self) -> bool:
        return not (self.transpose or self.flip_rows or self.flip_cols)

    def apply_image(self, img):
        """Image (C, H, W) tensor or array -> displayed image (C, H', W') tensor."""
        out = img if isinstance(img, torch.Tensor) else torch.as_tensor(img)
        out = out.transpose(-1, -2) if self.transpose else out
        dims = [d for d, flag in ((-2, self.flip_rows), (-1, self.flip_cols)) if flag]
        return out.flip(dims) if dims else out

    def apply_boxes(self, boxes: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        """Boxes (R, 4) on an image of spatial ``shape`` (H, W) -> boxes on the displayed image."""
        out = torch.as_tensor(boxes, dtype=torch.float32).clone()
        height, width = int(shape[-2]), int(shape[-1])
        if self.transpose:
            out = out[:, [1, 0, 3, 2]]
            height, width = width, height
        if self.flip_rows:
            out[:, [1, 3]] = height - out[:, [3, 1]]
        if self.flip_cols:
            out[:, [0, 2]] = width - out[:, [2, 0]]
        return out


_HORIZONTAL, _VERTICAL = {"L", "R"}, {"H", "F"}


def display_flip_from_orientation(patient_orientation: str) -> DisplayFlip | None:
    """Operations that put a frontal radiograph in radiological display from DICOM (0020,0020).

    PatientOrientation gives the patient direction of the image rows (left to right) and columns
    (top to bottom), e.g. ``L\\F``. Radiological display of a frontal chest film is ``L\\F``: the
    patient's right on the viewer's left, head at the top.

    Args:
        patient_orientation: the two values joined by a backslash; only the first letter of each
            value counts (``FL`` is treated as ``F``).

    Returns:
        the operations, or ``None`` when the value is absent or not a frontal orientation (for
        example a lateral view, ``A\\F``), in which case the image should be left as stored.
    """
    parts = [p.strip().upper()[:1] for p in patient_orientation.split("\\") if p.strip()]
    if len(parts) != 2:
        return None
    row_dir, col_dir = parts
    transpose = row_dir in _VERTICAL and col_dir in _HORIZONTAL
    if transpose:
        row_dir, col_dir = col_dir, row_dir
    if row_dir not in _HORIZONTAL or col_dir not in _VERTICAL:
        return None
    return DisplayFlip(transpose=transpose, flip_rows=col_dir == "H", flip_cols=row_dir == "R")


class RadiologicalOrientation(Transform):
    """Reorients an image to radiological display using its ``patient_orientation`` metadata.

    Images without the tag (PNG/JPEG datasets are stored already displayed) are returned as they
    are. Afterwards the metadata says ``L\\F``, so the transform is idempotent.
    """

    backend = [TransformBackends.TORCH]

    def flip_for(self, img) -> DisplayFlip:
        meta = img.meta if isinstance(img, MetaTensor) else {}
        return display_flip_from_orientation(str(meta.get("patient_orientation", ""))) or DisplayFlip()

    def __call__(self, img):
        flip = self.flip_for(img)
        if flip.identity:
            return img
        out = flip.apply_image(img)
        if isinstance(out, MetaTensor):
            out.meta["patient_orientation"] = "L\\F"
            out.meta["display_flip"] = [int(flip.transpose), int(flip.flip_rows), int(flip.flip_cols)]
        return out


class RadiologicalOrientationd(MapTransform):
    """Dictionary twin of :class:`RadiologicalOrientation` that moves masks and boxes along.

    Args:
        keys: image-like keys to reorient (image, masks); the operation comes from ``ref_key``.
        ref_key: the key whose metadata holds ``patient_orientation``.
        box_keys: keys of (R, 4) box tensors in the reference image's pixels.
    """

    def __init__(
        self,
        keys: KeysCollection,
        ref_key: str = "image",
        box_keys: KeysCollection = (),
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.ref_key, self.box_keys = ref_key, ensure_tuple(box_keys)
        self.orient = RadiologicalOrientation()

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        ref = d[self.ref_key]
        flip = self.orient.flip_for(ref)
        if flip.identity:
            return d
        shape = tuple(ref.shape[-2:])
        for key in self.key_iterator(d):
            d[key] = self.orient(d[key]) if key == self.ref_key else flip.apply_image(d[key])
        for key in self.box_keys:
            if key in d:
                d[key] = flip.apply_boxes(d[key], shape)
        return d


class Letterbox(Transform):
    """Aspect-preserving resize so the longer side is ``size``, then symmetric zero padding to square.

    Uses MONAI's ``Resize(size_mode="longest")`` and ``SpatialPad(method="symmetric")``. On a
    ``MetaTensor`` it records ``original_shape`` (H, W), ``letterbox_scale`` (sy, sx, output pixels
    per input pixel), ``letterbox_offset`` (oy, ox, pixels) and ``content_box`` (x0, y0, x1, y1: the
    part of the output that holds image rather than padding).

    Args:
        size: output side length, pixels.
        mode: ``auto`` (images: area averaging when shrinking, which anti-aliases without the
            darkened border a zero-padded Gaussian pre-blur leaves, and bilinear when enlarging),
            or any MONAI ``Resize`` mode; ``nearest`` for masks.
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, size: int, mode: str = "auto") -> None:
        self.size, self.mode = int(size), mode
        self.resize = {
            m: Resize(spatial_size=self.size, size_mode="longest", mode=m, anti_aliasing=False)
            for m in (("area", "bilinear") if mode == "auto" else (mode,))
        }
        self.pad = SpatialPad(spatial_size=(self.size, self.size), method="symmetric", value=0)

    def geometry(self, shape: Sequence[int]) -> tuple[tuple[float, float], tuple[int, int]]:
        """Scale (sy, sx) and offset (oy, ox) that map input pixel coordinates to output ones."""
        height, width = int(shape[-2]), int(shape[-1])
        factor = self.size / max(height, width)
        # Resize(size_mode="longest") rounds each side; reproduce that to get the exact scale.
        new_h, new_w = (max(1, int(round(s * factor))) for s in (height, width))
        return (new_h / height, new_w / width), ((self.size - new_h) // 2, (self.size - new_w) // 2)

    def map_boxes(self, boxes: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        """Boxes (R, 4) on an input of spatial ``shape`` -> boxes on the letterboxed output."""
        (sy, sx), (oy, ox) = self.geometry(shape)
        scale = torch.tensor([sx, sy, sx, sy], dtype=torch.float32)
        offset = torch.tensor([ox, oy, ox, oy], dtype=torch.float32)
        return torch.as_tensor(boxes, dtype=torch.float32) * scale + offset

    def __call__(self, img):
        shape = tuple(int(s) for s in img.shape[-2:])
        mode = self.mode if self.mode != "auto" else ("area" if max(shape) > self.size else "bilinear")
        out = self.pad(self.resize[mode](img))
        if isinstance(out, MetaTensor):
            (sy, sx), (oy, ox) = self.geometry(shape)
            out.meta["original_shape"] = torch.tensor(shape)
            out.meta["letterbox_scale"] = torch.tensor([sy, sx])
            out.meta["letterbox_offset"] = torch.tensor([oy, ox])
            out.meta["content_box"] = self.map_boxes(torch.tensor([[0.0, 0.0, shape[1], shape[0]]]), shape)[0]
        return out


class Letterboxd(MapTransform):
    """Dictionary twin of :class:`Letterbox` that moves masks and boxes along.

    Args:
        keys: image-like keys to resize and pad.
        size: output side length, pixels.
        mode: interpolation per key (one value or one per key, see :class:`Letterbox`); use
            ``nearest`` for masks.
        ref_key: the key whose spatial shape the boxes refer to.
        box_keys: keys of (R, 4) box tensors in the reference image's pixels.
    """

    def __init__(
        self,
        keys: KeysCollection,
        size: int,
        mode: str | Sequence[str] = "auto",
        ref_key: str = "image",
        box_keys: KeysCollection = (),
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        modes = ensure_tuple(mode)
        modes = modes * len(self.keys) if len(modes) == 1 else modes
        if len(modes) != len(self.keys):
            raise ValueError(f"Letterboxd: {len(modes)} modes for {len(self.keys)} keys")
        self.letterbox = {key: Letterbox(size, mode=m) for key, m in zip(self.keys, modes)}
        self.ref_key, self.box_keys = ref_key, ensure_tuple(box_keys)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        shape = tuple(d[self.ref_key].shape[-2:])
        for key in self.key_iterator(d):
            d[key] = self.letterbox[key](d[key])
        any_letterbox = next(iter(self.letterbox.values()))
        for key in self.box_keys:
            if key in d:
                d[key] = any_letterbox.map_boxes(d[key], shape)
        return d
