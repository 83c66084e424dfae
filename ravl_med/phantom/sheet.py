"""Contact sheet: a grid of phantom radiographs with their masks outlined, as one PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from ravl_med.data.atomic import atomic_path
from ravl_med.phantom.artefacts import ARTEFACTS
from ravl_med.phantom.findings import CLASSES
from ravl_med.phantom.render import render_phantom

__all__ = ["contact_sheet", "outline"]

#: Outline colours (RGB in [0, 1]): finding red, artefact green, lungs blue.
COLOURS = {"finding": (1.0, 0.25, 0.2), "artefact": (0.2, 1.0, 0.3), "lung": (0.3, 0.55, 1.0)}


def outline(image: np.ndarray, masks: dict[str, np.ndarray]) -> np.ndarray:
    """Grey image (H, W) in [0, 1] -> RGB float32 (H, W, 3) with each mask's border drawn in colour."""
    rgb = np.repeat(image[..., None], 3, axis=2).astype(np.float32)
    for name, mask in masks.items():
        if mask is None or not mask.any():
            continue
        edge = mask & ~ndimage.binary_erosion(mask)
        rgb[edge] = COLOURS[name]
    return rgb


def contact_sheet(path: str | Path, n: int = 16, size: int = 256, seed: int = 0, lungs: bool = False) -> Path:
    """Writes a sqrt(n) x sqrt(n) sheet cycling through every class and artefact; returns the path.

    Args:
        path: output PNG.
        n: number of images (a square number reads best).
        size: image side in pixels.
        seed: base seed.
        lungs: also outline the lung fields.
    """
    path = Path(path)
    artefacts = [None, *ARTEFACTS]
    tiles = []
    for i in range(n):
        ph = render_phantom((seed, 99, i), CLASSES[i % len(CLASSES)], artefacts[(i * 5 + 1) % len(artefacts)], size)
        masks = {"finding": ph.finding_mask, "artefact": ph.artefact_mask}
        if lungs:
            masks["lung"] = ph.lung_mask
        tile = outline(ph.image, masks)
        tile[:2], tile[-2:], tile[:, :2], tile[:, -2:] = 0.0, 0.0, 0.0, 0.0
        tiles.append(tile)
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    tiles += [np.zeros_like(tiles[0])] * (rows * cols - n)
    sheet = np.concatenate([np.concatenate(tiles[r * cols : (r + 1) * cols], axis=1) for r in range(rows)], axis=0)
    with atomic_path(path) as tmp:
        Image.fromarray((np.clip(sheet, 0, 1) * 255).astype(np.uint8)).save(tmp, format="PNG")
    return path
