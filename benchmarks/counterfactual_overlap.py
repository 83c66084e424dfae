"""What the counterfactual swaps move, measured against the phantom's masks (issue 16, "diagnose").

A diagnostic, not a method: it reads the ground-truth masks (``mask_artefact``, ``mask_finding``) to
measure what the audit-driven swaps of :mod:`ravl_med.mitigate.counterfactual` cut out of an image.
For each benchmark setting folder the training regions are labelled as mitigation labels them (the
stage-1 model, the audit's medoids, the top-ranked cluster spurious; the embeddings are read from and
written to the folder's ``mitigate/stage1-region-cache``, the one mitigation uses). A carrier's swap
mask is the union of its spurious boxes: the pixels a removal replaces and a paste moves. Per class of
the carriers:

* ``images``: carriers of that class;
* ``swap area``: mean share of the image inside the swap mask;
* ``artefact in``: mean share of the artefact mask's pixels inside it (the feature the swap should move);
* ``finding in``: mean share of the finding mask's pixels inside it (what the swap should leave alone);
  a removal from a carrier of the tied class then also removes that share of its finding, and a paste
  from it into another class's image carries that share of the finding under the wrong label.

``--top-k K`` measures a finer unit that reads no ground truth (a pilot, ``swap_top_k_pilot.py`` trains
with it): of each image's spurious boxes only the K with the largest *margin*, cos(nearest spurious
medoid) - cos(nearest other medoid); the image's shared context shifts every box's similarities alike,
so the ranking inside one image follows the box's own content.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/counterfactual_overlap.py \\
        outputs/side-by-side-hybrid/chest_drain-pneumothorax-v0.90-s0 outputs/side-by-side-tiny/chest_drain-pneumothorax-v0.90-s0
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np

from ravl_med.config import IngestConfig
from ravl_med.data.dataset import RadiographDataset
from ravl_med.data.manifest import Manifest
from ravl_med.data.masks import ingested_masks
from ravl_med.discover import nearest_medoid
from ravl_med.discover.medoids import MEDOIDS_FILE, Stage1Medoids
from ravl_med.mitigate.counterfactual import box_mask
from ravl_med.mitigate.regions import training_region_labels
from ravl_med.models import create_backbone
from ravl_med.models.embed import embed_dataset
from ravl_med.models.runtime import fixed_threads
from ravl_med.stages.mitigate import STAGE1_REGION_CACHE


def _inside(mask: np.ndarray | None, swap: np.ndarray) -> float:
    """Share of a ground-truth mask's pixels inside the swap mask (nan without a mask)."""
    if mask is None or not mask.any():
        return float("nan")
    return float(swap[mask.astype(bool)].mean())


def top_k_region_labels(model, preprocess, dataset, medoids: Stage1Medoids, *, top_k: int, **embed_kwargs
                        ) -> dict[str, np.ndarray]:
    """As :func:`~ravl_med.mitigate.regions.training_region_labels`, keeping per image only the ``top_k``
    spurious regions of largest margin (module docstring); reads no ground truth.

    Returns:
        image key -> (R_i,) bool, True for the kept spurious regions.
    """
    embeddings = embed_dataset(model, preprocess, dataset, mode=medoids.region_mode, **embed_kwargs)
    regions = embeddings.region_embeddings
    flags = medoids.spurious[medoids.predict(regions)]
    # The package's nearest-medoid rule (float64, normalised), once per side: (M,) best cosine to each side.
    _, to_spurious = nearest_medoid(regions, medoids.embeddings[medoids.spurious], dtype=np.float64, normalise=True)
    _, to_other = nearest_medoid(regions, medoids.embeddings[~medoids.spurious], dtype=np.float64, normalise=True)
    margin = to_spurious - to_other
    labels = {}
    for i, key in enumerate(embeddings.keys):
        rows = embeddings.regions_of(i)
        kept = np.zeros(len(rows), dtype=bool)
        kept[np.argsort(-margin[rows], kind="stable")[:top_k]] = True
        labels[str(key)] = flags[rows] & kept
    return labels


