"""The end-to-end runner behind ``ravl-med benchmark`` and ``ravl-med demo`` on a tiny suite (CPU, about a minute).

The suite is one 4-class phantom setting at 64 px with a few dozen images; training is one epoch,
so the numbers mean nothing: the tests check the plumbing (stages, outputs, tables, tracking,
resume, validity) and that every metric is what the evaluation functions compute.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from ravl_med.cli import main
from ravl_med.stages.tables import load_rows, summarise

CLASSES = ["no finding", "cardiomegaly", "pleural effusion", "pneumothorax"]
SETTING = "chest_drain-pneumothorax-v0.90-s0"


def _suite(tmp: Path) -> Path:
    path = tmp / "tiny-suite.yaml"
    path.write_text(yaml.safe_dump({
        "name": "tiny", "artefacts": ["chest_drain"], "spurious_classes": ["pneumothorax"], "strengths": [0.9],
        "seeds": [0], "sizes": {"n_train": 32, "n_val": 0, "n_test": 16, "image_size": 64, "classes": CLASSES},
    }))
    return path


def _config(tmp: Path, **overrides) -> Path:
    config = {
        "suite": str(_suite(tmp)),
        "model": {"backbone": "tiny-rn"},
        "templates": ["a chest x-ray showing {}."],
        "ingest": {"image_size": 64, "regions": {"grid_sizes": [2], "overlap": 0.0}},
        "finetune": {"epochs": 1, "batch_size": 16, "lr": 1e-3, "warmup_steps": 1, "text": "labels",
                     "label_aware": True, "checkpoint_every": 0, "device": "cpu", "precision": "fp32"},
        "audit": {"methods": ["ravl", "random"], "discovery": {"n_boot": 0, "k_range": [1, 2], "n_stability": 0}, "batch_size": 16,
                  "device": "cpu", "precision": "fp32"},
        "mitigation": {"methods": ["ravl", "standard", "vl_gdro"]},
        "min_shortcut_gap": -1.0,  # every setting valid: the one-epoch model need not learn anything
        "n_boot": 0,
        "output_dir": str(tmp / "out"),
    }
    for key, value in overrides.items():
        config[key] = value
    path = tmp / "bench.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One benchmark run of the tiny suite, tracked in a SQLite store of its own."""
    tmp = tmp_path_factory.mktemp("bench")
    config = _config(tmp)
    uri = f"sqlite:///{tmp / 'mlruns.db'}"
    code = main(["benchmark", "--config", str(config), "--no-progress", "--tracking-uri", uri])
    assert code == 0
    return tmp, config


def test_outputs_of_every_stage(finished):
    tmp, _ = finished
    root = tmp / "out" / SETTING
    row = json.loads((root / "result.json").read_text())
    assert row["valid"] is True and row["setting"] == SETTING
    assert set(row["discovery"]) == {"ravl", "random"}
    ranked = json.loads((root / "audit" / "audit.json").read_text())["methods"]["ravl"]["ranked_clusters"]
    if ranked:  # a one-epoch model may leave no cluster standing; then there is no top cluster
        assert row["top_cluster"]["attribute_name"] == ranked[0]["attribute_name"]
        assert row["top_cluster"]["n_regions"] == ranked[0]["n_regions"]
    else:
        assert row["top_cluster"] is None
    assert all(0.0 <= p <= 1.0 for p in row["discovery"].values())
    assert set(row["mitigation"]) == {"ravl", "standard", "vl_gdro"}
    # standard fine-tuning under the protocol is the stage-1 model: identical numbers, no training
    assert {k: v for k, v in row["mitigation"]["standard"].items() if k != "train_s"} == {
        k: v for k, v in row["stage1"].items() if k != "train_s"}
    assert row["mitigation"]["standard"]["train_s"] == 0.0
    for method in ("ravl", "vl_gdro"):  # they read the audit's clusters: without one, mitigate refuses them
        assert (root / "mitigate" / method / "model.safetensors").is_file() == bool(ranked)
        assert row["mitigation"][method].get("refused", False) == (not ranked)
    for name in ("stage1", "ravl", "standard", "vl_gdro"):
        table = pd.read_csv(root / "groups" / f"{name}.csv")
        assert table["count"].sum() == 16  # every test image in exactly one group
    # the reported worst group is the table's minimum over non-empty groups
    table = pd.read_csv(root / "groups" / "ravl.csv")
    assert row["mitigation"]["ravl"]["image_worst_group"] == pytest.approx(
        table.loc[table["count"] > 0, "accuracy"].min(), abs=1e-4)
    assert (root / "audit" / "report.html").is_file()
    assert row["mitigation"]["ravl"]["region_accuracy"] is not None  # phantom masks give core regions


