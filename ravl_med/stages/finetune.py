"""The fine-tuning stage: contrastive fine-tuning of a backbone on a manifest (RaVL's stage-1 model).

:func:`run_finetune` writes to ``config.output_dir`` whoever calls it (``ravl-med finetune``, the
benchmark, the demo): ``checkpoints/`` (training states, resumable), ``model.safetensors`` and
``metrics.json`` (see :class:`~ravl_med.models.training.Trainer`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from ravl_med.config import ConfigError, FinetuneConfig
from ravl_med.models.training import Trainer
from ravl_med.models.training_records import FitResult

__all__ = ["run_finetune"]


def run_finetune(config: FinetuneConfig, *, resume: bool = False, max_steps: int | None = None,
                 progress: bool = True,
                 on_step: Callable[[int, Mapping[str, float]], None] | None = None) -> FitResult:
    """Fine-tunes ``config.backbone`` on ``config.manifest``.

    Args:
        config: the fine-tuning config (``manifest`` must be set).
        resume: continue from the latest training state in ``output_dir``.
        max_steps: stop after this many optimizer steps.
        progress: progress bar (rank 0 only).
        on_step: called as ``on_step(step, {"loss", "lr"})`` after each optimizer step.

    Returns:
        the :class:`FitResult` (every process returns one under ``torchrun``; rank 0 writes the files).

    Raises:
        ConfigError: no manifest, or the manifest file does not exist.
    """
    if config.manifest is None:
        raise ConfigError("manifest: no manifest given (set it or pass --manifest)")
    if not Path(config.manifest).is_file():
        raise ConfigError(f"manifest not found: {config.manifest}")
    return Trainer(config, progress=progress, on_step=on_step).fit(resume=resume, max_steps=max_steps)
