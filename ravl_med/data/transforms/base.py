"""The shared shape of a dictionary twin: one array transform applied to each selected key."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

from monai.transforms import MapTransform, Transform

__all__ = ["ArrayTransformd"]


class ArrayTransformd(MapTransform):
    """Applies ``self.array_transform`` to each key (MONAI ``MapTransform`` semantics).

    Subclasses build the array transform once in ``__init__``; ``__call__`` works on a shallow copy.
    """

    array_transform: Transform

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.array_transform(d[key])
        return d
