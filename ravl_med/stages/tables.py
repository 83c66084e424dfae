"""The benchmark's result tables and plots, from the per-setting rows (``<setting>/result.json``).

:func:`write_tables` turns rows into ``settings.csv``, ``discovery.csv|md``, ``mitigation.csv|md``,
``differences.csv|md`` (methods compared seed by seed), the same two for invalid settings where they were
mitigated (``mitigation_invalid``, ``differences_invalid``: do no harm) and two PNG plots;
:func:`summarise` computes the tables; :func:`load_rows` reads a suite's rows.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ravl_med.evaluate.intervals import mean_interval

__all__ = ["METRICS", "PAIRED_METRICS", "RESULT_FILE", "load_rows", "paired_differences", "summarise", "write_tables"]

#: The per-setting result (one row of the tables).
RESULT_FILE = "result.json"
#: Image and core-region metrics kept per model in a row.
METRICS = ("image_accuracy", "image_worst_group", "region_accuracy", "region_worst_group")


def load_rows(folder: str | Path) -> list[dict[str, Any]]:
    """Every ``<setting>/result.json`` under ``folder``, sorted by setting name."""
    return [json.loads(p.read_text()) for p in sorted(Path(folder).glob(f"*/{RESULT_FILE}"))]


def summarise(rows: Sequence[dict[str, Any]], precision_k: int = 10) -> dict[str, pd.DataFrame]:
    """The result tables from setting rows.

    Returns:
        ``settings`` (one row per setting), ``discovery`` (mean, 95% interval and n of Precision@k per
        method and strength, over valid settings), ``mitigation`` (mean and 95% interval of each metric
        per method, over valid settings), ``differences`` (:func:`paired_differences` over valid settings),
        ``mitigation_invalid`` and ``differences_invalid`` (the same over invalid settings that were
        mitigated: what each method does to a model without the shortcut), ``alarms`` (per validity
        and strength: settings whose audit reported a finding; on invalid settings that is a false alarm).
    """
    flat = []
    for row in rows:
        base = {k: row[k] for k in ("setting", "artefact", "spurious_class", "strength", "seed", "valid",
                                    "shortcut_gap")}
        base |= {f"stage1_{k}": v for k, v in row["stage1"].items() if k in METRICS}
        base |= {f"p@{precision_k}_{m}": v for m, v in row.get("discovery", {}).items()}
        base |= {f"{m}_{k}": v for m, values in row.get("mitigation", {}).items() for k, v in values.items()
                 if k in METRICS}
        flat.append(base)
    settings = pd.DataFrame(flat)
    valid = [r for r in rows if r["valid"]]
    discovery = pd.DataFrame([{"method": m, "strength": r["strength"], "precision": p}
                              for r in valid for m, p in r.get("discovery", {}).items()])
    if len(discovery):
        discovery = pd.DataFrame([
            {"method": method, "strength": strength, **_interval_columns(part["precision"])}
            for (method, strength), part in discovery.groupby(["method", "strength"], sort=False)])
    invalid = [r for r in rows if not r["valid"]]
    alarms = pd.DataFrame([
        {"valid": is_valid, "strength": strength, "settings": len(part),
         "found": int((part == "found").sum()), "found_rate": float((part == "found").mean())}
        for (is_valid, strength), part in pd.DataFrame(
            [{"valid": r["valid"], "strength": r["strength"], "outcome": r.get("audit_outcome")} for r in rows]
        ).groupby(["valid", "strength"], sort=True)["outcome"]]) if rows else pd.DataFrame()
    return {"settings": settings, "discovery": discovery, "mitigation": _method_means(valid),
            "differences": paired_differences(valid), "mitigation_invalid": _method_means(invalid),
            "differences_invalid": paired_differences(invalid), "alarms": alarms}


def _method_means(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Per mitigation method: ``n`` and mean and 95% interval of each of :data:`METRICS` over ``rows``."""
    table = pd.DataFrame([{"method": m, **{k: v.get(k) for k in METRICS}}
                          for r in rows for m, v in r.get("mitigation", {}).items()])
    if not len(table):
        return table
    return pd.DataFrame([
        {"method": method, "n": len(part),
         **{f"{k}_{column}": value for k in METRICS
            for column, value in _interval_columns(part[k]).items() if column != "n"}}
        for method, part in table.groupby("method", sort=False)])


