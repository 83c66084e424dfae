"""The mitigation stage: stage-1 region labels -> one mitigation method -> its test evaluation.

:func:`run_mitigation` writes to ``finetune.output_dir/<method>``, whoever calls it (``ravl-med
mitigate``, the benchmark, the demo): what the trainer writes (``checkpoints/``,
``model.safetensors``, ``metrics.json``), ``mitigate.json`` (method, parameters, region-label
statistics, stage-1 group sizes and, when the manifest says which images carry the planted feature,
how well the labelling finds them) and, when the manifest has rows of ``evaluation.split``,
``evaluation.json`` and ``groups.csv`` (:class:`~ravl_med.stages.evaluate.EvaluationResult`).
The stage-1 embeddings of the training regions go to ``finetune.output_dir/stage1-region-cache``,
computed by the first method that labels regions and read by the others.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import precision_score, recall_score

from ravl_med.config import ConfigError
from ravl_med.data.atomic import atomic_path
from ravl_med.discover.medoids import MEDOIDS_FILE, Stage1Medoids
from ravl_med.mitigate.regions import images_with_spurious_region, training_region_labels
from ravl_med.mitigate.registry import MITIGATION_METHODS
from ravl_med.models.runtime import fixed_threads, process_rank
from ravl_med.models.training_records import METRICS_FILE, FitResult, read_fit_record
from ravl_med.stages.audit import TOO_LITTLE_DATA
from ravl_med.stages.config import MitigateConfig
from ravl_med.stages.evaluate import EvaluationResult
from ravl_med.stages.review import REVIEW_FILE, read_review

__all__ = ["STAGE1_REGION_CACHE", "MitigationResult", "NothingToMitigate", "labelling_agreement", "run_mitigation"]

log = logging.getLogger(__name__)

#: Folder under ``finetune.output_dir`` caching the stage-1 model's embeddings of the training regions,
#: shared by the methods of one output folder (keyed by the stage-1 weights, the split and the ingestion).
STAGE1_REGION_CACHE = "stage1-region-cache"


class NothingToMitigate(ConfigError):
    """The audit gives a method that reads its clusters nothing to mitigate (too little data, no significant
    shortcut, or no cluster marked spurious): refused unless forced, and the user keeps the stage-1 model."""


@dataclass(frozen=True)
class MitigationResult:
    """What :func:`run_mitigation` trained, wrote and measured.

    Attributes:
        method: the mitigation method.
        config: the config as run.
        region_labels: statistics of the stage-1 region labels (empty for methods that read none).
        fit: the trainer's :class:`~ravl_med.models.training.FitResult`.
        evaluation: the test-split :class:`EvaluationResult`, ``None`` when not evaluated (see ``notes``).
        output_dir: ``finetune.output_dir/<method>``.
        train_seconds: wall time of the region labelling and the training, s.
        notes: plain-words remarks (e.g. why the evaluation was skipped).
    """

    method: str
    config: MitigateConfig
    region_labels: dict[str, Any]
    fit: FitResult
    evaluation: EvaluationResult | None
    output_dir: Path
    train_seconds: float
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The content of ``mitigate.json``."""
        return {"method": self.method, "config": self.config.model_dump(mode="json"),
                "region_labels": self.region_labels, "result": self.fit.to_json()}