def test_tables_and_plots(finished):
    tmp, _ = finished
    tables = tmp / "out" / "tables"
    for name in ("settings.csv", "discovery.csv", "discovery.md", "mitigation.csv", "mitigation.md",
                 "precision_vs_strength.png", "worst_group.png"):
        assert (tables / name).is_file(), name
    mitigation = pd.read_csv(tables / "mitigation.csv")
    assert list(mitigation["method"]) == ["ravl", "standard", "vl_gdro"]
    row = load_rows(tmp / "out")[0]
    assert mitigation.set_index("method").loc["ravl", "image_worst_group_mean"] == pytest.approx(
        row["mitigation"]["ravl"]["image_worst_group"])
    assert "| method |" in (tables / "mitigation.md").read_text()


def test_tracked_as_parent_and_children(finished):
    tmp, _ = finished
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("ravl-med/benchmark/tiny")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.run_name == "benchmark"
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id}
    ravl = children[f"{SETTING}/mitigate/ravl"]
    assert ravl.data.tags["method"] == "ravl" and ravl.data.tags["stage"] == "mitigation"
    assert ravl.data.tags["spurious_class"] == "pneumothorax" and ravl.data.tags["artefact"] == "chest_drain"
    row = load_rows(tmp / "out")[0]
    assert ravl.data.metrics["test/acc/worst_group"] == pytest.approx(row["mitigation"]["ravl"]["image_worst_group"],
                                                                     abs=1e-4)
    assert any(k.startswith("test/acc/group/pneumothorax/chest_drain-") for k in ravl.data.metrics)
    found = client.search_runs([experiment.experiment_id], "tags.method = 'ravl' and tags.stage = 'discovery'")
    assert len(found) == 1 and "precision_at_10" in found[0].data.metrics
    # The parent's per-method columns (one valid setting: its own values).
    summary = parents[0].data.metrics
    for method in ("ravl", "standard", "vl_gdro"):
        assert summary[f"test/acc/worst_group/{method}"] == row["mitigation"][method]["image_worst_group"]
        assert summary[f"test/acc/overall/{method}"] == row["mitigation"][method]["image_accuracy"]
    for method in ("ravl", "random"):
        assert summary[f"discovery/precision_at_10/{method}"] == row["discovery"][method]
    assert parents[0].data.params["summary.valid_settings"] == "1"
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_rerun_reuses_finished_settings(finished, capsys):
    tmp, config = finished
    before = (tmp / "out" / SETTING / "result.json").stat().st_mtime_ns
    assert main(["benchmark", "--config", str(config), "--no-progress", "--no-tracking"]) == 0
    assert "done before" in capsys.readouterr().out
    assert (tmp / "out" / SETTING / "result.json").stat().st_mtime_ns == before


def _invalid_config(tmp: Path, **mitigation) -> Path:
    """The tiny suite with RaVL's audit only and a validity bar no one-epoch model reaches (every setting invalid)."""
    config = _config(tmp, min_shortcut_gap=1.0, **({"mitigation": mitigation} if mitigation else {}))
    data = yaml.safe_load(config.read_text())
    data["audit"]["methods"] = ["ravl"]
    config.write_text(yaml.safe_dump(data))
    return config


def test_invalid_setting_is_reported_and_not_mitigated(tmp_path, capsys):
    config = _invalid_config(tmp_path)
    assert main(["benchmark", "--config", str(config), "--no-progress", "--no-tracking"]) == 0
    out = capsys.readouterr().out
    assert "INVALID" in out and "0 valid" in out
    row = load_rows(tmp_path / "out")[0]
    assert row["valid"] is False and row["mitigation"] == {}
    assert not (tmp_path / "out" / SETTING / "mitigate").exists()
    tables = summarise([row])
    assert len(tables["mitigation"]) == 0 and len(tables["settings"]) == 1
    assert len(tables["mitigation_invalid"]) == 0


