"""Training throughput (images/s) per registered backbone on the CPU: forward, contrastive loss, backward, AdamW.

Synthetic [0, 1] images at each tower's input size and short label sentences as text; speed does not
depend on the weights, so towers are randomly initialised. Per backbone: one warm-up step, then
``--steps`` timed steps at ``--batch`` images. A backbone whose warm-up step takes longer than
``--max-step-s`` is skipped with a note (the big towers on 2 CPU cores).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/training_throughput.py [--batch 8] [--steps 3]
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/training_throughput.py --backbones tiny-rn tiny-vit

``--hybrid-recipes``: the stage-1 recipe choices for ``medclip-effnet-minilm`` instead (its real
pretrained towers, label-aware loss, report-like texts of ~25 words, batch ``--batch``), at each
``--sizes`` side, every ratio against the first row of the same size measured in the same run:

* ``full``: whole image tower trains, text tower frozen but run every step (as before this recipe);
* ``+text cache``: each distinct text encoded once (:class:`~ravl_med.models.feature_cache.TextEmbeddingCache`,
  its one-time cost excluded, as it is paid once per run);
* ``lock k``: image backbone frozen but its last k timm groups (``lock_image_tower``), the frozen
  prefix under ``no_grad``;
* ``lock k + feature cache``: the frozen prefix's maps computed once per image
  (:class:`~ravl_med.models.feature_cache.FrozenFeatureCache`); the table gives the per-step rate and
  the one-time cost per image, and the rate over ``--epochs`` epochs with that cost included;
* ``channels_last`` / ``bf16 autocast``: the same step in those CPU modes.

Rates are images per CPU-second of the benchmark's process (``time.process_time``), so that a loaded
shared machine still gives comparable rows; at ``--threads 1`` that is the rate of an idle core. The
wall-clock rate is printed beside it. (Measured on a 2-core machine with 5+ other jobs: 2 threads were
3x slower than 1, the OpenMP threads waiting on each other; use ``--threads 1`` there.)

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/training_throughput.py --hybrid-recipes --sizes 160 224 \
        --batch 32 --steps 3 --threads 2
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


HYBRID = "medclip-effnet-minilm"


def _reports(n: int) -> list[str]:
    """n distinct report-like texts (~25 words, the phantom's length)."""
    sides, sizes = ("left", "right"), ("small", "moderate", "large")
    return [
        f"FINDINGS: There is a {sizes[i % 3]} {sides[i % 2]} pleural effusion, case {i}. The cardiomediastinal "
        f"silhouette is normal. No focal airspace consolidation. IMPRESSION: {sizes[i % 3]} effusion."
        for i in range(n)
    ]


def _hybrid_step(model, images, texts, labels, loss_fn, optimizer, *, text_cache=None, tokens=None,
                 feature_cache=None, keys=None, autocast=None) -> float:
    import contextlib

    import torch.nn.functional as F

    with autocast or contextlib.nullcontext():
        if feature_cache is not None:
            image = model.visual.forward_from_frozen(feature_cache(keys, lambda rows: images[rows]))
        else:
            image = model.encode_image(images)
        text = text_cache(texts) if text_cache is not None else model.encode_text(tokens)
        loss = loss_fn(F.normalize(image.float(), dim=-1), F.normalize(text.float(), dim=-1),
                       model.logit_scale.exp(), labels=labels)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss)


