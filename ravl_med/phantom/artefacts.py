"""Shortcut artefacts: radio-opaque objects painted into a radiograph, each with a pixel mask.

An artefact renders an opacity map ``alpha`` (float32 (H, W) in [0, 1]) and a display ``level``
(how bright the object shows, MONOCHROME2); :func:`composite` blends it into a display image
(``image * (1 - alpha) + level * alpha``) and the mask is ``alpha >= 0.3``.

Where an artefact may go is its ``placement``:

* ``outside_lungs``: the mask never touches a lung field;
* ``overlap_lungs``: at least part of the mask lies over a lung field;
* ``any``: no rule.

Placement needs a :class:`Layout` (lung fields, body outline); without one every artefact is
placed by ``any`` rules. A drawing that breaks its rule (or is empty, or a placed patch cut by the
image border) is not an error: the result says why in ``details["placement_issue"]``
(:func:`placement_issue`) and the setting writer counts and warns about it.

The MONAI-style array and dictionary transforms that paint them into an image are
:class:`~ravl_med.phantom.inject.InjectArtefact` / ``InjectArtefactd`` (this module imports neither
torch nor MONAI, so listing the artefacts stays cheap). A site's own artefact (a small image, or a
callable) goes through :class:`CustomArtefact`; :func:`register_artefact` gives it a name, and
settings may also name one by an import string ``module:attribute`` (:func:`get_artefact`).
"""

from __future__ import annotations

import copy
import importlib
import inspect
import os
import pkgutil
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from ravl_med.config import ConfigError

__all__ = [
    "ARTEFACTS",
    "ENTRY_POINT_GROUP",
    "Artefact",
    "ArtefactResult",
    "CustomArtefact",
    "Layout",
    "artefact_label",
    "artefact_names",
    "artefact_visibility",
    "check_artefact",
    "composite",
    "get_artefact",
    "placement_issue",
    "register_artefact",
    "unregister_artefact",
]

Placement = Literal["outside_lungs", "overlap_lungs", "any"]
MASK_THRESHOLD = 0.3


@dataclass
class Layout:
    """Anatomy an artefact is placed against; every field may be ``None`` (unknown).

    Attributes:
        lungs: bool (H, W) lung fields.
        body: bool (H, W) inside the body outline.
        heart: bool (H, W) cardiac silhouette.
        heart_centre: (row, col) in pixels.
    """

    lungs: np.ndarray | None = None
    body: np.ndarray | None = None
    heart: np.ndarray | None = None
    heart_centre: tuple[float, float] | None = None


@dataclass
class ArtefactResult:
    """A rendered artefact: opacity float32 (H, W), display level (scalar or (H, W)), mask, details."""

    alpha: np.ndarray
    level: float | np.ndarray
    details: dict

    @property
    def mask(self) -> np.ndarray:
        return self.alpha >= MASK_THRESHOLD


def composite(image: np.ndarray, result: ArtefactResult) -> np.ndarray:
    """Blends an artefact into a display image (H, W) in [0, 1]; returns a new float32 array."""
    return (image * (1.0 - result.alpha) + result.level * result.alpha).astype(np.float32)


# --- drawing primitives (pixels; points are (col, row)) -------------------------------------


def stroke(points: np.ndarray, width: float, shape: tuple[int, int]) -> np.ndarray:
    """Antialiased polyline of ``width`` pixels through ``points`` (N, 2) (col, row); alpha (H, W)."""
    height, wide = shape
    alpha = np.zeros(shape, dtype=np.float32)
    pad = width / 2 + 1.5
    pts = np.asarray(points, dtype=np.float32)
    # One small window per segment: cheap even for long tubes and wires.
    for a, b in zip(pts[:-1], pts[1:]):
        c0 = int(max(0, np.floor(min(a[0], b[0]) - pad)))
        c1 = int(min(wide, np.ceil(max(a[0], b[0]) + pad)))
        r0 = int(max(0, np.floor(min(a[1], b[1]) - pad)))
        r1 = int(min(height, np.ceil(max(a[1], b[1]) + pad)))
        if c1 <= c0 or r1 <= r0:
            continue
        rr = np.arange(r0, r1, dtype=np.float32)[:, None] + 0.5
        cc = np.arange(c0, c1, dtype=np.float32)[None, :] + 0.5
        ab = b - a
        length2 = max(float(ab @ ab), 1e-6)
        t = np.clip(((cc - a[0]) * ab[0] + (rr - a[1]) * ab[1]) / length2, 0, 1)
        dist = np.sqrt((cc - a[0] - t * ab[0]) ** 2 + (rr - a[1] - t * ab[1]) ** 2)
        window = alpha[r0:r1, c0:c1]
        np.maximum(window, np.clip(width / 2 + 0.5 - dist, 0, 1), out=window)
    return alpha
    rr, cc = np.mgrid[r0:r1, c0:c1].astype(np.float32) + 0.5
    pix = np.stack([cc.ravel(), rr.ravel()], axis=1)  # (M, 2)
    a, b = points[:-1].astype(np.float32), points[1:].astype(np.float32)  # (S, 2)
    ab = b - a
    length2 = np.maximum((ab**2).sum(1), 1e-6)
    rel = pix[:, None, :] - a[None]  # (M, S, 2)
    t = np.clip((rel * ab[None]).sum(-1) / length2, 0, 1)
    dist = np.sqrt(((rel - t[..., None] * ab[None]) ** 2).sum(-1)).min(axis=1)
    alpha[r0:r1, c0:c1] = np.clip(width / 2 + 0.5 - dist, 0, 1).reshape(r1 - r0, c1 - c0)
    return alpha


