"""``ravl-med audit``: discover the image features a fine-tuned model spuriously ties to a class."""

from __future__ import annotations

import argparse
from pathlib import Path

from ravl_med.config import AUDIT_METHODS, AuditConfig, ConfigError, load_config


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "audit",
        help="audit a fine-tuned model for shortcuts (RaVL stage 1) and write a report",
        description=(
            "Embed the candidate regions of every image of an evaluation split with the model, cluster them, "
            "and report the clusters that raise zero-shot accuracy for one class and lower it for another "
            "(RaVL stage 1), with per-class tables, bootstrap 95%% intervals and galleries. Writes OUT/audit.json, "
            "OUT/report.html (self-contained), OUT/clusters.csv and OUT/gallery-*.png. Embeddings are cached: "
            "an interrupted audit restarted with the same command continues where it stopped. Baselines "
            "(random, distilling_failures, george, domino) give the same outputs; with a phantom or digits "
            "manifest, Precision@k against the planted feature is reported for each method."
        ),
    )
    parser.add_argument("--config", type=Path, required=True, help="audit YAML (see configs/audit.yaml)")
    parser.add_argument("--manifest", type=Path, help="evaluation manifest CSV (overrides the config)")
    parser.add_argument("--checkpoint", type=Path, help="fine-tuned weights, file or folder (overrides the config; "
                        "the config's sha256 is then ignored unless --sha256 is given)")
    parser.add_argument("--sha256", help="expected sha256 of --checkpoint")
    parser.add_argument("--out", type=Path, help="output folder (overrides output_dir)")
    parser.add_argument("--methods", help=f"comma-separated methods, from: {', '.join(AUDIT_METHODS)}")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ravl_med.discover.audit import (
        run_audit,  # torch: imported only when the command runs
    )

    config = load_config(args.config, AuditConfig)
    try:
        if args.manifest is not None:
            config.manifest = args.manifest
        if args.checkpoint is not None:
            config.checkpoint = args.checkpoint
            config.sha256 = args.sha256
        elif args.sha256 is not None:
            config.sha256 = args.sha256
        if args.out is not None:
            config.output_dir = args.out
        if args.methods is not None:
            config.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    except ValueError as err:  # pydantic validates assignments
        raise ConfigError(f"{args.config}: {' '.join(str(err).split())}") from None
    result = run_audit(config, progress=not args.no_progress)
    for line in result.summary_lines():
        print(line)
    return 0