def _medoids(config: MitigateConfig, *, force: bool, unreviewed: bool = False) -> tuple[Stage1Medoids, str]:
    """The audit's medoids with the spurious clusters marked, and where the marks came from.

    The marks come from the audit folder's ``review.yaml`` (:mod:`ravl_med.stages.review`); without one,
    only when ``unreviewed`` or ``force``, from ``config.spurious_ranks``. The audit cannot tell a shortcut
    from the class's own evidence (both raise one class's accuracy and lower another's), so a person decides.

    Raises:
        NothingToMitigate: unless ``force``, an audit with too little data or nothing marked spurious (the
            audit found no significant shortcut, or the review marks none).
        ConfigError: no audit folder or medoids; regions made differently from the audit's; a review with
            clusters not yet reviewed; ranks the audit did not keep; no review, unless ``unreviewed`` or ``force``.
    """
    if config.audit_dir is None:
        raise ConfigError("audit_dir: no audit folder given (set it or pass --audit)")
    audit_dir = Path(config.audit_dir)
    path = audit_dir / MEDOIDS_FILE
    if not path.is_file():
        raise ConfigError(f"{path} not found: run 'ravl-med audit' with the RaVL method first "
                          "(it writes the stage-1 medoids there)")
    medoids = Stage1Medoids.load(path)
    mine = config.finetune.ingest.region_setting()
    if medoids.regions is not None and medoids.regions != mine:
        raise ConfigError(f"finetune.ingest: the audit's medoids ({path}) were made from regions {medoids.regions}, "
                          f"but mitigation would label regions {mine}; use the audit's ingest settings")
    review = read_review(audit_dir)
    if review is not None:
        if review.pending_ranks:
            raise ConfigError(f"{audit_dir / REVIEW_FILE}: cluster(s) {review.pending_ranks} not reviewed yet; "
                              f"set spurious: yes/no for each, or run 'ravl-med review {audit_dir} --spurious RANKS'")
        ranks, source = review.spurious_ranks, REVIEW_FILE
    else:
        ranks, source = config.spurious_ranks, "spurious_ranks (no review, forced)"
    if medoids.outcome == TOO_LITTLE_DATA and not force:
        raise NothingToMitigate(f"{audit_dir}: the audit had too little data to conclude (see its report); "
                                "mitigating its clusters could train on chance; --force trains anyway")
    kept = medoids.kept_ranks
    if not kept:
        if not force:
            raise NothingToMitigate(
                f"{audit_dir}: the audit reports no significant shortcut (outcome {medoids.outcome or 'unknown'}): "
                "there is no cluster to mitigate, and fine-tuning a model without a shortcut lowered its worst-group "
                "accuracy in the benchmark; --force trains anyway (every region counts as relevant)")
        log.warning("%s: the audit kept no cluster (outcome %s); every region counts as relevant (forced)",
                    audit_dir, medoids.outcome)
        return medoids.with_spurious_ranks([]), source
    if review is None and not (force or unreviewed):
        raise ConfigError(
            f"{audit_dir}: no {REVIEW_FILE}: look at the galleries of report.html first. The audit cannot tell a "
            "shortcut from the class's own evidence, and mitigating the top cluster of models without a shortcut "
            f"lowered worst-group accuracy in the benchmark. Mark the shortcut: 'ravl-med review {audit_dir} "
            f"--spurious RANKS' (or --none); --force mitigates spurious_ranks {ranks} unreviewed")
    unknown = sorted(set(ranks or []) - set(kept))
    if unknown:
        raise ConfigError(f"{source}: the audit kept no cluster of rank {unknown} (kept: {kept})")
    medoids = medoids.with_spurious_ranks(ranks)
    if not medoids.spurious.any() and not force:
        raise NothingToMitigate(f"{source} marks no cluster spurious: nothing to mitigate (--force trains anyway, "
                                "every region counting as relevant)")
    return medoids, source


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
                   progress: bool = True, on_step=None, force: bool = False,
                   unreviewed: bool = False) -> MitigationResult:
    """Runs ``config.method`` (see :mod:`ravl_med.mitigate.methods`), then evaluates it on the test split.

    Args:
        config: the mitigation config (``finetune.manifest`` must exist).
        resume: continue from the latest training state in the method's folder.
        max_steps: stop after this many optimizer steps.
        progress: progress bars.
        on_step: the trainer's per-step callback (tracking).
        force: run a method that reads the audit's clusters without a review (``config.spurious_ranks``
            then marks the spurious clusters) or when none is marked spurious (the audit found no
            significant shortcut, or its review marks none: every region then counts as relevant).
        unreviewed: take ``config.spurious_ranks`` when the audit has no review, but refuse (below) when the
            audit gives nothing to mitigate: a caller that reviews by rule (the benchmark).

    Returns:
        the :class:`MitigationResult`; under ``torchrun`` only rank 0 writes ``mitigate.json`` and evaluates.

    Raises:
        ConfigError: missing manifest, audit folder, medoids or stage-1 model; nothing to mitigate
            (see ``force``; :class:`NothingToMitigate`); a review not finished.
    """
    with fixed_threads(config.finetune.threads):
        return _run_mitigation(config, resume=resume, max_steps=max_steps, progress=progress, on_step=on_step,
                               force=force, unreviewed=unreviewed)


