"""Benchmark report: two models' benchmark runs on the same phantom settings, side by side (issue 15).

Usage::

    ravl-med benchmark --config datasets/benchmarks/side-by-side-tiny.yaml      # tiny-rn, 128 px
    ravl-med benchmark --config datasets/benchmarks/side-by-side-hybrid.yaml    # the pretrained hybrid, 224 px
    python benchmarks/side_by_side.py outputs/side-by-side-tiny outputs/side-by-side-hybrid

Reads each setting's ``result.json`` and ``groups/stage1.csv`` under both
folders (``ravl-med benchmark`` outputs) and prints, per artefact x class x strength, over the seeds
both models finished (a ``result.json`` in both folders), mean and 95% Student-t interval of each
model's value and of the paired difference (second minus first); a measure only one model has (a
mitigation method the other did not run) is named below the table, not compared:

* stage 1: shortcut gap (validity), zero-shot image accuracy, accuracy on the spurious class's
  images *without* the artefact (the true finding), training wall time and throughput (training
  images per second, mean over epochs, from ``stage1/metrics.json``: it holds for a reused stage 1 too);
* audit: wall time of embedding the test split's regions (left out where the audit reused a cached
  embedding) and of RaVL's discovery fit;
* discovery: Precision@10 of each method's top cluster under today's "visible" hit rule, scored again
  from the stored audit (``rescore_discovery.py``), over the seeds where that model learned the shortcut
  (valid; ``stage1/valid`` is the share), paired over the seeds valid for both;
* mitigation: image worst-group and core-region worst-group accuracy, overall image accuracy and
  training wall time of each method.

Wall times are those ``result.json`` recorded: comparable only between runs made under the same load,
and a step the benchmark reused or resumed records the time of that run, not of the training.
Nothing here is hard-coded; every figure is read from the two folders.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

import pandas as pd
from rescore_discovery import rescore  # benchmarks/, on sys.path when this script runs

from ravl_med.evaluate.intervals import mean_interval


def _metrics(setting: Path) -> dict[str, float] | None:
    """Every figure of one finished setting folder, flat: ``"stage1/gap"``, ``"discovery/ravl"``, ..."""
    if not (setting / "result.json").is_file():
        return None
    result = json.loads((setting / "result.json").read_text())
    out = {"stage1/gap": result["shortcut_gap"], "stage1/zero-shot accuracy": result["stage1"]["image_accuracy"],
           "stage1/train s": result["stage1"].get("train_s")}
    history = json.loads((setting / "stage1" / "metrics.json").read_text())["history"]
    out["stage1/images per s"] = sum(e["images_per_s"] for e in history) / len(history)  # as trained, even if reused
    audit = json.loads((setting / "audit" / "audit.json").read_text())
    embedded = audit["embedding"]["batches_reused"] == 0  # a reused cache would time the reading, not the model
    out["audit/embedding s"] = audit["embedding"]["time_s"] if embedded else None
    out["audit/RaVL fit s"] = audit["methods"]["ravl"]["fit_time_s"]
    groups = pd.read_csv(setting / "groups" / "stage1.csv")
    clean = groups[(groups["class"] == result["spurious_class"]) & (~groups["feature_present"].astype(bool))]
    out[f"stage1/{result['spurious_class']} without artefact"] = float(clean["accuracy"].iloc[0])
    out["stage1/valid"] = float(result["valid"])  # the mean over seeds is the share of valid settings
    # The top cluster's P@10 per method, scored again from the stored audit under today's hit rule
    # (result.json holds the value of the rule of its day).
    for method, scores in rescore(setting / "audit", ["visible"]).items():
        # Only where the model learned the shortcut: on an invalid setting there is nothing to find.
        out[f"discovery/{method} P@10"] = scores["visible"] if result["valid"] else None
    for method, scores in (result.get("mitigation") or {}).items():
        out[f"mitigation/{method}/image WGA"] = scores["image_worst_group"]
        out[f"mitigation/{method}/core-region WGA"] = scores["region_worst_group"]
        out[f"mitigation/{method}/overall"] = scores["image_accuracy"]
        out[f"mitigation/{method}/train s"] = scores.get("train_s")
    return out


def _group(name: str) -> str:
    """Setting name without its seed: the unit the seeds are pooled over."""
    return re.sub(r"-s\d+$", "", name)


def compare(first: Path, second: Path) -> None:
    settings = sorted({p.parent.name for p in first.glob("*/result.json")}
                      & {p.parent.name for p in second.glob("*/result.json")})
    pooled: dict[str, list[tuple[str, dict, dict]]] = defaultdict(list)
    for name in settings:
        a, b = _metrics(first / name), _metrics(second / name)
        if a is None or b is None:
            continue
        pooled[_group(name)].append((name, a, b))
    if not pooled:
        print(f"no setting finished in both {first} and {second}")
        return
    for group, rows in pooled.items():
        seeds = ", ".join(name.rsplit("-", 1)[1] for name, _, _ in rows)
        print(f"\n### {group} ({len(rows)} seeds: {seeds})\n")
        print(f"| measure | {first.name} | {second.name} | {second.name} - {first.name} (paired) |")
        print("|---|---|---|---|")
        keys = [k for k in rows[0][1] if all(k in a and k in b for _, a, b in rows)]
        for key in keys:
            left = [a[key] for _, a, _ in rows]
            right = [b[key] for _, _, b in rows]
            both = [(x, y) for x, y in zip(left, right) if x is not None and y is not None]
            diff = [y - x for x, y in both]
            print(f"| {key} | {mean_interval(left)} | {mean_interval(right)} | {mean_interval(diff)} |")
        missing = sorted({k for _, a, b in rows for k in set(a) ^ set(b)})
        if missing:
            print(f"\nOnly in one of the two runs (not compared): {', '.join(missing)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("first", type=Path, help="benchmark output folder of the first model (e.g. tiny-rn)")
    parser.add_argument("second", type=Path, help="benchmark output folder of the second model (e.g. the hybrid)")
    args = parser.parse_args(argv)
    compare(args.first, args.second)


if __name__ == "__main__":
    main()