def disk(centre: tuple[float, float], radius: float, shape: tuple[int, int], hole: float = 0.0) -> np.ndarray:
    """Antialiased disk (or ring, with an inner ``hole`` radius) at ``centre`` (col, row); alpha (H, W)."""
    rr, cc = np.ogrid[: shape[0], : shape[1]]
    d = np.sqrt((cc + 0.5 - centre[0]) ** 2 + (rr + 0.5 - centre[1]) ** 2)
    alpha = np.clip(radius + 0.5 - d, 0, 1)
    if hole > 0:
        alpha = alpha * np.clip(d - hole + 0.5, 0, 1)
    return alpha.astype(np.float32)


def curve(start, control, end, n: int = 24) -> np.ndarray:
    """Quadratic Bezier curve from ``start`` to ``end`` through ``control``; (n, 2) points."""
    t = np.linspace(0, 1, n)[:, None]
    p0, p1, p2 = (np.asarray(p, dtype=np.float32) for p in (start, control, end))
    return ((1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2).astype(np.float32)


@lru_cache(maxsize=64)
def text_alpha(text: str, size_px: int, box: bool) -> np.ndarray:
    """Rendered text (Pillow's bundled font) as alpha float32 (h, w), optionally inside a frame."""
    font = ImageFont.load_default(size=max(6, size_px))
    left, top, right, bottom = font.getbbox(text)
    pad = max(2, size_px // 4)
    canvas = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), 0)
    draw = ImageDraw.Draw(canvas)
    draw.text((pad - left, pad - top), text, fill=255, font=font)
    if box:
        draw.rectangle([0, 0, canvas.width - 1, canvas.height - 1], outline=255, width=max(1, size_px // 10))
    out = np.asarray(canvas, dtype=np.float32) / 255.0
    out.setflags(write=False)
    return out


def _blit(patch: np.ndarray, top_left: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """Places ``patch`` (h, w) at ``top_left`` (row, col) on an empty (H, W) canvas (clipped)."""
    canvas = np.zeros(shape, dtype=np.float32)
    r, c = top_left
    h, w = patch.shape
    r0, c0 = max(r, 0), max(c, 0)
    r1, c1 = min(r + h, shape[0]), min(c + w, shape[1])
    if r1 > r0 and c1 > c0:
        canvas[r0:r1, c0:c1] = patch[r0 - r : r1 - r, c0 - c : c1 - c]
    return canvas


def _satisfies(mask: np.ndarray, layout: Layout, placement: Placement) -> bool:
    if not mask.any():
        return False
    if placement == "any" or layout.lungs is None:
        return True
    inside = (mask & layout.lungs).sum()
    if placement == "outside_lungs":
        return inside == 0
    return inside >= 0.3 * mask.sum()


def placement_issue(mask: np.ndarray, layout: Layout, placement: Placement) -> str | None:
    """Why a drawn artefact mask (bool (H, W)) breaks its placement rule, or ``None`` when it does not.

    Broken: an empty mask (nothing of the artefact is in the image); ``outside_lungs`` and the mask
    touches a lung field; ``overlap_lungs`` and it touches none. Lung rules are checked only when
    ``layout.lungs`` is known. (Looser than :func:`place_patch`'s choice of a position, which asks
    30% of an ``overlap_lungs`` patch to lie over a lung: drawn artefacts such as a pacemaker's leads
    only cross the lungs.)
    """
    if not mask.any():
        return "the artefact is not in the image (empty mask)"
    if layout.lungs is None or placement == "any":
        return None
    touching = int((mask & layout.lungs).sum())
    if placement == "outside_lungs" and touching:
        return f"{touching} of its {int(mask.sum())} mask pixels lie on a lung field (rule outside_lungs)"
    if placement == "overlap_lungs" and not touching:
        return "it does not overlap a lung field (rule overlap_lungs)"
    return None


def fit_patch(
    patch: np.ndarray, shape: tuple[int, int], layout: Layout, placement: Placement, rng: np.random.Generator,
    tries: int = 60,
) -> tuple[np.ndarray, str | None]:
    """:func:`place_patch` that also says when the placement failed: ``(alpha (H, W), issue or None)``.

    Failed: no candidate position satisfied ``placement`` (the last one is kept), or more than 5% of
    the patch's opacity falls outside the image (a patch larger than the image, or one centred on a
    lung pixel near the border).
    """
    h, w = patch.shape
    height, width = shape
    out, fitted = None, False
    for attempt in range(tries):
        if placement == "outside_lungs" and attempt % 2 == 0:
            r = int(rng.choice([rng.integers(0, max(1, height // 8)), rng.integers(height * 3 // 4, max(height * 3 // 4 + 1, height - h))]))
            c = int(rng.integers(0, max(1, width - w)))
        elif placement == "overlap_lungs" and layout.lungs is not None:
            rows, cols = np.nonzero(layout.lungs)
            k = int(rng.integers(rows.size))
            r, c = int(rows[k] - h // 2), int(cols[k] - w // 2)
        else:
            r, c = int(rng.integers(0, max(1, height - h))), int(rng.integers(0, max(1, width - w)))
        out = _blit(patch, (r, c), shape)
        if _satisfies(out >= MASK_THRESHOLD, layout, placement):
            fitted = True
            break
    if out is None:
        return np.zeros(shape, dtype=np.float32), "no position was tried"
    total = float(patch.sum())
    cut = 1.0 - float(out.sum()) / total if total > 0 else 0.0
    if cut > 0.05:
        return out, f"{cut:.0%} of it falls outside the image (patch {h} x {w} px, image {height} x {width} px)"
    if not fitted:
        return out, f"no position out of {tries} satisfied the rule {placement}"
    return out, None


def place_patch(
    patch: np.ndarray, shape: tuple[int, int], layout: Layout, placement: Placement, rng: np.random.Generator,
    tries: int = 60,
) -> np.ndarray:
    """Puts ``patch`` (alpha (h, w)) at a random position that satisfies ``placement``; alpha (H, W).

    Candidates are drawn uniformly; for ``outside_lungs`` the corners and edges are favoured (where
    markers and tokens sit on real films). Falls back to the last candidate after ``tries``
    (:func:`fit_patch` also says whether it had to).
    """
    return fit_patch(patch, shape, layout, placement, rng, tries)[0]


def artefact_visibility(image: np.ndarray, mask: np.ndarray, ring: int | None = None) -> float:
    """Contrast of an artefact against its surroundings, in units of the image's intensity std.

    ``(mean(image[mask]) - mean(image[ring])) / std(image)``: the ring is the band ``ring`` pixels
    wide around the mask (default ``max(2, round(0.03 * image width))``), one pixel away from it (the
    antialiased edge below the mask threshold is neither). Positive: brighter than its surroundings
    (MONOCHROME2). NaN when the mask or the ring is empty or the image is constant.

    Args:
        image: float (H, W) display image.
        mask: bool (H, W) artefact mask.
        ring: ring width in pixels.
    """
    mask = np.asarray(mask, dtype=bool)
    image = np.asarray(image, dtype=np.float64)
    spread = float(image.std())
    if not mask.any() or spread == 0.0:
        return float("nan")
    ring = max(2, round(0.03 * image.shape[1])) if ring is None else int(ring)
    near = ndimage.binary_dilation(mask, iterations=1)
    band = ndimage.binary_dilation(near, iterations=ring) & ~near
    if not band.any():
        return float("nan")
    return (float(image[mask].mean()) - float(image[band].mean())) / spread


def _issue(issue: str | None) -> dict:
    return {"placement_issue": issue} if issue else {}


# --- artefacts -------------------------------------------------------------------------------


class Artefact:
    """Base class of the artefacts.

    Args:
        placement: where it may go (see the module docstring); ``None``: the artefact's default.
        scale: size multiplier (1 = typical size at any image size).
        level: display brightness of the object (MONOCHROME2, 1 = white); ``None``: the default.
        opacity: maximum alpha (below 1: the anatomy shows through).
    """

    name = "artefact"
    default_placement: Placement = "any"
    default_level = 0.97

    def __init__(
        self, placement: Placement | None = None, scale: float = 1.0, level: float | None = None, opacity: float = 1.0
    ) -> None:
        self.placement: Placement = placement or self.default_placement
        self.scale, self.opacity = float(scale), float(opacity)
        self.level = self.default_level if level is None else float(level)

    def draw(self, rng: np.random.Generator, shape: tuple[int, int], layout: Layout) -> tuple[np.ndarray, dict]:
        """Opacity (H, W) and details; a ``"placement_issue"`` detail says the drawing broke its rule."""
        raise NotImplementedError

    def render(self, rng: np.random.Generator, shape: tuple[int, int], layout: Layout | None = None) -> ArtefactResult:
        """Draws the artefact on an (H, W) canvas; see :class:`ArtefactResult`.

        ``details["placement_issue"]`` is set (a one-line reason) when the drawing breaks the
        placement rule (:func:`placement_issue`) or the draw step reported a failed placement.
        """
        layout = layout or Layout()
        alpha, details = self.draw(rng, shape, layout)
        alpha = np.clip(alpha, 0, 1).astype(np.float32) * self.opacity
        details = {"artefact": self.name, **details}
        issue = details.get("placement_issue") or placement_issue(alpha >= MASK_THRESHOLD, layout, self.placement)
        if issue:
            details["placement_issue"] = issue
        return ArtefactResult(alpha=alpha, level=self.level, details=details)


class ChestDrain(Artefact):
    """Chest drain: a tube entering the lateral chest wall low down, its tip towards the apex.

    ``overlap_lungs`` (default) runs the tube into the pleural space over the lung;
    ``outside_lungs`` keeps it in the chest wall and below the costophrenic angle.
    """

    name = "chest_drain"
    default_placement: Placement = "overlap_lungs"
    default_level = 0.93

    def draw(self, rng, shape, layout):
        height, width = shape
        side = int(rng.integers(2))
        sign = -1 if side == 0 else 1
        lateral = 0.5 + sign * rng.uniform(0.33, 0.37)
        entry = (width * (0.5 + sign * 0.5), height * rng.uniform(0.7, 0.82))
        wall = (width * lateral, height * rng.uniform(0.62, 0.7))
        if self.placement == "outside_lungs":
            tip = (width * (0.5 + sign * rng.uniform(0.4, 0.44)), height * rng.uniform(0.4, 0.5))
            control = (width * (0.5 + sign * 0.43), height * 0.6)
            path = np.concatenate([curve(entry, wall, control, 8), curve(control, (control[0], tip[1] + 20), tip, 12)])
        else:
            tip = (width * (0.5 + sign * rng.uniform(0.12, 0.22)), height * rng.uniform(0.18, 0.3))
            control = (width * (0.5 + sign * rng.uniform(0.3, 0.36)), height * rng.uniform(0.35, 0.45))
            path = np.concatenate([curve(entry, wall, wall, 6), curve(wall, control, tip, 20)])
        tube = max(2.0, 0.022 * width * self.scale)
        outer = stroke(path, tube, shape)
        lumen = stroke(path, tube * 0.45, shape)
        alpha = np.clip(outer - 0.55 * lumen, 0, 1)  # radio-opaque walls, brighter than the lumen
        alpha = np.maximum(alpha, stroke(path, max(1.0, tube * 0.18), shape) * 0.8)  # radio-opaque stripe
        if layout.lungs is not None and self.placement == "outside_lungs":
            alpha = alpha * ~ndimage.binary_dilation(layout.lungs, iterations=1)
        return alpha, {"side": ("right", "left")[side]}


class LateralityMarker(Artefact):
    """Lead laterality marker: a boxed letter ``L`` or ``R`` near a corner, outside the lungs."""

    name = "laterality_marker"
    default_placement: Placement = "outside_lungs"

    def draw(self, rng, shape, layout):
        letter = str(rng.choice(["L", "R"]))
        patch = text_alpha(letter, int(round(0.07 * shape[1] * self.scale)), True)
        alpha, issue = fit_patch(patch, shape, layout, self.placement, rng)
        return alpha, {"text": letter, **_issue(issue)}


SITE_TOKENS = ("SITE A", "SITE B", "ST-3", "PORTABLE", "HOSP 2", "ER", "WARD 7", "AP SUPINE", "ICU")


class SiteToken(Artefact):
    """Burned-in hospital/site text (``PORTABLE``, ``SITE B``, ...), outside the lungs by default."""

    name = "site_token"
    default_placement: Placement = "outside_lungs"
    default_level = 0.99

    def __init__(self, *args, text: str | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.text = text

    def draw(self, rng, shape, layout):
        text = self.text or str(rng.choice(SITE_TOKENS))
        patch = text_alpha(text, int(round(0.045 * shape[1] * self.scale)), False)
        alpha, issue = fit_patch(patch, shape, layout, self.placement, rng)
        return alpha, {"text": text, **_issue(issue)}


class Pacemaker(Artefact):
    """Pacemaker/ICD: a generator can below a clavicle with one or two leads into the heart."""

    name = "pacemaker"
    default_placement: Placement = "overlap_lungs"

    def draw(self, rng, shape, layout):
        height, width = shape
        side = 1 if rng.random() < 0.8 else 0  # usually left subclavicular
        sign = -1 if side == 0 else 1
        s = self.scale
        gx = width * (0.5 + sign * rng.uniform(0.2, 0.3))
        gy = height * rng.uniform(0.18, 0.26)
        if self.placement == "outside_lungs":
            gx = width * (0.5 + sign * rng.uniform(0.4, 0.44))
        rx, ry = 0.055 * width * s, 0.04 * width * s
        rr, cc = np.ogrid[:height, :width]
        can = (((cc + 0.5 - gx) / rx) ** 4 + ((rr + 0.5 - gy) / ry) ** 4) <= 1.0
        alpha = ndimage.gaussian_filter(can.astype(np.float32), 0.5)
        header = disk((gx - sign * rx * 0.3, gy - ry * 0.9), 0.015 * width * s, shape)
        alpha = np.maximum(alpha, header)
        if layout.heart_centre is not None:
            hr, hc = layout.heart_centre
        else:
            hr, hc = 0.6 * height, 0.52 * width
        leads = 1 + int(rng.random() < 0.6)
        for k in range(leads):
            tip = (hc + (k * 0.06 - 0.02) * width, hr + (0.03 + 0.04 * k) * height)
            via = (width * (0.5 + sign * 0.02), height * 0.3)
            path = np.concatenate([curve((gx, gy), (gx - sign * 0.1 * width, gy - 0.05 * height), via, 10),
                                   curve(via, (via[0], tip[1]), tip, 14)])
            alpha = np.maximum(alpha, stroke(path, max(1.2, 0.008 * width * s), shape))
            alpha = np.maximum(alpha, disk(tip, max(1.5, 0.009 * width * s), shape))
        return alpha, {"side": ("right", "left")[side], "leads": leads, "kind": "ICD" if rng.random() < 0.3 else "pacemaker"}


class ECGLeads(Artefact):
    """ECG electrodes (rings with a central snap) on the chest with wires running off the image."""

    name = "ecg_leads"
    default_placement: Placement = "any"
    default_level = 0.9

    def draw(self, rng, shape, layout):
        height, width = shape
        n = int(rng.integers(3, 6))
        alpha = np.zeros(shape, dtype=np.float32)
        radius = 0.03 * width * self.scale
        for _ in range(n):
            if self.placement == "outside_lungs":
                centre = (width * rng.choice([rng.uniform(0.04, 0.12), rng.uniform(0.88, 0.96)]), height * rng.uniform(0.2, 0.9))
            elif self.placement == "overlap_lungs" and layout.lungs is not None:
                rows, cols = np.nonzero(layout.lungs)
                k = int(rng.integers(rows.size))
                centre = (float(cols[k]), float(rows[k]))
            else:
                centre = (width * rng.uniform(0.15, 0.85), height * rng.uniform(0.15, 0.85))
            ring = disk(centre, radius, shape, hole=radius * 0.7) * 0.7 + disk(centre, radius * 0.3, shape)
            end = (centre[0] + rng.uniform(-0.3, 0.3) * width, height * 1.05 if rng.random() < 0.5 else -0.05 * height)
            ctrl = (centre[0] + rng.uniform(-0.2, 0.2) * width, (centre[1] + end[1]) / 2)
            wire = stroke(curve(centre, ctrl, end, 20), max(1.0, 0.006 * width * self.scale), shape)
            alpha = np.maximum(alpha, np.maximum(ring, wire * 0.85))
        if layout.lungs is not None and self.placement == "outside_lungs":
            alpha = alpha * ~layout.lungs
        return alpha, {"electrodes": n}


class ClothingClip(Artefact):
    """Metal clips/buttons on clothing: small rings or bars, one to three of them."""

    name = "clothing_clip"
    default_placement: Placement = "any"

    def draw(self, rng, shape, layout):
        width = shape[1]
        n = int(rng.integers(1, 4))
        size = max(5, int(round(0.045 * width * self.scale)))
        if rng.random() < 0.6:  # button: ring with holes
            patch = disk((size / 2, size / 2), size / 2 - 0.5, (size, size))
            for dc, dr in ((-1, -1), (1, 1)):
                patch = patch * (1 - 0.8 * disk((size / 2 + dc * size / 8, size / 2 + dr * size / 8), size / 12 + 0.3, (size, size)))
            kind = "button"
        else:  # clip: a bar with a slot
            patch = np.zeros((size, size), dtype=np.float32)
            patch[size // 3 : size - size // 3, :] = 1.0
            patch[size // 2 : size // 2 + 1, size // 5 : size - size // 5] = 0.3
            kind = "clip"
        alpha = np.zeros(shape, dtype=np.float32)
        spacing = rng.uniform(0.06, 0.09) * width
        base, issue = fit_patch(patch, shape, layout, self.placement, rng)
        for k in range(n):
            shifted = np.roll(base, int(round(k * spacing)), axis=0)
            if k and shifted[: int(round(k * spacing))].any():
                break  # would wrap around the top edge
            alpha = np.maximum(alpha, shifted)
        if layout.lungs is not None and self.placement == "outside_lungs":
            alpha = alpha * ~layout.lungs
        return alpha, {"count": n, "kind": kind, **_issue(issue)}


class CustomArtefact(Artefact):
    """A site's own artefact: a small image, or a callable that draws one.

    ``source`` is either

    * an array (h, w) of opacity (values above 1 are divided by the maximum, e.g. a 0-255 logo), a
      *patch* placed by the ``placement`` rule like the laterality marker; or
    * a callable ``source(rng, shape, layout)`` (``rng``: the image's numpy Generator, ``shape``:
      (H, W), ``layout``: the :class:`Layout`, any field may be ``None``) returning an opacity array,
      or ``(opacity, details)`` with a dict of details for the metadata. An array smaller than the
      image is a patch, placed as above; an (H, W) array is a drawing already in place.

    Size. A patch is resized by ``scale`` and, when ``size`` is given, to span ``size`` x the image
    width (the built-ins are sized the same way, e.g. the laterality marker's letter is 0.07 of the
    width): the artefact keeps its proportion to the image at every image size. Without ``size`` a
    patch keeps its pixels (a callable sees ``shape`` and can size it itself). A drawing in place is
    scaled by ``scale`` about its centre of mass; drawn in fractions of ``shape``, it follows the
    image size like the built-ins do.

    Placement. Patches go where ``placement`` allows (:func:`fit_patch`); a drawing in place stays
    where it was drawn unless ``placement`` is given and the drawing breaks it, then its bounding box
    is moved like a patch. Either way a failed placement is reported (``details["placement_issue"]``),
    not raised. The mask is ``opacity >= 0.3`` (after ``opacity`` scales the values).

    Args:
        source: the patch or the callable (see above).
        name: its name in manifests and metadata.
        placement: ``outside_lungs``, ``overlap_lungs`` or ``any``; ``None``: ``any`` (and a drawing in
            place is left where it is).
        scale: size multiplier.
        level: display brightness (MONOCHROME2, 1 = white); ``None``: 0.97.
        opacity: maximum alpha.
        size: patch width as a fraction of the image width at ``scale`` 1; ``None``: the patch's pixels.
    """

    def __init__(
        self,
        source: np.ndarray | Callable[[np.random.Generator, tuple[int, int], Layout], np.ndarray | tuple],
        name: str = "custom",
        placement: Placement | None = None,
        scale: float = 1.0,
        level: float | None = None,
        opacity: float = 1.0,
        size: float | None = None,
    ) -> None:
        super().__init__(placement, scale, level, opacity)
        if size is not None and not 0 < size <= 1:
            raise ValueError(f"size is a fraction of the image width in (0, 1], got {size}")
        self.source, self.name, self.size = source, name, size
        self.placement_given = placement is not None

    def draw(self, rng, shape, layout):
        details: dict = {}
        out = self.source(rng, shape, layout) if callable(self.source) else self.source
        if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict):
            out, details = out[0], dict(out[1])
        alpha = self._opacity(out)
        if alpha.shape == tuple(shape):  # drawn in place
            if self.scale != 1.0:
                alpha = _zoom_about_centre(alpha, self.scale)
            mask = alpha >= MASK_THRESHOLD
            if not (self.placement_given and mask.any() and placement_issue(mask, layout, self.placement)):
                return alpha, details
            rows, cols = np.nonzero(alpha > 0)  # breaks the rule it was given: move it like a patch
            patch = alpha[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        else:
            zoom = self.scale * (self.size * shape[1] / alpha.shape[1] if self.size is not None else 1.0)
            target = [max(1, round(side * zoom)) for side in alpha.shape]  # never below one pixel
            patch = alpha if zoom == 1.0 else np.clip(
                ndimage.zoom(alpha, [t / side for t, side in zip(target, alpha.shape)], order=1), 0, 1)
        placed, issue = fit_patch(patch.astype(np.float32), shape, layout, self.placement, rng)
        return placed, {**details, **_issue(issue)}

    def _opacity(self, out) -> np.ndarray:
        """``out`` as float32 opacity (h, w) in [0, 1]; ValueError naming the artefact otherwise."""
        try:
            alpha = np.asarray(out, dtype=np.float32)
        except (TypeError, ValueError) as err:
            raise ValueError(f"custom artefact {self.name!r} gave {type(out).__name__}, not an opacity array") from err
        if alpha.ndim != 2 or 0 in alpha.shape:
            raise ValueError(f"custom artefact {self.name!r} must give a 2-D (h, w) opacity array, got shape {alpha.shape}")
        if not np.isfinite(alpha).all():
            raise ValueError(f"custom artefact {self.name!r} gave non-finite opacity values")
        peak = float(alpha.max())
        return np.clip(alpha / peak if peak > 1.0 else alpha, 0, 1)


def _zoom_about_centre(alpha: np.ndarray, factor: float) -> np.ndarray:
    """``alpha`` (H, W) scaled by ``factor`` about its centre of mass, on the same canvas (bilinear)."""
    if not alpha.any():
        return alpha
    centre = np.asarray(ndimage.center_of_mass(alpha))
    # Output pixel o samples input centre + (o - centre) / factor.
    out = ndimage.affine_transform(alpha, np.full(2, 1.0 / factor), offset=centre - centre / factor, order=1)
    return np.clip(out, 0, 1).astype(np.float32)


ARTEFACTS: dict[str, type[Artefact]] = {
    cls.name: cls for cls in (ChestDrain, LateralityMarker, SiteToken, Pacemaker, ECGLeads, ClothingClip)
}


# --- a site's artefacts by name: the registry, entry points and import strings -----------------

#: Installed packages may register artefacts under this entry-point group (name -> object, as for
#: :func:`register_artefact`); they are loaded the first time their name is asked for.
ENTRY_POINT_GROUP = "ravl_med.artefacts"

_REGISTERED: dict[str, object] = {}
_CHECKED: set[str] = set()  # specs that passed check_artefact (cleared when the registry changes)
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_FACTORY_KEYWORDS = ("placement", "scale", "level")


def _kind(obj: object) -> str | None:
    """How an object makes artefacts: ``instance``, ``factory``, ``draw`` (callable), ``patch`` or ``None``.

    A callable is a factory when it is an :class:`Artefact` subclass or takes a ``placement``
    parameter (``factory(placement=, scale=, level=)`` returns an Artefact); any other callable is a
    draw function ``(rng, shape, layout) -> opacity`` for :class:`CustomArtefact`.
    """
    if isinstance(obj, Artefact):
        return "instance"
    if isinstance(obj, type):
        return "factory" if issubclass(obj, Artefact) else None
    if isinstance(obj, np.ndarray):
        return "patch" if obj.ndim == 2 else None
    if callable(obj):
        try:
            parameters = inspect.signature(obj).parameters
        except (TypeError, ValueError):  # some builtins have no signature: treat as a draw function
            return "draw"
        return "factory" if "placement" in parameters else "draw"
    return None


_USABLE = ("an Artefact, an Artefact subclass or factory(placement=, scale=, level=), a callable "
           "(rng, shape, layout) -> opacity, or a 2-D opacity array")


def register_artefact(name: str, artefact_or_factory: object, *, replace: bool = False) -> None:
    """Makes an artefact available by ``name`` to :func:`get_artefact`, suite YAML and the command line.

    Args:
        name: a Python-identifier-like name (letters, digits, ``_``); not a built-in name.
        artefact_or_factory: an :class:`Artefact` (a setting's ``placement``/``level`` replace its own
            and its ``scale`` multiplies it), an Artefact subclass or a factory called as
            ``factory(placement=, scale=, level=)`` (recognised by its ``placement`` parameter), a draw
            callable ``(rng, shape, layout) -> opacity`` or a 2-D opacity array (both wrapped in a
            :class:`CustomArtefact` called ``name``).
        replace: allow replacing an earlier registration of ``name``.

    Raises:
        ValueError: a bad or taken name; TypeError: an object of none of the kinds above.
    """
    if not _NAME.fullmatch(name):
        raise ValueError(f"artefact name {name!r}: use letters, digits and _, starting with a letter")
    if name in ARTEFACTS:
        raise ValueError(f"artefact name {name!r} is a built-in artefact")
    if name in _REGISTERED and not replace:
        raise ValueError(f"artefact {name!r} is already registered (pass replace=True to replace it)")
    if _kind(artefact_or_factory) is None:
        raise TypeError(f"artefact {name!r}: got {type(artefact_or_factory).__name__}; give {_USABLE}")
    _REGISTERED[name] = artefact_or_factory
    _CHECKED.clear()


def unregister_artefact(name: str) -> None:
    """Forgets a registered artefact (no-op for unknown names)."""
    _REGISTERED.pop(name, None)
    _CHECKED.clear()


def _entry_points() -> dict:
    from importlib.metadata import entry_points  # noqa: PLC0415 - only when a name is not built in

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def artefact_names() -> list[str]:
    """Built-in, registered and entry-point artefact names, in that order."""
    names = [*ARTEFACTS, *_REGISTERED]
    return names + [n for n in sorted(_entry_points()) if n not in names]


def artefact_label(spec: str) -> str:
    """The short name of an artefact spec: the name itself, or for ``pkg.module:attr`` the ``attr``.

    Setting names, manifests and prompts use it (an import string holds ``:`` and dots).
    """
    return spec.rsplit(":", 1)[1].rsplit(".", 1)[-1] if ":" in spec else spec


def _import(spec: str) -> object:
    """The object an import string ``package.module:attribute`` names (:func:`pkgutil.resolve_name`)."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"artefact {spec!r}: an import string is 'package.module:attribute'")
    try:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            # As ``python -m`` would: a module in the working directory (the console script's
            # sys.path does not hold it); appended, so installed packages keep precedence.
            if err.name != module_name.split(".")[0] or os.getcwd() in sys.path:
                raise
            sys.path.append(os.getcwd())
            module = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001 - any failure while importing the site's module
        raise ConfigError(f"artefact {spec!r}: cannot import {module_name!r}: {_one_line(err)}") from None
    try:
        return pkgutil.resolve_name(spec)  # the module is imported: this walks the attribute path
    except AttributeError:
        raise ConfigError(f"artefact {spec!r}: module {module.__name__!r} has no attribute {attribute!r}") from None


def _one_line(err: BaseException) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())[:300]


def _resolve(spec: str) -> object:
    """The registered, entry-point or imported object behind a non-built-in ``spec``."""
    if ":" in spec:
        return _import(spec)
    if spec in _REGISTERED:
        return _REGISTERED[spec]
    point = _entry_points().get(spec)
    if point is None:
        raise ConfigError(f"unknown artefact {spec!r}; known: {', '.join(artefact_names())} (or an import "
                          "string 'package.module:attribute')")
    try:
        obj = point.load()
    except Exception as err:  # noqa: BLE001
        raise ConfigError(f"artefact {spec!r} (entry point {point.value}): cannot load: {_one_line(err)}") from None
    _REGISTERED[spec] = obj
    return obj


def _build(obj: object, spec: str, **kwargs) -> Artefact:
    kind, label = _kind(obj), artefact_label(spec)
    if kind == "instance":
        art = copy.copy(obj)
        if kwargs.get("placement") is not None:
            art.placement = kwargs["placement"]
            art.placement_given = True
        if kwargs.get("level") is not None:
            art.level = float(kwargs["level"])
        art.scale = art.scale * float(kwargs.get("scale", 1.0))
        return art
    if kind == "factory":
        art = obj(**kwargs)
        if not isinstance(art, Artefact):
            raise TypeError(f"artefact factory {spec!r} returned {type(art).__name__}, not an Artefact")
        return art
    if kind in ("draw", "patch"):
        return CustomArtefact(obj, name=label, **kwargs)
    raise ConfigError(f"artefact {spec!r}: got {type(obj).__name__}; give {_USABLE}")


def get_artefact(name: str, **kwargs) -> Artefact:
    """An artefact by name: built-in (:data:`ARTEFACTS`), registered (:func:`register_artefact`, or the
    :data:`ENTRY_POINT_GROUP` entry points), or an import string ``package.module:attribute``.

    ``kwargs`` (``placement``, ``scale``, ``level``, ...) go to the constructor or factory; see
    :func:`register_artefact` for what they do to a registered instance.

    Raises:
        ConfigError: an unknown name, an import that fails, or an object that makes no artefact.
    """
    if name in ARTEFACTS:
        return ARTEFACTS[name](**kwargs)
    return _build(_resolve(name), name, **kwargs)


def _probe_layout(size: int) -> Layout:
    """A plain chest-like :class:`Layout` (two lungs, body, heart) on a ``size`` square, for probing."""
    rr, cc = np.mgrid[:size, :size] / size
    lungs = (((cc - 0.32) / 0.14) ** 2 + ((rr - 0.45) / 0.28) ** 2 <= 1) | (((cc - 0.68) / 0.14) ** 2 + ((rr - 0.45) / 0.28) ** 2 <= 1)
    body = ((cc - 0.5) / 0.45) ** 2 + ((rr - 0.55) / 0.5) ** 2 <= 1
    heart = ((cc - 0.55) / 0.12) ** 2 + ((rr - 0.62) / 0.1) ** 2 <= 1
    return Layout(lungs=lungs, body=body, heart=heart, heart_centre=(0.62 * size, 0.55 * size))


def check_artefact(spec: str) -> str:
    """``spec`` unchanged when it names a usable artefact; raises :class:`ConfigError` (one line) otherwise.

    Built-in names are accepted as they are; any other artefact is resolved (imported at this point
    for an import string) and drawn once on a 64 x 64 probe layout, so that an object that is not an
    artefact, or a callable that fails or returns no opacity array, is refused when the suite is read
    rather than halfway through writing it.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"artefact: expected a name or 'package.module:attribute', got {spec!r}")
    if spec in ARTEFACTS or spec in _CHECKED:
        return spec
    if ":" not in spec and not _NAME.fullmatch(spec):
        raise ConfigError(f"unknown artefact {spec!r}; known: {', '.join(artefact_names())} (or an import "
                          "string 'package.module:attribute')")
    try:
        artefact = get_artefact(spec)
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - a site's factory failing
        raise ConfigError(f"artefact {spec!r} cannot be made: {_one_line(err)}") from None
    try:
        artefact.render(np.random.default_rng(0), (64, 64), _probe_layout(64))
    except Exception as err:  # noqa: BLE001 - a site's draw function failing
        raise ConfigError(f"artefact {spec!r} cannot be drawn (probe on a 64 x 64 image): {_one_line(err)}") from None
    _CHECKED.add(spec)
    return spec
