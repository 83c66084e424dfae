"""Contrastive fine-tuning of a registered backbone on image-report pairs.

One loop serves plain CLIP fine-tuning and, later, the RaVL region-aware loss and GroupDRO: the loss
is a callable ``objective(batch, outputs) -> scalar`` (:class:`ContrastiveObjective` by default),
the sampler comes from a ``sampler_factory``, and :meth:`Trainer.forward` can be overridden to add
outputs (e.g. region embeddings).

What a run does (:meth:`Trainer.fit`):

* builds the backbone from the registry (optionally from local weights), freezes the text tower
  when asked, AdamW with weight decay on matrices only (norms, biases and ``logit_scale`` in a
  no-decay group), linear warm-up then cosine decay, stepped once per optimizer step
  (:mod:`ravl_med.models.optim`);
* micro-batches of ``batch_size`` per process, ``grad_accum_steps`` of them per optimizer step (a
  short last group of an epoch is averaged over its own size);
* CUDA: bf16 autocast (``precision: auto``) and TF32 matmuls; CPU: fp32;
* optionally (``lock_image``) the image backbone frozen but its last groups, and the outputs of
  frozen parts computed once and reused (``cache_text``, ``cache_frozen_features``,
  :mod:`ravl_med.models.feature_cache`; single process only, and frozen features only while
  :attr:`Trainer.images_fixed`); ``channels_last`` convolutions on the CPU;
* ``torchrun``: reads ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``, starts the process group (nccl on
  CUDA, gloo on CPU) (:mod:`ravl_med.models.runtime`), shards with ``DistributedSampler``, wraps
  the model in DDP and gathers features across processes for the loss; only rank 0 writes files and
  shows progress;
* after each optimizer step, ``on_step(step, {"loss": ..., "lr": ...})`` when given;
* every ``checkpoint_every`` optimizer steps and at each epoch's end, a full training state
  (:mod:`ravl_med.models.training_records`) goes to ``output_dir/checkpoints/state-<step>.pt``
  atomically; ``fit(resume=True)`` continues from the latest one, and on CPU the final weights are
  bit-identical to an uninterrupted run;
* after each epoch, zero-shot accuracy on the ``val`` split (class names x templates) and, when the
  manifest says which images carry the planted feature (``artefact_present``), the accuracy of each
  (class x feature present/absent) group and the worst group's;
* at the end, the weights go to ``output_dir/model.safetensors`` and the per-epoch metrics to
  ``output_dir/metrics.json``.

Training states are pickles (``torch.load(weights_only=False)``): only resume from output folders
you created.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from ravl_med.config import ConfigError, FinetuneConfig
from ravl_med.data.atomic import atomic_path
from ravl_med.data.dataset import RadiographDataset, collate
from ravl_med.data.manifest import Manifest, empty_split_message, feature_presence
from ravl_med.evaluate.groups import worst_group_accuracy
from ravl_med.models.feature_cache import FrozenFeatureCache, TextEmbeddingCache
from ravl_med.models.losses import LabelAwareClipLoss
from ravl_med.models.optim import (
    clamp_logit_scale,
    freeze_text_tower,
    parameter_groups,
    seed_everything,
    seed_worker,
    warmup_cosine,
)
from ravl_med.models.registry import create_backbone
from ravl_med.models.runtime import DistributedContext, fixed_threads, mean_over_processes, start_processes
from ravl_med.models.training_records import (
    FINAL_WEIGHTS,
    METRICS_FILE,
    EpochMetrics,
    FitResult,
    TrainingProgress,
    latest_state,
    load_training_state,
    save_training_state,
)
from ravl_med.models.weights import WeightsError, save_checkpoint
from ravl_med.models.zeroshot import CXR_TEMPLATES, evaluate_zero_shot
from ravl_med.reproducibility import provenance

__all__ = ["ContrastiveObjective", "Trainer"]

log = logging.getLogger(__name__)


Objective = Callable[[dict[str, Any], dict[str, torch.Tensor]], torch.Tensor]
SamplerFactory = Callable[[Dataset, int, int, int], Sampler]
#: ``on_step(step, metrics)``: metrics of the optimizer step just taken (see :class:`Trainer`).
StepCallback = Callable[[int, dict[str, float]], None]


# ----------------------------------------------------------------------------- objective & sampling


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


# ----------------------------------------------------------------------------- the trainer


@dataclass
class _Run:
    """What one :meth:`Trainer.fit` call trains with (built by :meth:`Trainer._prepare`)."""

    ctx: DistributedContext
    model: nn.Module  # unwrapped: saved, evaluated, clamped
    train_model: nn.Module  # ``model``, DDP-wrapped under torchrun
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    objective: Objective
    sampler: Sampler
    train_set: RadiographDataset
    val_set: RadiographDataset | None
    val_present: np.ndarray | None  # (N_val,) bool: the image carries the planted feature
    feature: str | None  # the manifest's name of that feature
    micro_per_epoch: int  # micro-batches per epoch on this process
    templates: tuple[str, ...]
    progress: TrainingProgress


@dataclass
class _EpochPace:
    """Throughput bookkeeping of the epoch in progress, and whether ``max_steps`` ended the run."""

    started: float  # time.perf_counter() before the epoch's first micro-batch, s
    images: int = 0  # images trained on in this epoch (all processes)
    stopped_early: bool = False


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
        self._text_cache: TextEmbeddingCache | None = None
        self._feature_cache: FrozenFeatureCache | None = None

    # -- pieces a subclass may override ---------------------------------------------------------

    #: Whether an image key names the same pixels in every epoch (frozen features may then be cached);
    #: a subclass whose training set changes images between epochs says ``False``.
    images_fixed: bool = True

    def forward(self, model: nn.Module, batch: dict[str, Any], ctx: DistributedContext) -> dict[str, torch.Tensor]:
        """Runs the (possibly DDP-wrapped) model on a batch.

        With ``cache_text`` / ``cache_frozen_features`` (single process), the frozen parts' outputs
        come from :mod:`~ravl_med.models.feature_cache` instead of being recomputed.

        Returns:
            ``image_features`` (B, D), ``text_features`` (B, D), both L2-normalised, and
            ``logit_scale`` (scalar, exponentiated).
        """
        if self._text_cache is not None or self._feature_cache is not None:
            return self._forward_cached(model, batch, ctx)
        tokens = batch["tokens"].to(ctx.device, non_blocking=True)
        out = model(self._model_input(batch["image"], ctx), tokens)
        if isinstance(out, dict):
            return out
        return {"image_features": out[0], "text_features": out[1], "logit_scale": out[2]}

    def _forward_cached(self, model: nn.Module, batch: dict[str, Any], ctx: DistributedContext) -> dict[str, torch.Tensor]:
        """:meth:`forward` with cached text embeddings and/or frozen image features (never under DDP)."""
        raw = batch["image"]
        if self._feature_cache is not None:
            features = self._feature_cache(batch["key"], lambda rows: self._model_input(raw[rows], ctx), ctx.device)
            image = model.visual.forward_from_frozen(self._layout(features))
        else:
            image = model.encode_image(self._model_input(raw, ctx))
        if self._text_cache is not None:
            text = self._text_cache(batch["text"], ctx.device)
        else:
            text = model.encode_text(batch["tokens"].to(ctx.device, non_blocking=True))
        return {"image_features": F.normalize(image, dim=-1), "text_features": F.normalize(text, dim=-1),
                "logit_scale": model.logit_scale.exp()}

    def _model_input(self, raw: torch.Tensor, ctx: DistributedContext) -> torch.Tensor:
        """Raw batch images (B, C, H, W) -> the model's preprocessed input on the device, in its layout."""
        return self._layout(self.preprocess_(raw.to(ctx.device, non_blocking=True)))

    def _layout(self, images: torch.Tensor) -> torch.Tensor:
        """(B, K, H, W) batch in the memory layout of the model's convolutions (``channels_last``)."""
        return images.contiguous(memory_format=torch.channels_last) if self.config.channels_last else images

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
            raise ConfigError(empty_split_message(cfg.manifest, "train", cfg.classes))
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
        ctx, started_group = start_processes(cfg.device, cfg.precision)
        try:
            with fixed_threads(cfg.threads):
                return self._fit(ctx, resume, max_steps)
        finally:
            if started_group and dist.is_initialized():
                dist.destroy_process_group()

    def _fit(self, ctx: DistributedContext, resume: bool, max_steps: int | None) -> FitResult:
        run = self._prepare(ctx, resume)
        stopped_early = False
        for epoch in range(run.progress.epoch, self.config.epochs):
            if stopped_early:
                break
            pace = self._train_epoch(run, epoch, max_steps)
            stopped_early = pace.stopped_early
            if run.progress.micro < run.micro_per_epoch:  # stopped by max_steps inside the epoch
                break
            self._close_epoch(run, epoch, pace)
        return self._finish(run.progress, run.model, ctx, stopped_early, run.feature)

    def _prepare(self, ctx: DistributedContext, resume: bool) -> _Run:
        """Seeds, then builds model, data, sampler, optimizer, schedule and objective, then resumes.

        The order is part of the run's definition: model initialisation draws from the seeded RNG,
        and a resumed state restores the RNG states after everything is built.
        """
        cfg = self.config
        seed_everything(cfg.seed)
        model = self._build_model(ctx)
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
        total_steps = cfg.epochs * math.ceil(micro_per_epoch / cfg.grad_accum_steps)

        optimizer = torch.optim.AdamW(parameter_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(cfg.warmup_steps, total_steps))
        objective = self.objective or ContrastiveObjective(cfg.label_aware, ctx.rank, ctx.world_size)
        templates = tuple(cfg.templates) if cfg.templates else CXR_TEMPLATES

        progress = TrainingProgress()
        state_path = latest_state(cfg.output_dir) if resume else None
        if state_path is not None:
            progress = load_training_state(state_path, cfg, model, optimizer, scheduler, objective, ctx)
        train_model: nn.Module = model
        if ctx.distributed:
            train_model = DistributedDataParallel(
                model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None
            )
        return _Run(ctx, model, train_model, optimizer, scheduler, objective, sampler, train_set, val_set,
                    val_present, feature, micro_per_epoch, templates, progress)

    def _build_model(self, ctx: DistributedContext) -> nn.Module:
        """The registry's backbone on this process's device, text tower frozen when asked, in train mode.

        Sets ``model_``, ``preprocess_`` and ``tokenizer_``.
        """
        cfg = self.config
        try:
            model, self.preprocess_, self.tokenizer_ = create_backbone(
                cfg.backbone, checkpoint=cfg.checkpoint, sha256=cfg.sha256, device=ctx.device
            )
        except KeyError as err:
            raise ConfigError(f"backbone: {err.args[0]}") from None
        except (WeightsError, FileNotFoundError) as err:
            raise ConfigError(f"checkpoint: {' '.join(str(err).split())}") from None
        if cfg.freeze_text:
            freeze_text_tower(model)
        if cfg.lock_image:
            try:
                model.lock_image_tower(cfg.lock_image_unlocked_groups)
            except (AssertionError, NotImplementedError, ValueError) as err:
                raise ConfigError(f"lock_image_unlocked_groups: {cfg.lock_image_unlocked_groups} for {cfg.backbone}: "
                                  f"{err or 'not supported by this tower'}") from None
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        model.train()
        self._text_cache, self._feature_cache = None, None
        if cfg.cache_text or cfg.cache_frozen_features:
            if ctx.distributed:
                log.info("cache_text / cache_frozen_features: off under torchrun (each process would cache its shard)")
            else:
                if cfg.cache_text:
                    self._text_cache = TextEmbeddingCache(model, self.tokenizer_)
                if cfg.cache_frozen_features and not self.images_fixed:
                    log.info("cache_frozen_features: off, the training images change between epochs")
                elif cfg.cache_frozen_features:
                    try:
                        self._feature_cache = FrozenFeatureCache(model.visual)
                    except TypeError as err:
                        raise ConfigError(f"cache_frozen_features: {err}") from None
        self.model_ = model
        return model

    def _train_epoch(self, run: _Run, epoch: int, max_steps: int | None) -> _EpochPace:
        """The micro-batches and optimizer steps of ``epoch``, from where ``run.progress`` stands.

        Stops after the optimizer step that reaches ``max_steps`` (writing a training state when that
        step is inside the epoch), and writes one every ``checkpoint_every`` steps inside the epoch
        (the epoch's end writes its own, :meth:`_close_epoch`).
        """
        cfg, state = self.config, run.progress
        for epoch_aware in (run.sampler, run.train_set):  # samplers, and datasets whose items depend on the epoch
            if hasattr(epoch_aware, "set_epoch"):
                epoch_aware.set_epoch(epoch)
        start_micro = state.micro if epoch == state.epoch else 0
        if start_micro == 0:
            state.loss_sum, state.loss_count = 0.0, 0
        loader = self._loader(run, epoch, start_micro)
        bar = self._bar(run.ctx, run.micro_per_epoch, start_micro, epoch)
        pace = _EpochPace(started=time.perf_counter())
        group_loss = 0.0
        for micro, batch in enumerate(loader, start=start_micro):
            group_start = micro - micro % cfg.grad_accum_steps
            group_size = min(cfg.grad_accum_steps, run.micro_per_epoch - group_start)
            closes_group = micro + 1 == group_start + group_size
            value = self._backward(run, batch, group_size, closes_group, epoch)
            group_loss += value / group_size
            state.loss_sum += value
            state.loss_count += 1
            pace.images += len(batch["image"]) * run.ctx.world_size
            if not closes_group:
                bar.update()
                continue
            lr = self._optimizer_step(run)
            state.step += 1
            state.step_losses.append(group_loss)
            state.micro = micro + 1
            group_loss = 0.0
            rate = pace.images / max(time.perf_counter() - pace.started, 1e-9)
            bar.set_postfix(loss=f"{value:.4f}", img_s=f"{rate:.1f}", lr=f"{lr:.2e}")
            bar.update()
            if self.on_step is not None:
                self.on_step(state.step, {"loss": state.step_losses[-1], "lr": lr})
            inside_epoch = state.micro < run.micro_per_epoch
            if max_steps is not None and state.step >= max_steps:
                pace.stopped_early = inside_epoch or epoch + 1 < cfg.epochs
                if inside_epoch:
                    self._save_state(run)
                break
            if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0 and inside_epoch:
                self._save_state(run)
        bar.close()
        return pace

    def _loader(self, run: _Run, epoch: int, start_micro: int) -> DataLoader:
        """The epoch's training micro-batches from ``start_micro`` on (workers seeded from ``seed + epoch``)."""
        cfg = self.config
        return DataLoader(
            run.train_set,
            batch_size=cfg.batch_size,
            sampler=_ResumableSampler(run.sampler, start_micro * cfg.batch_size),
            collate_fn=collate,
            num_workers=cfg.workers,
            worker_init_fn=seed_worker,
            generator=torch.Generator().manual_seed(cfg.seed + epoch),
            drop_last=True,
            pin_memory=run.ctx.device.type == "cuda",
        )

    def _backward(self, run: _Run, batch: dict[str, Any], group_size: int, closes_group: bool, epoch: int) -> float:
        """Forward, loss and backward of one micro-batch (gradient scaled by 1 / ``group_size``).

        Under DDP, gradients are synchronised only on the micro-batch that closes its group.

        Returns:
            the micro-batch's loss, nats.

        Raises:
            FloatingPointError: a non-finite loss.
        """
        sync = contextlib.nullcontext()
        if run.ctx.distributed and not closes_group:
            sync = run.train_model.no_sync()  # type: ignore[operator]
        with sync:
            with run.ctx.autocast():
                outputs = self.forward(run.train_model, batch, run.ctx)
                loss = run.objective(batch, outputs)
            (loss / group_size).backward()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"loss is {value} at step {run.progress.step}, epoch {epoch}; lower lr")
        return value

    @staticmethod
    def _optimizer_step(run: _Run) -> float:
        """AdamW and schedule step, then the logit-scale clamp; returns the learning rate the step used."""
        lr = run.scheduler.get_last_lr()[0]
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
        clamp_logit_scale(run.model)
        return lr

    def _close_epoch(self, run: _Run, epoch: int, pace: _EpochPace) -> None:
        """The finished epoch's metrics (loss over all processes, validation on rank 0), log line and state."""
        state, ctx = run.progress, run.ctx
        elapsed = time.perf_counter() - pace.started
        train_loss = mean_over_processes(state.loss_sum, state.loss_count, ctx)
        accuracy, worst, groups = None, None, None
        if run.val_set is not None and ctx.is_main:
            accuracy, worst, groups = self._validate(run)
        if ctx.distributed:
            dist.barrier()
        metrics = EpochMetrics(epoch, train_loss, accuracy, pace.images / max(elapsed, 1e-9), state.step,
                               worst, groups)
        state.history.append(asdict(metrics))
        if ctx.is_main:
            shown = "n/a" if accuracy is None else f"{accuracy:.3f}"
            shown_worst = "n/a" if worst is None else f"{worst:.3f}"
            log.info("epoch %d: train loss %.4f, val zero-shot accuracy %s (worst group %s), %.1f images/s",
                     epoch, train_loss, shown, shown_worst, metrics.images_per_s)
        state.epoch, state.micro = epoch + 1, 0
        state.loss_sum, state.loss_count = 0.0, 0
        self._save_state(run)

    def _validate(self, run: _Run) -> tuple[float, float | None, list[dict[str, Any]] | None]:
        """Zero-shot accuracy on the val split, the worst group's and the group records (:class:`EpochMetrics`)."""
        cfg = self.config
        accuracy, table = evaluate_zero_shot(
            run.model, self.preprocess_, self.tokenizer_, run.val_set, cfg.classes, run.templates,
            feature_present=run.val_present, device=run.ctx.device, batch_size=cfg.batch_size,
            autocast=run.ctx.autocast,
        )
        if table is None:
            return accuracy, None, None
        worst = worst_group_accuracy(table)
        groups = json.loads(table.drop(columns=["ci_low", "ci_high"]).to_json(orient="records"))
        return accuracy, (None if math.isnan(worst) else worst), groups

    # -- helpers -------------------------------------------------------------------------------

    def _bar(self, ctx: DistributedContext, total: int, initial: int, epoch: int):
        from tqdm.auto import tqdm  # noqa: PLC0415

        return tqdm(
            total=total, initial=initial, desc=f"epoch {epoch + 1}/{self.config.epochs}", unit="batch",
            disable=not (self.progress and ctx.is_main), leave=False,
        )

    def _save_state(self, run: _Run) -> None:
        save_training_state(self.config, run.progress, run.model, run.optimizer, run.scheduler, run.objective, run.ctx)

    def _finish(self, state: TrainingProgress, model, ctx: DistributedContext, stopped_early: bool,
                feature: str | None) -> FitResult:
        cfg = self.config
        final = Path(cfg.output_dir) / FINAL_WEIGHTS
        digest = [""]
        run_info = provenance(threads=cfg.threads, seed=cfg.seed, device=str(ctx.device))
        if ctx.is_main:
            digest[0] = save_checkpoint(model, final)
            metrics = {"history": state.history, "step_losses": state.step_losses, "sha256": digest[0],
                       "steps": state.step, "feature": feature, "config": cfg.model_dump(mode="json"),
                       "provenance": run_info}
            with atomic_path(Path(cfg.output_dir) / METRICS_FILE) as tmp:
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
            provenance=run_info,
        )
        return self.result_

