"""What each stage's result looks like in MLflow: :func:`log` per result type, and the runs that hold them.

The stages know nothing of MLflow. A command opens a run (:func:`stage_run`), calls a stage runner
and hands its typed result to :func:`log`; the benchmark hands every result of a setting to a
:class:`TrackingObserver`, which opens a child run per result. Either way a result type is always
logged by the same function, with the names of :mod:`ravl_med.tracking.names`.

| result | logged |
|---|---|
| :class:`~ravl_med.models.training.FitResult` | per epoch ``train/loss``, ``train/images_per_s``, ``train/steps``, ``val/acc/overall``, ``val/acc/worst_group``; the last epoch's val group table; ``model.checkpoint_sha256``, ``train.steps``; ``metrics.json``; with ``backbone=``, the model (PyTorch flavour) |
| :class:`~ravl_med.stages.evaluate.EvaluationResult` | the group table (``{split}/acc/group/...``, ``{split}/acc/overall``, ``{split}/acc/worst_group``, ``groups/{split}_groups.csv``/``.json``), ``{split}/region_acc/overall``/``worst_group`` |
| :class:`~ravl_med.stages.audit.AuditResult` | zero-shot ``{split}/acc/overall`` and, when the manifest marks the feature, the group table; the audit folder under ``audit/``; a child run per method with ``clusters_kept`` and ``precision_at_{k}`` |
| :class:`~ravl_med.stages.mitigate.MitigationResult` | its FitResult, ``train/seconds``, ``mitigate.json``/``evaluation.json``/``groups.csv``, its EvaluationResult |
| :class:`~ravl_med.stages.benchmark.Stage1Result` | its FitResult, EvaluationResult, ``test/shortcut_gap``, ``train/seconds`` |
| the :class:`~ravl_med.stages.benchmark.SettingResult` rows of a benchmark or demo (:func:`log_benchmark_summary`, parent run) | per mitigation method ``test/acc/overall/<method>`` and ``test/acc/worst_group/<method>``, per discovery method ``discovery/precision_at_{k}/<method>``: means over the valid settings; params ``summary.over``, ``summary.valid_settings`` |
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ravl_med.tracking import names
from ravl_med.tracking.store import TrackedRun, Tracker, flatten, optional_tracker

__all__ = ["TrackingObserver", "TrackingOptions", "dataset_name", "log", "log_benchmark_summary", "manifest_summary",
           "stage_run"]


@dataclass(frozen=True)
class TrackingOptions:
    """Where a command logs: ``enabled`` (``--no-tracking`` turns it off), ``uri`` (``--tracking-uri``),
    ``experiment`` (``--experiment``; ``None``: the command's default)."""

    enabled: bool = True
    uri: str | None = None
    experiment: str | None = None


def dataset_name(manifest: str | Path) -> str:
    """An experiment name for a manifest: its file stem, or its folder's name for ``manifest.csv``."""
    path = Path(manifest)
    name = path.parent.name if path.stem in ("manifest", "") else path.stem
    return f"ravl-med/{name or 'dataset'}"


def manifest_summary(manifest: str | Path) -> tuple[dict[str, Any], dict[str, str]]:
    """(params, tags) describing a manifest CSV without any of its paths or header fields.

    Params: ``dataset.manifest_sha256``, ``dataset.rows`` and ``dataset.rows.<split>``,
    ``dataset.labels.<label>`` counts. Tags: ``setting`` (the dataset name), ``artefact`` (most
    common non-empty ``artefact`` value, phantom and digits manifests).
    """
    import pandas as pd

    # Here, not at the top: the models package imports torch, and the CLI imports this module for --help.
    from ravl_med.models.weights import file_sha256

    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    params: dict[str, Any] = {"dataset.manifest_sha256": file_sha256(manifest), "dataset.rows": len(table)}
    for column, name in (("split", "rows"), ("label", "labels")):
        if column in table:
            for value, count in table[column].value_counts().sort_index().items():
                params[f"dataset.{name}.{value or 'none'}"] = int(count)
    tags = {"setting": dataset_name(manifest).split("/", 1)[1]}
    if "artefact" in table:
        values = table["artefact"][table["artefact"] != ""]
        if len(values):
            tags["artefact"] = str(values.value_counts().index[0])
    return params, tags


@contextlib.contextmanager
def stage_run(options: TrackingOptions, *, command: str, config, manifest: str | Path, backbone: str, seed: int,
              tags: Mapping[str, Any], run_name: str | None = None) -> Iterator[tuple[Tracker | None, Any]]:
    """The MLflow run of one command (``finetune``, ``audit``, ``mitigate``), or ``(None, None)`` when disabled.

    Logs the whole ``config``, the manifest summary (no paths), backbone, seed and code version, and
    yields ``(run, on_step)``: ``on_step(step, {"loss", "lr"})`` for the trainer logs
    ``train/loss_step`` and ``train/lr`` per optimizer step.

    Args:
        options: where to log; command: the ``command`` tag; run_name: the run's name (default: ``command``).
        config: the command's config; manifest: the manifest it reads; backbone, seed: logged as params.
        tags: further tags (``method``, ...).
    """
    params, base_tags = manifest_summary(manifest)
    tags = base_tags | {"command": command, "seed": seed, **tags}
    with optional_tracker(options.enabled, options.experiment or dataset_name(manifest), run_name or command,
                          tags=tags, tracking_uri=options.uri) as run:
        if run is None:
            yield None, None
            return
        run.log_config(config)
        run.log_params({**params, "model.backbone": backbone, "seed": seed,
                        "code_version": run.tags.get("ravl.code_version", "")})

        def on_step(step: int, metrics: Mapping[str, float]) -> None:
            run.log_metrics({names.STEP_METRICS.get(k, f"train/{k}"): v for k, v in metrics.items()}, step)

        yield run, on_step


# --------------------------------------------------------------------------------------------- #
# One function per result type


def log(run: TrackedRun, result: Any, **context: Any) -> None:
    """Logs a stage's ``result`` to ``run`` (see the module docstring for what each type logs).

    Args:
        run: an open run (:class:`Tracker` or a child).
        result: a stage result; context: per-type options (``split``; for a fit or a mitigation
            ``backbone``: also log the trained model; for an audit ``spurious_class``,
            ``method_prefix`` and ``method_tags`` of the per-method child runs).

    Raises:
        TypeError: no logger for this result type.
    """
    logger = _loggers().get(type(result))
    if logger is None:
        raise TypeError(f"no tracking for results of type {type(result).__name__}")
    logger(run, result, **context)


@functools.cache
def _loggers() -> dict[type, Callable[..., None]]:
    """Result type -> its logger (built on first use: the result types import torch)."""
    from ravl_med.models.training_records import FitResult
    from ravl_med.stages.audit import AuditResult
    from ravl_med.stages.benchmark import Stage1Result
    from ravl_med.stages.evaluate import EvaluationResult
    from ravl_med.stages.mitigate import MitigationResult

    return {FitResult: _log_fit, EvaluationResult: _log_evaluation, AuditResult: _log_audit,
            MitigationResult: _log_mitigation, Stage1Result: _log_stage1}


def _log_fit(run: TrackedRun, result, *, backbone: str | None = None, **_: Any) -> None:
    """The fit's epochs, checksum and metrics file; with ``backbone``, its final weights as an MLflow model."""
    import pandas as pd

    from ravl_med.models.training_records import METRICS_FILE

    last = result.history[-1] if result.history and result.history[-1].val_groups else None
    for epoch in result.history:
        metrics = {names.TRAIN_LOSS: epoch.train_loss, names.TRAIN_IMAGES_PER_S: epoch.images_per_s,
                   names.TRAIN_STEPS: epoch.steps}
        if epoch is not last:  # log_group_table logs these two for the last epoch
            metrics |= {names.accuracy("val", "overall"): epoch.val_accuracy,
                        names.accuracy("val", "worst_group"): epoch.val_worst_group}
        run.log_metrics(metrics, step=epoch.epoch)
    if last is not None:
        run.log_group_table(pd.DataFrame(last.val_groups), split="val", feature=result.feature or "feature",
                            step=last.epoch)
    run.log_params({"model.checkpoint_sha256": result.sha256, "train.steps": result.steps})
    _log_provenance(run, result.provenance)
    metrics_file = Path(result.checkpoint).parent / METRICS_FILE
    if metrics_file.is_file():
        run.log_artifact(metrics_file)
    if backbone is not None:
        from ravl_med.models.registry import create_backbone

        model, preprocess, _ = create_backbone(backbone, checkpoint=result.checkpoint, sha256=result.sha256)
        run.log_model(model, preprocess)


def _log_provenance(run: TrackedRun, info: Mapping[str, Any]) -> None:
    """How the result was computed (:func:`ravl_med.reproducibility.provenance`) as ``provenance.*`` params
    (threads, CPU, kernel pins, library versions), so runs computed differently can be told apart."""
    if info:
        run.log_params(flatten(dict(info), f"{names.PROVENANCE_PREFIX}."))


def _log_evaluation(run: TrackedRun, result, *, split: str = "test", **_: Any) -> None:
    run.log_group_table(result.images.by_group, split=split, feature=result.feature or "feature")
    if result.regions is not None:
        run.log_metrics({names.region_accuracy(split, "overall"): result.region_accuracy,
                         names.region_accuracy(split, "worst_group"): result.region_worst_group})


def _log_audit(run: TrackedRun, result, *, spurious_class: str | None = None, method_prefix: str = "",
               method_tags: Mapping[str, Any] | None = None, **_: Any) -> None:
    """The audit in ``run``; a child run ``<method_prefix><method>`` per discovery method."""
    import numpy as np

    from ravl_med.data.manifest import feature_presence
    from ravl_med.evaluate.groups import GroupAccuracy

    config = result.config
    if config.checkpoint is not None:
        run.log_params({"model.checkpoint_sha256": result.audit["model"]["sha256"]})
    _log_provenance(run, result.audit.get("provenance", {}))
    split = config.split or "all"
    labels = np.asarray(result.embeddings.labels, dtype=np.int64)
    predictions = result.image_scores.argmax(axis=1)
    presence = feature_presence(config.manifest, result.embeddings.keys)
    if presence is None:
        run.log_metrics({names.accuracy(split, "overall"): result.audit["zero_shot"]["accuracy"]})
    else:
        flags, feature = presence
        spurious = spurious_class if spurious_class in config.classes else None
        frame = GroupAccuracy(labels=labels, predictions=predictions, feature_present=flags, classes=config.classes,
                              spurious_class=spurious, n_boot=config.discovery.n_boot, seed=config.seed)
        run.log_group_table(frame.by_group, split=split, feature=feature)
    attributes = (result.audit.get("attributes") or {}).get("by_value") or []
    run.log_metrics({names.attribute_metric_name(split, r["attribute"], r["value"]): r["accuracy"] for r in attributes})
    run.log_artifacts(result.output_dir, "audit")
    for method, discoverer in result.discoverers.items():
        tags = {**(method_tags or {}), "method": method, "outcome": discoverer.outcome_}
        with run.tracker.child(f"{method_prefix}{method}", tags=tags) as child:
            metrics = {names.CLUSTERS_KEPT: len(discoverer.ranked_clusters_)}
            if method in result.precision:
                metrics[names.precision_at(config.evaluation.precision_k)] = result.precision[method]
            child.log_metrics(metrics)


def _log_mitigation(run: TrackedRun, result, *, backbone: str | None = None, **_: Any) -> None:
    settings = result.config.model_dump(mode="json", exclude={"finetune", "evaluation", "stage1_checkpoint",
                                                               "stage1_sha256", "audit_dir"})
    run.log_params({f"mitigation.{key}": value for key, value in settings.items()})
    _log_fit(run, result.fit, backbone=backbone)
    run.log_metrics({names.TRAIN_SECONDS: result.train_seconds})
    for name in ("mitigate.json", "evaluation.json", "groups.csv"):
        if (result.output_dir / name).is_file():
            run.log_artifact(result.output_dir / name)
    if result.evaluation is not None:
        _log_evaluation(run, result.evaluation, split=result.config.evaluation.split)


def _log_stage1(run: TrackedRun, result, **_: Any) -> None:
    _log_fit(run, result.fit)
    _log_evaluation(run, result.evaluation)
    run.log_metrics({names.SHORTCUT_GAP: result.shortcut_gap, names.TRAIN_SECONDS: result.train_seconds})


#: The key of the runs-table view with the per-method columns (:meth:`Tracker.save_runs_view`).
METHODS_VIEW = "ravl-med-methods"


def log_benchmark_summary(run: TrackedRun, rows: Sequence[Any], *, precision_k: int,
                          split: str = "test") -> dict[str, float]:
    """One column per method in a benchmark's (or the demo's) parent run, so the runs table compares
    methods without expanding the child runs.

    Each value is the mean over the valid settings (the model learned the shortcut) that have it, as
    in the benchmark's tables: image-level accuracy and worst-group accuracy of each mitigation method
    (from its :class:`~ravl_med.stages.evaluate.EvaluationResult`, kept in ``SettingResult.mitigation``)
    and Precision@k of each discovery method (only settings with ground-truth masks have one). With one
    setting the mean is that setting's value; params ``summary.over`` and ``summary.valid_settings``
    say so in the run. The experiment gets a saved runs-table view (:data:`METHODS_VIEW`) with these
    columns, which :meth:`Tracker.ui_url` opens.

    Args:
        run: the parent run; rows: the :class:`~ravl_med.stages.benchmark.SettingResult` of every setting.
        precision_k: the ``k`` of the audits' Precision@k; split: the split the mitigations were evaluated on.

    Returns:
        the logged metrics (name -> mean); empty when no setting is valid.
    """
    valid = [row for row in rows if row.valid]
    mitigations = list(dict.fromkeys(method for row in valid for method in row.mitigation))
    discoveries = list(dict.fromkeys(method for row in valid for method in row.discovery))
    # Column order in the UI's view: worst group of every method first, then overall, then discovery.
    columns = {(which, method): names.method_accuracy(split, which, method)
               for which in ("worst_group", "overall") for method in mitigations}
    columns |= {("precision", method): names.discovery_precision(precision_k, method) for method in discoveries}
    values: dict[str, list[float | None]] = {name: [] for name in columns.values()}
    for row in valid:
        for method, metrics in row.mitigation.items():
            values[columns["worst_group", method]].append(metrics.get("image_worst_group"))
            values[columns["overall", method]].append(metrics.get("image_accuracy"))
        for method, precision in row.discovery.items():
            values[columns["precision", method]].append(precision)
    # None / NaN: not measured, left out of the mean rather than counted as 0.
    measured = {name: [float(v) for v in vs if v is not None and math.isfinite(v)] for name, vs in values.items()}
    summary = {name: sum(vs) / len(vs) for name, vs in measured.items() if vs}
    run.log_params({names.SUMMARY_OVER: "mean over valid settings", names.SUMMARY_VALID_SETTINGS: len(valid)})
    run.log_metrics(summary)
    if summary:  # the UI shows no metric column until one is picked: a saved view picks these
        run.tracker.save_runs_view(METHODS_VIEW, "ravl-med: methods (mean over valid settings)", list(summary))
    return summary


class TrackingObserver:
    """The benchmark's observer: each result it is told of goes to a child run of ``tracker``.

    Called as ``observer(name, result, tags)`` by :func:`~ravl_med.stages.benchmark.run_setting`
    with ``name`` = ``<setting>/<stage...>``; an audit's methods go to ``<setting>/discover/<method>``
    children tagged ``stage=discovery``.
    """

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker

    def __call__(self, name: str, result: Any, tags: Mapping[str, Any]) -> None:
        setting = name.rsplit("/", 1)[0]
        with self.tracker.child(name, tags=tags) as run:
            log(run, result, spurious_class=tags.get("spurious_class"), method_prefix=f"{setting}/discover/",
                method_tags={**tags, "stage": "discovery"})
