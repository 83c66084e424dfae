"""Optimisation and seeding pieces of the fine-tuning loop (:class:`~ravl_med.models.training.Trainer`).

AdamW parameter groups (weight decay on matrices only), the warm-up + cosine learning-rate schedule,
freezing the text tower, open_clip's clamp of the learned temperature, and seeding of Python, NumPy
and torch (including DataLoader workers).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "MAX_LOGIT_SCALE",
    "clamp_logit_scale",
    "freeze_text_tower",
    "parameter_groups",
    "seed_everything",
    "seed_worker",
    "warmup_cosine",
]

MAX_LOGIT_SCALE = math.log(100.0)  # open_clip's clamp of the learned inverse temperature


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on matrices and kernels, none on norms, biases and ``logit_scale``.

    Frozen parameters (``requires_grad=False``) are left out.
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim < 2 or "logit_scale" in name or "logit_bias" in name:
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def warmup_cosine(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """LR multiplier per optimizer step: linear warm-up to 1 over ``warmup_steps``, then cosine to 0.

    Step s (0-based) of the warm-up gets (s + 1) / warmup_steps; after it, 0.5 (1 + cos(pi p)) with
    p = (s - warmup_steps) / (total_steps - warmup_steps) in [0, 1].
    """

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return multiplier


def freeze_text_tower(model: nn.Module) -> int:
    """Stops gradients into everything but the image tower and the logit scale/bias; returns the count.

    A hybrid's text tower (:class:`~ravl_med.models.hybrid.HybridCLIP`, a Hugging Face encoder with
    dropout) also stays in eval mode from then on: frozen means a fixed function of the text, not one
    with dropout noise in every step (open_clip's text towers have no dropout by default).
    """
    frozen = 0
    for name, param in model.named_parameters():
        if not (name.startswith("visual.") or name.startswith("logit_")):
            param.requires_grad_(False)
            frozen += param.numel()
    if hasattr(model, "text_eval"):
        model.text_eval = True
        model.train(model.training)
    return frozen


@torch.no_grad()
def clamp_logit_scale(model: nn.Module) -> None:
    """Clamps the learned log inverse temperature ``logit_scale`` to [0, log 100] in place (as open_clip)."""
    for name, param in model.named_parameters():
        if name == "logit_scale":
            param.clamp_(0, MAX_LOGIT_SCALE)


def seed_everything(seed: int) -> None:
    """Seeds Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: NumPy and Python follow the seed torch gave the worker."""
    # torch seeds each worker from the loader's generator; NumPy and Python follow it.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
