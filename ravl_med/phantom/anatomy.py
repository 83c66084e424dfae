"""Procedural frontal chest radiographs: anatomy as a sum of attenuation layers.

Everything is drawn on normalised coordinate grids (``u`` = column / width, ``v`` = row / height,
both in [0, 1)) with numpy broadcasting, so one image costs a few dozen whole-array operations.
Images are in radiological display: the patient's right is on the viewer's left, head at the top.

The renderer works in two stages so that findings can change the anatomy before it is exposed:

1. :func:`sample_patient` draws the patient's geometry (:class:`Patient`) and
   :func:`render_density` turns it into an attenuation map (:class:`Density`), a float (H, W) array
   of line integrals in arbitrary units (air 0, chest soft tissue about 1, bone adds about 0.3);
2. :func:`expose` maps attenuation to display values in [0, 1] through a detector response chosen
   by a :class:`Device` (contrast, blur, noise); :func:`add_detector_noise` is kept separate so that
   artefacts can be painted before the noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from scipy import ndimage

__all__ = [
    "DEVICES",
    "Density",
    "Device",
    "Patient",
    "add_detector_noise",
    "expose",
    "grid",
    "render_density",
    "sample_patient",
    "smooth_noise",
]


@lru_cache(maxsize=8)
def grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised pixel-centre coordinates ``(u, v)``, each float32 (H, W); cached per shape."""
    v, u = np.meshgrid(
        (np.arange(height, dtype=np.float32) + 0.5) / height,
        (np.arange(width, dtype=np.float32) + 0.5) / width,
        indexing="ij",
    )
    u.setflags(write=False)
    v.setflags(write=False)
    return u, v


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian random field of correlation length ``sigma_px`` pixels, (H, W).

    Drawn at a coarser resolution and upsampled bilinearly, which is much faster than filtering
    at full resolution for large ``sigma_px``.
    """
    height, width = shape
    factor = max(1, int(sigma_px // 2))
    small = (max(2, -(-height // factor)), max(2, -(-width // factor)))
    field_ = ndimage.gaussian_filter(rng.standard_normal(small).astype(np.float32), sigma_px / factor, mode="wrap")
    if factor > 1:
        field_ = ndimage.zoom(field_, (height / small[0], width / small[1]), order=1)[:height, :width]
    field_ -= field_.mean()
    return field_ / (field_.std() + 1e-6)


@dataclass(frozen=True)
class Device:
    """An imaging device: how attenuation becomes a displayed image.

    Attributes:
        name: device label written to the manifest.
        modality: ``DX`` or ``CR``.
        contrast: exponent of the detector response (above 1: harder, more contrast).
        blur_px: Gaussian blur at 256 px image size (scaled with the size).
        noise: quantum noise standard deviation in display units.
        bits_stored: 12 or 16.
        monochrome1: the device stores inverted values (MONOCHROME1).
        manufacturer: written to the DICOM header.
    """

    name: str
    modality: str
    contrast: float
    blur_px: float
    noise: float
    bits_stored: int
    monochrome1: bool
    manufacturer: str


#: The simulated devices; each image gets one, which is also its ``device`` attribute.
DEVICES: tuple[Device, ...] = (
    Device("dx-flatpanel-a", "DX", 1.00, 0.55, 0.012, 12, False, "Phantom Imaging Co"),
    Device("dx-flatpanel-b", "DX", 1.20, 0.75, 0.018, 16, False, "Phantom Imaging Co"),
    Device("dx-portable", "DX", 0.85, 1.00, 0.028, 12, True, "Phantom Mobile Systems"),
    Device("cr-cassette", "CR", 0.95, 0.90, 0.022, 12, True, "Phantom Storage Phosphor"),
)


@dataclass
class Patient:
    """Geometry of one phantom patient in normalised image coordinates (fractions of the side).

    ``t`` below is the lateral distance from the midline, positive towards either side.

    Attributes:
        midline: column of the spine (u).
        body_half_width: half width of the torso at chest level.
        neck_half_width: half width of the neck at the top edge.
        shoulder_v: row where the shoulders reach full width.
        lung_centre_t: lateral position of each lung's centre (t).
        lung_half_width: half width of each lung (t).
        apex_v: row of the lung apices.
        lung_centre_v: row where the rounded apex meets the straight lateral walls.
        dome_v: top of the (right, left) diaphragm domes.
        dome_depth: how far the costophrenic angles lie below the dome tops.
        heart_ctr: cardiothoracic ratio (heart width / thorax width).
        heart_centre: (u, v) of the cardiac silhouette.
        heart_half_height: vertical half axis of the heart ellipse.
        rib_spacing: vertical spacing of posterior ribs at the top of the thorax.
        rib_curvature: downward bend of posterior ribs (per t squared).
        sex: ``F`` or ``M`` (breast shadows for ``F``).
        age_band: age band label.
        soft_tissue: overall soft-tissue thickness factor (body habitus).
    """

    midline: float
    body_half_width: float
    neck_half_width: float
    shoulder_v: float
    lung_centre_t: float
    lung_half_width: float
    apex_v: float
    lung_centre_v: float
    dome_v: tuple[float, float]
    dome_depth: float
    heart_ctr: float
    heart_centre: tuple[float, float]
    heart_half_height: float
    rib_spacing: float
    rib_curvature: float
    sex: str
    age_band: str
    soft_tissue: float
    extras: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Python floats, not numpy float64 scalars: those would promote the float32 grids to float64.
        for name, value in vars(self).items():
            if isinstance(value, np.floating):
                setattr(self, name, float(value))
            elif isinstance(value, tuple):
                setattr(self, name, tuple(float(x) for x in value))

    @property
    def heart_half_width(self) -> float:
        """Half width of the cardiac silhouette (u units)."""
        return self.heart_ctr * (self.lung_centre_t + self.lung_half_width)

    def set_heart_ctr(self, ctr: float) -> None:
        """Changes the cardiothoracic ratio, keeping the heart's left-of-midline share."""
        self.heart_ctr = float(ctr)
        half = self.heart_half_width
        self.heart_centre = (self.midline + 0.3 * half, self.heart_centre[1])
        self.heart_half_height = 0.7 * half


