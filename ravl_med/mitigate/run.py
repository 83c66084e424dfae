"""``run_mitigation``: stage-1 region labels -> one mitigation method through the fine-tuning loop.

Writes to ``finetune.output_dir/<method>``: what the trainer writes (``checkpoints/``,
``model.safetensors``, ``metrics.json``) plus ``mitigate.json`` (method, parameters, region-label
statistics, stage-1 group sizes and, when the manifest says which images carry the planted feature,
how well the labelling finds them).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import precision_score, recall_score

from ravl_med.config import ConfigError, MitigateConfig
from ravl_med.data.atomic import atomic_path
from ravl_med.discover.medoids import MEDOIDS_FILE, Stage1Medoids

from .regions import images_with_spurious_region, training_region_labels

__all__ = ["LABELLED_METHODS", "labelling_agreement", "run_mitigation"]

log = logging.getLogger(__name__)

#: Methods that read the stage-1 region labels.
LABELLED_METHODS = ("ravl", "upsampled", "vl_gdro")


def _medoids(config: MitigateConfig) -> Stage1Medoids:
    if config.audit_dir is None:
        raise ConfigError("audit_dir: no audit folder given (set it or pass --audit)")
    path = Path(config.audit_dir) / MEDOIDS_FILE
    if not path.is_file():
        raise ConfigError(f"{path} not found: run 'ravl-med audit' with the RaVL method first "
                          "(it writes the stage-1 medoids there)")
    medoids = Stage1Medoids.load(path).with_spurious_ranks(config.spurious_ranks)
    if not medoids.spurious.any():
        log.warning("%s: no cluster is marked spurious; every region counts as relevant", path)
    return medoids


def labelling_agreement(labelled: np.ndarray, present: np.ndarray) -> dict[str, Any]:
    """Image-level agreement of the stage-1 labelling with the ground truth (synthetic data).

    Args:
        labelled: (N,) bool, the image has at least one region labelled spurious.
        present: (N,) bool, the image carries the planted feature (manifest ``artefact_present``).

    Returns:
        ``{"n_feature_images", "n_labelled_images", "precision", "recall"}``: precision = share of the
        labelled images that carry the feature, recall = share of the feature's images labelled
        (``None`` when undefined).
    """
    labelled, present = np.asarray(labelled, dtype=bool), np.asarray(present, dtype=bool)
    scores = {name: float(metric(present, labelled, zero_division=np.nan))
              for name, metric in (("precision", precision_score), ("recall", recall_score))}
    return {"n_feature_images": int(present.sum()), "n_labelled_images": int(labelled.sum()),
            **{name: None if np.isnan(value) else value for name, value in scores.items()}}


def run_mitigation(config: MitigateConfig, *, resume: bool = False, max_steps: int | None = None,
                   progress: bool = True, on_step=None) -> dict[str, Any]:
    """Runs ``config.method`` (see :mod:`ravl_med.mitigate.methods`).

    Returns:
        the ``mitigate.json`` content, with ``"result"``: the trainer's :class:`FitResult` as a dict.
    """
    from ravl_med.data.dataset import RadiographDataset
    from ravl_med.data.manifest import Manifest, feature_presence
    from ravl_med.models.registry import create_backbone
    from ravl_med.models.runtime import resolve_device

    from .methods import MitigationTrainer, build_method, stage1_groups

    ft = config.finetune
    if ft.manifest is None or not Path(ft.manifest).is_file():
        raise ConfigError(f"finetune.manifest not found: {ft.manifest}")
    method = config.method
    region_labels: dict[str, np.ndarray] = {}
    stats: dict[str, Any] = {}
    if method in LABELLED_METHODS:
        medoids = _medoids(config)
        device = resolve_device(ft.device)
        if config.stage1_checkpoint is None:
            raise ConfigError(f"stage1_checkpoint: method {method!r} labels the training regions with the audited "
                              "stage-1 model; give its weights (set it or pass --stage1)")
        model, preprocess, _ = create_backbone(ft.backbone, checkpoint=config.stage1_checkpoint,
                                               sha256=config.stage1_sha256, device=device)
        manifest = Manifest.read(ft.manifest, classes=ft.classes)
        train = RadiographDataset(manifest, ft.ingest, ft.classes, split="train")
        region_labels = training_region_labels(model, preprocess, train, medoids, batch_size=config.label_batch_size,
                                               device=device, precision=ft.precision)
        del model
        flags = np.concatenate(list(region_labels.values())) if region_labels else np.zeros(0, dtype=bool)
        groups = stage1_groups(train.labels.numpy(), train.keys, region_labels)
        stats = {
            "n_regions": int(flags.size), "spurious_fraction": float(flags.mean()) if flags.size else None,
            "images_without_relevant_region": int(sum(bool(np.all(f)) for f in region_labels.values())),
            "group_sizes": {f"{ft.classes[g // 2]}|{'with' if g % 2 else 'without'}":
                            int((groups == g).sum()) for g in range(2 * len(ft.classes))},
            "spurious_clusters": medoids.clusters[medoids.spurious].tolist(),
        }
        truth = feature_presence(manifest, train.keys)
        if truth is not None:
            labelled = images_with_spurious_region(train.keys, region_labels)
            stats["ground_truth"] = {"feature": truth[1], **labelling_agreement(labelled, truth[0])}
    run_config = ft.model_copy(update={"output_dir": Path(ft.output_dir) / method})
    pieces = build_method(method, finetune_config=ft, region_labels=region_labels, lambda_=config.loss_lambda,
                          temperature=config.temperature, gdro_step_size=config.gdro_step_size,
                          spurious_prompts=config.spurious_prompts, spurious_weight=config.spurious_weight)
    trainer = MitigationTrainer(run_config, objective=pieces["objective"], sampler_factory=pieces["sampler_factory"],
                                region_labels=region_labels, spurious_prompts=config.spurious_prompts,
                                progress=progress, on_step=on_step)
    result = trainer.fit(resume=resume, max_steps=max_steps)
    summary = {"method": method, "config": config.model_dump(mode="json"), "region_labels": stats,
               "result": result.as_dict()}
    if int(os.environ.get("RANK", "0")) == 0:
        with atomic_path(Path(run_config.output_dir) / "mitigate.json") as tmp:
            tmp.write_text(json.dumps(summary, indent=2) + "\n")
    return summary
