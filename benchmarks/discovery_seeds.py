"""Discovery over settings, seeds and candidate-region sets: stage 1 once per setting, then one audit per region set.

For every phantom setting of ``--suite`` (default ``discovery``: chest drain and pacemaker tied to
pneumothorax or cardiomegaly at Cramer's V 0.9 and 0.99, seeds 0-4; the demo's setting is
``chest_drain-pneumothorax-v0.90-s*``) this fine-tunes the demo's stage-1 model (the demo's recipe,
1 thread), judges validity as the benchmark does (shortcut gap >= 0.2 on the test split), and audits
the model with the demo's audit (RaVL + the four baselines) once per ``--regions`` set. It records,
per setting and region set: RaVL's outcome, Precision@10 of every method under the default hit rule
("visible") and the old one ("either" at 0.25), the top cluster's class, adjusted p-value and
stability, the region count and the audit's wall time. ``report`` prints means with 95% intervals
(valid settings) and the false-alarm rate (RaVL reports a finding on an invalid setting: a kept cluster
at ``--alpha`` and ``--min-stability``, judged from the stored audits).

    .venv/bin/python benchmarks/discovery_seeds.py run --settings 'chest_drain-pneumothorax-v0.90-*' --jobs 2
    .venv/bin/python benchmarks/discovery_seeds.py report

Region sets are named YAML/JSON mappings of ``ingest.regions`` (``--regions NAME='{...}'``); the
defaults compare the old demo grid with the multi-scale and content-driven sets.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import yaml
from rescore_discovery import rescore  # benchmarks/, on sys.path when this script runs

from ravl_med.evaluate.intervals import mean_interval

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "datasets" / "benchmarks" / "demo.yaml"
DEFAULT_REGIONS = {
    "grid3": {"grid_sizes": [3], "overlap": 0.0},
    "multigrid": {"grid_sizes": [2, 3, 4], "overlap": 0.5},  # the project default since this comparison
    "grid4+fz": {"grid_sizes": [4], "overlap": 0.0,
                 "proposals": {"method": "felzenszwalb", "scale": [50, 200]}},
    "fz": {"grid_sizes": [], "proposals": {"method": "felzenszwalb", "scale": [50, 200]}},
}
RULES = ("visible", "either")


def _precision(audit_folder: Path) -> dict[str, dict[str, float]]:
    """rule -> method -> P@10 of one stored audit, under today's rules (``rescore_discovery.py``)."""
    scores = rescore(audit_folder, list(RULES))
    return {rule: {method: row[rule] for method, row in scores.items()} for rule in RULES}


def run_setting(name: str, suite: str, out: Path, regions: dict[str, dict]) -> list[dict]:
    """Stage 1 (reused when done) and one audit per region set; returns and writes the rows."""
    from ravl_med.config import load_config
    from ravl_med.evaluate.groups import shortcut_gaps, shortcut_learned
    from ravl_med.phantom import find_suite, write_setting
    from ravl_med.reproducibility import pin_cpu_kernels
    from ravl_med.stages.audit import run_audit
    from ravl_med.stages.config import BenchmarkConfig
    from ravl_med.stages.evaluate import run_evaluation
    from ravl_med.stages.finetune import run_finetune

    pin_cpu_kernels()
    setting = find_suite(suite).setting(name)
    base = load_config(DEMO, BenchmarkConfig)
    root = out / name
    manifest = write_setting(setting, root / "data", progress=False).manifest
    start = time.perf_counter()
    fit = run_finetune(base.finetune_config(setting, manifest, root / "stage1"), resume=True, progress=False)
    train_s = time.perf_counter() - start
    rows = []
    for label, region_set in regions.items():
        config = base.model_copy(deep=True)
        config.ingest = config.ingest.model_copy(update={"regions": type(config.ingest.regions).model_validate(
            region_set)})
        audit_config = config.audit_config(setting, manifest, root / f"audit-{label}", fit.checkpoint, fit.sha256)
        start = time.perf_counter()
        audit = run_audit(audit_config, progress=False)
        audit_s = time.perf_counter() - start
        if not rows:  # validity does not depend on the regions: judge it once, on the first audit's images
            evaluation = run_evaluation(audit_config.backbone, fit.checkpoint, manifest, audit_config.ingest,
                                        setting.classes, audit_config.templates, sha256=fit.sha256, split="test",
                                        spurious_class=setting.spurious_class, n_boot=0, seed=setting.seed,
                                        embeddings=audit.embeddings)
            table = evaluation.images.by_group
            gap = float(shortcut_gaps(table, setting.spurious_class)["spurious_gap"])
            valid = bool(shortcut_learned(table, setting.spurious_class, base.min_shortcut_gap))
        ravl = audit.discoverers["ravl"]
        top = ravl.ranked_clusters_[0] if ravl.ranked_clusters_ else None
        rows.append({
            "setting": name, "artefact": setting.artefact, "spurious_class": setting.spurious_class,
            "strength": setting.strength, "seed": setting.seed, "regions": label, "valid": valid, "gap": gap,
            "outcome": ravl.outcome_, "n_regions": int(len(audit.embeddings.region_image)),
            "precision": _precision(root / f"audit-{label}"),
            "top_class": None if top is None else top.attribute_name,
            "top_p_adjusted": None if top is None else top.p_adjusted,
            "top_stability": None if top is None else top.stability,
            "train_s": round(train_s, 1), "audit_s": round(audit_s, 1),
            "provenance": audit.audit["provenance"],
        })
    # Rows of region sets not run this time are kept (a later run can add or redo one region set).
    path = root / "discovery_rows.json"
    kept = [r for r in (json.loads(path.read_text()) if path.is_file() else []) if r["regions"] not in regions]
    path.write_text(json.dumps(kept + rows, indent=2) + "\n")
    return rows