AGE_BANDS = ("18-39", "40-59", "60-79", "80+")


def sample_patient(rng: np.random.Generator) -> Patient:
    """Draws one patient's geometry (see :class:`Patient`)."""
    midline = 0.5 + rng.normal(0, 0.012)
    lung_half_width = rng.uniform(0.135, 0.165)
    lung_centre_t = rng.uniform(0.185, 0.215)
    apex_v = rng.uniform(0.11, 0.16)
    dome_top = rng.uniform(0.60, 0.68)
    right_higher = rng.uniform(0.01, 0.035)  # the right hemidiaphragm usually sits higher
    ctr = rng.uniform(0.40, 0.47)
    patient = Patient(
        midline=midline,
        body_half_width=lung_centre_t + lung_half_width + rng.uniform(0.07, 0.16),
        neck_half_width=rng.uniform(0.085, 0.11),
        shoulder_v=apex_v + rng.uniform(0.03, 0.09),
        lung_centre_t=lung_centre_t,
        lung_half_width=lung_half_width,
        apex_v=apex_v,
        lung_centre_v=apex_v + rng.uniform(0.17, 0.22),
        dome_v=(dome_top - right_higher, dome_top),
        dome_depth=rng.uniform(0.08, 0.12),
        heart_ctr=ctr,
        heart_centre=(midline, dome_top - rng.uniform(0.03, 0.06)),
        heart_half_height=0.0,
        rib_spacing=rng.uniform(0.048, 0.058),
        rib_curvature=rng.uniform(0.7, 1.1),
        sex=str(rng.choice(["F", "M"])),
        age_band=str(rng.choice(AGE_BANDS, p=[0.2, 0.3, 0.35, 0.15])),
        soft_tissue=rng.uniform(0.85, 1.2),
    )
    patient.set_heart_ctr(float(ctr))
    return patient


@dataclass
class Density:
    """Attenuation map of one patient and the anatomical masks findings and artefacts use.

    Attributes:
        total: float32 (H, W) attenuation (line integral, arbitrary units).
        lung_air: float32 (H, W) how much air each pixel's ray crosses (0 outside the lungs);
            findings that fill the lung (effusion, consolidation) subtract from it.
        markings: float32 (H, W) lung vessel markings (removed in a pneumothorax).
        lungs: bool (2, H, W) lung fields, index 0 = patient's right (viewer's left).
        heart: bool (H, W) cardiac silhouette.
        body: bool (H, W) inside the body outline.
        patient: the geometry it was drawn from.
        base: float32 (H, W) everything except lung air and markings.
        lateral: float32 (2, H, W) per side, -1 at the lung's medial wall, +1 at its lateral wall.
        dome: float32 (2, H, W) per side, the row (v) of the diaphragm under each column.
    """

    base: np.ndarray
    lung_air: np.ndarray
    markings: np.ndarray
    lungs: np.ndarray
    heart: np.ndarray
    body: np.ndarray
    patient: Patient
    lateral: np.ndarray | None = None
    dome: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.base.shape  # type: ignore[return-value]

    @property
    def lung_mask(self) -> np.ndarray:
        """bool (H, W): either lung field."""
        return self.lungs[0] | self.lungs[1]

    @property
    def total(self) -> np.ndarray:
        return self.base - self.lung_air + self.markings


