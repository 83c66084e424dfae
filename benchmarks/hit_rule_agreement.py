"""Benchmark: how often each Precision@k hit rule agrees with a person's by-eye labels of crops.

Usage::

    python benchmarks/hit_rule_agreement.py                      # agreement table from the labels
    python benchmarks/hit_rule_agreement.py select --out crops.csv --sheets sheets/   # new crops to label

The labels (``tests/data/hit_rule_labels.csv``) are crops of 128 px phantom radiographs, each
rendered again here from its row (artefact, seed, finding, image size) with
:func:`~ravl_med.phantom.render.render_phantom`; ``visible`` is the person's answer to "can I see
the artefact in this crop?", given while looking at the crops alone (zoomed as the audit gallery
zooms them, nearest-neighbour to 160 px, without masks). The default command fits the ``visible``
rule's contrast delta and threshold together on the even crop ids (the library's
:data:`~ravl_med.discover.metrics.VISIBLE_CONTRAST` and ``RULE_THRESHOLDS["visible"]`` are this fit),
and the same rule on the mask alone (contrast 0), then prints every rule's agreement with the labels
on the even ids (fit), the odd ids (held out) and all, with the confusion counts, all measured in
this run.

``--labels tests/data/hit_rule_labels_224.csv``: the same report on 96 crops of 224-px phantoms labelled
by another reviewer (the fit there is only a check; the library's rule is the 128-px fit).

``select`` draws the crops of a new label file: per artefact, images with seeds ``base + i``; per
image, boxes from the audit's grids (2 x 2 .. 6 x 6, with and without 50% overlap) drawn at random
from strata of "artefact pixels inside the box" (none but near it, 1-5, 6-20, 21-60, more), so
that borderline boxes that clip a little of the artefact are common. The strata use pixel counts
only, never a rule. ``--sheets`` writes the numbered contact sheets to label by eye; the
``visible`` column is left empty for the person to fill in.
"""

from __future__ import annotations

import argparse
import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from ravl_med.discover.metrics import OVERLAP_RULES, RULE_THRESHOLDS, VISIBLE_CONTRAST, region_overlaps_mask
from ravl_med.phantom.artefacts import ARTEFACTS
from ravl_med.phantom.findings import CLASSES
from ravl_med.phantom.render import render_phantom

LABELS = Path(__file__).resolve().parents[1] / "tests" / "data" / "hit_rule_labels.csv"
COLUMNS = ["crop_id", "artefact", "seed", "finding", "size", "grid", "overlap", "x0", "y0", "x1", "y1", "visible"]
#: Upper edges of the "artefact pixels inside the box" strata of ``select`` (0 = near miss).
STRATA = (0, 5, 20, 60, math.inf)