def overlap(root: Path, audit: str = "audit", top_k: int | None = None) -> dict[str, dict[str, float]]:
    """Per class of the carriers: the four figures of the module docstring, plus ``tied`` (the audit's class).

    ``audit``: the audit folder under ``root`` whose medoids label the regions (e.g. ``audit-crop`` of
    ``region_mode_discovery.py``: the regions are then embedded as crops, as its medoids were).
    ``top_k``: keep per image only that many spurious boxes (:func:`top_k_region_labels`)."""
    recipe = json.loads((root / "stage1" / "metrics.json").read_text())["config"]
    classes = recipe["classes"]
    ingest = IngestConfig.model_validate(recipe["ingest"])
    manifest_path = next((root / "data").glob("*/manifest.csv"))
    manifest = Manifest.read(manifest_path, classes=classes)
    train = RadiographDataset(manifest, ingest, classes, split="train", cache=True)
    medoids = Stage1Medoids.load(root / audit / MEDOIDS_FILE).with_spurious_ranks([1])
    checkpoint = root / "stage1" / "model.safetensors"
    sha256 = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    model, preprocess, _ = create_backbone(recipe["backbone"], checkpoint=checkpoint)
    cache = {"cache_dir": root / "mitigate" / STAGE1_REGION_CACHE, "fingerprint": sha256}
    labels = (training_region_labels(model, preprocess, train, medoids, **cache) if top_k is None
              else top_k_region_labels(model, preprocess, train, medoids, top_k=top_k, **cache))
    rows = train.table
    artefacts = ingested_masks(rows, ["mask_artefact"], ingest, manifest_path.resolve().parent)
    findings = ingested_masks(rows, ["mask_finding"], ingest, manifest_path.resolve().parent)
    per_class: dict[str, list[tuple[float, float, float]]] = {c: [] for c in classes}
    for i, key in enumerate(train.keys):
        flags = labels[str(key)]
        if not flags.any():
            continue
        item = train.loaded(i)
        side = item["image"].shape[-1]
        swap = box_mask(item["regions"][flags], side, side).numpy().astype(bool)
        per_class[classes[int(train.labels[i])]].append(
            (float(swap.mean()), _inside(artefacts[i], swap), _inside(findings[i], swap)))
    tied = [str(t) for t in medoids.tied_to[medoids.spurious] if t]
    out: dict[str, dict[str, float]] = {}
    for name, values in per_class.items():
        if not values:
            continue
        arr = np.array(values)
        out[name] = {"images": len(values), "swap area": float(arr[:, 0].mean()),
                     "artefact in": float(np.nanmean(arr[:, 1])) if np.isfinite(arr[:, 1]).any() else float("nan"),
                     "finding in": float(np.nanmean(arr[:, 2])) if np.isfinite(arr[:, 2]).any() else float("nan"),
                     "tied": float(name in tied)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("roots", nargs="+", type=Path, help="benchmark setting folders")
    parser.add_argument("--audit", default="audit", help="audit folder under each setting (default: audit)")
    parser.add_argument("--top-k", type=int, nargs="*", default=[None],
                        help="measure the top-K spurious boxes per image by margin instead, once per K given "
                             "(default: every spurious box)")
    args = parser.parse_args()
    with fixed_threads(1):
        for root in args.roots:
            for top_k in args.top_k:
                _print(root, args.audit, top_k, overlap(root, args.audit, top_k))


def _print(root: Path, audit: str, top_k: int | None, result: dict[str, dict[str, float]]) -> None:
    unit = "every spurious box" if top_k is None else f"top {top_k} spurious boxes by margin"
    print(f"\n{root} ({audit}; {unit})")
    print(f"  {'carriers of':<18} {'images':>6} {'swap area':>9} {'artefact in':>11} {'finding in':>10}")
    for name, row in result.items():
        mark = " (tied)" if row["tied"] else ""
        print(f"  {name + mark:<18} {row['images']:>6} {row['swap area']:>9.3f} {row['artefact in']:>11.3f} "
              f"{row['finding in']:>10.3f}")


if __name__ == "__main__":
    main()
