"""MONAI-style transforms that paint a shortcut artefact into an image and return its mask.

:class:`InjectArtefact` (array) and :class:`InjectArtefactd` (dictionary) wrap an
:class:`~ravl_med.phantom.artefacts.Artefact`; they live apart from the artefacts so that
naming or listing artefacts (the command line) does not import torch and MONAI.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable, Transform

from ravl_med.phantom.artefacts import (
    Artefact,
    ArtefactResult,
    Layout,
    composite,
    get_artefact,
)

__all__ = ["InjectArtefact", "InjectArtefactd"]


def _as_2d(img) -> tuple[np.ndarray, Callable]:
    """A (H, W) float32 numpy view of a (H, W) or (1, H, W) array/tensor and a function restoring the type."""
    is_tensor = isinstance(img, torch.Tensor)
    arr = img.detach().cpu().numpy() if is_tensor else np.asarray(img)
    squeeze = arr.ndim == 3
    if squeeze and arr.shape[0] != 1:
        raise ValueError(f"expected a single-channel image (1, H, W) or (H, W), got {arr.shape}")
    plane = arr[0] if squeeze else arr

    def restore(out: np.ndarray):
        out = out[None] if squeeze else out
        if is_tensor:
            restored = torch.as_tensor(out, dtype=img.dtype, device=img.device)
            if hasattr(img, "meta"):  # keep MONAI metadata
                restored = img.clone().copy_(restored) if img.shape == restored.shape else restored
            return restored
        return out.astype(arr.dtype if np.issubdtype(arr.dtype, np.floating) else np.float32)

    return plane.astype(np.float32), restore


class InjectArtefact(Randomizable, Transform):
    """Paints an artefact into a display image in [0, 1] and returns the image and the artefact mask.

    Array transform: ``image (H, W) or (1, H, W)`` (numpy or torch) -> ``(image, mask)`` with the
    mask bool of the same shape. With ``prob`` < 1 the artefact is skipped at random (empty mask).

    Args:
        artefact: an :class:`Artefact`, or a name or import string for :func:`~ravl_med.phantom.artefacts.get_artefact`.
        prob: probability of injecting it.
        layout: fixed anatomy to place against (per call it can be given to ``__call__`` instead).
        seed: seed of the transform's own generator (see ``set_random_state``).
    """

    def __init__(self, artefact: Artefact | str, prob: float = 1.0, layout: Layout | None = None, seed: int | None = None) -> None:
        self.artefact = get_artefact(artefact) if isinstance(artefact, str) else artefact
        self.prob, self.layout = float(prob), layout
        self.generator = np.random.default_rng(seed)
        self._do = True
        self.last: ArtefactResult | None = None

    def set_random_state(self, seed: int | None = None, state=None) -> InjectArtefact:
        self.generator = np.random.default_rng(seed)
        return self

    def randomize(self, data=None) -> None:
        self._do = self.generator.random() < self.prob

    def __call__(self, img, layout: Layout | None = None, randomize: bool = True):
        if randomize:
            self.randomize()
        plane, restore = _as_2d(img)
        if not self._do:
            self.last = None
            return img, restore(np.zeros(plane.shape, dtype=np.float32)) > 0.5
        result = self.artefact.render(self.generator, plane.shape, layout or self.layout)
        self.last = result
        return restore(composite(plane, result)), restore(result.mask.astype(np.float32)) > 0.5


class InjectArtefactd(Randomizable, MapTransform):
    """Dictionary twin of :class:`InjectArtefact`: paints ``keys`` and writes the mask under ``mask_key``.

    Args:
        keys: the image key (one key; the mask belongs to it).
        artefact: an :class:`Artefact`, or a name or import string for :func:`~ravl_med.phantom.artefacts.get_artefact`.
        mask_key: where the bool mask goes (same shape as the image).
        layout_key: optional key holding a :class:`Layout` for placement.
        prob: probability of injecting it.
        seed: seed of the transform's generator.
    """

    def __init__(
        self,
        keys: KeysCollection,
        artefact: Artefact | str,
        mask_key: str = "mask_artefact",
        layout_key: str | None = None,
        prob: float = 1.0,
        seed: int | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.inject = InjectArtefact(artefact, prob=prob, seed=seed)
        self.mask_key, self.layout_key = mask_key, layout_key

    def set_random_state(self, seed: int | None = None, state=None) -> InjectArtefactd:
        self.inject.set_random_state(seed)
        return self

    def randomize(self, data=None) -> None:
        self.inject.randomize()

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        self.randomize()
        layout = d.get(self.layout_key) if self.layout_key else None
        for key in self.key_iterator(d):
            d[key], d[self.mask_key] = self.inject(d[key], layout=layout, randomize=False)
        return d
