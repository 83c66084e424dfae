"""GPU check: a few hundred bf16 fine-tuning steps of one backbone on phantom radiographs (one CUDA device).

Writes a small phantom set (3 classes, 224 px), trains with :class:`ravl_med.models.training.Trainer`
(bf16 autocast, TF32), then prints images/s, peak GPU memory (``torch.cuda.max_memory_allocated``)
and the loss curve, and asserts that the loss falls (mean of the last 20 steps below the first 20).
Default backbone: the MedCLIP-style hybrid ``medclip-effnet-minilm`` when registered, else ``RN50``.
Takes under 5 minutes on one recent GPU; exits with a message when no CUDA device exists.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/gpu_check.py [--backbone NAME] [--steps 300]
    # logic check on the CPU (tiny model, fp32, a few steps):
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/gpu_check.py --allow-cpu --backbone tiny-rn --steps 30
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from ravl_med.config import FinetuneConfig, IngestConfig
from ravl_med.models import get_backbone_spec, list_backbones
from ravl_med.models.training import Trainer
from ravl_med.phantom import PhantomSetting, write_setting

CLASSES = ["no finding", "cardiomegaly", "pleural effusion"]


def main() -> int:
    default = "medclip-effnet-minilm" if "medclip-effnet-minilm" in list_backbones() else "RN50"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default=default)
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps (about)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--images", type=int, default=1024, help="training images to render")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--allow-cpu", action="store_true", help="run without CUDA (fp32), to check the script")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    cuda = torch.cuda.is_available()
    if not cuda and not args.allow_cpu:
        print("gpu_check: no CUDA device found (torch.cuda.is_available() is False); nothing to check", file=sys.stderr)
        return 2
    work = args.out or Path(tempfile.mkdtemp(prefix="ravl-gpu-check-"))
    size = get_backbone_spec(args.backbone).image_size
    started = time.perf_counter()
    setting = PhantomSetting(
        name="gpu-check", artefact="chest_drain", spurious_class="cardiomegaly", strength=0.0,
        n_train=args.images, n_val=48, n_test=0, image_size=max(64, size), classes=CLASSES,
    )
    written = write_setting(setting, work / "phantom", workers=args.workers, progress=False)
    print(f"phantom set: {written.images} images at {setting.image_size} px in {time.perf_counter() - started:.0f} s")
    steps_per_epoch = max(1, args.images // args.batch)
    epochs = max(1, math.ceil(args.steps / steps_per_epoch))
    config = FinetuneConfig(
        backbone=args.backbone, manifest=written.manifest, classes=CLASSES, ingest=IngestConfig(image_size=size),
        epochs=epochs, batch_size=args.batch, lr=args.lr, warmup_steps=20, label_aware=True,
        checkpoint_every=0, output_dir=work / "run", workers=args.workers,
        device="cuda" if cuda else "cpu", precision="bf16" if cuda else "fp32",
    )
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    result = Trainer(config, progress=False).fit()
    elapsed = time.perf_counter() - started
    losses = result.step_losses
    window = min(20, max(1, len(losses) // 4))
    first, last = sum(losses[:window]) / window, sum(losses[-window:]) / window
    report = {
        "backbone": args.backbone,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "precision": config.precision,
        "steps": result.steps,
        "batch": args.batch,
        "images_per_s_per_epoch": [round(h.images_per_s, 1) for h in result.history],
        "images_per_s_mean": round(sum(h.images_per_s for h in result.history) / len(result.history), 1),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "loss_first_mean": round(first, 4),
        "loss_last_mean": round(last, 4),
        "val_zero_shot_accuracy": [h.val_accuracy for h in result.history],
        "train_seconds": round(elapsed, 1),
    }
    print(json.dumps(report, indent=2))
    assert last < first, f"loss did not fall: mean of first {window} steps {first:.4f}, last {window} {last:.4f}"
    print(f"gpu_check: OK, loss fell from {first:.4f} to {last:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