def _run_mitigation(config: MitigateConfig, *, resume: bool, max_steps: int | None, progress: bool,
                    on_step, force: bool, unreviewed: bool) -> MitigationResult:
    ft = config.finetune
    if ft.manifest is None or not Path(ft.manifest).is_file():
        raise ConfigError(f"finetune.manifest not found: {ft.manifest}")
    start = time.perf_counter()
    labelled = MITIGATION_METHODS[config.method].reads_region_labels
    medoids, skipped = _marked_medoids(config, labelled=labelled, force=force, unreviewed=unreviewed)
    region_labels, stats = _stage1_region_labels(config, medoids, progress=progress) if labelled else ({}, {})
    stage1 = read_fit_record(config.stage1_checkpoint) if config.stage1_checkpoint is not None else None
    fit = _stage1_as_standard(config, stage1) if max_steps is None else None
    reused = () if fit is None else (
        f"standard: the stage-1 model itself ({fit.checkpoint}): standard fine-tuning with the same recipe, starting "
        "weights, data and seed trains the same model, so it was not trained again.",)
    if fit is None:
        fit = _train(config, region_labels, resume=resume, max_steps=max_steps, progress=progress, on_step=on_step)
    out = Path(ft.output_dir) / config.method
    result = MitigationResult(method=config.method, config=config, region_labels=stats, fit=fit, evaluation=None,
                              output_dir=out, train_seconds=time.perf_counter() - start)
    if process_rank().rank != 0:
        return result
    with atomic_path(out / "mitigate.json") as tmp:
        tmp.write_text(json.dumps(result.to_json(), indent=2) + "\n")
    evaluation, notes = _evaluate(config, fit, medoids[0] if medoids else None, skipped)
    if evaluation is not None:
        evaluation.write(out)
    return dataclasses.replace(result, evaluation=evaluation,
                               notes=reused + _recipe_differences(config, stage1) + _class_mismatch(config, stats)
                               + notes)


def _marked_medoids(config: MitigateConfig, *, labelled: bool, force: bool,
                    unreviewed: bool) -> tuple[tuple[Stage1Medoids, str] | None, str | None]:
    """The audit's marked medoids (:func:`_medoids`) once for training and evaluation: ``((medoids, source), None)``.

    A method that reads the region labels needs them (errors raise); for the others they only define the
    evaluation's groups when the manifest has no ground truth, so a problem skips that evaluation
    (``(None, why)``) and nothing gates them. ``(None, None)``: no audit medoids to use.
    """
    if labelled:
        return _medoids(config, force=force, unreviewed=unreviewed), None
    if config.audit_dir is None or not (Path(config.audit_dir) / MEDOIDS_FILE).is_file():
        return None, None
    try:
        return _medoids(config, force=True), None
    except ConfigError as err:
        return None, f"test evaluation skipped: {err}"


#: Fine-tuning keys that do not change what is learned (bookkeeping, where it runs).
_NOT_RECIPE = {"manifest", "checkpoint", "sha256", "output_dir", "checkpoint_every", "keep_checkpoints", "workers",
               "cache_images", "device"}


def _recipe_diff(config: MitigateConfig, stage1: dict) -> dict[str, tuple]:
    """Recipe keys whose value differs between the stage-1 run's config and ``config.finetune``."""
    mine = config.finetune.model_dump(mode="json")
    return {k: (stage1[k], mine[k]) for k in sorted(mine) if k not in _NOT_RECIPE and k in stage1
            and stage1[k] != mine[k]}


def _stage1_as_standard(config: MitigateConfig, stage1: dict | None) -> FitResult | None:
    """Method ``standard`` with the stage-1 recipe, starting weights, data and seed is the stage-1 model.

    Args:
        stage1: the stage-1 run's record (:func:`~ravl_med.models.training_records.read_fit_record`).

    Returns:
        its :class:`FitResult`, or ``None`` when anything differs (then it is trained).
    """
    from ravl_med.models.weights import resolve_checkpoint

    if config.method != "standard" or stage1 is None:
        return None
    recorded, mine = stage1["config"], config.finetune

    def same_file(a, b) -> bool:
        return (a is None and b is None) or (a is not None and b is not None and Path(a).resolve() == Path(b).resolve())

    if _recipe_diff(config, recorded) or not (same_file(recorded.get("checkpoint"), mine.checkpoint)
                                              and same_file(recorded.get("manifest"), mine.manifest)):
        return None
    return FitResult.from_record(stage1, resolve_checkpoint(config.stage1_checkpoint))


