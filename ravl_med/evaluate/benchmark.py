"""End-to-end runs over phantom settings: the benchmark suite (``ravl-med benchmark``) and the demo.

One setting, :func:`run_setting`, in five stages (each one reused when its outputs exist, so an
interrupted suite resumes where it stopped):

1. ``data``: the phantom setting written as DICOM (:func:`~ravl_med.data.phantom.write_setting`);
2. ``stage1``: fine-tuning with the benchmark's recipe (:class:`~ravl_med.models.training.Trainer`),
   then the stage-1 evaluation on the test split, where the feature is independent of the class;
   the setting is *valid* only when the model learned the shortcut
   (:func:`~ravl_med.evaluate.groups.shortcut_learned`, as in the paper);
3. ``audit``: RaVL and the discovery baselines on the test split, Precision@k against the masks
   (:func:`~ravl_med.discover.audit.run_audit`);
4. ``mitigation`` (valid settings only): every method of ``config.mitigation.methods`` from the
   weights stage 1 started from, same recipe, same seed (:func:`~ravl_med.mitigate.run.run_mitigation`);
5. ``evaluation``: :func:`~ravl_med.evaluate.mitigation.evaluate_split` of each mitigated model:
   image overall / worst-group accuracy and core-region overall / worst-group accuracy.

Outputs of one setting under ``output_dir/<setting>``: ``data/``, ``stage1/``, ``audit/``,
``mitigate/<method>/``, ``groups/<method>.csv`` (the per-group tables) and ``result.json`` (the row
:func:`run_setting` returns). :func:`write_tables` turns rows into ``settings.csv``,
``discovery.csv|md``, ``mitigation.csv|md`` and two PNG plots.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ravl_med.config import BenchmarkConfig
from ravl_med.data.atomic import atomic_path

__all__ = ["RESULT_FILE", "load_rows", "run_setting", "summarise", "write_tables"]

#: The per-setting result (one row of the tables).
RESULT_FILE = "result.json"
#: Image and core-region metrics kept per model in a row.
_METRICS = ("image_accuracy", "image_worst_group", "region_accuracy", "region_worst_group")


def _write_json(data: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=_plain) + "\n")
    return path


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _metrics(evaluation: dict[str, Any]) -> dict[str, float | None]:
    def number(value):
        return None if value is None or not np.isfinite(value) else round(float(value), 4)

    return {name: number(evaluation.get(name)) for name in _METRICS}


def _evaluate(config: BenchmarkConfig, setting, manifest: Path, checkpoint: Path, sha256: str | None, device: str):
    from ravl_med.evaluate.mitigation import evaluate_split

    ft = config.finetune
    return evaluate_split(ft.backbone, checkpoint, manifest, config.audit.ingest, setting.classes, ft.templates,
                          sha256=sha256, split="test", spurious_class=setting.spurious_class, device=device,
                          n_boot=config.n_boot, seed=ft.seed, batch_size=config.audit.batch_size)


def run_setting(setting, config: BenchmarkConfig, *, tracker=None, progress: bool = True,
                say: Callable[[str], None] = print) -> dict[str, Any]:
    """Runs one phantom setting end to end (see the module docstring) and returns its row.

    Args:
        setting: a :class:`~ravl_med.data.phantom.PhantomSetting`.
        config: the benchmark config (its ``output_dir`` is the suite's folder).
        tracker: a :class:`~ravl_med.tracking.Tracker` (the invocation's parent run): a child run
            per stage-1 model, per discovery method and per mitigation method, or ``None``.
        progress: progress bars of the stages.
        say: where one-line stage messages go.

    Returns:
        ``setting``, ``artefact``, ``spurious_class``, ``strength``, ``seed``, ``valid``,
        ``shortcut_gap``, ``stage1`` (metrics), ``discovery`` (method -> Precision@k),
        ``top_cluster`` (RaVL's top cluster: class tied, influence), ``mitigation`` (method ->
        metrics and ``train_s``), ``paths``; written to ``<setting>/result.json``.
    """
    from ravl_med.data.phantom import write_setting
    from ravl_med.discover.audit import run_audit
    from ravl_med.evaluate.groups import shortcut_gaps, shortcut_learned
    from ravl_med.models.runtime import resolve_device
    from ravl_med.models.training import Trainer

    root = Path(config.output_dir) / setting.name
    done = root / RESULT_FILE
    if done.is_file():
        say(f"{setting.name}: done before, reusing {done}")
        return json.loads(done.read_text())
    device = resolve_device(config.finetune.device)
    row: dict[str, Any] = {"setting": setting.name, "artefact": setting.artefact,
                           "spurious_class": setting.spurious_class, "strength": setting.strength,
                           "seed": setting.seed, "device": device}
    tags = {"setting": setting.name, "artefact": setting.artefact, "spurious_class": setting.spurious_class,
            "strength": setting.strength, "seed": setting.seed}

    say(f"{setting.name}: [1/5] phantom data")
    manifest = write_setting(setting, root / "data", progress=progress).manifest

    say(f"{setting.name}: [2/5] stage-1 fine-tuning ({config.finetune.epochs} epochs, {config.finetune.backbone})")
    ft = config.finetune.model_copy(update={"manifest": manifest, "classes": list(setting.classes),
                                            "output_dir": root / "stage1", "seed": setting.seed}, deep=True)
    start = time.perf_counter()
    fit = Trainer(ft, progress=progress).fit(resume=True)
    stage1_s = time.perf_counter() - start
    stage1 = _evaluate(config, setting, manifest, fit.checkpoint, fit.sha256, device)
    gaps = shortcut_gaps(stage1["image_table"], setting.spurious_class)
    valid = shortcut_learned(stage1["image_table"], setting.spurious_class, config.min_shortcut_gap)
    row |= {"valid": bool(valid), "shortcut_gap": round(float(gaps["spurious_gap"]), 4),
            "stage1": {**_metrics(stage1), "train_s": round(stage1_s, 1)}}
    groups_dir = root / "groups"
    groups_dir.mkdir(parents=True, exist_ok=True)
    stage1["image_table"].to_csv(groups_dir / "stage1.csv", index=False)
    say(f"{setting.name}: stage 1 worst-group accuracy {stage1['image_worst_group']:.3f}, shortcut gap "
        f"{gaps['spurious_gap']:+.3f} -> {'valid' if valid else 'INVALID (model did not learn the shortcut)'}")
    if tracker is not None:
        with tracker.child(f"{setting.name}/stage1", tags=tags | {"stage": "stage1", "method": "stage1",
                                                                 "valid": valid}) as run:
            run.log_params({"model.checkpoint_sha256": fit.sha256, "train.steps": fit.steps})
            run.log_metrics({"test/acc/overall": stage1["image_accuracy"],
                             "test/acc/worst_group": stage1["image_worst_group"],
                             "test/shortcut_gap": gaps["spurious_gap"], "train/seconds": stage1_s})
            run.log_group_table(stage1["image_table"], split="test", feature=setting.artefact)

    say(f"{setting.name}: [3/5] audit ({', '.join(config.audit.methods)})")
    audit_config = config.audit.model_copy(update={
        "manifest": manifest, "classes": list(setting.classes), "checkpoint": fit.checkpoint, "sha256": fit.sha256,
        "output_dir": root / "audit", "seed": setting.seed}, deep=True)
    audit = run_audit(audit_config, progress=progress)
    row["discovery"] = {m: round(float(p), 4) for m, p in audit.precision.items()}
    ranked = audit.audit["methods"][audit.primary]["ranked_clusters"]  # as in audit.json
    row["top_cluster"] = ({k: ranked[0][k] for k in ("attribute_name", "influence", "n_regions", "n_images")}
                          if ranked else None)
    row["audit_outcome"] = audit.audit.get("outcome")
    if tracker is not None:
        for method, precision in row["discovery"].items():
            with tracker.child(f"{setting.name}/discover/{method}",
                               tags=tags | {"stage": "discovery", "method": method, "valid": valid}) as run:
                run.log_metrics({f"precision_at_{audit_config.evaluation.precision_k}": precision})
        tracker.log_artifacts(audit.output_dir, f"{setting.name}/audit")

    row["mitigation"] = {}
    if not valid:
        say(f"{setting.name}: [4/5] mitigation skipped (invalid setting)")
    else:
        row["mitigation"] = _mitigate(setting, config, manifest, fit, stage1, root, tags, device, tracker,
                                      progress, say)
    row["paths"] = {"root": str(root), "report": str(root / "audit" / "report.html"), "manifest": str(manifest)}
    _write_json(row, done)
    return row


def _mitigate(setting, config: BenchmarkConfig, manifest: Path, fit, stage1: dict, root: Path, tags: dict,
              device: str, tracker, progress: bool, say) -> dict[str, Any]:
    """Stages 4 and 5 for every method; returns method -> metrics."""
    from ravl_med.config import MitigateConfig
    from ravl_med.mitigate.run import run_mitigation

    plan = config.mitigation
    ft = config.finetune
    results: dict[str, Any] = {}
    knobs = plan.model_dump(exclude={"methods", "spurious_template", "method", "spurious_prompts"})
    prompts = [plan.spurious_template.format(setting.artefact.replace("_", " "))]
    for index, method in enumerate(plan.methods, 1):
        say(f"{setting.name}: [4/5] mitigation {index}/{len(plan.methods)}: {method}")
        start = time.perf_counter()
        if method == "standard":
            # Same initialisation, recipe and seed as stage 1: standard fine-tuning is the stage-1 model.
            evaluation, train_s, checkpoint = stage1, 0.0, fit.checkpoint
        else:
            mitigation_ft = ft.model_copy(update={
                "manifest": manifest, "classes": list(setting.classes), "seed": setting.seed,
                "ingest": ft.ingest.model_copy(update={"regions": config.audit.ingest.regions}),
                "output_dir": root / "mitigate"}, deep=True)
            mitigate = MitigateConfig(finetune=mitigation_ft, method=method, stage1_checkpoint=fit.checkpoint,
                                      stage1_sha256=fit.sha256, audit_dir=root / "audit", spurious_prompts=prompts,
                                      **knobs)
            summary = run_mitigation(mitigate, resume=True, progress=progress)
            train_s = time.perf_counter() - start
            checkpoint = Path(summary["result"]["checkpoint"])
            say(f"{setting.name}: [5/5] evaluating {method}")
            evaluation = _evaluate(config, setting, manifest, checkpoint, summary["result"]["sha256"], device)
        evaluation["image_table"].to_csv(root / "groups" / f"{method}.csv", index=False)
        results[method] = {**_metrics(evaluation), "train_s": round(train_s, 1)}
        say(f"{setting.name}: {method}: accuracy {evaluation['image_accuracy']:.3f}, worst-group "
            f"{evaluation['image_worst_group']:.3f}")
        if tracker is not None:
            with tracker.child(f"{setting.name}/mitigate/{method}",
                               tags=tags | {"stage": "mitigation", "method": method, "valid": True}) as run:
                run.log_params({"mitigation.checkpoint": str(checkpoint), **{f"mitigation.{k}": v
                                                                            for k, v in knobs.items()}})
                run.log_metrics({"test/acc/overall": evaluation["image_accuracy"],
                                 "test/acc/worst_group": evaluation["image_worst_group"],
                                 "test/region_acc/overall": evaluation.get("region_accuracy"),
                                 "test/region_acc/worst_group": evaluation.get("region_worst_group"),
                                 "train/seconds": train_s})
                run.log_group_table(evaluation["image_table"], split="test", feature=setting.artefact)
    return results


def load_rows(folder: str | Path) -> list[dict[str, Any]]:
    """Every ``<setting>/result.json`` under ``folder``, sorted by setting name."""
    return [json.loads(p.read_text()) for p in sorted(Path(folder).glob(f"*/{RESULT_FILE}"))]


def summarise(rows: Sequence[dict[str, Any]], precision_k: int = 10) -> dict[str, pd.DataFrame]:
    """The result tables from setting rows.

    Returns:
        ``settings`` (one row per setting), ``discovery`` (mean / std / n of Precision@k per
        method and strength, over valid settings), ``mitigation`` (mean / std / n of each metric per
        method, over valid settings).
    """
    flat = []
    for row in rows:
        base = {k: row[k] for k in ("setting", "artefact", "spurious_class", "strength", "seed", "valid",
                                    "shortcut_gap")}
        base |= {f"stage1_{k}": v for k, v in row["stage1"].items() if k in _METRICS}
        base |= {f"p@{precision_k}_{m}": v for m, v in row.get("discovery", {}).items()}
        base |= {f"{m}_{k}": v for m, values in row.get("mitigation", {}).items() for k, v in values.items()
                 if k in _METRICS}
        flat.append(base)
    settings = pd.DataFrame(flat)
    valid = [r for r in rows if r["valid"]]
    discovery = pd.DataFrame([{"method": m, "strength": r["strength"], "precision": p}
                              for r in valid for m, p in r.get("discovery", {}).items()])
    if len(discovery):
        discovery = (discovery.groupby(["method", "strength"], sort=False)["precision"]
                     .agg(mean="mean", std="std", n="count").reset_index())
    mitigation = pd.DataFrame([{"method": m, **{k: v.get(k) for k in _METRICS}}
                               for r in valid for m, v in r.get("mitigation", {}).items()])
    if len(mitigation):
        grouped = mitigation.groupby("method", sort=False)
        mitigation = pd.concat({k: grouped[k].agg(["mean", "std"]) for k in _METRICS}, axis=1)
        mitigation.columns = [f"{k}_{s}" for k, s in mitigation.columns]
        mitigation.insert(0, "n", grouped.size())
        mitigation = mitigation.reset_index()
    return {"settings": settings, "discovery": discovery, "mitigation": mitigation}


def _markdown(table: pd.DataFrame) -> str:
    """A GitHub Markdown table (floats to 3 decimals; no extra dependency)."""
    if not len(table):
        return "(no valid setting)\n"

    def cell(value):
        if isinstance(value, float):
            return "" if np.isnan(value) else f"{value:.3f}"
        return str(value)

    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def write_tables(rows: Sequence[dict[str, Any]], out: str | Path, precision_k: int = 10) -> dict[str, Path]:
    """Writes the tables of :func:`summarise` (CSV + Markdown) and the plots (PNG) under ``out``.

    Plots: ``precision_vs_strength.png`` (mean Precision@k per method against Cramer's V) and
    ``worst_group.png`` (mean image worst-group accuracy per mitigation method, error bars = std).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tables = summarise(rows, precision_k)
    files: dict[str, Path] = {}
    for name, table in tables.items():
        files[f"{name}.csv"] = out / f"{name}.csv"
        table.to_csv(files[f"{name}.csv"], index=False)
        if name != "settings":
            files[f"{name}.md"] = out / f"{name}.md"
            files[f"{name}.md"].write_text(_markdown(table))
    discovery, mitigation = tables["discovery"], tables["mitigation"]
    if len(discovery):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for method, part in discovery.groupby("method", sort=False):
            ax.errorbar(part["strength"], part["mean"], yerr=part["std"].fillna(0), marker="o", capsize=3,
                        label=method)
        ax.set(xlabel="Cramer's V of the planted shortcut", ylabel=f"Precision@{precision_k}", ylim=(-0.05, 1.05))
        ax.legend(fontsize=8)
        fig.tight_layout()
        files["precision_vs_strength.png"] = out / "precision_vs_strength.png"
        fig.savefig(files["precision_vs_strength.png"], dpi=120)
        plt.close(fig)
    if len(mitigation):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.bar(mitigation["method"], mitigation["image_worst_group_mean"],
               yerr=mitigation["image_worst_group_std"].fillna(0), capsize=3)
        ax.set(ylabel="image worst-group accuracy", ylim=(0, 1))
        ax.tick_params(axis="x", rotation=30)
        fig.tight_layout()
        files["worst_group.png"] = out / "worst_group.png"
        fig.savefig(files["worst_group.png"], dpi=120)
        plt.close(fig)
    return files
