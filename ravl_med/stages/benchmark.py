"""The benchmark stage: phantom settings end to end (``ravl-med benchmark``, ``ravl-med demo``).

One setting, :func:`run_setting`, in four steps (each one reused when its outputs exist, so an
interrupted suite resumes where it stopped):

1. ``data``: the phantom setting written as DICOM (:func:`~ravl_med.phantom.write_setting`);
2. ``stage1``: fine-tuning with the benchmark's recipe (:func:`~ravl_med.stages.finetune.run_finetune`);
3. ``audit``: RaVL and the discovery baselines on the test split, Precision@k against the masks
   (:func:`~ravl_med.stages.audit.run_audit`); then the stage-1 evaluation on the same split, reusing
   the audit's region embeddings (the split is embedded once), where the feature is independent of the
   class: the setting is *valid* only when the model learned the shortcut
   (:func:`~ravl_med.evaluate.shortcut_learned`, as in the paper);
4. ``mitigation`` (valid settings, and invalid ones too with ``mitigation.on_invalid``): every method
   of ``config.mitigation.methods`` from the weights stage 1 started from, same recipe, same seed,
   each evaluated on the test split (:func:`~ravl_med.stages.mitigate.run_mitigation`).

Outputs of one setting under ``output_dir/<setting>``: ``data/``, ``stage1/``, ``audit/``,
``mitigate/<method>/``, ``groups/<method>.csv`` (the per-group tables) and ``result.json``
(:class:`SettingResult`). :func:`run_benchmark` runs a suite's settings and writes the tables
(:mod:`ravl_med.stages.tables`). Results go to an optional observer (tracking) as they come.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ravl_med.config import ConfigError
from ravl_med.data.atomic import atomic_path
from ravl_med.models.training_records import FitResult
from ravl_med.stages.config import BenchmarkConfig, MitigateConfig, MitigationEvaluation
from ravl_med.stages.evaluate import EvaluationResult
from ravl_med.stages.tables import METRICS, RESULT_FILE, write_tables

__all__ = ["Observer", "SettingResult", "Stage1Result", "run_benchmark", "run_setting"]

#: ``observer(run_name, result, tags)``: told of every stage result of a setting (tracking implements it).
Observer = Callable[[str, Any, Mapping[str, Any]], None]


@dataclass(frozen=True)
class Stage1Result:
    """The stage-1 model of a setting and whether it learned the planted shortcut.

    Attributes:
        fit: the fine-tuning result; evaluation: its test-split :class:`EvaluationResult`.
        shortcut_gap: acc(spurious class | feature) - acc(spurious class | no feature), test split.
        valid: ``shortcut_gap >= min_shortcut_gap`` (:func:`~ravl_med.evaluate.shortcut_learned`).
        train_seconds: wall time of the fit, s.
    """

    fit: FitResult
    evaluation: EvaluationResult
    shortcut_gap: float
    valid: bool
    train_seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"fit": self.fit.to_json(), "evaluation": self.evaluation.to_json(),
                "shortcut_gap": self.shortcut_gap, "valid": self.valid, "train_seconds": self.train_seconds}


@dataclass(frozen=True)
class SettingResult:
    """One setting's row (``<setting>/result.json``): what the tables and the demo read.

    ``stage1`` and each ``mitigation[method]`` hold the metrics of :data:`~ravl_med.stages.tables.METRICS`
    and ``train_s``; ``discovery`` maps method -> Precision@k; ``top_cluster`` is RaVL's top cluster
    (class tied, influence, size) or ``None``; ``paths`` the setting's folder, report and manifest.
    """

    setting: str
    artefact: str
    spurious_class: str
    strength: float
    seed: int
    device: str
    valid: bool
    shortcut_gap: float
    stage1: dict[str, Any]
    discovery: dict[str, float]
    top_cluster: dict[str, Any] | None
    audit_outcome: str | None
    mitigation: dict[str, dict[str, Any]]
    paths: dict[str, str]
    #: How stage 1 was computed (threads, CPU, versions: :func:`ravl_med.reproducibility.provenance`).
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SettingResult:
        return cls(**data)


def _metrics(evaluation: EvaluationResult) -> dict[str, float | None]:
    def number(value):
        return None if value is None or not np.isfinite(value) else round(float(value), 4)

    return {name: number(getattr(evaluation, name)) for name in METRICS}


def _reusable(audit) -> bool:
    """Whether the audit's embeddings are the fp32 one-pass ones the evaluation would compute."""
    from ravl_med.models.runtime import resolve_device, resolve_precision

    device = resolve_device(audit.config.device)
    return audit.config.region_mode == "one_pass" and resolve_precision(audit.config.precision, device) == "fp32"


