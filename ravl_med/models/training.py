"""Contrastive fine-tuning of a registered backbone on image-report pairs.

One loop serves plain CLIP fine-tuning and, later, the RaVL region-aware loss and GroupDRO: the loss
is a callable ``objective(batch, outputs) -> scalar`` (:class:`ContrastiveObjective` by default),
the sampler comes from a ``sampler_factory``, and :meth:`Trainer.forward` can be overridden to add
outputs (e.g. region embeddings).

What a run does (:meth:`Trainer.fit`):

* builds the backbone from the registry (optionally from local weights), freezes the text tower
  when asked, AdamW with weight decay on matrices only (norms, biases and ``logit_scale`` in a
  no-decay group), linear warm-up then cosine decay, stepped once per optimizer step;
* micro-batches of ``batch_size`` per process, ``grad_accum_steps`` of them per optimizer step (a
  short last group of an epoch is averaged over its own size);
* CUDA: bf16 autocast (``precision: auto``) and TF32 matmuls; CPU: fp32;
* ``torchrun``: reads ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``, starts the process group (nccl on
  CUDA, gloo on CPU), shards with ``DistributedSampler``, wraps the model in DDP and gathers
  features across processes for the loss; only rank 0 writes files and shows progress;
* after each optimizer step, ``on_step(step, {"loss": ..., "lr": ...})`` when given;
* every ``checkpoint_every`` optimizer steps and at each epoch's end, a full training state
  (model, optimizer, scheduler, the objective's own state when it has ``state_dict()``, e.g.
  GroupDRO's group weights, step, epoch, position in the epoch, RNG states, metrics so far) goes
  to ``output_dir/checkpoints/state-<step>.pt`` atomically; ``fit(resume=True)`` continues from the
  latest one, and on CPU the final weights are bit-identical to an uninterrupted run;
* after each epoch, zero-shot accuracy on the ``val`` split (class names x templates) and, when the
  manifest says which images carry the planted feature (``artefact_present``), the accuracy of each
  (class x feature present/absent) group and the worst group's;
* at the end, the weights go to ``output_dir/model.safetensors`` and the per-epoch metrics to
  ``output_dir/metrics.json``.

Training states are pickles written by this module (``torch.load(weights_only=False)``): only
resume from output folders you created.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from ravl_med.config import ConfigError, FinetuneConfig
from ravl_med.data.atomic import atomic_path
from ravl_med.data.dataset import RadiographDataset, collate
from ravl_med.data.manifest import Manifest, feature_presence
from ravl_med.evaluate.groups import group_accuracy_table, worst_group_accuracy
from ravl_med.models.losses import LabelAwareClipLoss
from ravl_med.models.registry import create_backbone
from ravl_med.models.weights import save_checkpoint
from ravl_med.models.zeroshot import CXR_TEMPLATES, class_text_embeddings

__all__ = [
    "ContrastiveObjective",
    "DistributedContext",
    "EpochMetrics",
    "FitResult",
    "Trainer",
    "evaluate_zero_shot",
    "finetune",
    "latest_state",
    "parameter_groups",
    "warmup_cosine",
]

log = logging.getLogger(__name__)

STATE_DIR = "checkpoints"
STATE_RE = re.compile(r"^state-(\d{8})\.pt$")
FINAL_WEIGHTS = "model.safetensors"
MAX_LOGIT_SCALE = math.log(100.0)  # open_clip's clamp of the learned inverse temperature
#: Config keys that fix a run's trajectory; resuming with other values would not reproduce it.
TRAJECTORY_KEYS = (
    "backbone", "checkpoint", "classes", "batch_size", "lr", "weight_decay", "warmup_steps",
    "grad_accum_steps", "freeze_text", "label_aware", "seed",
)  # fmt: skip

Objective = Callable[[dict[str, Any], dict[str, torch.Tensor]], torch.Tensor]
SamplerFactory = Callable[[Dataset, int, int, int], Sampler]
#: ``on_step(step, metrics)``: metrics of the optimizer step just taken (see :class:`Trainer`).
StepCallback = Callable[[int, dict[str, float]], None]


# ----------------------------------------------------------------------------- devices & processes


@dataclass(frozen=True)
class DistributedContext:
    """Where this process runs.

    Attributes:
        rank, world_size, local_rank: from ``torchrun``'s environment (0, 1, 0 when alone).
        device: this process's device.
        autocast_dtype: ``torch.bfloat16`` under bf16 autocast, ``None`` for fp32.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    autocast_dtype: torch.dtype | None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)