#: The metrics :func:`paired_differences` compares.
PAIRED_METRICS = ("image_worst_group", "image_accuracy")


def paired_differences(rows: Sequence[dict[str, Any]], metrics: Sequence[str] = PAIRED_METRICS) -> pd.DataFrame:
    """Method minus method, paired by setting: is one method better than another on the same seeds?

    Args:
        rows: setting rows (valid ones: the caller filters).
        metrics: mitigation metrics to compare.

    Returns:
        one row per ordered pair of methods (``method``, ``versus``) and metric: ``n`` (settings where both
        ran), ``mean`` and 95% Student-t interval (``ci_low``, ``ci_high``) of ``method - versus``.
    """
    methods = list(dict.fromkeys(m for r in rows for m in r.get("mitigation", {})))
    out = []
    for metric in metrics:
        for method in methods:
            for versus in methods:
                if versus == method:
                    continue
                deltas = [r["mitigation"][method].get(metric) - r["mitigation"][versus].get(metric) for r in rows
                          if method in r.get("mitigation", {}) and versus in r["mitigation"]
                          and r["mitigation"][method].get(metric) is not None
                          and r["mitigation"][versus].get(metric) is not None]
                out.append({"metric": metric, "method": method, "versus": versus, **_interval_columns(deltas)})
    return pd.DataFrame(out)


def _interval_columns(values) -> dict[str, float]:
    """``mean``, ``ci_low``, ``ci_high`` (95% Student-t over settings/seeds) and ``n``."""
    interval = mean_interval(pd.to_numeric(values, errors="coerce").tolist())
    return {"mean": interval.mean, "ci_low": interval.low, "ci_high": interval.high, "n": interval.n}


def _error_bars(mean, low, high) -> np.ndarray:
    """(2, n) distances from the mean to the interval's bounds (0 where the interval is undefined)."""
    mean, low, high = (np.asarray(v, dtype=np.float64) for v in (mean, low, high))
    return np.nan_to_num(np.vstack([mean - low, high - mean]), nan=0.0)


def _markdown(table: pd.DataFrame) -> str:
    """A GitHub Markdown table (floats to 3 decimals; no extra dependency)."""
    if not len(table):
        return "(no setting has results for this table)\n"

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
    ``worst_group.png`` (mean image worst-group accuracy per mitigation method); error bars are the
    95% intervals over settings and seeds (none where n < 2).
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
            ax.errorbar(part["strength"], part["mean"], yerr=_error_bars(part["mean"], part["ci_low"], part["ci_high"]),
                        marker="o", capsize=3, label=method)
        ax.set(xlabel="Cramer's V of the planted shortcut", ylabel=f"Precision@{precision_k}", ylim=(-0.05, 1.05))
        ax.legend(fontsize=8)
        fig.tight_layout()
        files["precision_vs_strength.png"] = out / "precision_vs_strength.png"
        fig.savefig(files["precision_vs_strength.png"], dpi=120)
        plt.close(fig)
    if len(mitigation):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.bar(mitigation["method"], mitigation["image_worst_group_mean"],
               yerr=_error_bars(mitigation["image_worst_group_mean"], mitigation["image_worst_group_ci_low"],
                                mitigation["image_worst_group_ci_high"]), capsize=3)
        ax.set(ylabel="image worst-group accuracy", ylim=(0, 1))
        ax.tick_params(axis="x", rotation=30)
        fig.tight_layout()
        files["worst_group.png"] = out / "worst_group.png"
        fig.savefig(files["worst_group.png"], dpi=120)
        plt.close(fig)
    return files