def run_setting(setting, config: BenchmarkConfig, *, observer: Observer | None = None, progress: bool = True,
                say: Callable[[str], None] = print) -> SettingResult:
    """Runs one phantom setting end to end (see the module docstring) and returns its row.

    Args:
        setting: a :class:`~ravl_med.phantom.PhantomSetting`.
        config: the benchmark config (its ``output_dir`` is the suite's folder).
        observer: told of the stage-1 result, the audit and each mitigation as run names
            ``<setting>/stage1``, ``<setting>/audit``, ``<setting>/mitigate/<method>`` (tracking).
        progress: progress bars of the stages.
        say: where one-line stage messages go.

    Returns:
        the :class:`SettingResult`, also written to ``<setting>/result.json``.
    """
    from ravl_med.models.runtime import fixed_threads

    with fixed_threads(config.finetune.threads):
        return _run_setting(setting, config, observer=observer, progress=progress, say=say)


def _run_setting(setting, config: BenchmarkConfig, *, observer: Observer | None, progress: bool,
                 say: Callable[[str], None]) -> SettingResult:
    from ravl_med.models.runtime import resolve_device
    from ravl_med.phantom import write_setting
    from ravl_med.stages.audit import run_audit
    from ravl_med.stages.finetune import run_finetune

    root = Path(config.output_dir) / setting.name
    done = root / RESULT_FILE
    if done.is_file():
        say(f"{setting.name}: done before, reusing {done}")
        return SettingResult.from_json(json.loads(done.read_text()))
    device = resolve_device(config.finetune.device)
    tags = {"setting": setting.name, "artefact": setting.artefact, "spurious_class": setting.spurious_class,
            "strength": setting.strength, "seed": setting.seed}

    say(f"{setting.name}: [1/4] phantom data")
    manifest = write_setting(setting, root / "data", progress=progress).manifest

    say(f"{setting.name}: [2/4] stage-1 fine-tuning ({config.finetune.epochs} epochs, {config.model.backbone})")
    ft = config.finetune_config(setting, manifest, root / "stage1")
    start = time.perf_counter()
    fit = run_finetune(ft, resume=True, progress=progress)
    train_seconds = time.perf_counter() - start

    say(f"{setting.name}: [3/4] audit ({', '.join(config.audit.methods)})")
    audit = run_audit(config.audit_config(setting, manifest, root / "audit", fit.checkpoint, fit.sha256),
                      progress=progress)
    stage1 = _stage1(setting, config, ft, fit, audit, train_seconds, device, root, say)
    if observer is not None:
        observer(f"{setting.name}/stage1", stage1, tags | {"stage": "stage1", "method": "stage1",
                                                           "valid": stage1.valid})
        observer(f"{setting.name}/audit", audit, tags | {"stage": "audit", "valid": stage1.valid})
    ranked = audit.audit["methods"][audit.primary]["ranked_clusters"]  # as in audit.json

    mitigation: dict[str, dict[str, Any]] = {}
    if stage1.valid or config.mitigation.on_invalid:
        mitigation = _mitigate(setting, config, ft, stage1, root, tags, observer, progress, say)
    else:
        say(f"{setting.name}: [4/4] mitigation skipped (invalid setting; mitigation.on_invalid is off)")
    result = SettingResult(
        setting=setting.name, artefact=setting.artefact, spurious_class=setting.spurious_class,
        strength=setting.strength, seed=setting.seed, device=device, valid=stage1.valid,
        shortcut_gap=round(float(stage1.shortcut_gap), 4),
        stage1={**_metrics(stage1.evaluation), "train_s": round(train_seconds, 1)},
        discovery={m: round(float(p), 4) for m, p in audit.precision.items()},
        top_cluster=({k: ranked[0].get(k) for k in ("attribute_name", "influence", "n_regions", "n_images",
                                                     "p_adjusted", "stability")} if ranked else None),
        audit_outcome=audit.audit.get("outcome"), mitigation=mitigation,
        paths={"root": str(root), "report": str(root / "audit" / "report.html"), "manifest": str(manifest)},
        provenance=fit.provenance)
    done.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(done) as tmp:
        tmp.write_text(json.dumps(result.to_json(), indent=2) + "\n")
    return result


def _stage1(setting, config: BenchmarkConfig, ft, fit: FitResult, audit, train_seconds: float, device: str,
            root: Path, say) -> Stage1Result:
    """The stage-1 model on the test split (the audit's embeddings reused) and the validity rule."""
    from ravl_med.evaluate.groups import shortcut_gaps, shortcut_learned
    from ravl_med.stages.evaluate import run_evaluation

    evaluation = run_evaluation(ft.backbone, fit.checkpoint, ft.manifest, ft.ingest, setting.classes, ft.templates,
                                sha256=fit.sha256, split="test", spurious_class=setting.spurious_class,
                                device=device, n_boot=config.n_boot, seed=setting.seed,
                                batch_size=config.audit.batch_size,
                                embeddings=audit.embeddings if _reusable(audit) else None)
    table = evaluation.images.by_group
    gap = shortcut_gaps(table, setting.spurious_class)["spurious_gap"]
    valid = shortcut_learned(table, setting.spurious_class, config.min_shortcut_gap)
    groups_dir = root / "groups"
    groups_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(groups_dir / "stage1.csv", index=False)
    say(f"{setting.name}: stage 1 worst-group accuracy {evaluation.image_worst_group:.3f}, shortcut gap "
        f"{gap:+.3f} -> {'valid' if valid else 'INVALID (model did not learn the shortcut)'}")
    return Stage1Result(fit=fit, evaluation=evaluation, shortcut_gap=float(gap), valid=bool(valid),
                        train_seconds=train_seconds)


