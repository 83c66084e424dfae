"""What a fine-tuning run (:class:`~ravl_med.models.training.Trainer`) records: its progress and
per-epoch metrics, the resumable training states that hold them, and the final :class:`FitResult`.

A training state is everything a run needs to continue as if it had never stopped: model, optimizer,
scheduler, the objective's own state when it has ``state_dict()`` (e.g. GroupDRO's group weights),
progress (step, epoch, position in the epoch, running loss sums, metrics so far), the RNG states of
Python, NumPy and torch, the config and the number of processes. It goes to
``output_dir/checkpoints/state-<step>.pt`` atomically, written by rank 0 only; older states beyond
``keep_checkpoints`` are removed.

The finished run's record, ``output_dir/metrics.json`` beside ``output_dir/model.safetensors``
(history, step losses, the weights' sha256, steps, feature, config, provenance), is read back by
:func:`read_fit_record`: the audit verifies the weights against it and mitigation compares its recipe.

Training states are pickles written by this module (``torch.load(weights_only=False)``): only
resume from output folders you created.
"""

from __future__ import annotations

import json
import logging
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ravl_med.config import ConfigError, FinetuneConfig
from ravl_med.data.atomic import atomic_path
from ravl_med.models.runtime import DistributedContext

__all__ = [
    "FINAL_WEIGHTS",
    "METRICS_FILE",
    "STATE_DIR",
    "TRAJECTORY_KEYS",
    "EpochMetrics",
    "FitResult",
    "TrainingProgress",
    "latest_state",
    "read_fit_record",
    "load_training_state",
    "save_training_state",
]

log = logging.getLogger(__name__)

STATE_DIR = "checkpoints"
#: The final weights and the run's record, in ``output_dir``.
FINAL_WEIGHTS, METRICS_FILE = "model.safetensors", "metrics.json"
STATE_RE = re.compile(r"^state-(\d{8})\.pt$")
#: Config keys that fix a run's trajectory; resuming with other values would not reproduce it.
TRAJECTORY_KEYS = (
    "backbone", "checkpoint", "classes", "batch_size", "lr", "weight_decay", "warmup_steps",
    "grad_accum_steps", "freeze_text", "label_aware", "seed", "lock_image", "lock_image_unlocked_groups",
    "channels_last",
)  # fmt: skip


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


@dataclass(frozen=True)
class FitResult:
    """What :meth:`Trainer.fit` (the fine-tuning stage) returns.

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
        provenance: how it was computed (threads, seed, device, CPU, library versions; see
            :func:`ravl_med.reproducibility.provenance`).
    """

    history: list[EpochMetrics]
    step_losses: list[float]
    checkpoint: Path
    sha256: str
    steps: int
    chance: float
    stopped_early: bool = False
    feature: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready: the fields, epochs as dicts, the checkpoint as a string."""
        return {**asdict(self), "checkpoint": str(self.checkpoint)}

    @classmethod
    def from_record(cls, record: dict[str, Any], checkpoint: Path) -> FitResult:
        """The result of a finished run from its :func:`read_fit_record` (``chance`` from its config's classes)."""
        return cls(history=[EpochMetrics(**epoch) for epoch in record["history"]],
                   step_losses=list(record["step_losses"]), checkpoint=Path(checkpoint), sha256=record["sha256"],
                   steps=int(record["steps"]), chance=1.0 / len(record["config"]["classes"]),
                   feature=record.get("feature"), provenance=record.get("provenance", {}))


def read_fit_record(checkpoint: str | Path) -> dict[str, Any] | None:
    """The record a finished fine-tuning run wrote beside its weights (``metrics.json``), if there is one.

    Args:
        checkpoint: the run's ``model.safetensors`` or its output folder.

    Returns:
        the parsed record (``sha256`` a 64-hex string, ``config`` a dict), or ``None`` when ``checkpoint``
        is not a run's final weights or the record is missing or unreadable.
    """
    path = Path(checkpoint)
    if path.is_dir():
        path = path / FINAL_WEIGHTS
    try:
        record = json.loads((path.parent / METRICS_FILE).read_text()) if path.name == FINAL_WEIGHTS else None
    except (OSError, ValueError):
        return None
    if not (isinstance(record, dict) and isinstance(record.get("config"), dict)
            and isinstance(record.get("sha256"), str) and len(record["sha256"]) == 64):
        return None
    return record


@dataclass
class TrainingProgress:
    """Where a run stands; saved in every training state.

    Attributes:
        step: optimizer steps done.
        epoch: the current epoch (0-based).
        micro: micro-batches of ``epoch`` already done (always at an optimizer-step boundary).
        loss_sum, loss_count: running sums of the unfinished epoch's micro-batch losses (nats), so
            that a resumed epoch reports the same mean loss.
        history: one :class:`EpochMetrics` (as a dict) per finished epoch.
        step_losses: mean loss of each optimizer step, nats.
    """

    step: int = 0
    epoch: int = 0
    micro: int = 0
    loss_sum: float = 0.0
    loss_count: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)


