"""Training throughput (images/s) per registered backbone on the CPU: forward, contrastive loss, backward, AdamW.

Synthetic [0, 1] images at each tower's input size and short label sentences as text; speed does not
depend on the weights, so towers are randomly initialised. Per backbone: one warm-up step, then
``--steps`` timed steps at ``--batch`` images. A backbone whose warm-up step takes longer than
``--max-step-s`` is skipped with a note (the big towers on 2 CPU cores).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/training_throughput.py [--batch 8] [--steps 3]
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/training_throughput.py --backbones tiny-rn tiny-vit
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

from ravl_med.data.dataset import label_sentence
from ravl_med.models import create_backbone, get_backbone_spec, list_backbones
from ravl_med.models.losses import LabelAwareClipLoss
from ravl_med.models.optim import parameter_groups

CLASSES = ("no finding", "cardiomegaly", "pleural effusion", "pneumothorax")


def train_step(model, preprocess, images, tokens, labels, loss_fn, optimizer) -> float:
    out = model(preprocess(images), tokens)
    loss = loss_fn(out[0], out[1], out[2], labels=labels)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss)


def measure(name: str, batch: int, steps: int, max_step_s: float) -> str:
    spec = get_backbone_spec(name)
    torch.manual_seed(0)
    model, preprocess, tokenizer = create_backbone(name)
    model.train()
    size = spec.image_size
    images = torch.rand(batch, 1, size, size)
    labels = torch.arange(batch) % len(CLASSES)
    tokens = tokenizer([label_sentence([CLASSES[i]]) for i in labels.tolist()])
    optimizer = torch.optim.AdamW(parameter_groups(model, 0.1), lr=1e-5)
    loss_fn = LabelAwareClipLoss()
    start = time.perf_counter()
    train_step(model, preprocess, images, tokens, labels, loss_fn, optimizer)
    warm = time.perf_counter() - start
    if warm > max_step_s:
        return f"{name:<24} {size:>5}  skipped: warm-up step took {warm:.1f} s > {max_step_s:.0f} s (run with --max-step-s)"
    start = time.perf_counter()
    for _ in range(steps):
        train_step(model, preprocess, images, tokens, labels, loss_fn, optimizer)
    elapsed = time.perf_counter() - start
    return f"{name:<24} {size:>5}  {batch * steps / elapsed:10.1f} images/s  ({elapsed / steps:.2f} s/step)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=None, help="default: every registered backbone")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-step-s", type=float, default=30.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    names = args.backbones or list_backbones()
    print(f"CPU training throughput, batch {args.batch}, {args.steps} timed steps, {args.threads} threads")
    print(f"{'backbone':<24} {'input':>5}  throughput")
    for name in names:
        try:
            print(measure(name, args.batch, args.steps, args.max_step_s), flush=True)
        except Exception as err:  # noqa: BLE001 - one broken config must not hide the others
            print(f"{name:<24}        failed: {type(err).__name__}: {err}", flush=True)


if __name__ == "__main__":
    main()