def _mitigate(setting, config: BenchmarkConfig, ft, stage1: Stage1Result, root: Path, tags: dict,
              observer: Observer | None, progress: bool, say) -> dict[str, Any]:
    """Every mitigation method of the setting, evaluated; returns method -> metrics and ``train_s``.

    Every method runs on the cluster(s) of ``mitigation.spurious_ranks`` without a review (``unreviewed``):
    a reviewer who accepts them. Where the audit gives nothing to mitigate, ``ravl-med mitigate`` refuses a
    method that reads its clusters (:class:`~ravl_med.stages.mitigate.NothingToMitigate`) and the user keeps
    the stage-1 model, so that is what the method scores (``refused: true``).
    """
    from ravl_med.phantom.artefacts import artefact_label
    from ravl_med.stages.mitigate import NothingToMitigate, run_mitigation

    plan = config.mitigation
    results: dict[str, Any] = {}
    knobs = plan.model_dump(exclude={"methods", "spurious_template", "method", "spurious_prompts", "on_invalid"})
    prompts = [plan.spurious_template.format(artefact_label(setting.artefact).replace("_", " "))]
    evaluation = MitigationEvaluation(spurious_class=setting.spurious_class, batch_size=config.audit.batch_size,
                                      n_boot=config.n_boot)
    for index, method in enumerate(plan.methods, 1):
        say(f"{setting.name}: [4/4] mitigation {index}/{len(plan.methods)}: {method}")
        # Same initialisation, recipe and seed as stage 1: standard fine-tuning is the stage-1 model, and so
        # is what a refused method leaves the user with.
        outcome, train_s, observed, refused = stage1.evaluation, 0.0, stage1.evaluation, False
        if method != "standard":
            mitigate = MitigateConfig(finetune=ft.model_copy(update={"output_dir": root / "mitigate"}),
                                      method=method, stage1_checkpoint=stage1.fit.checkpoint,
                                      stage1_sha256=stage1.fit.sha256, audit_dir=root / "audit",
                                      spurious_prompts=prompts, evaluation=evaluation, **knobs)
            try:
                observed = run_mitigation(mitigate, resume=True, progress=progress, unreviewed=True)
            except NothingToMitigate as refusal:
                refused = True
                say(f"{setting.name}: {method}: 'ravl-med mitigate' refuses it ({refusal}); scored as the stage-1 "
                    "model the user keeps")
            else:
                if observed.evaluation is None:  # a phantom setting always has a test split with ground truth
                    raise ConfigError(f"{setting.name}: {method} was not evaluated: "
                                      + ("; ".join(observed.notes) or "the manifest has no test rows"))
                outcome, train_s = observed.evaluation, observed.train_seconds
        outcome.images.by_group.to_csv(root / "groups" / f"{method}.csv", index=False)
        results[method] = {**_metrics(outcome), "train_s": round(train_s, 1)} | ({"refused": True} if refused else {})
        say(f"{setting.name}: {method}: accuracy {outcome.image_accuracy:.3f}, worst-group "
            f"{outcome.image_worst_group:.3f}")
        if observer is not None:
            observer(f"{setting.name}/mitigate/{method}", observed,
                     tags | {"stage": "mitigation", "method": method, "valid": stage1.valid})
    return results


def run_benchmark(config: BenchmarkConfig, *, observer: Observer | None = None, progress: bool = True,
                  say: Callable[[str], None] = print) -> tuple[list[SettingResult], dict[str, Path]]:
    """Every selected setting of ``config.suite`` through :func:`run_setting`, then the tables.

    Returns:
        the setting results in suite order and the table files (``output_dir/tables``).

    Raises:
        ConfigError: an unknown suite, or a selection that matches no setting.
    """
    from ravl_med.phantom import find_suite

    settings = find_suite(config.suite).select(config.settings)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for index, setting in enumerate(settings, 1):
        say(f"setting {index}/{len(settings)}: {setting.name}")
        results.append(run_setting(setting, config, observer=observer, progress=progress, say=say))
    files = write_tables([r.to_json() for r in results], out / "tables", config.audit.evaluation.precision_k)
    return results, files