@lru_cache(maxsize=256)
def render_case(artefact: str, seed: int, finding: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The image (H, W) float32 in [0, 1] and artefact mask (H, W) bool of one label row."""
    phantom = render_phantom(int(seed), finding, artefact, int(size))
    return phantom.image, phantom.artefact_mask


def audit_grid_boxes(size: int) -> list[tuple[int, float, np.ndarray]]:
    """(grid, overlap, boxes (R, 4) float64 pixels) of the audit's grids on a size x size image."""
    from ravl_med.data.transforms.regions import region_grid

    return [(n, overlap, region_grid((0, 0, size, size), (n,), overlap)[0].double().numpy())
            for n in range(2, 7) for overlap in (0.0, 0.5)]


def select(n_images: int, per_image: int, size: int, base: int, rng_seed: int) -> pd.DataFrame:
    """Draws crops to label (see the module docstring); ``visible`` empty, crop ids shuffled."""
    rng = np.random.default_rng(rng_seed)
    grids = audit_grid_boxes(size)
    rows = []
    for a, artefact in enumerate(ARTEFACTS):
        for i in range(n_images):
            seed = base + 100 * a + i
            finding = CLASSES[int(rng.integers(len(CLASSES)))]
            mask = render_case(artefact, seed, finding, size)[1]
            near = ndimage.binary_dilation(mask, iterations=6)
            table = np.pad(mask.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
            near_table = np.pad(near.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
            candidates = []  # (stratum, grid, overlap, box)
            for n, overlap, boxes in grids:
                for box in boxes:
                    x0, y0, x1, y1 = np.rint(box).astype(int)
                    inside = table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]
                    close = near_table[y1, x1] - near_table[y0, x1] - near_table[y1, x0] + near_table[y0, x0]
                    if inside == 0 and close == 0:
                        continue  # a far miss: obvious, not worth a label
                    stratum = int(np.searchsorted(STRATA, inside))
                    candidates.append((stratum, n, overlap, box))
            strata = sorted({c[0] for c in candidates})
            picks = [strata[k % len(strata)] for k in range(per_image)]
            taken: set[int] = set()
            for stratum in picks:
                pool = [k for k, c in enumerate(candidates) if c[0] == stratum and k not in taken]
                if not pool:
                    continue
                k = pool[int(rng.integers(len(pool)))]
                taken.add(k)
                _, n, overlap, box = candidates[k]
                rows.append({"artefact": artefact, "seed": seed, "finding": finding, "size": size, "grid": n,
                             "overlap": overlap, **dict(zip(("x0", "y0", "x1", "y1"), np.round(box, 3))),
                             "visible": ""})
    frame = pd.DataFrame(rows).sample(frac=1.0, random_state=rng_seed).reset_index(drop=True)
    frame.insert(0, "crop_id", np.arange(len(frame)))
    return frame[COLUMNS]


def gallery_crop(image: np.ndarray, box, side: int = 160) -> Image.Image:
    """The crop as the audit gallery zooms it: floor/ceil pixel box, nearest-neighbour to ``side``."""
    x0, y0, x1, y1 = (float(v) for v in box)
    pil = Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8))
    crop = pil.crop((math.floor(x0), math.floor(y0), max(math.ceil(x1), math.floor(x0) + 1),
                     max(math.ceil(y1), math.floor(y0) + 1)))
    zoom = side / max(crop.size)
    return crop.resize((max(1, round(crop.width * zoom)), max(1, round(crop.height * zoom))),
                       Image.Resampling.NEAREST)


