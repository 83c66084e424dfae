"""``ravl-med review``: mark which of an audit's clusters are shortcuts, before ``ravl-med mitigate``."""

from __future__ import annotations

import argparse
from pathlib import Path

from ravl_med.cli.common import comma_list, writable_dir
from ravl_med.config import ConfigError


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "review",
        help="list an audit's clusters by rank and mark which are shortcuts (review.yaml, read by mitigate)",
        description=(
            "Lists the kept clusters of an audit by their rank, the numbering of report.html, clusters.csv and "
            "the gallery files, with the class each is tied to, its evidence, its gallery and its counter-example "
            "gallery (images of the same class outside the cluster, or why there is none). Writes AUDIT_DIR/"
            "review.yaml: one entry per cluster with 'spurious: null' until reviewed. Open each gallery, then "
            "either edit the file (yes / no per cluster) or pass --spurious with the ranks that show something "
            "that is not part of the disease (a device, a marker, burned-in text). 'ravl-med mitigate --audit "
            "AUDIT_DIR' then fine-tunes away the clusters marked yes. Without review.yaml, mitigate uses the "
            "config's spurious_ranks (default: rank 1)."
        ),
    )
    parser.add_argument("audit_dir", type=Path, metavar="AUDIT_DIR", help="output folder of 'ravl-med audit'")
    marks = parser.add_mutually_exclusive_group()
    marks.add_argument("--spurious", metavar="RANKS",
                       help="comma-separated ranks to mark spurious (every other cluster is marked not spurious)")
    marks.add_argument("--none", action="store_true", help="mark every cluster not spurious")
    parser.set_defaults(func=run)


def _ranks(text: str) -> list[int]:
    try:
        ranks = [int(part) for part in comma_list(text)]
    except ValueError:
        raise ConfigError(f"--spurious: ranks are whole numbers separated by commas, got {text!r}") from None
    if not ranks:
        raise ConfigError("--spurious: no rank given (use --none to mark every cluster not spurious)")
    return ranks


def run(args: argparse.Namespace) -> int:
    from ravl_med.stages.review import REVIEW_FILE, run_review

    if not args.audit_dir.is_dir():
        raise ConfigError(f"{args.audit_dir}: no such folder; give the output folder of 'ravl-med audit'")
    writable_dir(args.audit_dir, "AUDIT_DIR")  # review.yaml is written there
    spurious = [] if args.none else None if args.spurious is None else _ranks(args.spurious)
    review = run_review(args.audit_dir, spurious)
    print(f"audit: {review.method}, outcome {review.outcome}, {len(review.clusters)} cluster(s) kept")
    for cluster in review.clusters:
        verdict = {None: "not reviewed", True: "SPURIOUS", False: "not spurious"}[cluster.spurious]
        evidence = [f"{cluster.regions} regions in {cluster.images} images"]
        if cluster.adjusted_p is not None:
            evidence.append(f"adjusted p {cluster.adjusted_p:.2g}")
        if cluster.stability is not None:
            evidence.append(f"stability {cluster.stability:.0%}" + (" (unstable)" if cluster.stability < 0.5 else ""))
        print(f"  cluster {cluster.rank}: tied to '{cluster.tied_to}'; {', '.join(evidence)}; "
              f"gallery {cluster.gallery or 'none'}: {verdict}")
        counter = cluster.counter_note
        if cluster.counter_gallery:
            counter = f"{cluster.counter_gallery} ({counter})"
        print(f"    counter-examples: {counter}")
    path = args.audit_dir / REVIEW_FILE
    if not review.clusters:
        print(f"nothing to review: the audit reports no shortcut ({path} written; mitigate will refuse to run "
              "unless forced)")
    elif review.pending_ranks:
        print(f"next: look at the galleries, then mark the shortcuts: ravl-med review {args.audit_dir} --spurious "
              f"RANKS (or edit {path})")
    else:
        print(f"written {path}; next: ravl-med mitigate --config CONFIG --audit {args.audit_dir}")
    return 0