def test_on_invalid_mitigates_invalid_settings_and_reports_them_apart(tmp_path, capsys):
    # Do no harm (issue 16): what each method does to a model that learned no shortcut is measured, and kept
    # out of the valid settings' tables. This audit keeps no cluster (16 test images): 'ravl-med mitigate'
    # refuses the methods that read its clusters, so the user keeps the stage-1 model and the benchmark scores
    # them so (it used to stop with a counterfactual's "0 of N labelled training images carry them" error).
    config = _invalid_config(tmp_path, methods=["standard", "counterfactual_upsampled", "vl_erm"], on_invalid=True)
    assert main(["benchmark", "--config", str(config), "--no-progress", "--no-tracking"]) == 0
    out = capsys.readouterr().out
    assert "INVALID" in out and "mitigation skipped" not in out
    assert "counterfactual_upsampled: 'ravl-med mitigate' refuses it (" in out
    row = load_rows(tmp_path / "out")[0]
    assert row["valid"] is False and set(row["mitigation"]) == {"standard", "counterfactual_upsampled", "vl_erm"}
    assert row["audit_outcome"] == "too_little_data" and row["top_cluster"] is None
    refused, standard = row["mitigation"]["counterfactual_upsampled"], row["mitigation"]["standard"]
    assert refused["refused"] is True and {k: refused[k] for k in standard} == standard
    assert "refused" not in row["mitigation"]["vl_erm"]  # reads no cluster: trained
    assert (tmp_path / "out" / SETTING / "mitigate" / "vl_erm" / "model.safetensors").is_file()
    assert not (tmp_path / "out" / SETTING / "mitigate" / "counterfactual_upsampled").exists()
    tables = summarise([row])
    assert len(tables["mitigation"]) == 0 and len(tables["differences"]) == 0
    harm = tables["mitigation_invalid"].set_index("method")
    assert harm.loc["vl_erm", "n"] == 1
    assert harm.loc["vl_erm", "image_worst_group_mean"] == pytest.approx(row["mitigation"]["vl_erm"]["image_worst_group"])
    pair = tables["differences_invalid"].set_index(["metric", "method", "versus"])
    assert pair.loc[("image_worst_group", "vl_erm", "standard"), "mean"] == pytest.approx(
        row["mitigation"]["vl_erm"]["image_worst_group"] - row["mitigation"]["standard"]["image_worst_group"])
    tables_dir = tmp_path / "out" / "tables"
    assert "vl_erm" in (tables_dir / "mitigation_invalid.md").read_text()
    assert (tables_dir / "mitigation.md").read_text() == "(no setting has results for this table)\n"


def test_unknown_setting_and_method_are_clear_errors(tmp_path, capsys):
    config = _config(tmp_path)
    assert main(["benchmark", "--config", str(config), "--settings", "nope", "--no-tracking"]) == 2
    assert "has no setting 'nope'" in capsys.readouterr().err
    assert main(["benchmark", "--config", str(config), "--methods", "ravl,magic", "--no-tracking"]) == 2
    assert "magic" in capsys.readouterr().err


def test_demo_prints_the_finding_and_before_after_table(tmp_path, capsys):
    config = _config(tmp_path, settings=[SETTING])
    data = yaml.safe_load(config.read_text())
    data["mitigation"]["methods"] = ["ravl", "standard"]
    config.write_text(yaml.safe_dump(data))
    assert main(["demo", "--config", str(config), "--no-progress", "--no-tracking"]) == 0
    out = capsys.readouterr().out
    row = load_rows(tmp_path / "out")[0]
    assert "Hidden shortcut planted: chest drain <-> pneumothorax" in out
    before, after = row["stage1"]["image_worst_group"], row["mitigation"]["ravl"]["image_worst_group"]
    assert f"Worst-group accuracy: before {before:.1%} -> after {after:.1%} (ravl)" in out
    assert out.count("chest drain?") == 1 and len([line for line in out.splitlines() if " yes " in line]) == 4
    assert "  standard (= stage 1) " in out and f"{row['mitigation']['ravl']['image_accuracy']:.1%}" in out
    assert "Audit report: " in out and "MLflow:" not in out


def test_demo_refuses_a_grid(tmp_path, capsys):
    config = _config(tmp_path)
    data = yaml.safe_load(config.read_text())
    suite = yaml.safe_load(Path(data["suite"]).read_text())
    suite["seeds"] = [0, 1]
    Path(data["suite"]).write_text(yaml.safe_dump(suite))
    assert main(["demo", "--config", str(config), "--no-tracking"]) == 2
    assert "the demo runs one setting; this config selects 2" in capsys.readouterr().err


