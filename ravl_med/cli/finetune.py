"""``ravl-med finetune``: contrastive fine-tuning of a backbone on a manifest of image-report pairs."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ravl_med.cli.common import apply_overrides
from ravl_med.config import ConfigError, FinetuneConfig, load_config
from ravl_med.tracking import add_tracking_options


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
    add_tracking_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ravl_med.models.training import (
        Trainer,  # torch: imported only when the command runs
    )

    config = load_config(args.config, FinetuneConfig)
    apply_overrides(config, args.config, {"manifest": args.manifest, "output_dir": args.out, "epochs": args.epochs})
    if config.manifest is None:
        raise ConfigError(f"{args.config}: manifest: no manifest given (set it or pass --manifest)")
    if not Path(config.manifest).is_file():
        raise ConfigError(f"manifest not found: {config.manifest}")
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 reports (and tracks)
        Trainer(config, progress=not args.no_progress).fit(resume=args.resume)
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
    """Trainer.fit inside an MLflow run (unless ``--no-tracking``): config, data, step and epoch metrics, model.

    Per step: ``train/loss_step``, ``train/lr``. Per epoch: ``train/loss``, ``train/images_per_s``,
    ``train/steps``, ``val/acc/overall``, ``val/acc/worst_group``; for the last epoch with a group
    table, the per-group metrics and ``groups/val_groups.csv``/``.json`` of ``TrackedRun.log_group_table``.
    """
    import pandas as pd

    from ravl_med.models.training import Trainer
    from ravl_med.tracking import training_run

    method = "label_aware" if config.label_aware else "contrastive"
    with training_run(args, "finetune", config, config, {"method": method}) as (run, on_step):
        trainer = Trainer(config, progress=not args.no_progress, on_step=on_step)
        result = trainer.fit(resume=args.resume)
        if run is not None:
            last = result.history[-1] if result.history and result.history[-1].val_groups else None
            for epoch in result.history:
                metrics = {"train/loss": epoch.train_loss, "train/images_per_s": epoch.images_per_s,
                           "train/steps": epoch.steps}
                if epoch is not last:  # log_group_table logs these two for the last epoch
                    metrics |= {"val/acc/overall": epoch.val_accuracy, "val/acc/worst_group": epoch.val_worst_group}
                run.log_metrics(metrics, step=epoch.epoch)
            if last is not None:
                run.log_group_table(pd.DataFrame(last.val_groups), split="val", feature=result.feature or "feature",
                                    step=last.epoch)
            run.log_params({"model.checkpoint_sha256": result.sha256, "train.steps": result.steps})
            metrics_file = Path(config.output_dir) / "metrics.json"
            if metrics_file.is_file():
                run.log_artifact(metrics_file)
            model = getattr(trainer.model_, "module", trainer.model_)
            run.log_model(model, trainer.preprocess_)
    return result
