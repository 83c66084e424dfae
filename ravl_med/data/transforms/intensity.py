"""Photometric transforms: quality checks, grey-channel collapse, VOI LUT/windowing, MONOCHROME1.

Array transforms take a channel-first image (C, H, W) as a MONAI ``MetaTensor`` (or a plain tensor
or numpy array, which then carries no DICOM metadata); each has a dictionary twin with a ``d``
suffix. Pixel values out of :class:`VOIWindow` and :class:`InvertMonochrome1` are in [0, 1] with
0 = black as displayed (air dark, bone bright).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import ScaleIntensityRange, Transform
from monai.utils import TransformBackends, convert_to_tensor

from ravl_med.data.errors import IngestError
from ravl_med.data.transforms.base import ArrayTransformd

__all__ = [
    "CollapseGreyChannels",
    "CollapseGreyChannelsd",
    "InvertMonochrome1",
    "InvertMonochrome1d",
    "RadiographQC",
    "RadiographQCd",
    "VOIWindow",
    "VOIWindowd",
    "window_to_unit",
]

VOIMode = Literal["auto", "lut", "window", "none"]
Fallback = Literal["value_range", "minmax", "percentile"]


def _meta(img) -> dict:
    return img.meta if isinstance(img, MetaTensor) else {}


class RadiographQC(Transform):
    """Refuses images a model should not see, with an :class:`IngestError` reason.

    Checks, in order: channel-first 2-D layout (``volume``), side lengths within
    [``min_side``, ``max_side``] pixels (``bad_size``), finite values (``non_finite``), and more than
    one distinct value (``constant``). Returns the input unchanged.

    Args:
        min_side: smallest allowed image side, pixels.
        max_side: largest allowed image side, pixels.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, min_side: int = 64, max_side: int = 16384) -> None:
        self.min_side, self.max_side = min_side, max_side

    def __call__(self, img):
        if img.ndim != 3:
            raise IngestError("volume", f"expected (channels, rows, columns), got shape {tuple(img.shape)}")
        rows, cols = int(img.shape[-2]), int(img.shape[-1])
        if min(rows, cols) < self.min_side or max(rows, cols) > self.max_side:
            raise IngestError(
                "bad_size", f"{rows} x {cols} pixels is outside [{self.min_side}, {self.max_side}] per side"
            )
        values = convert_to_tensor(img, track_meta=False)
        if not torch.isfinite(values).all():
            raise IngestError("non_finite", "NaN or infinite pixel values after the modality rescale")
        if values.amax() == values.amin():
            raise IngestError("constant", f"every pixel equals {float(values.amin()):g}")
        return img