def write_sheets(frame: pd.DataFrame, folder: Path, per_sheet: int = 20, columns: int = 5) -> list[Path]:
    """Numbered contact sheets of the crops (no mask, no statistic), ``per_sheet`` per PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    font = ImageFont.load_default(size=14)
    cell, caption = 170, 20
    paths = []
    for start in range(0, len(frame), per_sheet):
        part = frame.iloc[start : start + per_sheet]
        rows = math.ceil(len(part) / columns)
        sheet = Image.new("RGB", (columns * cell, rows * (cell + caption)), (255, 255, 255))
        draw = ImageDraw.Draw(sheet)
        for k, row in enumerate(part.itertuples()):
            image = render_case(row.artefact, row.seed, row.finding, row.size)[0]
            ox, oy = (k % columns) * cell, (k // columns) * (cell + caption)
            sheet.paste(gallery_crop(image, (row.x0, row.y0, row.x1, row.y1)).convert("RGB"), (ox + 5, oy + caption))
            draw.text((ox + 5, oy + 2), f"#{row.crop_id} {row.artefact}", fill=(0, 0, 0), font=font)
        path = folder / f"sheet-{start // per_sheet:02d}.png"
        sheet.save(path)
        paths.append(path)
    return paths


def rule_hits(frame: pd.DataFrame, rule: str, threshold: float | None, contrast: float = VISIBLE_CONTRAST) -> np.ndarray:
    """(M,) bool: each labelled crop under ``rule`` at ``threshold`` (``None``: the rule's default) and,
    for "visible", contrast ``delta`` ``contrast``."""
    keys = list(dict.fromkeys(zip(frame.artefact, frame.seed, frame.finding, frame["size"])))
    index = {key: k for k, key in enumerate(keys)}
    images, masks = zip(*(render_case(*key) for key in keys))
    region_image = np.array([index[key] for key in zip(frame.artefact, frame.seed, frame.finding, frame["size"])])
    boxes = frame[["x0", "y0", "x1", "y1"]].to_numpy(dtype=np.float64)
    return region_overlaps_mask(boxes, region_image, masks, rule=rule, threshold=threshold, images=images,
                                contrast=contrast)


def agreement_row(name: str, hits: np.ndarray, labels: np.ndarray, parts: dict[str, np.ndarray]) -> dict:
    row = {"rule": name}
    for part, keep in parts.items():
        row[part] = float((hits[keep] == labels[keep]).mean())
    row.update(tp=int((hits & labels).sum()), fp=int((hits & ~labels).sum()), fn=int((~hits & labels).sum()),
               tn=int((~hits & ~labels).sum()))
    return row


def report(labels_path: Path) -> None:
    frame = pd.read_csv(labels_path)
    labels = frame["visible"].map({"yes": True, "no": False}).to_numpy(dtype=bool)
    fit = (frame.crop_id % 2 == 0).to_numpy()
    parts = {"fit (even ids)": fit, "held out (odd ids)": ~fit, "all": np.ones_like(fit)}
    counts = frame.assign(visible=frame.visible).groupby(["artefact", "visible"]).size().unstack(fill_value=0)
    print(f"{len(frame)} labelled crops ({labels.sum()} yes, {(~labels).sum()} no):\n{counts.to_string()}\n")
    # "visible": contrast delta and threshold t fitted together on the even ids (largest fit-half agreement,
    # ties to the smaller delta, then the smaller t); delta 0 counts every mask pixel (the mask alone).
    deltas, ts = np.round(np.arange(0.0, 0.205, 0.02), 2), np.round(np.arange(0.04, 0.405, 0.02), 2)
    scores = {(d, t): float((rule_hits(frame[fit], "visible", t, d) == labels[fit]).mean()) for d in deltas for t in ts}
    delta, t_best = max(scores, key=lambda dt: (scores[dt], -dt[0], -dt[1]))
    mask_only = max(ts, key=lambda t: (scores[(0.0, t)], -t))
    print(f"visible: fitted on the even ids: contrast >= {delta:.2f}, t {t_best:.2f} (agreement {scores[(delta, t_best)]:.3f}); "
          f"the library's: contrast >= {VISIBLE_CONTRAST:.2f}, t {RULE_THRESHOLDS['visible']:.2f}; "
          f"mask only (contrast 0): t {mask_only:.2f} (agreement {scores[(0.0, mask_only)]:.3f})\n")
    rows = [agreement_row(f"visible@{t_best:.2f}, contrast {delta:.2f} (fitted here)",
                          rule_hits(frame, "visible", t_best, delta), labels, parts),
            agreement_row(f"visible@{mask_only:.2f}, contrast 0 (mask only, fitted here)",
                          rule_hits(frame, "visible", mask_only, 0.0), labels, parts)]
    rows += [agreement_row(f"{rule}@default", rule_hits(frame, rule, None), labels, parts) for rule in OVERLAP_RULES]
    table = pd.DataFrame(rows)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print("\nper artefact, all crops:")
    per = {rule: [] for rule in ("visible", "either")}
    artefacts = sorted(frame.artefact.unique())
    for rule in per:
        hits = rule_hits(frame, rule, None)
        per[rule] = [float((hits[(frame.artefact == a).to_numpy()] == labels[(frame.artefact == a).to_numpy()]).mean())
                     for a in artefacts]
    print(pd.DataFrame(per, index=artefacts).to_string(float_format=lambda v: f"{v:.3f}"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    pick = sub.add_parser("select", help="draw new crops to label")
    pick.add_argument("--out", type=Path, required=True, help="CSV of the crops (visible left empty)")
    pick.add_argument("--sheets", type=Path, help="folder for the contact sheets to label by eye")
    pick.add_argument("--images", type=int, default=5, help="images per artefact")
    pick.add_argument("--per-image", type=int, default=5, help="crops per image")
    pick.add_argument("--size", type=int, default=128, help="image side, pixels (the audit's 128)")
    pick.add_argument("--base-seed", type=int, default=14000, help="image seeds: base + 100 * artefact + i")
    pick.add_argument("--seed", type=int, default=14, help="box draws and crop order")
    parser.add_argument("--labels", type=Path, default=LABELS, help="label CSV (default: the project's)")
    args = parser.parse_args()
    if args.command == "select":
        frame = select(args.images, args.per_image, args.size, args.base_seed, args.seed)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(args.out, index=False)
        print(f"{len(frame)} crops -> {args.out}")
        if args.sheets is not None:
            for path in write_sheets(frame, args.sheets):
                print(path)
    else:
        report(args.labels)


if __name__ == "__main__":
    main()
