"""Pilot: counterfactual_upsampled on a finer swap unit, the top-K spurious boxes per image (issue 15; not a method).

On the pretrained hybrid the audit's spurious boxes cover most of a carrier and its finding
(``counterfactual_overlap.py``), so the swaps erase the finding with the artefact. This trains
``counterfactual_upsampled`` exactly as the benchmark did in a setting folder (the config of its
``mitigate/upsampled/mitigate.json``: recipe, seed, stage-1 model, audit, top cluster spurious), except
that the training regions are labelled by ``counterfactual_overlap.top_k_region_labels`` (per image, the
K spurious boxes of largest margin; no ground truth), then evaluates it on the test split as the benchmark
does. The stage-1 region embeddings are read from the setting's ``mitigate/stage1-region-cache``.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/swap_top_k_pilot.py \\
        outputs/side-by-side-hybrid/chest_drain-pneumothorax-v0.90-s0 --top-k 2 3 5 --out outputs/swap-top-k
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

from counterfactual_overlap import top_k_region_labels  # benchmarks/, on sys.path when this script runs

import ravl_med.stages.mitigate as stage
from ravl_med.stages.config import MitigateConfig

METHOD = "counterfactual_upsampled"


def pilot(root: Path, top_k: int, out: Path) -> dict:
    """Trains and evaluates ``counterfactual_upsampled`` with the top-``top_k`` unit; returns evaluation.json."""
    config = json.loads((root / "mitigate" / "upsampled" / "mitigate.json").read_text())["config"]
    config["method"] = METHOD
    config["finetune"]["output_dir"] = str(out)
    out.mkdir(parents=True, exist_ok=True)
    cache = out / stage.STAGE1_REGION_CACHE
    if not cache.exists():  # the setting's stage-1 embeddings, not computed again
        cache.symlink_to((root / "mitigate" / stage.STAGE1_REGION_CACHE).resolve())
    labeller = stage.training_region_labels
    stage.training_region_labels = functools.partial(top_k_region_labels, top_k=top_k)
    try:
        stage.run_mitigation(MitigateConfig.model_validate(config), progress=False, unreviewed=True)
    finally:
        stage.training_region_labels = labeller
    return json.loads((out / METHOD / "evaluation.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="a benchmark setting folder with a finished upsampled run")
    parser.add_argument("--top-k", type=int, nargs="+", required=True, help="boxes kept per image, one run per K")
    parser.add_argument("--out", type=Path, required=True, help="output folder (one subfolder per K)")
    args = parser.parse_args()
    for top_k in args.top_k:
        figures = pilot(args.root, top_k, args.out / f"{args.root.name}-top{top_k}")
        print(f"top {top_k}: image overall {figures['image_accuracy']:.3f}, worst group {figures['image_worst_group']:.2f}, "
              f"core-region worst group {figures['region_worst_group']:.2f}")


if __name__ == "__main__":
    main()
