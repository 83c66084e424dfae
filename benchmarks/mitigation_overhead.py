"""Per-step cost of the region-aware loss vs plain contrastive fine-tuning (a benchmark, not a test).

``HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/mitigation_overhead.py [--batch 16] [--regions-grid 4]
[--repeats 10]`` times one
training step (forward, loss, backward; no optimizer) of :class:`MitigationTrainer` on one synthetic
batch of tiny-rn inputs, for ``standard``, ``ravl`` (one trunk pass: the image embedding is the
whole-image box) and ``ravl`` with a separate region pass (what DDP runs). Prints median seconds per
step and the ratio to ``standard``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from types import SimpleNamespace

import numpy as np
import torch

from ravl_med.config import FinetuneConfig
from ravl_med.mitigate.methods import MitigationTrainer, RaVLObjective
from ravl_med.models.registry import create_backbone
from ravl_med.models.runtime import DistributedContext
from ravl_med.models.training import ContrastiveObjective


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="tiny-rn")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--regions-grid", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--one-template", action="store_true", help="one class prompt per class instead of six")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model, preprocess, tokenizer = create_backbone(args.backbone)
    model.train()
    classes = ["no finding", "cardiomegaly", "pleural effusion"]
    templates = ["a chest x-ray showing {}."] if args.one_template else None
    config = FinetuneConfig(backbone=args.backbone, classes=classes, templates=templates, device="cpu")
    g, s = args.regions_grid, args.size / args.regions_grid
    boxes = torch.tensor([[x * s, y * s, (x + 1) * s, (y + 1) * s] for y in range(g) for x in range(g)])
    keys = [f"k{i}" for i in range(args.batch)]
    batch = {"image": torch.rand(args.batch, 1, args.size, args.size), "regions": [boxes] * args.batch,
             "label": torch.arange(args.batch) % len(classes), "key": keys,
             "tokens": tokenizer([f"a chest x-ray showing {classes[i % 3]}." for i in range(args.batch)])}
    labels = {k: np.arange(g * g) % 5 == 0 for k in keys}
    ctx = DistributedContext(0, 1, 0, torch.device("cpu"), None)
    runs = {"standard": (ContrastiveObjective(), True), "ravl (one trunk pass)": (RaVLObjective(), True),
            "ravl (separate region pass)": (RaVLObjective(), False)}
    times = {}
    for name, (objective, shared) in runs.items():
        trainer = MitigationTrainer(config, objective=objective, region_labels=labels, shared_trunk=shared)
        trainer.preprocess_, trainer.tokenizer_ = preprocess, tokenizer
        samples = []
        for repeat in range(args.repeats + 2):
            start = time.perf_counter()
            loss = objective(batch, trainer.forward(model, batch, ctx))
            loss.backward()
            model.zero_grad(set_to_none=True)
            if repeat >= 2:  # warm-up
                samples.append(time.perf_counter() - start)
        times[name] = statistics.median(samples)
    base = times["standard"]
    print(SimpleNamespace(batch=args.batch, regions_per_image=g * g, threads=torch.get_num_threads()))
    for name, value in times.items():
        print(f"{name:30s} {value * 1000:8.1f} ms/step  x{value / base:.2f}")


if __name__ == "__main__":
    main()