def _setup_processes(config: FinetuneConfig) -> tuple[DistributedContext, bool]:
    """Resolves device and precision and joins the process group under torchrun.

    Returns:
        the context, and whether this call started the process group (and must end it).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    if config.device == "cuda" and not cuda:
        raise ConfigError("device: 'cuda' requested but no CUDA device is available (use 'auto' or 'cpu')")
    use_cuda = cuda and config.device in ("auto", "cuda")
    if use_cuda:
        device = torch.device("cuda", local_rank if world_size > 1 else torch.cuda.current_device())
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        device = torch.device("cpu")
    if config.precision == "bf16" or (
        config.precision == "auto" and use_cuda and torch.cuda.is_bf16_supported()
    ):
        autocast_dtype: torch.dtype | None = torch.bfloat16
    else:
        autocast_dtype = None
    started = False
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        started = True
    return DistributedContext(rank, world_size, local_rank, device, autocast_dtype), started


def seed_everything(seed: int) -> None:
    """Seeds Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; NumPy and Python follow it.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def _rng_states(device: torch.device) -> dict[str, Any]:
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def _restore_rng_states(states: dict[str, Any], device: torch.device) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"], device)


# ----------------------------------------------------------------------------- optimisation pieces


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


def _freeze_text_tower(model: nn.Module) -> int:
    """Stops gradients into everything but the image tower and the logit scale/bias; returns the count."""
    frozen = 0
    for name, param in model.named_parameters():
        if not (name.startswith("visual.") or name.startswith("logit_")):
            param.requires_grad_(False)
            frozen += param.numel()
    return frozen


class ContrastiveObjective:
    """The default loss: symmetric InfoNCE, or label-aware soft targets when ``label_aware``.

    Call with ``(batch, outputs)``: ``outputs`` holds ``image_features`` (B, D), ``text_features``
    (B, D) (both L2-normalised) and ``logit_scale`` (scalar, exponentiated); ``batch["label"]``
    (B,) int64 feeds the label-aware targets. Features are gathered across processes under DDP.
    """

    def __init__(self, label_aware: bool = False, rank: int = 0, world_size: int = 1) -> None:
        self.label_aware = label_aware
        self.loss = LabelAwareClipLoss(rank=rank, world_size=world_size)  # plain InfoNCE when given no labels

    def __call__(self, batch: dict[str, Any], outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        image, text, scale = outputs["image_features"], outputs["text_features"], outputs["logit_scale"]
        labels = batch["label"].to(image.device) if self.label_aware else None
        return self.loss(image.float(), text.float(), scale.float(), labels=labels)


class _ResumableSampler(Sampler):
    """The indices of ``base`` for the current epoch, from position ``start`` on.

    ``base`` must give the same order for the same ``set_epoch`` value (DistributedSampler does).
    """

    def __init__(self, base: Sampler, start: int = 0) -> None:
        self.base = base
        self.start = start

    def __iter__(self):
        return iter(list(self.base)[self.start :])

    def __len__(self) -> int:
        return max(0, len(self.base) - self.start)  # type: ignore[arg-type]


def _default_sampler(dataset: Dataset, rank: int, world_size: int, seed: int) -> Sampler:
    return DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=False)


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def zero_shot_predictions(
    model: nn.Module,
    preprocess: nn.Module,
    text_embeddings: torch.Tensor,
    dataset: RadiographDataset,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 32,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> tuple[np.ndarray, np.ndarray]:
    """Zero-shot class of every image of ``dataset``: argmax of its cosine with each class text.

    Args:
        model: an open_clip-style model with ``encode_image``.
        preprocess: (B, 1, S, S) [0, 1] -> the image tower's input.
        text_embeddings: (C, D) L2-normalised class text embeddings
            (:func:`~ravl_med.models.zeroshot.class_text_embeddings`).
        dataset: a :class:`RadiographDataset`.
        device: where to compute.
        batch_size: images per forward pass.
        autocast: context manager factory around the forward passes.

    Returns:
        (labels, predictions): (N,) int64 each; labels are -1 for rows outside the classes.
    """
    was_training = model.training
    model.eval()
    text = text_embeddings.float().to(device)
    labels, predicted = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    try:
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate):
            with autocast():
                features = model.encode_image(preprocess(batch["image"].to(device)), normalize=True)
            predicted.append((features.float() @ text.T).argmax(dim=1).cpu().numpy())
            labels.append(batch["label"].numpy())
    finally:
        model.train(was_training)
    return np.concatenate(labels), np.concatenate(predicted)


