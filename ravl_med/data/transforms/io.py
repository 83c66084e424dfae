"""Loading radiographs with MONAI's ``LoadImage`` through :class:`~ravl_med.data.readers.RadiographReader`."""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Mapping

from monai.config import KeysCollection
from monai.transforms import LoadImage, LoadImaged

from ravl_med.data.readers import RadiographReader

__all__ = ["LoadRadiograph", "LoadRadiographd"]


class LoadRadiograph:
    """Path -> channel-first float32 ``MetaTensor`` (C, H, W) in display order.

    Always reads through :class:`RadiographReader` (never falls back to MONAI's other readers), so
    a refused file raises the reader's :class:`~ravl_med.data.errors.IngestError` unchanged.

    Args:
        max_pixels: refuse DICOM objects with more pixels than this before decoding.
    """

    def __init__(self, max_pixels: int = 2**28) -> None:
        self.reader = RadiographReader(max_pixels=max_pixels)
        # LoadImage also builds MONAI's default readers, some of which warn about optional GPU codecs
        # this loader never uses.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.loader = LoadImage(reader=self.reader, image_only=True, ensure_channel_first=True)

    def __call__(self, filename):
        return self.loader(filename, reader=self.reader)


class LoadRadiographd(LoadImaged):
    """Dictionary twin of :class:`LoadRadiograph` (MONAI ``LoadImaged`` with the radiograph reader)."""

    def __init__(self, keys: KeysCollection, max_pixels: int = 2**28, allow_missing_keys: bool = False) -> None:
        self.reader = RadiographReader(max_pixels=max_pixels)
        with warnings.catch_warnings():  # see LoadRadiograph
            warnings.simplefilter("ignore")
            super().__init__(
                keys,
                reader=self.reader,
                image_only=True,
                ensure_channel_first=True,
                allow_missing_keys=allow_missing_keys,
            )

    def __call__(self, data: Mapping[Hashable, object], reader=None) -> dict:
        return super().__call__(data, reader or self.reader)