def _recipe_differences(config: MitigateConfig, stage1: dict | None) -> tuple[str, ...]:
    """A warning when stage 2's recipe differs from the one the stage-1 model was trained with.

    The paper's protocol fine-tunes stage 2 with stage 1's recipe (only the objective changes); ``stage1``
    is the record ``ravl-med finetune`` wrote beside its weights (``None``: not known, no warning).
    """
    if stage1 is None:
        return ()
    from ravl_med.models.weights import resolve_checkpoint

    record = resolve_checkpoint(config.stage1_checkpoint).parent / METRICS_FILE
    differ = _recipe_diff(config, stage1["config"])
    if not differ:
        return ()
    note = ("warning: the mitigation recipe differs from the stage-1 model's (" + record.as_posix() + "): "
            + "; ".join(f"{k} {a!r} in stage 1, {b!r} here" for k, (a, b) in differ.items())
            + ". RaVL compares methods trained with the stage-1 recipe; set the same values in finetune.")
    log.warning(note)
    return (note,)


def _class_mismatch(config: MitigateConfig, stats: dict[str, Any]) -> tuple[str, ...]:
    """A warning when the evaluation's ``spurious_class`` is not a class the audit tied the mitigated clusters to."""
    named, tied = config.evaluation.spurious_class, stats.get("tied_to")
    if named is None or not tied or named in tied:
        return ()
    note = (f"warning: --spurious-class {named!r}, but the audit tied the mitigated cluster(s) "
            f"{stats['spurious_ranks']} to {', '.join(repr(t) for t in tied)}")
    log.warning(note)
    return (note,)


def _stage1_region_labels(config: MitigateConfig, marked: tuple[Stage1Medoids, str], *,
                          progress: bool) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Every training region labelled by its nearest stage-1 medoid, and the statistics of the labels."""
    from ravl_med.data.dataset import RadiographDataset
    from ravl_med.data.manifest import Manifest, feature_presence
    from ravl_med.mitigate.methods import stage1_groups
    from ravl_med.models.registry import create_backbone
    from ravl_med.models.runtime import resolve_device
    from ravl_med.models.weights import WeightsError

    ft = config.finetune
    medoids, source = marked
    device = resolve_device(ft.device)
    if config.stage1_checkpoint is None:
        raise ConfigError(f"stage1_checkpoint: method {config.method!r} labels the training regions with the audited "
                          "stage-1 model; give its weights (set it or pass --stage1)")
    try:
        model, preprocess, _ = create_backbone(ft.backbone, checkpoint=config.stage1_checkpoint,
                                               sha256=config.stage1_sha256, device=device)
    except (WeightsError, FileNotFoundError) as err:
        raise ConfigError(f"stage1_checkpoint: {' '.join(str(err).split())}") from None
    manifest = Manifest.read(ft.manifest, classes=ft.classes)
    train = RadiographDataset(manifest, ft.ingest, ft.classes, split="train")
    region_labels = training_region_labels(model, preprocess, train, medoids, batch_size=config.label_batch_size,
                                           device=device, precision=ft.precision, progress=progress,
                                           cache_dir=Path(ft.output_dir) / STAGE1_REGION_CACHE,
                                           fingerprint=config.stage1_sha256)
    del model
    flags = np.concatenate(list(region_labels.values())) if region_labels else np.zeros(0, dtype=bool)
    groups = stage1_groups(train.labels.numpy(), train.keys, region_labels)
    stats = {
        "n_regions": int(flags.size), "spurious_fraction": float(flags.mean()) if flags.size else None,
        "images_without_relevant_region": int(sum(bool(np.all(f)) for f in region_labels.values())),
        "group_sizes": {f"{ft.classes[g // 2]}|{'with' if g % 2 else 'without'}":
                        int((groups == g).sum()) for g in range(2 * len(ft.classes))},
        "spurious_ranks": medoids.spurious_ranks, "spurious_from": source,
        "tied_to": sorted({str(t) for t in medoids.tied_to[medoids.spurious] if t}),
        "audit_outcome": medoids.outcome,
        # _medoids returns none marked only when forced, and marks without a review only when asked to
        "forced": not medoids.spurious.any() or source != REVIEW_FILE,
    }
    truth = feature_presence(manifest, train.keys)
    if truth is not None:
        labelled = images_with_spurious_region(train.keys, region_labels)
        stats["ground_truth"] = {"feature": truth[1], **labelling_agreement(labelled, truth[0])}
    return region_labels, stats


def _train(config: MitigateConfig, region_labels: dict[str, np.ndarray], **fit_kwargs) -> FitResult:
    """The method's objective and sampler through the fine-tuning loop, into ``finetune.output_dir/<method>``."""
    from ravl_med.mitigate.methods import MitigationTrainer, build_method

    ft = config.finetune
    run_config = ft.model_copy(update={"output_dir": Path(ft.output_dir) / config.method})
    pieces = build_method(config.method, finetune_config=ft, region_labels=region_labels, lambda_=config.loss_lambda,
                          temperature=config.temperature, gdro_step_size=config.gdro_step_size,
                          spurious_prompts=config.spurious_prompts, spurious_weight=config.spurious_weight)
    progress, on_step = fit_kwargs.pop("progress"), fit_kwargs.pop("on_step")
    trainer = MitigationTrainer(run_config, objective=pieces["objective"], sampler_factory=pieces["sampler_factory"],
                                region_labels=region_labels, spurious_prompts=config.spurious_prompts,
                                train_wrapper=_counterfactual_wrapper(config, pieces["counterfactual"], region_labels),
                                progress=progress, on_step=on_step)
    return trainer.fit(**fit_kwargs)


