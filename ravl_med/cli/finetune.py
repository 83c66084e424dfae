"""``ravl-med finetune``: contrastive fine-tuning of a backbone on a manifest of image-report pairs."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ravl_med.config import ConfigError, FinetuneConfig, load_config


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "finetune",
        help="fine-tune a vision-language backbone on image-report pairs (contrastive)",
        description=(
            "Train a registered backbone with a symmetric InfoNCE loss (optionally label-aware) on the "
            "'train' rows of a manifest, with zero-shot accuracy on the 'val' rows after each epoch. "
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
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ravl_med.models.training import Trainer  # torch: imported only when the command runs

    config = load_config(args.config, FinetuneConfig)
    try:
        if args.manifest is not None:
            config.manifest = args.manifest
        if args.out is not None:
            config.output_dir = args.out
        if args.epochs is not None:
            config.epochs = args.epochs
    except ValueError as err:  # pydantic validates assignments
        raise ConfigError(f"{args.config}: {' '.join(str(err).split())}") from None
    if config.manifest is None:
        raise ConfigError(f"{args.config}: manifest: no manifest given (set it or pass --manifest)")
    if not Path(config.manifest).is_file():
        raise ConfigError(f"manifest not found: {config.manifest}")
    result = Trainer(config, progress=not args.no_progress).fit(resume=args.resume)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 reports
        return 0
    for epoch in result.history:
        accuracy = "n/a" if epoch.val_accuracy is None else f"{epoch.val_accuracy:.3f}"
        print(
            f"epoch {epoch.epoch + 1}: train loss {epoch.train_loss:.4f}  val zero-shot accuracy {accuracy} "
            f"(chance {result.chance:.3f})  {epoch.images_per_s:.1f} images/s"
        )
    print(f"weights: {result.checkpoint}  sha256 {result.sha256}")
    print(json.dumps({"steps": result.steps, "checkpoint": str(result.checkpoint), "sha256": result.sha256}))
    return 0
