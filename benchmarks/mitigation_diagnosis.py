"""What mitigation did to the shortcut, region by region, without ground truth (issue 16, "diagnose").

For each benchmark setting folder (``ravl-med benchmark`` output: ``data/``, ``stage1/``, ``audit/medoids.npz``,
``mitigate/<method>/model.safetensors``), the test split's regions are labelled spurious or relevant by the
audit's medoids (the top-ranked cluster marked spurious, as the benchmark does; the stage-1 model embeds them,
as in training). Then, for the stage-1 model (= ``standard``) and every mitigated model, zero-shot class
probabilities of every region and image give:

* ``tied|spurious``: mean p(tied class) of the spurious regions of test images of *other* classes: does the
  feature's region still say the tied class? (the shortcut, at region level);
* ``tied|relevant``: the same for their relevant regions (the reference: what other anatomy says);
* ``image->tied``: share of those images (other classes, carrying a spurious region) predicted as the tied
  class (the shortcut, at image level: the worst group's error);
* ``accuracy``: image zero-shot accuracy on the whole test split.

Nothing reads ground truth (masks, artefact columns): the labels come from the audit.

    .venv/bin/python benchmarks/mitigation_diagnosis.py outputs/mitigation-seeds/chest_drain-pneumothorax-v0.90-s0 \\
        --model ravl=/path/to/ravl/model.safetensors
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from ravl_med.config import IngestConfig
from ravl_med.data.dataset import RadiographDataset
from ravl_med.data.manifest import Manifest
from ravl_med.discover.medoids import MEDOIDS_FILE, Stage1Medoids
from ravl_med.models import create_backbone
from ravl_med.models.embed import embed_dataset
from ravl_med.models.runtime import fixed_threads
from ravl_med.models.zeroshot import CXR_TEMPLATES, class_text_embeddings, zero_shot_scores


def _models(root: Path, extra: dict[str, Path]) -> dict[str, Path]:
    found = {"standard (stage 1)": root / "stage1" / "model.safetensors"}
    found |= {p.parent.name: p for p in sorted((root / "mitigate").glob("*/model.safetensors"))}
    return found | extra


def diagnose(root: Path, extra: dict[str, Path]) -> dict[str, dict[str, float]]:
    """The four figures of the module docstring per model of one setting folder.

    The classes, templates, backbone and ingestion are the stage-1 run's (``stage1/metrics.json``).
    """
    recipe = json.loads((root / "stage1" / "metrics.json").read_text())["config"]
    classes, templates = recipe["classes"], recipe["templates"] or CXR_TEMPLATES
    manifest = Manifest.read(next((root / "data").glob("*/manifest.csv")), classes=classes)
    test = RadiographDataset(manifest, IngestConfig.model_validate(recipe["ingest"]), classes, split="test",
                             cache=True)
    medoids = Stage1Medoids.load(root / "audit" / MEDOIDS_FILE).with_spurious_ranks([1])
    tied = [str(t) for t in medoids.tied_to[medoids.spurious] if t]
    if not tied:
        raise SystemExit(f"{root}: the audit's top cluster is tied to no class")
    tied_index = classes.index(tied[0])
    backbone = recipe["backbone"]

    def embed(checkpoint: Path):
        model, preprocess, tokenizer = create_backbone(backbone, checkpoint=checkpoint)
        emb = embed_dataset(model, preprocess, test, batch_size=32, progress=False, precision="fp32")
        with torch.no_grad():
            text = class_text_embeddings(model, tokenizer, classes, templates)
        return emb, text

    stage1, _ = embed(root / "stage1" / "model.safetensors")
    spurious = medoids.spurious[medoids.predict(stage1.region_embeddings)]
    labels = stage1.labels
    other = labels != tied_index
    region_other = other[stage1.region_image]
    carriers = np.zeros(len(labels), dtype=bool)
    carriers[stage1.region_image[spurious]] = True
    out = {}
    for name, checkpoint in _models(root, extra).items():
        emb, text = embed(checkpoint)
        regions = zero_shot_scores(torch.from_numpy(emb.region_embeddings), text).numpy()
        images = zero_shot_scores(torch.from_numpy(emb.image_embeddings), text).numpy()
        predicted = images.argmax(axis=1)
        chosen = other & carriers
        out[name] = {
            "tied|spurious": float(regions[spurious & region_other, tied_index].mean()),
            "tied|relevant": float(regions[~spurious & region_other, tied_index].mean()),
            "image->tied": float((predicted[chosen] == tied_index).mean()),
            "accuracy": float((predicted[labels >= 0] == labels[labels >= 0]).mean()),
            "n_images": int(chosen.sum()),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("roots", nargs="+", type=Path, help="benchmark setting folders")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                        help="another model to diagnose on every folder (e.g. one trained elsewhere)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    extra = {name: Path(path) for name, path in (m.split("=", 1) for m in args.model)}
    results = {}
    with fixed_threads(1):
        for root in args.roots:
            results[root.name] = diagnose(root, extra)
            print(f"\n{root.name}")
            print(f"  {'model':<26} {'tied|spurious':>13} {'tied|relevant':>13} {'image->tied':>11} {'accuracy':>8}  n")
            for name, row in results[root.name].items():
                print(f"  {name:<26} {row['tied|spurious']:>13.3f} {row['tied|relevant']:>13.3f} "
                      f"{row['image->tied']:>11.3f} {row['accuracy']:>8.3f}  {row['n_images']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