def _lung_fields(p: Patient, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Both lung fields as bool (2, H, W) and each side's normalised lateral coordinate (2, H, W)."""
    t = np.stack([p.midline - u, u - p.midline])  # lateral distance on each side, (2, H, W)
    x = (t - p.lung_centre_t) / p.lung_half_width  # -1 medial wall .. +1 lateral wall
    below = v >= p.lung_centre_v
    widen = 1.0 + 0.18 * np.clip((v - p.lung_centre_v) / 0.3, 0, 1)
    ry = p.lung_centre_v - p.apex_v
    upper = x**2 + ((v - p.lung_centre_v) / ry) ** 2 <= 1.0
    lower = np.abs(x) <= widen
    dome = np.array(p.dome_v, dtype=np.float32)[:, None, None] + p.dome_depth * np.clip(x, -0.6, 1.2) ** 2
    inside = np.where(below, lower, upper) & (v <= dome) & (t > 0.035)
    return inside, x, dome


def render_density(patient: Patient, shape: tuple[int, int], rng: np.random.Generator) -> Density:
    """Draws the attenuation map of ``patient`` on an (H, W) grid (see :class:`Density`)."""
    p = patient
    height, width = shape
    u, v = grid(height, width)
    dx = u - p.midline
    adx = np.abs(dx)
    cross, body, base = _soft_tissue(p, dx, v)
    lungs, x, dome = _lung_fields(p, u, v)
    # Abdomen below the domes is denser than the chest (no air, more tissue).
    below_dome = np.clip((v - dome.min(axis=0) + 0.02) / 0.1, 0, 1)
    base += 0.16 * below_dome * np.sqrt(cross)
    mediastinum, heart = _add_mediastinum_and_heart(base, p, u, v, dx, adx, dome)
    _add_bones(base, p, v, adx, body, below_dome)

    # Lung air: thickest in the middle of each lung, thinning to the walls and over the heart.
    profile = np.sqrt(np.clip(1.0 - 0.55 * x**2, 0.15, None))
    depth = np.clip((dome - v) / 0.05, 0.35, 1.0)  # posterior recesses behind the domes are thin
    air = (lungs * profile * depth).sum(axis=0).astype(np.float32)
    air *= 1.0 - 0.75 * heart - 0.6 * mediastinum
    lung_air = 0.55 * air

    # Vessel markings: correlated noise, strongest near the hila, fading to the periphery.
    hilum_dist = np.sqrt((adx - 0.1) ** 2 + ((v - (p.apex_v + 0.27)) * 1.2) ** 2)
    vessels = np.abs(smooth_noise(rng, shape, max(1.0, 1.2 * width / 256)))
    vessels = np.clip(1.4 - vessels, 0, None) ** 3  # thin bright ridges where the field crosses zero
    markings = (0.05 * np.exp(-hilum_dist / 0.12) + 0.012) * vessels * (air > 0)
    return Density(
        base=base.astype(np.float32),
        lung_air=lung_air.astype(np.float32),
        markings=markings.astype(np.float32),
        lungs=lungs,
        heart=heart,
        body=body,
        patient=p,
        lateral=x.astype(np.float32),
        dome=np.broadcast_to(dome, lungs.shape).astype(np.float32),
    )


def _soft_tissue(p: Patient, dx: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cross, body, base): the body's elliptical cross-section, its outline and its soft-tissue density.

    Neck widening into the shoulders; breast shadows over the lower lung fields for ``sex == "F"``.
    """
    rise = np.clip((v - 0.02) / max(p.shoulder_v - 0.02, 1e-3), 0, 1)
    half_width = p.neck_half_width + (p.body_half_width - p.neck_half_width) * np.sin(rise * np.pi / 2) ** 0.6
    cross = np.clip(1.0 - (dx / half_width) ** 2, 0, None)
    body = cross > 0
    base = 0.72 * p.soft_tissue * np.sqrt(cross)
    if p.sex == "F":
        for side in (-1, 1):
            bx = (dx - side * 0.2) / 0.16
            by = (v - (p.dome_v[0] - 0.06)) / 0.11
            base += 0.16 * np.sqrt(np.clip(1 - bx**2 - by**2, 0, None))
    return cross, body, base


def _add_mediastinum_and_heart(base: np.ndarray, p: Patient, u: np.ndarray, v: np.ndarray, dx: np.ndarray,
                               adx: np.ndarray, dome: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Adds the mediastinum, trachea, aortic knob and heart to ``base`` in place; returns (mediastinum, heart) masks."""
    med_half = 0.055 + 0.02 * np.clip((v - 0.25) / 0.3, 0, 1)
    mediastinum = (adx < med_half) & (v > 0.05)
    base += 0.16 * mediastinum
    trachea = (np.abs(dx + 0.004) < 0.014) & (v < p.apex_v + 0.16)
    base -= 0.12 * trachea
    knob = ((dx - 0.06) / 0.035) ** 2 + ((v - (p.apex_v + 0.16)) / 0.03) ** 2 < 1
    base += 0.2 * knob
    hcx, hcy = p.heart_centre
    hx, hy = p.heart_half_width, p.heart_half_height
    heart_r2 = ((u - hcx) / hx) ** 2 + ((v - hcy) / hy) ** 2
    heart = (heart_r2 < 1.0) & (v < dome.max(axis=0) + 0.03)
    base += 0.2 * np.sqrt(np.clip(1 - heart_r2, 0, None)) * heart
    return mediastinum, heart


def _add_bones(base: np.ndarray, p: Patient, v: np.ndarray, adx: np.ndarray, body: np.ndarray,
               below_dome: np.ndarray) -> None:
    """Adds the spine, ribs, clavicles and scapular edges to ``base`` in place."""
    # Spine: vertebral bodies with brighter end plates, faint through the mediastinum.
    spine = adx < 0.034
    period = 0.045
    plate = np.cos(np.pi * (v / period)) ** 8
    base += spine * (0.13 + 0.08 * plate) * (v > 0.03)
    pedicle = (np.abs(adx - 0.024) < 0.006) & (np.abs(((v / period) % 1.0) - 0.5) < 0.18)
    base += 0.08 * pedicle

    # Ribs: every rib of one family shares the same curve, shifted down, so one "rib phase"
    # array draws all of them; the spacing grows slightly downwards.
    t = adx
    thorax = (t > 0.03) & (t < p.lung_centre_t + p.lung_half_width + 0.035) & body
    phase = (v - p.apex_v + 0.03 - 1.6 * p.rib_curvature * t**2 + 0.15 * t) / p.rib_spacing
    phase = np.where(phase > 0, np.maximum(phase, 0) ** 0.93, phase)
    frac = phase - np.floor(phase)
    rib = (frac < 0.42) & (phase > 0) & (phase < 9.5) & thorax
    cortex = rib & ((frac < 0.08) | (frac > 0.34))
    rib_fade = 1.0 - 0.6 * below_dome
    base += (0.075 * rib + 0.05 * cortex) * rib_fade
    ant_phase = (v - p.apex_v - 0.06 + 0.55 * (t - 0.04)) / (1.15 * p.rib_spacing)
    ant_frac = ant_phase - np.floor(ant_phase)
    anterior = (ant_frac < 0.3) & (ant_phase > 0) & (ant_phase < 6.5) & thorax & (t > 0.08)
    base += 0.035 * anterior

    # Clavicles: S-shaped bars from the sternal notch to the shoulders.
    ct = np.clip(t, 0.02, 0.34)
    clav_v = p.apex_v + 0.045 - 0.22 * (ct - 0.03) + 0.45 * (ct - 0.03) * (ct - 0.18)
    clav_d = np.abs(v - clav_v)
    clavicle = (clav_d < 0.013) & (t > 0.025) & (t < 0.33)
    base += clavicle * (0.14 + 0.08 * (clav_d > 0.008))
    # Scapular edges and humeral heads at the lateral margins.
    scap = (np.abs(t - (p.lung_centre_t + p.lung_half_width + 0.01) + 0.25 * (v - p.apex_v)) < 0.008) & (
        (v > p.apex_v) & (v < p.apex_v + 0.3)
    )
    base += 0.08 * scap * body


def expose(attenuation: np.ndarray, device: Device, rng: np.random.Generator) -> np.ndarray:
    """Detector response: attenuation (H, W) -> display values float32 (H, W) in [0, 1].

    Display follows MONOCHROME2 (dense = bright). Per-image exposure varies a little.
    """
    width = attenuation.shape[1]
    gain = rng.uniform(1.1, 1.4)
    shown = 1.0 - np.exp(-gain * np.clip(attenuation, 0, None))
    shown = shown / (1.0 - np.exp(-gain * 1.25))
    shown = np.clip(shown, 0, 1) ** (device.contrast * rng.uniform(0.9, 1.1))
    sigma = device.blur_px * width / 256
    if sigma > 0.3:
        shown = ndimage.gaussian_filter(shown, sigma)
    return shown.astype(np.float32)


def add_detector_noise(image: np.ndarray, device: Device, rng: np.random.Generator) -> np.ndarray:
    """Adds quantum noise (brighter = fewer photons = more noise on the film) and clips to [0, 1]."""
    noise = rng.standard_normal(image.shape, dtype=np.float32) * device.noise
    noise *= 0.6 + 0.8 * image
    return np.clip(image + noise, 0.0, 1.0).astype(np.float32)
