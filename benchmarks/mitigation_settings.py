"""Mitigation per setting family and pooled, from one or more ``ravl-med benchmark`` output folders.

A setting family is one artefact, spurious class and strength over its seeds. For each family and
for all valid settings pooled, prints per method: n, image overall accuracy, image worst-group
accuracy and core-region worst-group accuracy (mean [95% t-interval] over seeds), then the paired
differences (same seed) of ``--method`` against every other method. Invalid settings that were mitigated
(``mitigation.on_invalid``) are pooled apart: what each method does to a model without the shortcut,
as each method minus standard, paired by setting (do no harm). Reads ``<setting>/result.json`` only (no
ground truth beyond what the benchmark already stored; ``oracle_*`` rows are ceilings).

    python benchmarks/mitigation_settings.py outputs/mit-v099-a outputs/mit-v099-b \
        --method counterfactual_upsampled
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from ravl_med.evaluate.intervals import MeanInterval
from ravl_med.stages.tables import load_rows, paired_differences, summarise


def method_table(rows: Sequence[dict], table: str = "mitigation") -> str:
    """Markdown: per method, n and mean [95% interval] of image overall, image and core-region worst group,
    over the valid rows (``table="mitigation_invalid"``: over the invalid ones)."""
    table = summarise(rows)[table]
    lines = ["| method | n | image overall | image worst group | core-region worst group |", "|---|---|---|---|---|"]
    for r in table.itertuples(index=False):
        cells = [f"{MeanInterval(getattr(r, f'{k}_mean'), getattr(r, f'{k}_ci_low'), getattr(r, f'{k}_ci_high'), r.n):.3f}"
                 for k in ("image_accuracy", "image_worst_group", "region_worst_group")]
        lines.append(f"| {r.method} | {r.n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def differences_table(rows: Sequence[dict], method: str) -> str:
    """Markdown: ``method`` minus each other method, paired by seed, image worst group and overall."""
    diff = paired_differences(rows)
    return _paired_table(diff[diff["method"] == method], "versus", "versus")


def harm_table(rows: Sequence[dict]) -> str:
    """Markdown: each method minus ``standard``, paired by setting, on the invalid rows that were mitigated."""
    diff = summarise(rows)["differences_invalid"]
    return _paired_table(diff[diff["versus"] == "standard"] if len(diff) else diff, "method", "method minus standard")


def _paired_table(diff, key: str, header: str) -> str:
    """Markdown: one line per value of ``key`` of the paired differences ``diff``, worst group and overall."""
    lines = [f"| {header} | n | image worst group | image overall |", "|---|---|---|---|"]
    for name, part in diff.groupby(key, sort=False):
        by = {r.metric: r for r in part.itertuples(index=False)}
        cells = [f"{MeanInterval(by[m].mean, by[m].ci_low, by[m].ci_high, by[m].n):+.3f}"
                 for m in ("image_worst_group", "image_accuracy")]
        lines.append(f"| {name} | {by['image_worst_group'].n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_seed(rows: Sequence[dict], method: str) -> str:
    """One line: the method's image worst group / overall per seed."""
    return ", ".join(f"s{r['seed']} {r['mitigation'][method]['image_worst_group']:.2f}/"
                     f"{r['mitigation'][method]['image_accuracy']:.3f}" for r in rows if method in r["mitigation"])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="ravl-med benchmark output folders")
    parser.add_argument("--method", default="counterfactual_upsampled", help="the method compared with the others")
    args = parser.parse_args(argv)
    rows = [r for folder in args.folders for r in load_rows(folder)]
    families: dict[tuple, list[dict]] = defaultdict(list)
    for r in sorted(rows, key=lambda r: (r["artefact"], r["spurious_class"], r["strength"], r["seed"])):
        families[(r["artefact"], r["spurious_class"], r["strength"])].append(r)
    for (artefact, cls, strength), part in families.items():
        valid = [r for r in part if r["valid"]]
        gaps = ", ".join(f"s{r['seed']} {r['shortcut_gap']:+.2f}" for r in part)
        print(f"\n## {artefact} <-> {cls}, V {strength}: {len(valid)} of {len(part)} valid (gap {gaps})")
        if valid:
            print(method_table(valid))
            print(f"\n{args.method} per seed (worst group/overall): {per_seed(valid, args.method)}\n")
            print(differences_table(valid, args.method))
    valid = [r for r in rows if r["valid"]]
    if len(families) > 1 and valid:
        print(f"\n## All valid settings pooled ({len(valid)})")
        print(method_table(valid))
        print()
        print(differences_table(valid, args.method))
    harmed = [r for r in rows if not r["valid"] and r.get("mitigation")]
    if harmed:
        print(f"\n## Invalid settings, mitigated anyway: do no harm ({len(harmed)}: "
              + ", ".join(r["setting"] for r in harmed) + ")")
        print(method_table(harmed, "mitigation_invalid"))
        print()
        print(harm_table(harmed))


if __name__ == "__main__":
    main()