def evaluate_zero_shot(
    model: nn.Module,
    preprocess: nn.Module,
    tokenizer: Callable[[list[str]], torch.Tensor],
    dataset: RadiographDataset,
    classes: list[str] | tuple[str, ...],
    templates=CXR_TEMPLATES,
    *,
    feature_present: np.ndarray | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 32,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> tuple[float, pd.DataFrame | None]:
    """Zero-shot top-1 accuracy of ``model`` on ``dataset`` (rows with label -1 are not counted).

    Args:
        model: an open_clip-style model with ``encode_image``/``encode_text``.
        preprocess: (B, 1, S, S) [0, 1] -> the image tower's input.
        tokenizer: strings -> token ids.
        dataset: a :class:`RadiographDataset` with ``classes``.
        classes, templates: see :func:`~ravl_med.models.zeroshot.class_text_embeddings`.
        feature_present: (N,) bool per row of ``dataset``, whether the image carries the planted
            feature; when given, the per-group table is computed too.
        device: where to compute.
        batch_size: images per forward pass.
        autocast: context manager factory around the forward passes.

    Returns:
        (accuracy, groups): accuracy in [0, 1] (NaN when no row has a known label), and the
        :func:`~ravl_med.evaluate.groups.group_accuracy_table` of (class x feature present/absent)
        without intervals (``n_boot=0``), or ``None`` without ``feature_present``.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), autocast():
            text = class_text_embeddings(model, tokenizer, list(classes), templates, device=device).float()
    finally:
        model.train(was_training)
    labels, predicted = zero_shot_predictions(
        model, preprocess, text, dataset, device=device, batch_size=batch_size, autocast=autocast
    )
    known = labels >= 0
    accuracy = float((predicted[known] == labels[known]).mean()) if known.any() else float("nan")
    if feature_present is None:
        return accuracy, None
    return accuracy, group_accuracy_table(labels, predicted, feature_present, classes, n_boot=0)


# ----------------------------------------------------------------------------- results


@dataclass
class EpochMetrics:
    """Metrics of one epoch.

    Attributes:
        epoch: 0-based epoch index.
        train_loss: mean training loss over the epoch's micro-batches, nats (all processes).
        val_accuracy: zero-shot top-1 accuracy on the ``val`` split, or ``None`` without one.
        images_per_s: training throughput over the epoch, images per second (all processes; for
            an epoch that was resumed, only its resumed part).
        steps: optimizer steps done at the end of the epoch (cumulative).
        val_worst_group: lowest zero-shot accuracy over the non-empty (class x feature
            present/absent) groups of the ``val`` split, or ``None`` when the manifest does not say
            which images carry the feature (or there is no ``val`` split).
        val_groups: that group table (:func:`~ravl_med.evaluate.groups.group_accuracy_table`, no
            intervals) as JSON records, one per group (accuracy ``None`` for an empty group), or ``None``.
    """

    epoch: int
    train_loss: float
    val_accuracy: float | None
    images_per_s: float
    steps: int
    val_worst_group: float | None = None
    val_groups: list[dict[str, Any]] | None = None


@dataclass
class FitResult:
    """What :meth:`Trainer.fit` returns.

    Attributes:
        history: one :class:`EpochMetrics` per finished epoch.
        step_losses: mean loss of each optimizer step (this process's micro-batches), nats.
        checkpoint: the final weights (``model.safetensors``).
        sha256: its hex digest (for ``create_backbone(..., sha256=...)``).
        steps: optimizer steps done.
        chance: 1 / number of classes (zero-shot accuracy of guessing).
        stopped_early: ``max_steps`` ended the run before the last epoch finished.
        feature: name of the planted feature the ``val`` groups split on (the manifest's
            ``artefact``), or ``None`` when the manifest does not say which images carry it.
    """

    history: list[EpochMetrics]
    step_losses: list[float]
    checkpoint: Path
    sha256: str
    steps: int
    chance: float
    stopped_early: bool = False
    feature: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "checkpoint": str(self.checkpoint)}


def latest_state(output_dir: str | Path) -> Path | None:
    """The training state with the most steps under ``output_dir/checkpoints``, or ``None``."""
    folder = Path(output_dir) / STATE_DIR
    if not folder.is_dir():
        return None
    found = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := STATE_RE.match(p.name)))
    return found[-1][1] if found else None


# ----------------------------------------------------------------------------- the trainer


@dataclass
class _Progress:
    step: int = 0
    epoch: int = 0
    micro: int = 0  # micro-batches of ``epoch`` already done (always at an optimizer-step boundary)
    loss_sum: float = 0.0  # running sums of the unfinished epoch, so a resumed epoch reports the same loss
    loss_count: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)


class Trainer:
    """Contrastive fine-tuning (see the module docstring).

    Args:
        config: the run configuration.
        objective: loss callable ``(batch, outputs) -> scalar``; default :class:`ContrastiveObjective`.
            Under DDP it must gather across processes itself if it needs the global batch. When it
            has ``state_dict()`` and ``load_state_dict(state)`` (e.g. GroupDRO's group weights), its
            state is part of the training state (rank 0's under DDP).
        sampler_factory: ``(dataset, rank, world_size, seed) -> Sampler`` for the train split; the
            sampler must have ``set_epoch`` and give the same order for the same epoch (needed to
            resume). Default: ``DistributedSampler`` (shuffled, seeded).
        progress: show a tqdm bar (rank 0 only).
        on_step: called as ``on_step(step, metrics)`` after each optimizer step (every process),
            ``step`` counting from 1; ``metrics["loss"]``: the step's mean loss over this process's
            micro-batches, nats; ``metrics["lr"]``: the learning rate the step was taken with (first
            parameter group).

    Attributes (after :meth:`fit`):
        model_: the trained model (unwrapped), on its device.
        preprocess_, tokenizer_: from the registry.
        result_: the :class:`FitResult`.
    """

    def __init__(
        self,
        config: FinetuneConfig,
        *,
        objective: Objective | None = None,
        sampler_factory: SamplerFactory | None = None,
        progress: bool = True,
        on_step: StepCallback | None = None,
    ) -> None:
        self.config = config
        self.objective = objective
        self.sampler_factory = sampler_factory or _default_sampler
        self.progress = progress
        self.on_step = on_step

    # -- pieces a subclass may override ---------------------------------------------------------

    def forward(self, model: nn.Module, batch: dict[str, Any], ctx: DistributedContext) -> dict[str, torch.Tensor]:
        """Runs the (possibly DDP-wrapped) model on a batch.

        Returns:
            ``image_features`` (B, D), ``text_features`` (B, D), both L2-normalised, and
            ``logit_scale`` (scalar, exponentiated).
        """
        images = self.preprocess_(batch["image"].to(ctx.device, non_blocking=True))
        tokens = batch["tokens"].to(ctx.device, non_blocking=True)
        out = model(images, tokens)
        if isinstance(out, dict):
            return out
        return {"image_features": out[0], "text_features": out[1], "logit_scale": out[2]}

    def datasets(self) -> tuple[RadiographDataset, RadiographDataset | None]:
        """The train and val datasets from the manifest (val is ``None`` when that split is empty)."""
        cfg = self.config
        if cfg.manifest is None:
            raise ConfigError("manifest: no manifest given (set it in the config or pass --manifest)")
        manifest = Manifest.read(cfg.manifest, classes=cfg.classes)
        if manifest.problems:
            log.warning(
                "%s: %d manifest rows refused (e.g. %s: %s); training without them",
                cfg.manifest, len(manifest.problems), manifest.problems[0].reason, manifest.problems[0].detail,
            )
        train = RadiographDataset(manifest, cfg.ingest, cfg.classes, self.tokenizer_, split="train", text=cfg.text,
                                  cache=cfg.cache_images)
        if len(train) == 0:
            raise ConfigError(f"{cfg.manifest}: the train split is empty (no usable row with split 'train' or blank)")
        val = RadiographDataset(manifest, cfg.ingest, cfg.classes, split="val", cache=cfg.cache_images)
        return train, (val if len(val) else None)

    # -- the loop ------------------------------------------------------------------------------

    def fit(self, resume: bool = False, max_steps: int | None = None) -> FitResult:
        """Trains; see the module docstring.

        Args:
            resume: continue from the latest training state in ``output_dir`` (a fresh start when
                there is none).
            max_steps: stop after this many optimizer steps in total (a training state is written
                there); ``None`` runs every epoch.

        Returns:
            the :class:`FitResult` (also in ``result_``).
        """
        cfg = self.config
        ctx, started_group = _setup_processes(cfg)
        try:
            return self._fit(ctx, resume, max_steps)
        finally:
            if started_group and dist.is_initialized():
                dist.destroy_process_group()

    def _fit(self, ctx: DistributedContext, resume: bool, max_steps: int | None) -> FitResult:
        cfg = self.config
        seed_everything(cfg.seed)
        try:
            model, self.preprocess_, self.tokenizer_ = create_backbone(
                cfg.backbone, checkpoint=cfg.checkpoint, sha256=cfg.sha256, device=ctx.device
            )
        except KeyError as err:
            raise ConfigError(f"backbone: {err.args[0]}") from None
        if cfg.freeze_text:
            _freeze_text_tower(model)
        model.train()
        self.model_ = model
        train_set, val_set = self.datasets()
        presence = feature_presence(cfg.manifest, val_set.keys) if val_set is not None else None
        val_present, feature = presence if presence is not None else (None, None)

        sampler = self.sampler_factory(train_set, ctx.rank, ctx.world_size, cfg.seed)
        micro_per_epoch = len(sampler) // cfg.batch_size  # type: ignore[arg-type]
        if micro_per_epoch == 0:
            raise ConfigError(
                f"batch_size: {cfg.batch_size} x {ctx.world_size} process(es) is larger than the "
                f"{len(train_set)} training rows; lower batch_size"
            )
        steps_per_epoch = math.ceil(micro_per_epoch / cfg.grad_accum_steps)
        total_steps = cfg.epochs * steps_per_epoch

        optimizer = torch.optim.AdamW(parameter_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(cfg.warmup_steps, total_steps))
        objective = self.objective or ContrastiveObjective(cfg.label_aware, ctx.rank, ctx.world_size)
        templates = tuple(cfg.templates) if cfg.templates else CXR_TEMPLATES

        state = _Progress()
        state_path = latest_state(cfg.output_dir) if resume else None
        if state_path is not None:
            state = self._load_state(state_path, model, optimizer, scheduler, objective, ctx)
        train_model: nn.Module = model
        if ctx.distributed:
            train_model = DistributedDataParallel(
                model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None
            )

        stopped_early = False
        for epoch in range(state.epoch, cfg.epochs):
            if stopped_early:
                break
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
            start_micro = state.micro if epoch == state.epoch else 0
            if start_micro == 0:
                state.loss_sum, state.loss_count = 0.0, 0
            loader = DataLoader(
                train_set,
                batch_size=cfg.batch_size,
                sampler=_ResumableSampler(sampler, start_micro * cfg.batch_size),
                collate_fn=collate,
                num_workers=cfg.workers,
                worker_init_fn=_seed_worker,
                generator=torch.Generator().manual_seed(cfg.seed + epoch),
                drop_last=True,
                pin_memory=ctx.device.type == "cuda",
            )
            bar = self._bar(ctx, micro_per_epoch, start_micro, epoch)
            images = 0
            started = time.perf_counter()
            group_loss = 0.0
            for micro, batch in enumerate(loader, start=start_micro):
                group_start = micro - micro % cfg.grad_accum_steps
                group_size = min(cfg.grad_accum_steps, micro_per_epoch - group_start)
                closes_group = micro + 1 == group_start + group_size
                sync = contextlib.nullcontext()
                if ctx.distributed and not closes_group:
                    sync = train_model.no_sync()  # type: ignore[operator]
                with sync:
                    with ctx.autocast():
                        outputs = self.forward(train_model, batch, ctx)
                        loss = objective(batch, outputs)
                    (loss / group_size).backward()
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise FloatingPointError(f"loss is {value} at step {state.step}, epoch {epoch}; lower lr")
                group_loss += value / group_size
                state.loss_sum += value
                state.loss_count += 1
                images += len(batch["image"]) * ctx.world_size
                if not closes_group:
                    bar.update()
                    continue
                lr = scheduler.get_last_lr()[0]  # the rate this step is taken with
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                with torch.no_grad():
                    for name, param in model.named_parameters():
                        if name == "logit_scale":
                            param.clamp_(0, MAX_LOGIT_SCALE)
                state.step += 1
                state.step_losses.append(group_loss)
                state.micro = micro + 1
                group_loss = 0.0
                rate = images / max(time.perf_counter() - started, 1e-9)
                bar.set_postfix(loss=f"{value:.4f}", img_s=f"{rate:.1f}", lr=f"{lr:.2e}")
                bar.update()
                if self.on_step is not None:
                    self.on_step(state.step, {"loss": state.step_losses[-1], "lr": lr})
                if max_steps is not None and state.step >= max_steps:
                    stopped_early = state.micro < micro_per_epoch or epoch + 1 < cfg.epochs
                    if state.micro < micro_per_epoch:
                        self._save_state(state, model, optimizer, scheduler, objective, ctx)
                    break
                if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0 and state.micro < micro_per_epoch:
                    self._save_state(state, model, optimizer, scheduler, objective, ctx)
            bar.close()
            if state.micro < micro_per_epoch:  # stopped by max_steps inside the epoch
                break
            elapsed = time.perf_counter() - started
            train_loss = self._mean_over_processes(state.loss_sum, state.loss_count, ctx)
            accuracy, worst, groups = None, None, None
            if val_set is not None and ctx.is_main:
                accuracy, table = evaluate_zero_shot(
                    model, self.preprocess_, self.tokenizer_, val_set, cfg.classes, templates,
                    feature_present=val_present, device=ctx.device, batch_size=cfg.batch_size,
                    autocast=ctx.autocast,
                )
                if table is not None:
                    worst = worst_group_accuracy(table)
                    worst = None if math.isnan(worst) else worst
                    groups = json.loads(table.drop(columns=["ci_low", "ci_high"]).to_json(orient="records"))
            if ctx.distributed:
                dist.barrier()
            metrics = EpochMetrics(epoch, train_loss, accuracy, images / max(elapsed, 1e-9), state.step,
                                   worst, groups)
            state.history.append(asdict(metrics))
            if ctx.is_main:
                shown = "n/a" if accuracy is None else f"{accuracy:.3f}"
                shown_worst = "n/a" if worst is None else f"{worst:.3f}"
                log.info("epoch %d: train loss %.4f, val zero-shot accuracy %s (worst group %s), %.1f images/s",
                         epoch, train_loss, shown, shown_worst, metrics.images_per_s)
            state.epoch, state.micro = epoch + 1, 0
            state.loss_sum, state.loss_count = 0.0, 0
            self._save_state(state, model, optimizer, scheduler, objective, ctx)

        return self._finish(state, model, ctx, stopped_early, feature)

    # -- helpers -------------------------------------------------------------------------------

    def _bar(self, ctx: DistributedContext, total: int, initial: int, epoch: int):
        from tqdm.auto import tqdm  # noqa: PLC0415

        return tqdm(
            total=total, initial=initial, desc=f"epoch {epoch + 1}/{self.config.epochs}", unit="batch",
            disable=not (self.progress and ctx.is_main), leave=False,
        )

    @staticmethod
    def _mean_over_processes(total: float, count: int, ctx: DistributedContext) -> float:
        if ctx.distributed:
            pair = torch.tensor([total, float(count)], dtype=torch.float64, device=ctx.device)
            dist.all_reduce(pair)
            total, count = float(pair[0]), int(pair[1])
        return total / max(count, 1)

    def _save_state(self, state: _Progress, model, optimizer, scheduler, objective, ctx: DistributedContext) -> None:
        if ctx.is_main:
            folder = Path(self.config.output_dir) / STATE_DIR
            path = folder / f"state-{state.step:08d}.pt"
            payload = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "progress": asdict(state),
                "rng": _rng_states(ctx.device),
                "config": self.config.model_dump(mode="json"),
                "world_size": ctx.world_size,
            }
            if hasattr(objective, "state_dict"):
                payload["objective"] = objective.state_dict()
            with atomic_path(path) as tmp:
                torch.save(payload, tmp)
            old = sorted(p for p in folder.iterdir() if STATE_RE.match(p.name) and p != path)
            for stale in old[: max(0, len(old) - (self.config.keep_checkpoints - 1))]:
                stale.unlink(missing_ok=True)
        if ctx.distributed:
            dist.barrier()

    def _load_state(self, path: Path, model, optimizer, scheduler, objective, ctx: DistributedContext) -> _Progress:
        payload = torch.load(path, map_location="cpu", weights_only=False)
        saved, current = payload["config"], self.config.model_dump(mode="json")
        changed = [k for k in TRAJECTORY_KEYS if saved.get(k) != current.get(k)]
        if payload.get("world_size", 1) != ctx.world_size:
            changed.append(f"world size ({payload.get('world_size')} -> {ctx.world_size})")
        if changed:
            raise ConfigError(
                f"{path}: cannot resume, the run was started with different {', '.join(changed)}; "
                "use a new output_dir or the original settings"
            )
        if saved.get("epochs") != current.get("epochs"):
            log.warning("resuming with epochs=%s (was %s): the cosine schedule changes", current["epochs"], saved["epochs"])
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        if hasattr(objective, "load_state_dict"):
            if "objective" in payload:
                objective.load_state_dict(payload["objective"])
            else:
                log.warning("%s holds no objective state: the objective starts afresh", path)
        _restore_rng_states(payload["rng"], ctx.device)
        return _Progress(**payload["progress"])

    def _finish(self, state: _Progress, model, ctx: DistributedContext, stopped_early: bool,
                feature: str | None) -> FitResult:
        cfg = self.config
        final = Path(cfg.output_dir) / FINAL_WEIGHTS
        digest = [""]
        if ctx.is_main:
            digest[0] = save_checkpoint(model, final)
            metrics = {"history": state.history, "step_losses": state.step_losses, "sha256": digest[0],
                       "steps": state.step, "feature": feature, "config": cfg.model_dump(mode="json")}
            with atomic_path(Path(cfg.output_dir) / "metrics.json") as tmp:
                tmp.write_text(json.dumps(metrics, indent=2) + "\n")
        if ctx.distributed:
            dist.broadcast_object_list(digest, src=0)
        self.result_ = FitResult(
            history=[EpochMetrics(**h) for h in state.history],
            step_losses=list(state.step_losses),
            checkpoint=final,
            sha256=digest[0],
            steps=state.step,
            chance=1.0 / len(cfg.classes),
            stopped_early=stopped_early,
            feature=feature,
        )
        return self.result_


def finetune(config: FinetuneConfig, *, resume: bool = False, max_steps: int | None = None, **kwargs) -> FitResult:
    """``Trainer(config, **kwargs).fit(resume, max_steps)``; see :class:`Trainer`."""
    return Trainer(config, **kwargs).fit(resume=resume, max_steps=max_steps)
