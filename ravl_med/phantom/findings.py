"""Findings (image-level classes) drawn into a phantom's attenuation map, each with its mask.

A finding acts in two steps: :meth:`Finding.prepare` may change the patient's geometry before
the anatomy is drawn (cardiomegaly enlarges the heart), :meth:`Finding.apply` changes the drawn
:class:`~ravl_med.phantom.anatomy.Density` in place and returns the finding's mask, bool
(H, W). Side index 0 is the patient's right (viewer's left), 1 the patient's left.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ravl_med.phantom.anatomy import Density, Patient, grid, smooth_noise

__all__ = ["CLASSES", "FINDINGS", "Finding", "FindingResult", "get_finding"]

#: Image-level classes, in the order used everywhere (also the manifest labels).
CLASSES: tuple[str, ...] = ("no finding", "cardiomegaly", "pleural effusion", "pneumothorax", "nodule", "consolidation")
SIDES = ("right", "left")


@dataclass
class FindingResult:
    """What a finding drew: its mask (bool (H, W), empty for no finding) and report details."""

    mask: np.ndarray
    details: dict = field(default_factory=dict)


class Finding:
    """Base class: the ``no finding`` class draws nothing."""

    name = "no finding"

    def prepare(self, patient: Patient, rng: np.random.Generator) -> dict:
        """Changes the patient before rendering; returns details for the report."""
        return {}

    def apply(self, density: Density, rng: np.random.Generator, details: dict) -> FindingResult:
        return FindingResult(np.zeros(density.shape, dtype=bool), details)


class Cardiomegaly(Finding):
    """Enlarged cardiac silhouette: cardiothoracic ratio 0.55-0.68; mask = the heart."""

    name = "cardiomegaly"

    def prepare(self, patient: Patient, rng: np.random.Generator) -> dict:
        ctr = float(rng.uniform(0.56, 0.68))
        patient.set_heart_ctr(ctr)
        return {"ctr": round(ctr, 2), "severity": "moderate" if ctr < 0.62 else "marked"}

    def apply(self, density: Density, rng: np.random.Generator, details: dict) -> FindingResult:
        return FindingResult(density.heart.copy(), details)


class PleuralEffusion(Finding):
    """Basal opacity with a meniscus rising laterally, blunting the costophrenic angle."""

    name = "pleural effusion"

    def apply(self, density: Density, rng: np.random.Generator, details: dict) -> FindingResult:
        side = int(rng.integers(2))
        height = float(rng.uniform(0.05, 0.16))  # fluid level above the dome top
        u, v = grid(*density.shape)
        x = density.lateral[side]
        level = density.patient.dome_v[side] - height - 0.06 * np.clip(x, 0, 1.3) ** 2
        mask = density.lungs[side] & (v > level)
        fill = np.clip((v - level) / 0.04, 0, 1) * mask
        density.lung_air *= 1.0 - 0.92 * fill
        density.markings *= 1.0 - fill
        density.base += 0.14 * fill
        size = "small" if height < 0.08 else ("moderate" if height < 0.13 else "large")
        return FindingResult(mask, {**details, "side": SIDES[side], "size": size})


class Pneumothorax(Finding):
    """Apicolateral air without lung markings, bounded by a thin visceral pleural line."""

    name = "pneumothorax"

    def apply(self, density: Density, rng: np.random.Generator, details: dict) -> FindingResult:
        side = int(rng.integers(2))
        k = float(rng.uniform(0.18, 0.42))  # fraction of the hemithorax width that collapsed
        u, v = grid(*density.shape)
        x = density.lateral[side]
        p = density.patient
        w = np.clip((v - p.apex_v) / (p.dome_v[side] - p.apex_v), 0, 1)
        edge = 1.0 - 2.0 * k * (1.0 - 0.6 * w)
        lung = density.lungs[side]
        mask = lung & ((x > edge) | (v < p.apex_v + 0.35 * k))
        density.markings *= ~mask
        density.lung_air *= np.where(mask, 1.12, 1.0).astype(np.float32)
        line = ndimage.binary_dilation(mask, iterations=max(1, density.shape[1] // 256)) & lung & ~mask
        density.base += 0.09 * line
        size = "small" if k < 0.25 else ("moderate" if k < 0.34 else "large")
        return FindingResult(mask, {**details, "side": SIDES[side], "size": size})


def _random_lung_point(density: Density, rng: np.random.Generator, zone: tuple[float, float] = (0.0, 1.0)):
    """A random (side, row, col) inside a lung field, away from the heart, in a vertical zone."""
    height, _ = density.shape
    p = density.patient
    candidates = density.lung_mask & ~density.heart
    rows = np.arange(height)[:, None] / height
    top = p.apex_v + zone[0] * (p.dome_v[1] - p.apex_v)
    bottom = p.apex_v + zone[1] * (p.dome_v[1] - p.apex_v)
    candidates &= (rows > top) & (rows < bottom)
    # keep clear of the lung walls
    candidates &= (np.abs(density.lateral) < 0.75).any(axis=0)
    index = np.flatnonzero(candidates)
    if index.size == 0:
        index = np.flatnonzero(density.lung_mask)
    flat = int(index[rng.integers(index.size)])
    row, col = divmod(flat, density.shape[1])
    side = 0 if density.lungs[0].flat[flat] else 1
    return side, row, col


class Nodule(Finding):
    """A round opacity within a lung field: nodule (< 3 cm equivalent) or mass."""

    name = "nodule"

    def apply(self, density: Density, rng: np.random.Generator, details: dict) -> FindingResult:
        height, width = density.shape
        side, row, col = _random_lung_point(density, rng, (0.15, 0.85))
        radius = float(rng.uniform(0.014, 0.04)) * width
        rr, cc = np.ogrid[:height, :width]
        d2 = ((rr - row) ** 2 + (cc - col) ** 2) / radius**2
        mask = d2 < 1.0
        density.base += 0.4 * np.sqrt(np.clip(1.0 - d2, 0, None)).astype(np.float32)
        zone = "upper" if row / height < density.patient.apex_v + 0.2 else ("mid" if row / height < 0.5 else "lower")
        kind = "mass" if radius / width > 0.032 else "nodule"
        return FindingResult(mask, {**details, "side": SIDES[side], "zone": zone, "kind": kind})


class Consolidation(Finding):
    """Patchy airspace opacity filling part of one lung."""

    name = "consolidation"

    def apply(self, density: Density, rng: np.random.Generator, details: dict) -> FindingResult:
        height, width = density.shape
        side, row, col = _random_lung_point(density, rng, (0.35, 0.95))
        u, v = grid(height, width)
        ru, rv = rng.uniform(0.06, 0.1), rng.uniform(0.05, 0.09)
        blob = 1.0 - ((u - (col + 0.5) / width) / ru) ** 2 - ((v - (row + 0.5) / height) / rv) ** 2
        patch = blob + 0.35 * smooth_noise(rng, (height, width), 3.0 * width / 256)
        mask = (patch > 0.15) & density.lungs[side]
        fill = np.clip(patch / 0.5, 0, 1) * density.lungs[side]
        fill = ndimage.gaussian_filter(fill.astype(np.float32), width / 256)
        density.lung_air *= 1.0 - 0.85 * fill
        density.base += 0.08 * fill
        zone = "upper" if row / height < 0.4 else ("mid" if row / height < 0.55 else "lower")
        return FindingResult(mask, {**details, "side": SIDES[side], "zone": zone})


FINDINGS: dict[str, type[Finding]] = {
    cls.name: cls for cls in (Finding, Cardiomegaly, PleuralEffusion, Pneumothorax, Nodule, Consolidation)
}


def get_finding(name: str) -> Finding:
    """The finding drawer for a class name in :data:`CLASSES`."""
    try:
        return FINDINGS[name]()
    except KeyError:
        raise ValueError(f"unknown finding {name!r}; known: {list(FINDINGS)}") from None
