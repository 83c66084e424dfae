"""``ravl-med finetune``: contrastive fine-tuning of a backbone on a manifest of image-report pairs."""

from __future__ import annotations

import argparse
import json
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
from ravl_med.config import ConfigError, FinetuneConfig, load_config


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "finetune",
        help="fine-tune a vision-language backbone on image-report pairs (contrastive)",
        description=(
            "Train a registered backbone with a symmetric InfoNCE loss (optionally label-aware) on the "
            "'train' rows of a manifest, with zero-shot accuracy on the 'val' rows after each epoch (and the "
            "worst (class x feature present/absent) group's when the manifest has 'artefact_present'). "
            "Training states go to OUT/checkpoints (resume with --resume), the final weights to "
            "OUT/model.safetensors and the metrics to OUT/metrics.json. Multi-GPU or multi-node: run the "
            "same command under torchrun. Validate the manifest first with 'ravl-med validate'."
        ),
    )
    parser.add_argument("--config", type=Path, required=True, help="fine-tuning YAML (see configs/finetune.yaml)")
    parser.add_argument("--manifest", type=Path, help="manifest CSV (overrides the config)")
    parser.add_argument("--out", type=Path, help="output folder (overrides output_dir)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest training state in the output folder")
    parser.add_argument("--epochs", type=int, help="number of epochs (overrides the config)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_device_option(parser)
    add_tracking_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config, FinetuneConfig)
    apply_overrides(config, {"--manifest": ("manifest", args.manifest), "--out": ("output_dir", args.out),
                             "--epochs": ("epochs", args.epochs), "--device": ("device", args.device)})
    if config.manifest is None:
        raise ConfigError(f"{args.config}: manifest: no manifest given (set it or pass --manifest)")
    if not Path(config.manifest).is_file():
        raise ConfigError(f"manifest not found: {config.manifest}")
    check_split(config.manifest, "train", config.classes)
    writable_dir(Path(config.output_dir), output_option(args.out, args.config))

    from ravl_med.models.runtime import process_rank  # torch: imported only once the input is checked
    from ravl_med.stages.finetune import run_finetune

    if process_rank().rank != 0:  # under torchrun, rank 0 reports (and tracks)
        run_finetune(config, resume=args.resume, progress=not args.no_progress)
        return 0
    result = _fit_tracked(args, config)
    for epoch in result.history:
        accuracy = "n/a" if epoch.val_accuracy is None else f"{epoch.val_accuracy:.3f}"
        worst = "" if epoch.val_worst_group is None else f", worst group {epoch.val_worst_group:.3f}"
        print(
            f"epoch {epoch.epoch + 1}: train loss {epoch.train_loss:.4f}  val zero-shot accuracy {accuracy} "
            f"(chance {result.chance:.3f}{worst})  {epoch.images_per_s:.1f} images/s"
        )
    print(f"weights: {result.checkpoint}  sha256 {result.sha256}")
    print(json.dumps({"steps": result.steps, "checkpoint": str(result.checkpoint), "sha256": result.sha256}))
    return 0


def _fit_tracked(args: argparse.Namespace, config: FinetuneConfig):
    """The fine-tuning stage inside an MLflow run (unless ``--no-tracking``): the result and the model."""
    from ravl_med.stages.finetune import run_finetune
    from ravl_med.tracking.observe import log, stage_run

    method = "label_aware" if config.label_aware else "contrastive"
    with stage_run(tracking_options(args), command="finetune", config=config, manifest=config.manifest,
                   backbone=config.backbone, seed=config.seed, tags={"method": method}) as (run, on_step):
        result = run_finetune(config, resume=args.resume, progress=not args.no_progress, on_step=on_step)
        if run is not None:
            log(run, result, backbone=config.backbone)
    return result