def measure_hybrid_recipes(sizes: list[int], batch: int, steps: int, epochs: int) -> None:
    """Prints the ``--hybrid-recipes`` table (see the module docstring)."""
    from ravl_med.models.feature_cache import FrozenFeatureCache, TextEmbeddingCache
    from ravl_med.models.optim import freeze_text_tower
    from ravl_med.models.preprocess import RadiographPreprocess

    texts = _reports(batch)
    labels = torch.arange(batch) % len(CLASSES)
    choices = [
        ("full", {}),
        ("+text cache", {"text_cache": True}),
        ("+text cache, lock 4", {"text_cache": True, "unlocked": 4}),
        ("+text cache, lock 3", {"text_cache": True, "unlocked": 3}),
        ("+text cache, lock 2", {"text_cache": True, "unlocked": 2}),
        ("+text cache, lock 3, feature cache", {"text_cache": True, "unlocked": 3, "feature_cache": True}),
        ("+text cache, lock 2, feature cache", {"text_cache": True, "unlocked": 2, "feature_cache": True}),
        ("+text cache, lock 3, channels_last", {"text_cache": True, "unlocked": 3, "channels_last": True}),
        ("+text cache, lock 3, bf16 autocast", {"text_cache": True, "unlocked": 3, "bf16": True}),
    ]
    print(f"{HYBRID}: stage-1 recipe choices, batch {batch}, {steps} timed steps, {torch.get_num_threads()} threads; "
          f"'over E' = rate over {epochs} epochs with the one-time cache fill per image included")
    print("images/s = images per CPU-second of this process (robust to other jobs on the machine; = wall rate on "
          "an idle machine at 1 thread); 'wall' = images per wall-clock second as measured here")
    print(f"{'size':>4}  {'choice':<38} {'images/s':>9} {'ratio':>6}  {'fill ms/img':>11} {'over E':>7} {'wall':>7}")
    for size in sizes:
        reference = None
        for label, choice in choices:
            torch.manual_seed(0)
            model, preprocess, tokenizer = create_backbone(HYBRID)
            freeze_text_tower(model)
            if "unlocked" in choice:
                model.lock_image_tower(choice["unlocked"])
            model.train()
            # The tower's preprocessing at this side (the registered config's is 224): no resize.
            images = RadiographPreprocess(size, preprocess.mean.flatten().tolist(), preprocess.std.flatten().tolist())(
                torch.rand(batch, 1, size, size))
            if choice.get("channels_last"):
                model = model.to(memory_format=torch.channels_last)
                images = images.contiguous(memory_format=torch.channels_last)
            optimizer = torch.optim.AdamW(parameter_groups(model, 0.1), lr=1e-5)
            kwargs = {"tokens": tokenizer(texts)}
            if choice.get("text_cache"):
                kwargs["text_cache"] = TextEmbeddingCache(model, tokenizer)
                kwargs["text_cache"](texts)  # filled once per run: not part of the step
            fill = 0.0
            if choice.get("feature_cache"):
                cache = FrozenFeatureCache(model.visual)
                keys = [str(i) for i in range(batch)]
                start = time.process_time()
                cache(keys, lambda rows: images[rows])
                fill = (time.process_time() - start) / batch
                kwargs.update(feature_cache=cache, keys=keys)
            if choice.get("bf16"):
                kwargs["autocast"] = torch.autocast("cpu", dtype=torch.bfloat16)
            loss_fn = LabelAwareClipLoss()
            _hybrid_step(model, images, texts, labels, loss_fn, optimizer, **kwargs)  # warm-up
            start, cpu_start = time.perf_counter(), time.process_time()
            for _ in range(steps):
                _hybrid_step(model, images, texts, labels, loss_fn, optimizer, **kwargs)
            wall = (time.perf_counter() - start) / (batch * steps)
            per_image = (time.process_time() - cpu_start) / (batch * steps)  # CPU s per image, all threads
            rate = 1.0 / per_image
            reference = reference or rate
            over = 1.0 / (per_image + fill / epochs)
            fill_text = f"{fill * 1e3:11.1f}" if fill else f"{'':>11}"
            print(f"{size:>4}  {label:<38} {rate:9.1f} {rate / reference:6.2f}  {fill_text} {over:7.1f} {1 / wall:7.1f}",
                  flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=None, help="default: every registered backbone")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-step-s", type=float, default=30.0)
    parser.add_argument("--hybrid-recipes", action="store_true", help=f"{HYBRID}'s stage-1 recipe choices instead")
    parser.add_argument("--sizes", type=int, nargs="+", default=[160, 224], help="--hybrid-recipes: image sides")
    parser.add_argument("--epochs", type=int, default=6, help="--hybrid-recipes: epochs the cache fill is spread over")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    if args.hybrid_recipes:
        measure_hybrid_recipes(args.sizes, args.batch, args.steps, args.epochs)
        return
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
