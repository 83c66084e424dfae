"""Benchmark: discovery with one-pass region embeddings vs re-encoded crops, on the same models.

Usage::

    python benchmarks/region_mode_discovery.py run outputs/side-by-side-hybrid/*-s[0-4]
    python benchmarks/region_mode_discovery.py report outputs/side-by-side-hybrid/*-s[0-4]

Each argument is a benchmark setting folder (``ravl-med benchmark``) whose ``audit/`` ran with
``region_mode: one_pass``. ``run`` repeats that audit, same config (model, checkpoint, split, regions,
methods, discovery settings, seed), with ``region_mode: crop`` into ``<setting>/audit-crop`` (skipped
when it exists), timing it. ``report`` prints, per setting, each method's top cluster in both modes:
the class it is tied to, Precision@10 against the artefact masks (the audit's hit rule) and RaVL's
outcome, then per method the mean and 95% Student-t interval of P@10 over the settings and the
paired difference crop minus one-pass. Everything printed is read from the audits of this run or
earlier ``run`` calls; nothing is hard-coded.

Why: one-pass embeddings (RoIAlign on the tower's last map) and crops disagree on the pretrained
hybrid (mean cosine 0.15 on the seed-0 pilot); this says which of the two finds the artefact.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from ravl_med.evaluate.intervals import mean_interval
from ravl_med.stages.audit import run_audit
from ravl_med.stages.config import AuditConfig


def _crop_audit(setting: Path) -> Path:
    out = setting / "audit-crop"
    if (out / "audit.json").is_file():
        return out
    record = json.loads((setting / "audit" / "audit.json").read_text())
    config = AuditConfig(**{**record["config"], "region_mode": "crop", "output_dir": out, "cache_dir": None})
    started = time.perf_counter()
    run_audit(config, progress=False)
    seconds = time.perf_counter() - started
    (out / "wall_seconds.txt").write_text(f"{seconds:.1f}\n")
    print(f"{setting.name}: crop audit {seconds:.0f} s")
    return out


def _top(audit_dir: Path) -> dict[str, tuple[str | None, float | None, str]]:
    """method -> (class of the top cluster, its P@10, the method's outcome)."""
    methods = json.loads((audit_dir / "audit.json").read_text())["methods"]
    top = {}
    for name, result in methods.items():
        ranked = result.get("ranked_clusters") or []
        first = ranked[0] if ranked else {}
        top[name] = (first.get("attribute_name"), first.get("precision_at_k"), result.get("outcome", ""))
    return top


def report(settings: list[Path]) -> None:
    rows = {}
    for setting in settings:
        if not (setting / "audit-crop" / "audit.json").is_file():
            print(f"{setting.name}: no crop audit yet (run first)")
            continue
        rows[setting.name] = (_top(setting / "audit"), _top(setting / "audit-crop"))
    if not rows:
        return
    methods = list(next(iter(rows.values()))[0])
    print("| setting | method | one-pass: class, P@10 | crop: class, P@10 |")
    print("|---|---|---|---|")
    for name, (one, crop) in rows.items():
        for method in methods:
            (c1, p1, _), (c2, p2, _) = one[method], crop[method]
            print(f"| {name} | {method} | {c1}, {p1} | {c2}, {p2} |")
    print(f"\nPrecision@10 of the top cluster over {len(rows)} settings, mean [95% t-interval]:\n")
    print("| method | one-pass | crop | crop - one-pass (paired) |")
    print("|---|---|---|---|")
    for method in methods:
        one = [r[0][method][1] or 0.0 for r in rows.values()]
        crop = [r[1][method][1] or 0.0 for r in rows.values()]
        print(f"| {method} | {mean_interval(one)} | {mean_interval(crop)} | {mean_interval(list(np.subtract(crop, one)))} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["run", "report"])
    parser.add_argument("settings", nargs="+", type=Path, help="benchmark setting folders with audit/audit.json")
    args = parser.parse_args(argv)
    settings = [s for s in args.settings if (s / "audit" / "audit.json").is_file()]
    if args.command == "run":
        for setting in settings:
            _crop_audit(setting)
    report(settings)


if __name__ == "__main__":
    main()
