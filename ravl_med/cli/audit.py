"""``ravl-med audit``: discover the image features a fine-tuned model spuriously ties to a class."""

from __future__ import annotations

import argparse
from pathlib import Path

from ravl_med.cli.common import apply_overrides, comma_list
from ravl_med.config import AUDIT_METHODS, AuditConfig, ConfigError, load_config
from ravl_med.tracking import add_tracking_options


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "audit",
        help="audit a fine-tuned model for shortcuts (RaVL stage 1) and write a report",
        description=(
            "Embed the candidate regions of every image of an evaluation split with the model, cluster them, "
            "and report the clusters that raise zero-shot accuracy for one class and lower it for another "
            "(RaVL stage 1), with per-class tables, bootstrap 95% intervals and galleries. Writes OUT/audit.json, "
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
    parser.add_argument("--spurious-class", help="the class the planted feature is tied to (a tag; with a manifest "
                        "column 'artefact_present', the per-group table reports its pull on other classes)")
    add_tracking_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ravl_med.discover.audit import (
        run_audit,  # torch: imported only when the command runs
    )

    config = load_config(args.config, AuditConfig)
    apply_overrides(config, args.config, {"manifest": args.manifest, "checkpoint": args.checkpoint,
                                          "sha256": args.sha256, "output_dir": args.out,
                                          "methods": comma_list(args.methods)})
    if args.checkpoint is not None and args.sha256 is None:
        config.sha256 = None  # the config's sha256 belongs to the config's checkpoint
    if args.no_tracking:
        result = run_audit(config, progress=not args.no_progress)
    else:
        result = _audit_tracked(args, config, run_audit)
    for line in result.summary_lines():
        print(line)
    return 0


def _audit_tracked(args: argparse.Namespace, config: AuditConfig, run_audit):
    """run_audit inside an MLflow run: config, data, per-group zero-shot accuracy, reports; a child run per method."""
    import numpy as np

    from ravl_med.data.manifest import feature_presence
    from ravl_med.tracking import (
        Tracker,
        dataset_name,
        manifest_summary,
    )

    if config.manifest is None:
        raise ConfigError("manifest: no manifest given (set it or pass --manifest)")
    if not Path(config.manifest).is_file():
        raise ConfigError(f"manifest not found: {config.manifest}")
    params, tags = manifest_summary(config.manifest)
    tags |= {"command": "audit", "method": "zero-shot", "seed": config.seed, "spurious_class": args.spurious_class}
    with Tracker(args.experiment or dataset_name(config.manifest), "audit", tags=tags,
                 tracking_uri=args.tracking_uri) as run:
        run.log_config(config)
        run.log_params({**params, "model.backbone": config.backbone, "seed": config.seed,
                        "code_version": run.tags.get("ravl.code_version", "")})
        result = run_audit(config, progress=not args.no_progress)
        if config.checkpoint is not None:
            from ravl_med.models.weights import file_sha256, resolve_checkpoint

            run.log_params({"model.checkpoint_sha256": file_sha256(resolve_checkpoint(config.checkpoint))})
        split = config.split or "all"
        embeddings = result.embeddings
        labels = np.asarray(embeddings.labels, dtype=np.int64)
        predictions = result.image_scores.argmax(axis=1)
        presence = feature_presence(config.manifest, embeddings.keys)
        known = labels >= 0
        run.log_metrics({f"{split}/acc/overall": float((predictions[known] == labels[known]).mean())
                         if known.any() else None})
        if presence is not None:
            from ravl_med.evaluate.groups import group_accuracy_table

            flags, feature = presence
            spurious = args.spurious_class if args.spurious_class in config.classes else None
            table = group_accuracy_table(labels, predictions, flags, config.classes, spurious_class=spurious,
                                         n_boot=config.discovery.n_boot, seed=config.seed)
            run.log_group_table(table, split=split, feature=feature)
        run.log_artifacts(result.output_dir, "audit")
        for method, discoverer in result.discoverers.items():
            with run.child(method, tags={"method": method, "outcome": discoverer.outcome_}) as child:
                metrics = {"clusters_kept": len(discoverer.ranked_clusters_)}
                if method in result.precision:
                    metrics[f"precision_at_{config.evaluation.precision_k}"] = result.precision[method]
                child.log_metrics(metrics)
    return result