def _found(row: dict, out: Path, alpha: float, min_stability: float) -> bool:
    """RaVL reported a finding at ``alpha`` and ``min_stability``: a kept cluster with Holm-adjusted p <= alpha
    and stability >= min_stability (from audit.json, so rows audited with a looser rule are judged by this one;
    tightening either only removes clusters)."""
    audit = json.loads((out / row["setting"] / f"audit-{row['regions']}" / "audit.json").read_text())
    return any(c["p_adjusted"] is not None and c["p_adjusted"] <= alpha
               and (c.get("stability") is None or c["stability"] >= min_stability)
               for c in audit["methods"]["ravl"]["ranked_clusters"])


def report(out: Path, alpha: float = 0.01, min_stability: float = 0.5) -> None:
    rows = [r for path in sorted(out.glob("*/discovery_rows.json")) for r in json.loads(path.read_text())]
    if not rows:
        sys.exit(f"no rows under {out}")
    for row in rows:  # scored again from the stored audits: a changed hit rule applies to old rows too
        row["found"] = _found(row, out, alpha, min_stability)
        row["precision"] = _precision(out / row["setting"] / f"audit-{row['regions']}")
    methods = list(rows[0]["precision"]["visible"])
    print(f"{len({r['setting'] for r in rows})} settings, {sum(r['valid'] for r in rows) // max(1, len({r['regions'] for r in rows}))} valid")
    print("\nValid settings: Precision@10 mean [95% t-interval] per region set and rule; "
          "'found' = RaVL's outcome; hits = settings with RaVL P@10 >= 0.8")
    for label in dict.fromkeys(r["regions"] for r in rows):
        valid = [r for r in rows if r["regions"] == label and r["valid"]]
        invalid = [r for r in rows if r["regions"] == label and not r["valid"]]
        regions = np.mean([r["n_regions"] for r in rows if r["regions"] == label])
        audit_s = np.mean([r["audit_s"] for r in rows if r["regions"] == label])
        print(f"\n[{label}] {regions:.0f} regions per audit, audit {audit_s:.0f} s mean; "
              f"valid {len(valid)}, invalid {len(invalid)}")
        for rule in RULES:
            cells = [f"{m} {mean_interval(r['precision'][rule][m] for r in valid)}" for m in methods]
            hits = sum(r["precision"][rule]["ravl"] >= 0.8 for r in valid)
            print(f"  {rule:8s} " + "; ".join(cells) + f"; RaVL hits {hits}/{len(valid)}")
        found_valid = sum(r["found"] for r in valid)
        false_alarms = sum(r["found"] for r in invalid)
        print(f"  RaVL finding (a kept cluster with adjusted p <= {alpha}, stability >= {min_stability}) on valid "
              f"settings {found_valid}/{len(valid)}; "
              f"false alarms on invalid settings {false_alarms}/{len(invalid)}")
        for r in valid + invalid:
            print(f"    {r['setting']:40s} valid={r['valid']!s:5s} gap {r['gap']:+.2f} {r['outcome']:15s} "
                  f"finding@{alpha} {r['found']!s:5s} "
                  f"P@10 vis {r['precision']['visible']['ravl']:.1f} either {r['precision']['either']['ravl']:.1f} "
                  f"top {r['top_class']} p_adj {r['top_p_adjusted']} stab {r['top_stability']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["run", "report"])
    parser.add_argument("--suite", default="discovery", help="phantom suite (datasets/phantom)")
    parser.add_argument("--settings", default=None,
                        help="comma-separated globs of setting names, run in that order (default: all)")
    parser.add_argument("--out", type=Path, default=Path("outputs/discovery-seeds"))
    parser.add_argument("--regions", nargs="*", default=None, metavar="NAME=YAML",
                        help="region sets to audit with (default: grid3, multigrid, grid4+fz, fz)")
    parser.add_argument("--jobs", type=int, default=2, help="settings in parallel (one thread each)")
    parser.add_argument("--alpha", type=float, default=0.01, help="report: level of the gap test for a finding")
    parser.add_argument("--min-stability", type=float, default=0.5,
                        help="report: stability a finding needs (default 0.5, the audit's; 0: any)")
    args = parser.parse_args()
    if args.action == "report":
        report(args.out, args.alpha, args.min_stability)
        return
    from ravl_med.phantom import find_suite

    regions = DEFAULT_REGIONS if not args.regions else {
        name: yaml.safe_load(text) for name, text in (item.split("=", 1) for item in args.regions)}
    suite = find_suite(args.suite)
    patterns = args.settings.split(",") if args.settings else [None]
    names = list(dict.fromkeys(s.name for p in patterns for s in suite.select(None if p is None else [p])))
    print(f"{len(names)} settings x {len(regions)} region sets -> {args.out}", flush=True)
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
        futures = {name: pool.submit(run_setting, name, args.suite, args.out, regions) for name in names}
        for name, future in futures.items():
            rows = future.result()
            print(f"{name}: " + "; ".join(f"{r['regions']} {r['outcome']} P@10 {r['precision']['visible']['ravl']:.1f}"
                                          f"/{r['precision']['either']['ravl']:.1f}" for r in rows), flush=True)
    report(args.out, args.alpha, args.min_stability)


if __name__ == "__main__":
    main()
