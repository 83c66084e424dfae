"""``ravl-med mitigate``: region-aware fine-tuning (RaVL stage 2) or a mitigation baseline after an audit."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ravl_med.config import ConfigError, MitigateConfig, load_config

METHOD_CHOICES = ("ravl", "standard", "upsampled", "vl_erm", "vl_gdro", "spurious_aware")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "mitigate",
        help="fine-tune away a discovered shortcut (region-aware loss) or run a mitigation baseline",
        description=(
            "Label every training region spurious or relevant by its nearest stage-1 medoid (from the "
            "audit's medoids.npz), then fine-tune the stage-1 model with the chosen method through the "
            "same loop as 'ravl-med finetune' (checkpoints, --resume, CUDA bf16, torchrun). Outputs go to "
            "OUT/<method>: checkpoints/, model.safetensors, metrics.json, mitigate.json."
        ),
    )
    parser.add_argument("--config", type=Path, required=True, help="mitigation YAML (see configs/mitigate.yaml)")
    parser.add_argument("--method", choices=METHOD_CHOICES, help="method (overrides the config)")
    parser.add_argument("--audit", type=Path, help="audit folder with medoids.npz (overrides audit_dir)")
    parser.add_argument("--out", type=Path, help="output folder (overrides finetune.output_dir)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest training state")
    parser.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ravl_med.mitigate.run import (
        run_mitigation,  # torch: imported only when the command runs
    )

    config = load_config(args.config, MitigateConfig)
    try:
        if args.method is not None:
            config.method = args.method
        if args.audit is not None:
            config.audit_dir = args.audit
        if args.out is not None:
            config.finetune.output_dir = args.out
    except ValueError as err:  # pydantic validates assignments
        raise ConfigError(f"{args.config}: {' '.join(str(err).split())}") from None
    summary = run_mitigation(config, resume=args.resume, max_steps=args.max_steps, progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    result = summary["result"]
    for epoch in result["history"]:
        accuracy = "n/a" if epoch["val_accuracy"] is None else f"{epoch['val_accuracy']:.3f}"
        print(f"epoch {epoch['epoch'] + 1}: train loss {epoch['train_loss']:.4f}  val zero-shot accuracy {accuracy}")
    print(json.dumps({"method": summary["method"], "steps": result["steps"], "checkpoint": result["checkpoint"],
                      "sha256": result["sha256"]}))
    return 0
