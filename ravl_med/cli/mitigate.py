"""``ravl-med mitigate``: region-aware fine-tuning (RaVL stage 2) or a mitigation baseline after an audit."""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path

from ravl_med.cli.common import (
    add_device_option,
    add_tracking_options,
    apply_overrides,
    check_split,
    output_option,
    tracking_options,
    writable_dir,
)
from ravl_med.config import ConfigError, load_config
from ravl_med.mitigate.registry import MITIGATION_METHODS
from ravl_med.stages.config import MitigateConfig


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "mitigate",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="methods:\n" + "\n".join(textwrap.fill(f"{name}: {spec.summary}", width=100, initial_indent="  ",
                                                        subsequent_indent="      ")
                                          for name, spec in MITIGATION_METHODS.items()),
        help="fine-tune away a discovered shortcut (region-aware loss) or run a mitigation baseline",
        description=textwrap.fill(
            "Label every training region spurious or relevant by its nearest stage-1 medoid (the audit's "
            "medoids.npz, regions embedded with the audited stage-1 model; spurious = the clusters the "
            "audit's review.yaml marks yes, written by 'ravl-med review'), then fine-tune with the chosen "
            "method through the same loop as 'ravl-med finetune' (checkpoints, --resume, CUDA bf16, torchrun), "
            "starting from finetune.checkpoint (the paper's protocol: the weights stage 1 started from). "
            "Outputs go to OUT/<method>: checkpoints/, model.safetensors, metrics.json, mitigate.json, and, "
            "when the manifest has a test split, evaluation.json and groups.csv (image and core-region "
            "overall / worst-group accuracy; groups = class x feature present, from the manifest's ground "
            "truth or else from the audit). Tracked in MLflow unless --no-tracking.", width=100,
        ),
    )
    parser.add_argument("--config", type=Path, required=True, help="mitigation YAML (see configs/mitigate.yaml)")
    parser.add_argument("--method", choices=list(MITIGATION_METHODS), metavar="METHOD",
                        help="method (overrides the config); the list is below")
    parser.add_argument("--audit", type=Path, help="audit folder with medoids.npz (overrides audit_dir)")
    parser.add_argument("--stage1", type=Path, help="the audited stage-1 model (overrides stage1_checkpoint)")
    parser.add_argument("--out", type=Path, help="output folder (overrides finetune.output_dir)")
    parser.add_argument("--spurious-class", help="class the shortcut is tied to (adds predicted_spurious to the "
                        "group table)")
    parser.add_argument("--force", action="store_true",
                        help="train without a review of the audit (the config's spurious_ranks mark the spurious "
                        "clusters), or even when no cluster is marked spurious (the audit found no significant "
                        "shortcut, or its review marks none); without it mitigate refuses both, since fine-tuning a "
                        "model that has no shortcut lowered its worst-group accuracy in the benchmark")
    parser.add_argument("--resume", action="store_true", help="continue from the latest training state")
    parser.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_device_option(parser)
    add_tracking_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config, MitigateConfig)
    apply_overrides(config, {"--method": ("method", args.method), "--audit": ("audit_dir", args.audit),
                             "--stage1": ("stage1_checkpoint", args.stage1), "--out": ("finetune.output_dir", args.out),
                             "--spurious-class": ("evaluation.spurious_class", args.spurious_class),
                             "--device": ("finetune.device", args.device)})
    if args.stage1 is not None:
        config.stage1_sha256 = None  # the config's sha256 belongs to the config's stage-1 model
    if args.spurious_class is not None and args.spurious_class not in config.finetune.classes:
        raise ConfigError(f"--spurious-class {args.spurious_class!r} is not one of {config.finetune.classes}")
    ft = config.finetune
    if ft.manifest is None or not Path(ft.manifest).is_file():
        raise ConfigError(f"finetune.manifest not found: {ft.manifest}")
    check_split(ft.manifest, "train", ft.classes)
    writable_dir(Path(ft.output_dir), output_option(args.out, args.config, "finetune.output_dir"))

    from ravl_med.models.runtime import process_rank  # torch: imported only once the input is checked
    from ravl_med.stages.mitigate import run_mitigation

    if process_rank().rank != 0:  # under torchrun, rank 0 evaluates, reports and tracks
        run_mitigation(config, resume=args.resume, max_steps=args.max_steps, progress=not args.no_progress,
                       force=args.force)
        return 0
    result = _mitigate_tracked(args, config)
    for epoch in result.fit.history:
        accuracy = "n/a" if epoch.val_accuracy is None else f"{epoch.val_accuracy:.3f}"
        print(f"epoch {epoch.epoch + 1}: train loss {epoch.train_loss:.4f}  val zero-shot accuracy {accuracy}")
    labels = result.region_labels
    if labels:
        print(f"spurious clusters (report ranks): {labels['spurious_ranks'] or 'none'}, from {labels['spurious_from']}")
    for note in result.notes:
        print(note)
    evaluation = result.evaluation
    if evaluation is not None:
        line = (f"test: accuracy {evaluation.image_accuracy:.3f}, worst-group {evaluation.image_worst_group:.3f} "
                f"(groups from {evaluation.groups_from})")
        if evaluation.region_accuracy is not None:
            line += (f"; core regions: accuracy {evaluation.region_accuracy:.3f}, worst-group "
                     f"{evaluation.region_worst_group:.3f}")
        print(line)
    print(json.dumps({"method": result.method, "steps": result.fit.steps, "checkpoint": str(result.fit.checkpoint),
                      "sha256": result.fit.sha256}))
    return 0


def _mitigate_tracked(args: argparse.Namespace, config: MitigateConfig):
    """The mitigation stage inside an MLflow run unless ``--no-tracking``: the result and the model."""
    from ravl_med.stages.mitigate import run_mitigation
    from ravl_med.tracking.observe import log, stage_run

    ft = config.finetune
    tags = {"method": config.method, "spurious_class": args.spurious_class}
    with stage_run(tracking_options(args), command="mitigate", config=config, manifest=ft.manifest,
                   backbone=ft.backbone, seed=ft.seed, tags=tags,
                   run_name=f"mitigate-{config.method}") as (run, on_step):
        result = run_mitigation(config, resume=args.resume, max_steps=args.max_steps, progress=not args.no_progress,
                                on_step=on_step, force=args.force)
        if run is not None:
            log(run, result, backbone=ft.backbone)
    return result
