"""``ravl-med audit``: discover the image features a fine-tuned model spuriously ties to a class."""

from __future__ import annotations

import argparse
from pathlib import Path

from ravl_med.cli.common import (
    add_device_option,
    add_tracking_options,
    apply_overrides,
    check_split,
    comma_list,
    output_option,
    tracking_options,
    writable_dir,
)
from ravl_med.config import ConfigError, load_config
from ravl_med.stages.config import AUDIT_METHODS, AuditConfig


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "audit",
        help="audit a fine-tuned model for shortcuts (RaVL stage 1) and write a report",
        description=(
            "Embed the candidate regions of every image of an evaluation split with the model, cluster them, "
            "and report the clusters that raise zero-shot accuracy for one class and lower it for another "
            "(RaVL stage 1), with per-class tables, bootstrap 95% intervals and galleries. Writes OUT/audit.json, "
            "OUT/report.html (self-contained), OUT/clusters.csv and OUT/gallery-*.png. Embeddings are cached: "
            "an interrupted audit restarted with the same command continues where it stopped. Multi-GPU: run the "
            "same command under torchrun (the processes share the embedding; rank 0 discovers and writes). Baselines "
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
    parser.add_argument("--spurious-class", help="the class the planted feature is tied to (a tag; with a manifest "
                        "column 'artefact_present', the per-group table reports its pull on other classes)")
    add_device_option(parser)
    add_tracking_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config, AuditConfig)
    apply_overrides(config, {"--manifest": ("manifest", args.manifest), "--checkpoint": ("checkpoint", args.checkpoint),
                             "--sha256": ("sha256", args.sha256), "--out": ("output_dir", args.out),
                             "--methods": ("methods", comma_list(args.methods)), "--device": ("device", args.device)})
    if args.checkpoint is not None and args.sha256 is None:
        config.sha256 = None  # the config's sha256 belongs to the config's checkpoint
    if config.manifest is None:
        raise ConfigError("manifest: no manifest given (set it or pass --manifest)")
    if not Path(config.manifest).is_file():
        raise ConfigError(f"manifest not found: {config.manifest}")
    check_split(config.manifest, config.split, config.classes)
    writable_dir(Path(config.output_dir), output_option(args.out, args.config))

    from ravl_med.models.runtime import process_rank  # torch: imported only once the input is checked
    from ravl_med.stages.audit import run_audit
    from ravl_med.tracking.observe import log, stage_run

    if process_rank().rank != 0:  # under torchrun, the other ranks embed their share; rank 0 reports (and tracks)
        run_audit(config, progress=not args.no_progress)
        return 0
    tags = {"method": "zero-shot", "spurious_class": args.spurious_class}
    with stage_run(tracking_options(args), command="audit", config=config, manifest=config.manifest,
                   backbone=config.backbone, seed=config.seed, tags=tags) as (tracked, _):
        result = run_audit(config, progress=not args.no_progress)
        if tracked is not None:
            log(tracked, result, spurious_class=args.spurious_class)
    for line in result.summary_lines():
        print(line)
    return 0