class CollapseGreyChannels(Transform):
    """Turns a grey image stored with several channels (RGB/RGBA JPEG, grey+alpha) into one channel.

    Alpha channels are dropped. If the colour channels differ by more than ``tolerance`` times the
    image's value range anywhere beyond 0.1% of pixels (JPEG chroma noise), the image is refused as
    ``colour``: a colour photograph or an annotated screenshot is not a radiograph.

    Args:
        tolerance: allowed channel difference as a fraction of the value range.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, tolerance: float = 0.04) -> None:
        self.tolerance = tolerance

    def __call__(self, img):
        channels = int(img.shape[0])
        if channels == 1:
            return img
        colour = img[:1] if channels == 2 else img[:3]  # LA -> L; RGBA -> RGB
        if colour.shape[0] == 3:
            values = convert_to_tensor(colour, track_meta=False).float()
            spread = values.amax(0) - values.amin(0)
            value_range = float(values.amax() - values.amin()) or 1.0
            outliers = (spread > self.tolerance * value_range).float().mean()
            if outliers > 1e-3:
                raise IngestError(
                    "colour", f"{float(outliers):.1%} of pixels differ between colour channels; expected grey"
                )
        out = colour[:1]
        if isinstance(out, MetaTensor):
            out.meta["photometric_interpretation"] = out.meta.get("photometric_interpretation") or "MONOCHROME2"
            if out.meta["photometric_interpretation"] in ("RGB", "RGBA", "LA", "YBR_FULL", "YBR_FULL_422"):
                out.meta["photometric_interpretation"] = "MONOCHROME2"
        return out


def window_to_unit(img, center: float, width: float, function: str = "LINEAR"):
    """DICOM VOI windowing (PS3.3 C.11.2.1.2) to [0, 1].

    Args:
        img: image in modality units, any shape.
        center: window centre, modality units.
        width: window width, modality units (>= 1).
        function: ``LINEAR`` (the DICOM default, with its half-pixel offsets), ``LINEAR_EXACT`` or
            ``SIGMOID``.

    Returns:
        the windowed image, same type and shape, values in [0, 1].
    """
    function = function.upper()
    # In float64: a damaged header's window (|centre| past float32's range) must still give values
    # in [0, 1], not inf - inf = NaN.
    values = convert_to_tensor(img, track_meta=isinstance(img, MetaTensor)).to(torch.float64)
    if function == "SIGMOID":
        out = torch.sigmoid(4.0 * (values - center) / width)
    elif function == "LINEAR_EXACT":
        out = ((values - center) / width + 0.5).clamp(0.0, 1.0)
    elif width <= 1.0:  # LINEAR of width 1 is a threshold at centre - 0.5 (a zero-width ramp)
        out = (values > center - 0.5).to(torch.float64)
    else:  # LINEAR, and unknown functions, which the standard says to treat as LINEAR
        out = ((values - (center - 0.5)) / (width - 1.0) + 0.5).clamp(0.0, 1.0)
    out = out.to(torch.float32)
    return out if isinstance(img, torch.Tensor) else out.numpy()


class VOIWindow(Transform):
    """Maps modality values to display values in [0, 1]: VOI LUT, window, or a fallback scaling.

    With ``mode="auto"`` the first VOI LUT of the DICOM file is used, else its first window, else
    the fallback. The fallback is chosen by ``fallback``:

    * ``value_range``: the range the encoding can hold (bits stored through the modality LUT for
      DICOM, 0-255 or 0-65535 for 8/16-bit PNG and JPEG); images with no known range use min-max;
    * ``minmax``: the image's own minimum and maximum;
    * ``percentile``: the ``percentiles`` of the image, clipped.

    Args:
        mode: ``auto``, ``lut`` (VOI LUT only), ``window`` (window only) or ``none`` (fallback only).
        window: (centre, width) in modality units that overrides the file's own window.
        fallback: scaling used when the chosen VOI step is not in the file.
        percentiles: lower and upper percentile for ``fallback="percentile"``.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        mode: VOIMode = "auto",
        window: tuple[float, float] | None = None,
        fallback: Fallback = "value_range",
        percentiles: tuple[float, float] = (0.5, 99.5),
    ) -> None:
        self.mode, self.window, self.fallback, self.percentiles = mode, window, fallback, percentiles

    def __call__(self, img):
        meta = _meta(img)
        if self.window is not None:
            out, applied = window_to_unit(img, *self.window, function="LINEAR"), "window (configured)"
        elif self.mode in ("auto", "lut") and "voi_lut_data" in meta:
            out, applied = self._lut(img, meta), "VOI LUT"
        elif self.mode in ("auto", "window") and "window_center" in meta:
            function = meta.get("voi_lut_function", "LINEAR")
            out = window_to_unit(img, float(meta["window_center"]), float(meta["window_width"]), function)
            applied = f"window ({function})"
        else:
            out, applied = self._fallback(img, meta), f"fallback ({self.fallback})"
        if isinstance(out, MetaTensor):
            out.meta["voi_applied"] = applied
        return out

    @staticmethod
    def _lut(img, meta: Mapping):
        table = torch.as_tensor(np.asarray(meta["voi_lut_data"]), dtype=torch.float32)
        first = float(meta["voi_lut_first"])
        values = convert_to_tensor(img, dtype=torch.float32, track_meta=False)
        index = (values - first).round().clamp(0, table.numel() - 1).long()
        top = float(2 ** int(meta.get("voi_lut_bits", 16)) - 1)
        scale = top if top > 0 else float(table.max())
        mapped = table[index] / (scale if scale > 0 else 1.0)  # an all-zero table must not give 0 / 0
        mapped = mapped.clamp(0.0, 1.0)
        return MetaTensor(mapped, meta=dict(img.meta)) if isinstance(img, MetaTensor) else mapped

    def _fallback(self, img, meta: Mapping):
        if self.fallback == "percentile":
            low, high = self.percentiles
            values = convert_to_tensor(img, track_meta=False)
            lo, hi = (float(v) for v in np.percentile(values.float().cpu().numpy(), (low, high)))
            if hi > lo:
                return ScaleIntensityRange(a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)(img)
            # Most pixels share one value: the percentiles meet, and MONAI's scaling would then
            # return the image shifted but unscaled (far outside [0, 1]). Use min-max instead.
        lo, hi = (np.asarray(meta.get("value_range", (math.nan, math.nan)), dtype=np.float64).tolist() + [math.nan])[:2]
        if self.fallback != "value_range" or not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
            values = convert_to_tensor(img, track_meta=False)
            lo, hi = float(values.amin()), float(values.amax())
        return ScaleIntensityRange(a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)(img)


class InvertMonochrome1(Transform):
    """Inverts [0, 1] images whose photometric interpretation is MONOCHROME1 (high value = black).

    After it the image is MONOCHROME2 (the metadata says so), so applying it twice is harmless.
    Images without metadata are left alone.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __call__(self, img):
        meta = _meta(img)
        if meta.get("photometric_interpretation") != "MONOCHROME1":
            return img
        out = 1.0 - img
        if isinstance(out, MetaTensor):
            out.meta["photometric_interpretation"] = "MONOCHROME2"
            out.meta["inverted_monochrome1"] = True
        return out


class RadiographQCd(ArrayTransformd):
    """Dictionary twin of :class:`RadiographQC`."""

    def __init__(self, keys: KeysCollection, min_side: int = 64, max_side: int = 16384, allow_missing_keys=False):
        super().__init__(keys, allow_missing_keys)
        self.array_transform = RadiographQC(min_side, max_side)


class CollapseGreyChannelsd(ArrayTransformd):
    """Dictionary twin of :class:`CollapseGreyChannels`."""

    def __init__(self, keys: KeysCollection, tolerance: float = 0.04, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.array_transform = CollapseGreyChannels(tolerance)


class VOIWindowd(ArrayTransformd):
    """Dictionary twin of :class:`VOIWindow`."""

    def __init__(
        self,
        keys: KeysCollection,
        mode: VOIMode = "auto",
        window: Sequence[float] | None = None,
        fallback: Fallback = "value_range",
        percentiles: Sequence[float] = (0.5, 99.5),
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.array_transform = VOIWindow(
            mode, tuple(window) if window is not None else None, fallback, tuple(percentiles)
        )


class InvertMonochrome1d(ArrayTransformd):
    """Dictionary twin of :class:`InvertMonochrome1`."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.array_transform = InvertMonochrome1()
