"""``ravl-med mitigate``: region-aware fine-tuning (RaVL stage 2) or a mitigation baseline after an audit."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ravl_med.cli.common import apply_overrides
from ravl_med.config import MITIGATION_METHODS, ConfigError, MitigateConfig, load_config
from ravl_med.tracking import add_tracking_options


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "mitigate",
        help="fine-tune away a discovered shortcut (region-aware loss) or run a mitigation baseline",
        description=(
            "Label every training region spurious or relevant by its nearest stage-1 medoid (the audit's "
            "medoids.npz, regions embedded with the audited stage-1 model), then fine-tune with the chosen "
            "method through the same loop as 'ravl-med finetune' (checkpoints, --resume, CUDA bf16, torchrun), "
            "starting from finetune.checkpoint (the paper's protocol: the weights stage 1 started from). "
            "Outputs go to OUT/<method>: checkpoints/, model.safetensors, metrics.json, mitigate.json, and, "
            "when the manifest has a test split, evaluation.json and groups.csv (image and core-region "
            "overall / worst-group accuracy; groups = class x feature present, from the manifest's ground "
            "truth or else from the audit). Tracked in MLflow unless --no-tracking."
        ),
    )
    parser.add_argument("--config", type=Path, required=True, help="mitigation YAML (see configs/mitigate.yaml)")
    parser.add_argument("--method", choices=MITIGATION_METHODS, help="method (overrides the config)")
    parser.add_argument("--audit", type=Path, help="audit folder with medoids.npz (overrides audit_dir)")
    parser.add_argument("--stage1", type=Path, help="the audited stage-1 model (overrides stage1_checkpoint)")
    parser.add_argument("--out", type=Path, help="output folder (overrides finetune.output_dir)")
    parser.add_argument("--spurious-class", help="class the shortcut is tied to (adds predicted_spurious to the "
                        "group table)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest training state")
    parser.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_tracking_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config, MitigateConfig)
    apply_overrides(config, args.config, {"method": args.method, "audit_dir": args.audit,
                                          "stage1_checkpoint": args.stage1, "finetune.output_dir": args.out})
    if args.stage1 is not None:
        config.stage1_sha256 = None  # the config's sha256 belongs to the config's stage-1 model
    if args.spurious_class is not None and args.spurious_class not in config.finetune.classes:
        raise ConfigError(f"--spurious-class {args.spurious_class!r} is not one of {config.finetune.classes}")
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 evaluates, reports and tracks
        from ravl_med.mitigate.run import run_mitigation

        run_mitigation(config, resume=args.resume, max_steps=args.max_steps, progress=not args.no_progress)
        return 0
    summary, evaluation = _mitigate_tracked(args, config)
    result = summary["result"]
    for epoch in result["history"]:
        accuracy = "n/a" if epoch["val_accuracy"] is None else f"{epoch['val_accuracy']:.3f}"
        print(f"epoch {epoch['epoch'] + 1}: train loss {epoch['train_loss']:.4f}  val zero-shot accuracy {accuracy}")
    if evaluation is not None:
        line = (f"test: accuracy {evaluation['image_accuracy']:.3f}, worst-group {evaluation['image_worst_group']:.3f} "
                f"(groups from {evaluation['groups_from']})")
        if evaluation.get("region_accuracy") is not None:
            line += (f"; core regions: accuracy {evaluation['region_accuracy']:.3f}, worst-group "
                     f"{evaluation['region_worst_group']:.3f}")
        print(line)
    print(json.dumps({"method": summary["method"], "steps": result["steps"], "checkpoint": result["checkpoint"],
                      "sha256": result["sha256"]}))
    return 0


def _evaluate(config: MitigateConfig, summary: dict, spurious_class: str | None) -> dict | None:
    """Stage-2 metrics of the trained model on the manifest's test split; ``None`` without one."""
    import pandas as pd

    from ravl_med.discover.medoids import MEDOIDS_FILE, Stage1Medoids
    from ravl_med.evaluate.mitigation import evaluate_split
    from ravl_med.models.runtime import resolve_device

    ft = config.finetune
    splits = pd.read_csv(ft.manifest, dtype=str, keep_default_na=False, usecols=lambda c: c == "split")
    if "split" not in splits or not (splits["split"] == "test").any():
        return None
    medoids = None
    if config.audit_dir is not None and (Path(config.audit_dir) / MEDOIDS_FILE).is_file():
        medoids = Stage1Medoids.load(config.audit_dir).with_spurious_ranks(config.spurious_ranks)
    device = resolve_device(ft.device)
    try:
        evaluation = evaluate_split(ft.backbone, summary["result"]["checkpoint"], ft.manifest, ft.ingest, ft.classes,
                                    ft.templates, sha256=summary["result"]["sha256"], spurious_class=spurious_class,
                                    stage1_checkpoint=config.stage1_checkpoint, stage1_sha256=config.stage1_sha256,
                                    medoids=medoids, device=device, seed=ft.seed)
    except ValueError as err:
        print(f"test evaluation skipped: {err}")
        return None
    out = Path(ft.output_dir) / summary["method"]
    evaluation["image_table"].to_csv(out / "groups.csv", index=False)
    keep = ("image_accuracy", "image_worst_group", "region_accuracy", "region_worst_group", "n_images",
            "n_core_regions", "feature", "groups_from", "n_feature_present")
    (out / "evaluation.json").write_text(json.dumps({k: evaluation.get(k) for k in keep}, indent=2) + "\n")
    return evaluation


def _mitigate_tracked(args: argparse.Namespace, config: MitigateConfig):
    """run_mitigation then the test evaluation, inside an MLflow run unless ``--no-tracking``."""
    from ravl_med.mitigate.run import run_mitigation
    from ravl_med.tracking import training_run

    ft = config.finetune
    if ft.manifest is None or not Path(ft.manifest).is_file():
        raise ConfigError(f"finetune.manifest not found: {ft.manifest}")
    tags = {"method": config.method, "spurious_class": args.spurious_class}
    with training_run(args, "mitigate", config, ft, tags, run_name=f"mitigate-{config.method}") as (run, on_step):
        summary = run_mitigation(config, resume=args.resume, max_steps=args.max_steps, progress=not args.no_progress,
                                 on_step=on_step)
        evaluation = _evaluate(config, summary, args.spurious_class)
        if run is not None:
            result = summary["result"]
            for epoch in result["history"]:
                run.log_metrics({"train/loss": epoch["train_loss"], "val/acc/overall": epoch["val_accuracy"]},
                                step=epoch["epoch"])
            run.log_params({"model.checkpoint_sha256": result["sha256"], "train.steps": result["steps"]})
            out = Path(ft.output_dir) / config.method
            for name in ("mitigate.json", "metrics.json", "evaluation.json", "groups.csv"):
                if (out / name).is_file():
                    run.log_artifact(out / name)
            if evaluation is not None:
                run.log_metrics({"test/acc/overall": evaluation["image_accuracy"],
                                 "test/acc/worst_group": evaluation["image_worst_group"],
                                 "test/region_acc/overall": evaluation.get("region_accuracy"),
                                 "test/region_acc/worst_group": evaluation.get("region_worst_group")})
                run.log_group_table(evaluation["image_table"], split="test", feature=evaluation["feature"])
            from ravl_med.models.registry import create_backbone

            model, preprocess, _ = create_backbone(ft.backbone, checkpoint=result["checkpoint"], sha256=result["sha256"])
            run.log_model(model, preprocess)
    return summary, evaluation