#: The manifest column of the ground-truth artefact masks the oracle reads (the phantom writes it).
ORACLE_MASK_COLUMN = "mask_artefact"


def _counterfactual_wrapper(config: MitigateConfig, kind: str | None, region_labels: dict[str, np.ndarray]):
    """The training-set wrapper of a counterfactual method (``None`` for the others).

    ``audit``: swaps of the regions the stage-1 labels call spurious; ``audit_paste``: those regions pasted
    only; ``oracle``: swaps of the ground-truth masks (manifest column :data:`ORACLE_MASK_COLUMN`), read here
    and nowhere else.
    """
    if kind is None:
        return None
    from ravl_med.mitigate.counterfactual import CounterfactualDataset

    ft = config.finetune

    def swapped(train, masks=None):
        try:
            return CounterfactualDataset(train, region_labels, len(ft.classes), ft.seed, masks=masks,
                                         remove=kind != "audit_paste")
        except ValueError as err:
            raise ConfigError(f"{config.method}: {err}") from None

    if kind in ("audit", "audit_paste"):
        return swapped

    def oracle(train):
        from ravl_med.data.masks import ingested_masks

        if ORACLE_MASK_COLUMN not in train.table.columns:
            raise ConfigError(f"{config.method}: the oracle reads the ground-truth artefact masks (manifest column "
                              f"{ORACLE_MASK_COLUMN!r}), which {ft.manifest} does not have")
        log.warning("%s is an ORACLE: it reads the ground-truth artefact masks; report it only as a ceiling",
                    config.method)
        masks = ingested_masks(train.table, [ORACLE_MASK_COLUMN], ft.ingest, Path(ft.manifest).resolve().parent)
        return swapped(train, masks)

    return oracle


def _evaluate(config: MitigateConfig, fit: FitResult, medoids: Stage1Medoids | None,
              skipped: str | None) -> tuple[EvaluationResult | None, tuple[str, ...]]:
    """The trained model on ``evaluation.split`` (groups from the ground truth, else from the audit's ``medoids``,
    the clusters training treated as spurious; ``skipped``: why those could not be had).

    Returns ``(None, ())`` when the manifest has no such split, ``(None, (why,))`` when the evaluation cannot run.
    """
    import pandas as pd

    from ravl_med.models.runtime import resolve_device
    from ravl_med.stages.evaluate import run_evaluation

    ft, plan = config.finetune, config.evaluation
    if not plan.enabled:
        return None, ()
    splits = pd.read_csv(ft.manifest, dtype=str, keep_default_na=False, usecols=lambda c: c == "split")
    if "split" not in splits or not (splits["split"] == plan.split).any():
        return None, ()
    if skipped is not None:
        return None, (skipped,)
    try:
        evaluation = run_evaluation(ft.backbone, fit.checkpoint, ft.manifest, ft.ingest, ft.classes, ft.templates,
                                    sha256=fit.sha256, split=plan.split, spurious_class=plan.spurious_class,
                                    stage1_checkpoint=config.stage1_checkpoint, stage1_sha256=config.stage1_sha256,
                                    medoids=medoids, batch_size=plan.batch_size, device=resolve_device(ft.device),
                                    n_boot=plan.n_boot, seed=ft.seed)
    except ValueError as err:
        return None, (f"test evaluation skipped: {err}",)
    return evaluation, ()
