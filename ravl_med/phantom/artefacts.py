"""Shortcut artefacts: radio-opaque objects painted into a radiograph, each with a pixel mask.

An artefact renders an opacity map ``alpha`` (float32 (H, W) in [0, 1]) and a display ``level``
(how bright the object shows, MONOCHROME2); :func:`composite` blends it into a display image
(``image * (1 - alpha) + level * alpha``) and the mask is ``alpha >= 0.3``.

Where an artefact may go is its ``placement``:

* ``outside_lungs``: the mask never touches a lung field;
* ``overlap_lungs``: at least part of the mask lies over a lung field;
* ``any``: no rule.

Placement needs a :class:`Layout` (lung fields, body outline); without one every artefact is
placed by ``any`` rules. The MONAI-style array and dictionary transforms that paint them into an
image are :class:`~ravl_med.phantom.inject.InjectArtefact` / ``InjectArtefactd`` (this module
imports neither torch nor MONAI, so listing the artefacts stays cheap); a user-supplied artefact
(a small image, or a callable) goes through :class:`CustomArtefact`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

__all__ = [
    "ARTEFACTS",
    "Artefact",
    "ArtefactResult",
    "CustomArtefact",
    "Layout",
    "composite",
    "get_artefact",
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


def place_patch(
    patch: np.ndarray, shape: tuple[int, int], layout: Layout, placement: Placement, rng: np.random.Generator,
    tries: int = 60,
) -> np.ndarray:
    """Puts ``patch`` (alpha (h, w)) at a random position that satisfies ``placement``; alpha (H, W).

    Candidates are drawn uniformly; for ``outside_lungs`` the corners and edges are favoured (where
    markers and tokens sit on real films). Falls back to the last candidate after ``tries``.
    """
    h, w = patch.shape
    height, width = shape
    out = None
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
            return out
    return out if out is not None else np.zeros(shape, dtype=np.float32)


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
        raise NotImplementedError

    def render(self, rng: np.random.Generator, shape: tuple[int, int], layout: Layout | None = None) -> ArtefactResult:
        """Draws the artefact on an (H, W) canvas; see :class:`ArtefactResult`."""
        alpha, details = self.draw(rng, shape, layout or Layout())
        alpha = np.clip(alpha, 0, 1).astype(np.float32) * self.opacity
        return ArtefactResult(alpha=alpha, level=self.level, details={"artefact": self.name, **details})


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
        return place_patch(patch, shape, layout, self.placement, rng), {"text": letter}


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
        return place_patch(patch, shape, layout, self.placement, rng), {"text": text}


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
        base = place_patch(patch, shape, layout, self.placement, rng)
        for k in range(n):
            shifted = np.roll(base, int(round(k * spacing)), axis=0)
            if k and shifted[: int(round(k * spacing))].any():
                break  # would wrap around the top edge
            alpha = np.maximum(alpha, shifted)
        if layout.lungs is not None and self.placement == "outside_lungs":
            alpha = alpha * ~layout.lungs
        return alpha, {"count": n, "kind": kind}


class CustomArtefact(Artefact):
    """A user-supplied artefact.

    Args:
        source: either an array (h, w) of opacity in [0, 1] (a small image, placed like a marker by
            the ``placement`` rule), or a callable ``source(rng, shape, layout) -> alpha (H, W)``.
        name: its name in manifests and metadata.
        placement, scale, level, opacity: see :class:`Artefact`.
    """

    def __init__(
        self,
        source: np.ndarray | Callable[[np.random.Generator, tuple[int, int], Layout], np.ndarray],
        name: str = "custom",
        placement: Placement | None = None,
        scale: float = 1.0,
        level: float | None = None,
        opacity: float = 1.0,
    ) -> None:
        super().__init__(placement, scale, level, opacity)
        self.source, self.name = source, name

    def draw(self, rng, shape, layout):
        if callable(self.source):
            return np.asarray(self.source(rng, shape, layout), dtype=np.float32), {}
        patch = np.asarray(self.source, dtype=np.float32)
        if patch.ndim != 2:
            raise ValueError(f"a custom artefact image must be 2-D (h, w), got shape {patch.shape}")
        if patch.max() > 1.0:
            patch = patch / patch.max()
        if self.scale != 1.0:
            patch = np.clip(ndimage.zoom(patch, self.scale, order=1), 0, 1)
        return place_patch(patch, shape, layout, self.placement, rng), {}


ARTEFACTS: dict[str, type[Artefact]] = {
    cls.name: cls for cls in (ChestDrain, LateralityMarker, SiteToken, Pacemaker, ECGLeads, ClothingClip)
}


def get_artefact(name: str, **kwargs) -> Artefact:
    """A built-in artefact by name (see :data:`ARTEFACTS`); ``kwargs`` go to its constructor."""
    try:
        return ARTEFACTS[name](**kwargs)
    except KeyError:
        raise ValueError(f"unknown artefact {name!r}; known: {list(ARTEFACTS)}") from None
