"""The RaVL paper's synthetic setting, rebuilt from scikit-learn's bundled handwritten digits.

Each image is 56 x 56 RGB in four 28 x 28 quadrants: a digit (``sklearn.datasets.load_digits``,
8 x 8, upscaled) in one quadrant and, when the artefact is present, a red square in another.
Captions name the digit; the regions are the four quadrant boxes (x0, y0, x1, y1) in pixels, and
the digit's quadrant is the core region. The fine-tuning split ties the square to one digit at
a target Cramer's V; evaluation splits put it in half of every class.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ravl_med.data.atomic import atomic_path
from ravl_med.phantom.settings import SplitPlan, plan_correlated, plan_independent

__all__ = ["DIGIT_NAMES", "QUADRANT_BOXES", "render_digit_image", "write_digits"]

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SIDE, HALF = 56, 28
#: Quadrant boxes (x0, y0, x1, y1): top-left, top-right, bottom-left, bottom-right.
QUADRANT_BOXES = ((0, 0, 28, 28), (28, 0, 56, 28), (0, 28, 28, 56), (28, 28, 56, 56))
CAPTIONS = ("a photo of the number {name}", "an image of the digit {name}", "the handwritten number {name}",
            "a picture of a {name}")


def _digits():
    from sklearn.datasets import load_digits  # noqa: PLC0415 - bundled data, no download

    data = load_digits()
    return data.images.astype(np.float32) / 16.0, data.target.astype(int)


def render_digit_image(digit_image: np.ndarray, digit_quadrant: int, square_quadrant: int | None,
                       rng: np.random.Generator, square_size: int = 10) -> np.ndarray:
    """One 56 x 56 x 3 uint8 image: the 8 x 8 digit in ``digit_quadrant``, a red square in ``square_quadrant``."""
    canvas = np.zeros((SIDE, SIDE, 3), dtype=np.float32)
    big = np.kron(digit_image, np.ones((3, 3), dtype=np.float32))  # 24 x 24
    x0, y0, _, _ = QUADRANT_BOXES[digit_quadrant]
    canvas[y0 + 2 : y0 + 26, x0 + 2 : x0 + 26] = big[..., None]
    if square_quadrant is not None:
        sx0, sy0, _, _ = QUADRANT_BOXES[square_quadrant]
        ox, oy = rng.integers(2, HALF - square_size - 1, size=2)
        canvas[sy0 + oy : sy0 + oy + square_size, sx0 + ox : sx0 + ox + square_size] = (1.0, 0.0, 0.0)
    return (canvas * 255).round().astype(np.uint8)


def write_digits(out: str | Path, *, spurious_digit: int = 3, strength: float = 0.9, seed: int = 0,
                 n_train: int = 1000, n_val: int = 500, n_test: int = 500) -> Path:
    """Writes PNG images, ``manifest.csv`` and ``metadata.json`` under ``out``; returns the manifest path.

    Manifest columns: the usual ``path, label, report, split``, plus ``digit_quadrant``,
    ``square_quadrant`` (-1 when absent), ``artefact`` (``red_square`` or empty),
    ``artefact_present`` and ``regions`` (JSON list of the four quadrant boxes).
    """
    out = Path(out)
    images, targets = _digits()
    classes = DIGIT_NAMES
    rows, plans = [], {}
    for code, (split, n) in enumerate((("train", n_train), ("val", n_val), ("test", n_test))):
        if n == 0:
            continue
        rng = np.random.default_rng([seed, code, 31])
        plan: SplitPlan = (plan_correlated(classes, n, classes[spurious_digit], strength, rng) if split == "train"
                           else plan_independent(classes, n, rng))
        plans[split] = plan
        pools = {d: rng.permutation(np.flatnonzero(targets == d)) for d in range(10)}
        used = dict.fromkeys(range(10), 0)
        for i, (label, present) in enumerate(zip(plan.labels, plan.present)):
            digit = classes.index(label)
            pool = pools[digit]
            sample = images[pool[used[digit] % pool.size]]
            used[digit] += 1
            quadrant = int(rng.integers(4))
            square = int(rng.choice([q for q in range(4) if q != quadrant])) if present else None
            pixels = render_digit_image(sample, quadrant, square, rng)
            rel = f"images/{split}/{split}-{i:06d}.png"
            if not (out / rel).exists():
                with atomic_path(out / rel) as tmp:
                    Image.fromarray(pixels).save(tmp, format="PNG")
            rows.append({
                "path": rel, "label": label,
                "report": CAPTIONS[int(rng.integers(len(CAPTIONS)))].format(name=label),
                "split": split, "digit_quadrant": quadrant, "square_quadrant": -1 if square is None else square,
                "artefact": "red_square" if present else "", "artefact_present": int(present),
                "regions": json.dumps([list(b) for b in QUADRANT_BOXES]),
            })
    manifest = out / "manifest.csv"
    with atomic_path(manifest) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)
    metadata = {
        "setting": "digits", "spurious_pair": {"class": classes[spurious_digit], "artefact": "red_square"},
        "target_cramers_v": strength, "seed": seed,
        "achieved_cramers_v": {s: round(p.cramers_v, 4) for s, p in plans.items()},
        "group_counts": {s: p.group_counts() for s, p in plans.items()},
        "quadrant_boxes": QUADRANT_BOXES, "source": "sklearn.datasets.load_digits",
    }
    with atomic_path(out / "metadata.json") as tmp:
        tmp.write_text(json.dumps(metadata, indent=2) + "\n")
    return manifest
