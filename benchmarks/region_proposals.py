"""Candidate regions on phantom radiographs: boxes per image, time per image, and how often a box fits the artefact.

Renders ``--per-artefact`` phantoms per built-in artefact at ``--size`` px (classes in turn, seeds fixed)
and lays each region setting on the whole (square) image. A setting *covers* an image's artefact when
some box holds >= ``--hold`` of the artefact mask's pixels while the mask fills >= ``--fill`` of that
box. The masks are used for this evaluation only; the proposals never see them.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python benchmarks/region_proposals.py
    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python benchmarks/region_proposals.py --per-artefact 40 --json out.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

#: name -> (grid settings or None, proposal settings or None); proposals as ``propose_regions`` keywords.
SETTINGS: dict[str, tuple[dict | None, dict | None]] = {
    "grid [3]": ({"grid_sizes": (3,)}, None),
    "grid [4] (default)": ({"grid_sizes": (4,)}, None),
    "grid [2,3,4] ov 0.5": ({"grid_sizes": (2, 3, 4), "overlap": 0.5}, None),
    "grid [2..6] ov 0.5": ({"grid_sizes": (2, 3, 4, 5, 6), "overlap": 0.5}, None),
    "slic [24]": (None, {"method": "slic", "granularity": (24,)}),
    "slic [16,48]": (None, {"method": "slic", "granularity": (16, 48)}),
    "slic [12,24,48]": (None, {"method": "slic", "granularity": (12, 24, 48)}),
    "slic [16,48] c=0.03": (None, {"method": "slic", "granularity": (16, 48), "compactness": 0.03}),
    "slic [16,48] c=0.3": (None, {"method": "slic", "granularity": (16, 48), "compactness": 0.3}),
    "slic [16,48] margin 0": (None, {"method": "slic", "granularity": (16, 48), "margin": 0.0}),
    "slic [16,48,96] min 0.03": (None, {"method": "slic", "granularity": (16, 48, 96), "min_size": 0.03}),
    "felzenszwalb [100]": (None, {"method": "felzenszwalb", "granularity": (100.0,)}),
    "felzenszwalb [50,200]": (None, {"method": "felzenszwalb", "granularity": (50.0, 200.0)}),
    "felzenszwalb [25,100,400]": (None, {"method": "felzenszwalb", "granularity": (25.0, 100.0, 400.0)}),
    "felzenszwalb [50,200] sigma 0.5": (None, {"method": "felzenszwalb", "granularity": (50.0, 200.0), "sigma": 0.5}),
    "felzenszwalb [50,200] min 0.03": (None, {"method": "felzenszwalb", "granularity": (50.0, 200.0),
                                              "min_size": 0.03}),
    "grid [4] + felzenszwalb [50,200]": ({"grid_sizes": (4,)}, {"method": "felzenszwalb", "granularity": (50.0, 200.0)}),
    "grid [4] + slic [16,48]": ({"grid_sizes": (4,)}, {"method": "slic", "granularity": (16, 48)}),
    "grid [2,3,4] ov 0.5 + slic [16,48]": ({"grid_sizes": (2, 3, 4), "overlap": 0.5},
                                           {"method": "slic", "granularity": (16, 48)}),
}


def phantoms(per_artefact: int, size: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(artefact, image (H, W) in [0, 1], artefact mask (H, W) bool) per rendered phantom with a visible artefact."""
    from ravl_med.phantom import ARTEFACTS, CLASSES, render_phantom

    out = []
    for a, name in enumerate(ARTEFACTS):
        for i in range(per_artefact):
            p = render_phantom((7, a, i), CLASSES[i % len(CLASSES)], name, size=size)
            if p.artefact_mask.any():
                out.append((name, p.image.astype(np.float32), p.artefact_mask))
    return out


def covers(boxes: np.ndarray, mask: np.ndarray, hold: float, fill: float) -> bool:
    """Some box holds >= ``hold`` of the mask's pixels and the mask fills >= ``fill`` of the box (integral image)."""
    integral = np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    h, w = mask.shape
    x0 = np.clip(np.floor(boxes[:, 0]).astype(int), 0, w)
    y0 = np.clip(np.floor(boxes[:, 1]).astype(int), 0, h)
    x1 = np.clip(np.ceil(boxes[:, 2]).astype(int), 0, w)
    y1 = np.clip(np.ceil(boxes[:, 3]).astype(int), 0, h)
    inside = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    area = np.maximum((x1 - x0) * (y1 - y0), 1)
    return bool(np.any((inside >= hold * mask.sum()) & (inside >= fill * area)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-artefact", type=int, default=20)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--hold", type=float, default=0.5)
    parser.add_argument("--fill", type=float, default=0.1)
    parser.add_argument("--json", default=None)
    parser.add_argument("--only", nargs="*", default=None, help="setting names containing any of these strings")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from ravl_med.data.transforms import propose_regions, region_grid

    images = phantoms(args.per_artefact, args.size)
    names = sorted({name for name, _, _ in images})
    bounds = (0.0, 0.0, float(args.size), float(args.size))
    propose_regions(images[0][1][None], bounds)  # scikit-image import and first-call costs outside the timing
    rows = []
    for setting, (grid, proposals) in SETTINGS.items():
        if args.only and not any(part in setting for part in args.only):
            continue
        counts, times, hit = [], [], {n: [] for n in names}
        for name, image, mask in images:
            start = time.perf_counter()
            parts = []
            if grid is not None:
                parts.append(region_grid(bounds, grid["grid_sizes"], grid.get("overlap", 0.0))[0])
            if proposals is not None:
                parts.append(propose_regions(image[None], bounds, **proposals)[0])
            boxes = torch.cat(parts).numpy()
            times.append(time.perf_counter() - start)
            counts.append(len(boxes))
            hit[name].append(covers(boxes, mask, args.hold, args.fill))
        row = {"setting": setting, "boxes_mean": float(np.mean(counts)), "boxes_min": int(np.min(counts)),
               "boxes_max": int(np.max(counts)), "ms_per_image": 1000.0 * float(np.mean(times)),
               "coverage": {n: float(np.mean(v)) for n, v in hit.items()},
               "coverage_all": float(np.mean([x for v in hit.values() for x in v]))}
        rows.append(row)
        print(json.dumps(row), flush=True)

    short = {n: n[:9] for n in names}
    print(f"\n{len(images)} phantoms at {args.size} px; covered: a box holds >= {args.hold:.0%} of the artefact "
          f"and the artefact fills >= {args.fill:.0%} of the box\n")
    print("| setting | boxes/image mean (min-max) | ms/image | " + " | ".join(short[n] for n in names) + " | all |")
    print("|---|---|---|" + "---|" * (len(names) + 1))
    for r in rows:
        cov = " | ".join(f"{r['coverage'][n]:.2f}" for n in names)
        print(f"| {r['setting']} | {r['boxes_mean']:.1f} ({r['boxes_min']}-{r['boxes_max']}) | {r['ms_per_image']:.1f} "
              f"| {cov} | {r['coverage_all']:.2f} |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