@pytest.mark.slow
def test_shipped_smoke_suite_reaches_mitigation(tmp_path, capsys):
    # Regression: the shipped smoke suite tied the drain to pneumothorax, which the small model never
    # learned, so both settings came out invalid and the mitigation stage never ran.
    setting = "chest_drain-cardiomegaly-v0.99-s0"
    # Upsampled (reads the audit's clusters, a third of RaVL's training cost) and standard (the stage-1 model,
    # free) only: RaVL's and vl_gdro's training are covered by tests/test_mitigate.py and test_mitigation_effect.py.
    assert main(["benchmark", "--suite", "smoke", "--settings", setting, "--methods", "upsampled,standard", "--out",
                 str(tmp_path), "--no-progress", "--no-tracking"]) == 0
    row = load_rows(tmp_path)[0]
    assert row["setting"] == setting and row["valid"], capsys.readouterr().out
    assert set(row["mitigation"]) == {"upsampled", "standard"}
    assert all(0.0 <= m["image_worst_group"] <= 1.0 for m in row["mitigation"].values())


def test_paired_differences_pair_methods_by_setting():
    from ravl_med.stages.tables import paired_differences

    def row(seed, a, b):
        methods = {"a": {"image_worst_group": a, "image_accuracy": 0.5}}
        if b is not None:
            methods["b"] = {"image_worst_group": b, "image_accuracy": 0.4}
        return {"setting": f"s{seed}", "mitigation": methods}

    rows = [row(0, 0.3, 0.1), row(1, 0.5, 0.2), row(2, 0.4, 0.2), row(3, 0.9, None)]  # b did not run on s3
    table = paired_differences(rows).set_index(["metric", "method", "versus"])
    a_b = table.loc[("image_worst_group", "a", "b")]
    deltas = [0.2, 0.3, 0.2]
    assert a_b["n"] == 3 and a_b["mean"] == pytest.approx(np.mean(deltas))
    assert a_b["ci_low"] < a_b["mean"] < a_b["ci_high"]
    assert table.loc[("image_worst_group", "b", "a"), "mean"] == pytest.approx(-np.mean(deltas))
    assert table.loc[("image_accuracy", "a", "b"), "mean"] == pytest.approx(0.1)


def test_summarise_reports_means_with_95_intervals_over_seeds_and_false_alarms():
    from scipy import stats

    from ravl_med.evaluate import mean_interval

    def row(seed, precision, valid=True, outcome="found"):
        return {"setting": f"s{seed}", "artefact": "chest_drain", "spurious_class": "pneumothorax", "strength": 0.9,
                "seed": seed, "valid": valid, "shortcut_gap": 0.5, "stage1": {}, "discovery": {"ravl": precision},
                "mitigation": {"ravl": {"image_worst_group": precision / 2}} if valid else {},
                "audit_outcome": outcome}

    values = [1.0, 0.8, 0.6, 1.0, 0.9]
    rows = [row(i, v) for i, v in enumerate(values)] + [row(9, 0.0, valid=False, outcome="not_significant"),
                                                        row(8, 0.0, valid=False, outcome="found")]
    tables = summarise(rows)
    discovery = tables["discovery"].set_index("method").loc["ravl"]
    half = stats.t.ppf(0.975, 4) * np.std(values, ddof=1) / np.sqrt(5)
    assert discovery["n"] == 5 and discovery["mean"] == pytest.approx(np.mean(values))
    assert (discovery["ci_low"], discovery["ci_high"]) == pytest.approx((np.mean(values) - half, np.mean(values) + half))
    mitigation = tables["mitigation"].set_index("method").loc["ravl"]
    assert mitigation["image_worst_group_mean"] == pytest.approx(np.mean(values) / 2)
    alarms = tables["alarms"].set_index("valid")
    assert alarms.loc[False, "found"] == 1 and alarms.loc[False, "settings"] == 2
    assert alarms.loc[True, "found_rate"] == 1.0
    assert mean_interval([0.5]).n == 1 and np.isnan(mean_interval([0.5]).low)
    assert str(mean_interval([])) == "n/a"
    assert str(mean_interval([0.1, 0.3])).startswith("0.20 [-")
    assert f"{mean_interval([0.1, 0.3]):+.3f}".startswith("+0.200 [-")  # t(1) interval crosses zero
    assert f"{mean_interval([0.5]):.3f}" == "0.500 (n=1)"