def latest_state(output_dir: str | Path) -> Path | None:
    """The training state with the most steps under ``output_dir/checkpoints``, or ``None``."""
    folder = Path(output_dir) / STATE_DIR
    if not folder.is_dir():
        return None
    found = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := STATE_RE.match(p.name)))
    return found[-1][1] if found else None


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


def save_training_state(
    config: FinetuneConfig,
    progress: TrainingProgress,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    objective: Any,
    ctx: DistributedContext,
) -> None:
    """Writes ``config.output_dir/checkpoints/state-<step>.pt`` (rank 0) and prunes old states.

    Keeps the ``config.keep_checkpoints`` newest states. Every process waits for rank 0 under DDP.

    Args:
        config: the run's config (saved, to refuse resuming with another trajectory).
        progress: where the run stands.
        model: the unwrapped model.
        optimizer, scheduler: the run's AdamW and its LR schedule.
        objective: the loss callable; its ``state_dict()`` is saved when it has one.
        ctx: this process's context (its device's RNG state is saved).
    """
    if ctx.is_main:
        folder = Path(config.output_dir) / STATE_DIR
        path = folder / f"state-{progress.step:08d}.pt"
        payload = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "progress": asdict(progress),
            "rng": _rng_states(ctx.device),
            "config": config.model_dump(mode="json"),
            "world_size": ctx.world_size,
        }
        if hasattr(objective, "state_dict"):
            payload["objective"] = objective.state_dict()
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
        old = sorted(p for p in folder.iterdir() if STATE_RE.match(p.name) and p != path)
        for stale in old[: max(0, len(old) - (config.keep_checkpoints - 1))]:
            stale.unlink(missing_ok=True)
    if ctx.distributed:
        dist.barrier()


def load_training_state(
    path: Path,
    config: FinetuneConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    objective: Any,
    ctx: DistributedContext,
) -> TrainingProgress:
    """Restores model, optimizer, scheduler, objective and RNG states from a training state.

    Args:
        path: a ``state-<step>.pt`` file (:func:`latest_state`).
        config: the config of the resuming run; its :data:`TRAJECTORY_KEYS` must match the saved ones.
        model, optimizer, scheduler, objective, ctx: as for :func:`save_training_state`, filled in place.

    Returns:
        the saved progress.

    Raises:
        ConfigError: the state was written with other trajectory settings or another world size.
    """
    payload = torch.load(path, map_location="cpu", weights_only=False)
    saved, current = payload["config"], config.model_dump(mode="json")
    # A key newer than the state reads as its default (states written before it existed stay resumable).
    defaults = {k: FinetuneConfig.model_fields[k].default for k in TRAJECTORY_KEYS}
    changed = [k for k in TRAJECTORY_KEYS if saved.get(k, defaults[k]) != current.get(k)]
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
    return TrainingProgress(**payload["progress"])
