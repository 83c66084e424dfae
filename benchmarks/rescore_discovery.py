"""Precision@k of finished audits under today's hit rules, without embedding anything again.

An audit stores each method's top cluster's regions (``audit.json``: ``ranked_clusters[0].top_regions``,
one region per image first) and its region boxes (the embedding cache named in ``audit.json``). This
script recomputes the ground truth of those regions from the manifest's masks and images under each
rule (:func:`~ravl_med.stages.audit.ground_truth_regions`, the audit's own code) and prints
P@k per method and rule, next to the value the audit recorded under the rule of its day, then the
mean per method and rule over all audits given. Use it when a hit rule changes, to re-score stored
benchmark results (BENCHMARKS.md says which figures were re-scored this way).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/rescore_discovery.py outputs/side-by-side-tiny/*/audit \\
        [--rules visible either] [--json rescored.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ravl_med.data.dataset import RadiographDataset
from ravl_med.discover.metrics import precision_at_k
from ravl_med.stages.audit import ground_truth_regions
from ravl_med.stages.config import AuditConfig


def _regions(audit: dict, folder: Path, keys: list[str]) -> SimpleNamespace:
    """region_boxes (M, 4) in model-input pixels and region_image (M,) of the audit's embedding cache."""
    embedding = audit["embedding"]
    cache = Path(embedding["cache_dir"] or folder / "cache")
    if not cache.is_absolute() and not cache.exists():
        cache = folder / "cache"
    shards = sorted((cache / embedding["fingerprint"]).glob("shard-*.npz"))
    if not shards:
        raise SystemExit(f"{folder}: no embedding cache {cache / embedding['fingerprint']}")
    parts = [dict(np.load(s, allow_pickle=False)) for s in shards]
    cached = [str(k) for p in parts for k in p["keys"]]
    if cached != keys:
        raise SystemExit(f"{folder}: the cache's images are not the audited split's")
    counts = np.concatenate([p["region_counts"] for p in parts])
    return SimpleNamespace(region_boxes=np.concatenate([p["region_boxes"] for p in parts]).reshape(-1, 4),
                           region_image=np.repeat(np.arange(len(keys)), counts))


def rescore(folder: Path, rules: list[str]) -> dict[str, dict[str, float]]:
    """method -> {"recorded": P@k as the audit wrote it, rule: P@k under that rule (default threshold)}."""
    audit = json.loads((folder / "audit.json").read_text())
    config = AuditConfig.model_validate(audit["config"])
    dataset = RadiographDataset(config.manifest, config.ingest, config.classes, split=config.split)
    embeddings = _regions(audit, folder, list(dataset.keys))
    k = config.evaluation.precision_k
    truth = {}
    for rule in rules:
        rule_config = config.model_copy(update={"evaluation": config.evaluation.model_copy(
            update={"overlap_rule": rule, "overlap_threshold": None})})
        truth[rule], _ = ground_truth_regions(rule_config, dataset, embeddings, audit["model"]["input_size"])
    out = {}
    for method, result in audit["methods"].items():
        clusters = result.get("ranked_clusters") or []
        top = clusters[0]["top_regions"][:k] if clusters else []
        row = {"recorded": result.get("precision_at_k", float("nan"))}
        row.update({rule: float(precision_at_k(top, truth[rule], k)) for rule in rules})
        out[method] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("audits", nargs="+", type=Path, help="audit folders (with audit.json and the embedding cache)")
    parser.add_argument("--rules", nargs="+", default=["visible", "either"])
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args()
    results = {}
    for folder in args.audits:
        results[str(folder)] = rescore(folder, args.rules)
        cells = "  ".join(f"{m} " + "/".join(f"{row[c]:.1f}" for c in ("recorded", *args.rules))
                          for m, row in results[str(folder)].items())
        print(f"{folder}: {cells}")
    methods = list(dict.fromkeys(m for r in results.values() for m in r))
    print(f"\nmean P@k over {len(results)} audits (recorded / " + " / ".join(args.rules) + "):")
    for method in methods:
        rows = [r[method] for r in results.values() if method in r]
        print(f"  {method:<22} " + " / ".join(f"{np.mean([row[c] for row in rows]):.2f}"
                                              for c in ("recorded", *args.rules)) + f"  (n={len(rows)})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
