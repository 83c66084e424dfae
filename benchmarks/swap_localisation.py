"""Prototype: localise the spurious feature inside the swap boxes by occlusion (issue 16, a lead, not a method).

The counterfactual swaps move whole spurious boxes; on the hybrid those boxes hold most of the tied
class's finding too (``counterfactual_overlap.py``). This prototype looks for a finer unit without
ground truth. For the first ``--images`` carriers of the tied class in a benchmark setting folder:

1. the *feature direction* d: mean embedding of the spurious regions minus mean embedding of the other
   regions, both taken only in carriers of the *other* classes (they hold the feature, not the finding);
2. every ``--cell`` x ``--cell`` pixel cell inside the union of the image's spurious boxes is occluded
   in turn (filled with the same cell of a random non-carrier) and scored by how much the boxes' mean
   one-pass embedding drops along d;
3. the cells whose drop is >= f x the image's largest drop form the unit, for each f of ``--fractions``;
   a random choice of the same number of cells (at f = 0.3) is the chance reference.

Then, as a diagnosis only (the masks are ground truth), it prints per unit the mean share of the image,
of the artefact mask and of the finding mask inside it. The stage-1 region embeddings are read from (or
written to) the folder's ``mitigate/stage1-region-cache``.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/swap_localisation.py \\
        outputs/side-by-side-hybrid/chest_drain-pneumothorax-v0.90-s0 --images 30 --cell 16
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from ravl_med.config import IngestConfig
from ravl_med.data.dataset import RadiographDataset
from ravl_med.data.manifest import Manifest
from ravl_med.data.masks import ingested_masks
from ravl_med.discover.medoids import MEDOIDS_FILE, Stage1Medoids
from ravl_med.mitigate.counterfactual import box_mask
from ravl_med.models import create_backbone
from ravl_med.models.embed import embed_dataset
from ravl_med.models.regions import RegionEmbedder
from ravl_med.models.runtime import fixed_threads
from ravl_med.stages.mitigate import STAGE1_REGION_CACHE


def _share(unit: np.ndarray, mask: np.ndarray | None) -> float:
    return float(unit[mask].mean()) if mask is not None and mask.any() else float("nan")


def localise(root: Path, n_images: int, cell: int, fractions: list[float], seed: int = 0) -> dict[str, np.ndarray]:
    """unit name -> (n_images, 3) rows of (image share, artefact share, finding share)."""
    recipe = json.loads((root / "stage1" / "metrics.json").read_text())["config"]
    classes = recipe["classes"]
    ingest = IngestConfig.model_validate(recipe["ingest"])
    manifest_path = next((root / "data").glob("*/manifest.csv"))
    train = RadiographDataset(Manifest.read(manifest_path, classes=classes), ingest, classes, split="train", cache=True)
    medoids = Stage1Medoids.load(root / "audit" / MEDOIDS_FILE).with_spurious_ranks([1])
    checkpoint = root / "stage1" / "model.safetensors"
    model, preprocess, _ = create_backbone(recipe["backbone"], checkpoint=checkpoint)
    model.eval()
    emb = embed_dataset(model, preprocess, train, cache_dir=root / "mitigate" / STAGE1_REGION_CACHE,
                        fingerprint=hashlib.sha256(checkpoint.read_bytes()).hexdigest(), progress=False)
    flags = medoids.spurious[medoids.predict(emb.region_embeddings)]
    tied = classes.index(next(t for t in medoids.tied_to[medoids.spurious] if t))
    labels = np.asarray(emb.labels)
    carrier = np.zeros(len(labels), dtype=bool)
    carrier[emb.region_image[flags]] = True
    regions = emb.region_embeddings / np.linalg.norm(emb.region_embeddings, axis=1, keepdims=True)
    other = (labels != tied)[emb.region_image] & carrier[emb.region_image]
    direction = regions[flags & other].mean(0) - regions[~flags & other].mean(0)
    direction = torch.from_numpy(direction / np.linalg.norm(direction)).float()

    rows = np.flatnonzero(carrier & (labels == tied))[:n_images]
    clean = np.flatnonzero(~carrier)
    artefacts = ingested_masks(train.table.iloc[rows], ["mask_artefact"], ingest, manifest_path.parent)
    findings = ingested_masks(train.table.iloc[rows], ["mask_finding"], ingest, manifest_path.parent)
    embedder = RegionEmbedder(model, "one_pass")
    rng = np.random.default_rng(seed)
    out: dict[str, list] = {"spurious boxes": [], **{f"cells, f = {f}": [] for f in fractions}, "random cells": []}
    for k, row in enumerate(rows):
        item = train.loaded(int(row))
        image, side = item["image"], item["image"].shape[-1]
        boxes = item["regions"][torch.as_tensor(flags[emb.regions_of(int(row))])]
        union = box_mask(boxes, side, side).bool()
        donor = train.loaded(int(rng.choice(clean)))["image"]
        cells = [(y, x) for y in range(0, side, cell) for x in range(0, side, cell) if union[y:y + cell, x:x + cell].any()]
        variants = [image]
        for y, x in cells:
            occluded = image.clone()
            occluded[..., y:y + cell, x:x + cell] = donor[..., y:y + cell, x:x + cell]
            variants.append(occluded)
        scores = []
        with torch.no_grad():
            for start in range(0, len(variants), 16):
                batch = torch.stack(variants[start:start + 16])
                embedded = embedder(preprocess(batch), [preprocess.scale_boxes(boxes, side, side)] * len(batch))
                scores += [float((e @ direction).mean()) for e in embedded]
        drop = scores[0] - np.asarray(scores[1:])
        units = {"spurious boxes": union.numpy()}
        for f in fractions:
            keep = drop >= f * drop.max() if drop.max() > 0 else np.zeros(len(drop), dtype=bool)
            units[f"cells, f = {f}"] = _cells(cells, keep, cell, side) & units["spurious boxes"]
            if f == 0.3:
                chosen = np.zeros(len(cells), dtype=bool)
                chosen[rng.permutation(len(cells))[:int(keep.sum())]] = True
                units["random cells"] = _cells(cells, chosen, cell, side) & units["spurious boxes"]
        for name, unit in units.items():
            out[name].append((float(unit.mean()), _share(unit, artefacts[k]), _share(unit, findings[k])))
    return {name: np.asarray(values) for name, values in out.items() if values}


def _cells(cells: list[tuple[int, int]], keep: np.ndarray, cell: int, side: int) -> np.ndarray:
    unit = np.zeros((side, side), dtype=bool)
    for (y, x), kept in zip(cells, keep):
        if kept:
            unit[y:y + cell, x:x + cell] = True
    return unit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="benchmark setting folder")
    parser.add_argument("--images", type=int, default=30, help="carriers of the tied class to localise")
    parser.add_argument("--cell", type=int, default=16, help="occlusion cell side, pixels of the ingested image")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.5, 0.3, 0.2, 0.1, 0.0])
    args = parser.parse_args()
    if 0.3 not in args.fractions:
        parser.error("--fractions must include 0.3 (the random cells' reference)")
    with fixed_threads(1):
        result = localise(args.root, args.images, args.cell, args.fractions)
    print(f"{args.root}: {len(result['spurious boxes'])} carriers of the tied class")
    print(f"  {'unit':<18} {'image':>6} {'artefact in':>11} {'finding in':>10}")
    for name, values in result.items():
        print(f"  {name:<18} {np.nanmean(values[:, 0]):>6.3f} {np.nanmean(values[:, 1]):>11.3f} "
              f"{np.nanmean(values[:, 2]):>10.3f}")


if __name__ == "__main__":
    main()
