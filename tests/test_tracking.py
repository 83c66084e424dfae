"""MLflow tracking (``ravl_med.tracking``, ``--tracking-uri``, ``ravl-med runs compare``).

A real ``mlflow server`` (SQLite backend, temp artifact folder, 127.0.0.1, a free port) is started
per test that needs one and stopped by its PID. A short tiny-rn fine-tune and an audit of a small
phantom set (one DICOM carries patient identifiers) log to it; everything is read back through
``MlflowClient``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import torch
import yaml

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient

from ravl_med.cli import main
from ravl_med.data.manifest import Manifest
from ravl_med.phantom import PhantomSetting, write_setting
from ravl_med.tracking import Tracker, TrackingError, group_metric_name, metric_key
from tests.factories import PATIENT_IDENTIFIERS, add_patient_identifiers

CLASSES = ["no finding", "cardiomegaly", "pneumothorax"]
PHI = PATIENT_IDENTIFIERS


@pytest.fixture(autouse=True)
def _quick_failures(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MlflowServer:
    """``mlflow server`` in its own process group; ``stop()`` kills it by its PID."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder = folder
        self.db = folder / "server.db"
        self.artifacts = folder / "server-artifacts"
        self.port = port or _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = open(folder / "server.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", f"sqlite:///{self.db}", "--artifacts-destination", str(self.artifacts),
             "--workers", "1"],
            cwd=folder, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
            # No job runner (GenAI scorers): 8 fewer processes, 1.3 GiB less (benchmarks/mlflow_server_memory.py).
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(folder / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError("mlflow server did not come up")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the group led by our PID: the server and its workers
            self.proc.wait(timeout=30)
        self.log.close()


@pytest.fixture()
def server(tmp_path):
    srv = MlflowServer(tmp_path)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """A small phantom set (train/val/test) with patient identifiers written into one test DICOM."""
    setting = PhantomSetting(name="track", artefact="chest_drain", spurious_class="pneumothorax", strength=0.5,
                             n_train=16, n_val=6, n_test=12, image_size=64, classes=CLASSES)
    manifest = write_setting(setting, tmp_path_factory.mktemp("phantom"), progress=False).manifest
    first = Manifest.read(manifest).table.query("split == 'test'").iloc[0]["path"]
    add_patient_identifiers(first, PHI)
    return manifest


def _yaml(path: Path, data: dict) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


# ----------------------------------------------------------------------------- names


def test_group_metric_names_are_legal_mlflow_names():
    from mlflow.utils.validation import _validate_metric_name

    name = group_metric_name("test", "pleural effusion", "chest drain|x=1", True)
    assert name == "test/acc/group/pleural_effusion/chest_drain_x_1-1"
    assert group_metric_name("val", "no finding", "drain", False) == "val/acc/group/no_finding/drain-0"
    _validate_metric_name(name)
    _validate_metric_name(metric_key("test/acc/group=pneumothorax|drain=1"))


# ----------------------------------------------------------------------------- local default


def test_local_sqlite_store_by_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "note.txt").write_text("hello")
    with Tracker("ravl-med/local", "t", tags={"method": "ravl", "strength": 0.5}) as run:
        run.log_params({"a": 1, "long": "x" * 2000})
        run.log_metrics({"train/loss": 0.5}, step=3)
        run.log_artifact(tmp_path / "note.txt")
        with run.child("seed-0", tags={"seed": 0}) as child:
            child.log_metric("test/acc/worst_group", 0.25)
    assert run.tracking_uri == f"sqlite:///{tmp_path / 'mlruns.db'}" and run.store == "local"
    assert (tmp_path / "mlruns.db").is_file() and (tmp_path / "mlartifacts").is_dir()
    client = MlflowClient(run.tracking_uri)
    got = client.get_run(run.run_id)
    assert got.data.params["a"] == "1" and "long" not in got.data.params
    assert got.data.metrics["train/loss"] == 0.5 and got.data.tags["method"] == "ravl"
    assert {a.path for a in client.list_artifacts(run.run_id)} == {"note.txt", "params"}
    kids = client.search_runs([got.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run.run_id}'")
    assert len(kids) == 1 and kids[0].data.tags["method"] == "ravl" and kids[0].data.metrics["test/acc/worst_group"] == 0.25


# ----------------------------------------------------------------------------- against a server


def test_finetune_and_audit_logged_to_a_server(server, phantom, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # a fallback store would land here: there must be none
    out = tmp_path / "finetune"
    finetune_yaml = _yaml(tmp_path / "finetune.yaml", {
        "backbone": "tiny-rn", "manifest": str(phantom), "classes": CLASSES, "ingest": {"image_size": 64},
        "epochs": 2, "batch_size": 8, "lr": 1e-3, "warmup_steps": 1, "checkpoint_every": 0,
        "output_dir": str(out), "device": "cpu", "seed": 0})
    assert main(["finetune", "--config", finetune_yaml, "--no-progress", "--tracking-uri", server.uri]) == 0
    audit_yaml = _yaml(tmp_path / "audit.yaml", {
        "backbone": "tiny-rn", "checkpoint": str(out), "manifest": str(phantom), "classes": CLASSES,
        "ingest": {"image_size": 64}, "methods": ["ravl", "random"], "discovery": {"n_boot": 20, "n_stability": 0},
        "output_dir": str(tmp_path / "audit"), "batch_size": 8, "device": "cpu", "precision": "fp32"})
    assert main(["audit", "--config", audit_yaml, "--no-progress", "--tracking-uri", server.uri,
                 "--spurious-class", "pneumothorax"]) == 0
    assert not (tmp_path / "mlruns.db").exists()

    client = MlflowClient(server.uri)
    experiment = client.get_experiment_by_name("ravl-med/" + phantom.parent.name)
    runs = client.search_runs([experiment.experiment_id])
    by_name = {r.info.run_name: r for r in runs}
    assert {"finetune", "audit", "ravl", "random"} <= set(by_name)

    fit = by_name["finetune"]
    assert fit.info.status == "FINISHED" and fit.data.tags["method"] == "contrastive"
    assert fit.data.params["config.backbone"] == "tiny-rn" and fit.data.params["config.ingest.image_size"] == "64"
    assert len(fit.data.params["dataset.manifest_sha256"]) == 64 and fit.data.params["dataset.rows.train"] == "16"
    assert len(fit.data.params["model.checkpoint_sha256"]) == 64 and fit.data.params["code_version"]
    assert len(client.get_metric_history(fit.info.run_id, "train/loss")) == 2
    assert len(client.get_metric_history(fit.info.run_id, "train/loss_step")) == 2 * 2
    lrs = client.get_metric_history(fit.info.run_id, "train/lr")
    assert [m.step for m in lrs] == [1, 2, 3, 4] and all(0 < m.value <= 1e-3 for m in lrs)
    assert "val/acc/overall" in fit.data.metrics and "train/images_per_s" in fit.data.metrics
    # Once per epoch (the last epoch's from log_group_table, not twice).
    for name in ("val/acc/overall", "val/acc/worst_group"):
        assert [m.step for m in client.get_metric_history(fit.info.run_id, name)] == [0, 1], name
    val_groups = {k: v for k, v in fit.data.metrics.items() if k.startswith("val/acc/group/")}
    assert val_groups and all(k.endswith(("/chest_drain-0", "/chest_drain-1")) for k in val_groups)
    assert min(val_groups.values()) == fit.data.metrics["val/acc/worst_group"]
    assert {a.path for a in client.list_artifacts(fit.info.run_id, "groups")} == {
        "groups/val_groups.csv", "groups/val_groups.json"}
    assert "model/MLmodel" in {a.path for a in client.list_artifacts(fit.info.run_id, "model")}, \
        [a.path for a in client.list_artifacts(fit.info.run_id)]
    # The pt2 format (a torch.export graph), not a pickle: MLflow warns when saving a pickle, and the
    # model loads with pickle deserialization disallowed.
    assert [a.path for a in client.list_artifacts(fit.info.run_id, "model/data")] == ["model/data/model.pt2"]
    (tmp_path / "dl").mkdir()
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    model = mlflow.pytorch.load_model(client.download_artifacts(fit.info.run_id, "model", str(tmp_path / "dl")))
    monkeypatch.delenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION")
    with torch.no_grad():
        embedded = model(torch.rand(3, 1, 128, 128))
    assert embedded.shape[0] == 3 and torch.allclose(embedded.norm(dim=1), torch.ones(3), atol=1e-4)

    audit = by_name["audit"]
    metrics = audit.data.metrics
    assert 0.0 <= metrics["test/acc/worst_group"] <= metrics["test/acc/overall"] <= 1.0
    groups = {k: v for k, v in metrics.items() if k.startswith("test/acc/group/")}
    assert groups and all(k.rsplit("-", 1)[1] in ("0", "1") for k in groups)
    assert "test/acc/group/pneumothorax/chest_drain-1" in groups
    assert min(groups.values()) == metrics["test/acc/worst_group"]
    sites = {k: v for k, v in metrics.items() if k.startswith("test/acc/attribute/site/")}
    assert sites and all(0.0 <= v <= 1.0 for v in sites.values())  # known subgroup attributes
    assert audit.data.tags["artefact"] == "chest_drain" and audit.data.tags["spurious_class"] == "pneumothorax"
    names = {a.path for a in client.list_artifacts(audit.info.run_id, "audit")}
    assert {"audit/audit.json", "audit/report.html", "audit/clusters.csv"} <= names
    assert any(n.endswith(".png") for n in names)
    assert {a.path for a in client.list_artifacts(audit.info.run_id, "groups")} == {
        "groups/test_groups.csv", "groups/test_groups.json"}
    ravl = by_name["ravl"]
    assert ravl.data.tags["mlflow.parentRunId"] == audit.info.run_id and ravl.data.tags["method"] == "ravl"
    assert "precision_at_10" in ravl.data.metrics

    capsys.readouterr()
    assert main(["runs", "compare", "--tracking-uri", server.uri]) == 0
    printed = capsys.readouterr().out
    assert "zero-shot" in printed and "worst_group" in printed

    # No patient identifier anywhere in the tracking store or its artifacts.
    server.stop()
    stored = [server.db, *[p for p in server.artifacts.rglob("*") if p.is_file()]]
    assert len(stored) > 10
    for path in stored:
        data = path.read_bytes()
        for value in PHI.values():
            assert value.encode() not in data, (path, value)
        assert b".dcm" not in data, path


def test_lost_server_falls_back_to_the_local_store(server, tmp_path, recwarn):
    local = tmp_path / "local"
    (tmp_path / "a.txt").write_text("before")
    (tmp_path / "b.txt").write_text("after")
    with Tracker("ravl-med/fallback", "bench", tags={"method": "ravl"}, tracking_uri=server.uri,
                 local_dir=local) as run:
        run.log_params({"seed": 0})
        for step in range(3):
            run.log_metric("train/loss", 1.0 / (step + 1), step)
        run.log_artifact(tmp_path / "a.txt")
        remote_id = run.run_id
        server.stop()  # the server dies mid-run
        for step in range(3, 6):
            run.log_metric("train/loss", 1.0 / (step + 1), step)
        run.log_artifact(tmp_path / "b.txt")
        with run.child("seed-1", tags={"seed": 1}) as child:
            child.log_metric("test/acc/worst_group", 0.5)
    assert run.store == "local-fallback" and run.fallback_from == server.uri
    assert sum("unreachable" in str(w.message) for w in recwarn) == 1
    client = MlflowClient(f"sqlite:///{local / 'mlruns.db'}")
    got = client.get_run(run.run_id)
    assert got.info.status == "FINISHED" and got.data.params["seed"] == "0"
    assert got.data.tags["ravl.store"] == "local-fallback" and got.data.tags["ravl.remote_run_id"] == remote_id
    history = client.get_metric_history(run.run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(6))
    assert {a.path for a in client.list_artifacts(run.run_id)} >= {"a.txt", "b.txt"}
    kids = client.search_runs([got.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run.run_id}'")
    assert len(kids) == 1 and kids[0].data.metrics["test/acc/worst_group"] == 0.5


def test_a_server_that_starts_late_is_waited_for(tmp_path, recwarn, caplog):
    """A server not up yet when the run starts (restarting, or started with the job) gets the run: no fallback."""
    port = _free_port()
    started: list[MlflowServer] = []
    launcher = threading.Thread(target=lambda: started.append(MlflowServer(tmp_path, port)))
    launcher.start()
    try:
        with Tracker("ravl-med/late", "bench", tracking_uri=f"http://127.0.0.1:{port}", local_dir=tmp_path / "local",
                     server_wait_s=120) as run:
            run.log_metric("test/acc/worst_group", 0.5)
        assert "does not answer; waiting up to 120 s" in caplog.text  # it was not up at the start
        assert run.store == "remote" and not (tmp_path / "local").exists()
        assert not any("unreachable" in str(w.message) for w in recwarn)
        assert MlflowClient(run.tracking_uri).get_run(run.run_id).data.metrics["test/acc/worst_group"] == 0.5
    finally:
        launcher.join()
        for srv in started:
            srv.stop()


def test_an_unwritable_local_store_is_a_one_line_error(tmp_path, phantom, monkeypatch, capsys):
    """A dead server and a local store that cannot be written (a read-only working directory in a hardened
    container) stop the command with one line that says what to do, before any work."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    unwritable = blocker / "store"  # a folder below a file: mkdir fails, as root too
    with pytest.raises(TrackingError, match="cannot write the local MLflow store"):
        with Tracker("ravl-med/x", "t", local_dir=unwritable):
            pass

    monkeypatch.setenv("RAVL_TRACKING_DIR", str(unwritable))
    finetune_yaml = _yaml(tmp_path / "finetune.yaml", {
        "backbone": "tiny-rn", "manifest": str(phantom), "classes": CLASSES, "ingest": {"image_size": 64},
        "epochs": 1, "batch_size": 8, "output_dir": str(tmp_path / "finetune"), "device": "cpu", "seed": 0})
    monkeypatch.setattr("ravl_med.tracking.store.SERVER_WAIT_S", 0.0)  # (the tracker's default, read at call time)
    code = main(["finetune", "--config", finetune_yaml, "--no-progress",
                 "--tracking-uri", f"http://127.0.0.1:{_free_port()}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not any((tmp_path / "finetune").iterdir())  # stopped before any training
    assert err[-1].startswith("ravl-med finetune: error: tracking server http://127.0.0.1:") and "Traceback" not in err
    assert "unreachable, and cannot write the local MLflow store in" in err[-1] and "RAVL_TRACKING_DIR" in err[-1]


def test_the_local_store_folder_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("RAVL_TRACKING_DIR", str(tmp_path / "store"))
    monkeypatch.chdir(tmp_path)
    with Tracker("ravl-med/env", "t") as run:
        run.log_metric("m", 1.0)
    assert run.tracking_uri == f"sqlite:///{tmp_path / 'store' / 'mlruns.db'}" and not (tmp_path / "mlruns.db").exists()
    assert MlflowClient(run.tracking_uri).get_run(run.run_id).data.metrics["m"] == 1.0


# ----------------------------------------------------------------------------- experiments and parent runs


def test_experiments_are_tagged_model_training(tmp_path):
    """New experiments and ones made before (without the tag) get MLflow's model-training kind; a kind
    set by a person stays."""
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(uri)
    client.create_experiment("ravl-med/old")
    client.create_experiment("ravl-med/chosen", tags={"mlflow.experimentKind": "genai_development"})
    for name in ("ravl-med/new", "ravl-med/old", "ravl-med/chosen"):
        with Tracker(name, "t", tracking_uri=uri, local_dir=tmp_path):
            pass
    kinds = {name: client.get_experiment_by_name(name).tags.get("mlflow.experimentKind")
             for name in ("ravl-med/new", "ravl-med/old", "ravl-med/chosen")}
    assert kinds == {"ravl-med/new": "custom_model_development", "ravl-med/old": "custom_model_development",
                     "ravl-med/chosen": "genai_development"}


def _setting_row(name: str, valid: bool, worst: dict[str, float], precision: dict[str, float]):
    """A benchmark setting's row: per mitigation method worst-group ``worst[m]``, overall ``worst[m] + 0.25``."""
    from ravl_med.stages.benchmark import SettingResult

    return SettingResult(
        setting=name, artefact="chest_drain", spurious_class="pneumothorax", strength=0.9, seed=0, device="cpu",
        valid=valid, shortcut_gap=0.5 if valid else 0.0, stage1={}, discovery=precision, top_cluster=None,
        audit_outcome="finding", paths={},
        mitigation={m: {"image_accuracy": w + 0.25, "image_worst_group": w, "region_accuracy": None,
                        "region_worst_group": None, "train_s": 1.0} for m, w in worst.items()})


def test_benchmark_parent_run_has_a_column_per_method(tmp_path):
    """Means over the valid settings only; a method missing from a setting, or not measured (None), is
    left out of that mean rather than counted as 0."""
    from ravl_med.tracking.observe import log_benchmark_summary

    rows = [_setting_row("a", True, {"ravl": 0.5, "standard": 0.0}, {"ravl": 1.0, "random": 0.25}),
            _setting_row("b", True, {"ravl": 0.25}, {"ravl": 0.5, "random": float("nan")}),
            _setting_row("c", False, {}, {"ravl": 0.0, "random": 0.0})]
    with Tracker("ravl-med/benchmark/t", "benchmark", local_dir=tmp_path) as run:
        logged = log_benchmark_summary(run, rows, precision_k=10)
    client = MlflowClient(run.tracking_uri)
    got = client.get_run(run.run_id).data
    assert got.metrics == logged == {
        "test/acc/worst_group/ravl": 0.375, "test/acc/overall/ravl": 0.625,
        "test/acc/worst_group/standard": 0.0, "test/acc/overall/standard": 0.25,
        "discovery/precision_at_10/ravl": 0.75, "discovery/precision_at_10/random": 0.25}
    assert got.params["summary.over"] == "mean over valid settings" and got.params["summary.valid_settings"] == "2"
    # The experiment's saved runs-table view: those columns, worst group first; the UI link opens it.
    view = json.loads(client.get_experiment(run.experiment_id).tags["mlflow.sharedViewState.ravl-med-methods"])
    assert view["name"].startswith("ravl-med: methods") and isinstance(view["createdAt"], int)
    assert json.loads(view["state"])["selectedColumns"] == [
        "metrics.`test/acc/worst_group/ravl`", "metrics.`test/acc/worst_group/standard`",
        "metrics.`test/acc/overall/ravl`", "metrics.`test/acc/overall/standard`",
        "metrics.`discovery/precision_at_10/ravl`", "metrics.`discovery/precision_at_10/random`"]
    assert run.ui_url("http://127.0.0.1:5000") == (f"http://127.0.0.1:5000/#/experiments/{run.experiment_id}/runs"
                                                   "?workflowType=machine_learning&viewStateShareKey=ravl-med-methods")


# ----------------------------------------------------------------------------- the UI in a browser


def _shows(chromium, text: str, seconds: float = 60) -> bool:
    """Whether ``text`` appears in the page within ``seconds`` (the UI renders after its API calls)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if text in chromium.page_source:
            return True
        time.sleep(1)
    return text in chromium.page_source


def test_mlflow_ui_shows_the_worst_group_metric(chromium, server, tmp_path):
    with Tracker("ravl-med/ui", "audit", tags={"method": "ravl"}, tracking_uri=server.uri,
                 local_dir=tmp_path) as run:
        run.log_metrics({"test/acc/worst_group": 0.375})
    experiment = MlflowClient(server.uri).get_experiment_by_name("ravl-med/ui").experiment_id
    chromium.get(f"{server.uri}/#/experiments/{experiment}/runs/{run.run_id}")
    found = _shows(chromium, "worst_group")
    chromium.save_screenshot(str(tmp_path / "mlflow-run.png"))
    assert found
    assert (tmp_path / "mlflow-run.png").stat().st_size > 1000


def test_mlflow_ui_runs_table_has_a_column_per_method(chromium, server, tmp_path):
    """The benchmark's parent run, opened at :meth:`Tracker.ui_url`: the model-training view's runs
    table with the per-method summary columns, not MLflow's GenAI view (traces, no metric columns)."""
    from ravl_med.tracking.observe import log_benchmark_summary

    rows = [_setting_row("s0", True, {"ravl": 0.5, "standard": 0.125}, {"ravl": 1.0, "random": 0.25}),
            _setting_row("s1", False, {}, {"ravl": 0.0})]
    with Tracker("ravl-med/benchmark/ui", "benchmark", tags={"command": "benchmark"}, tracking_uri=server.uri,
                 local_dir=tmp_path) as run:
        for method in ("ravl", "standard"):
            with run.child(f"s0/mitigate/{method}", tags={"method": method}) as child:
                child.log_metrics({"test/acc/worst_group": rows[0].mitigation[method]["image_worst_group"]})
        log_benchmark_summary(run, rows, precision_k=10)
    chromium.set_window_size(2400, 800)  # the table draws only the columns in sight
    chromium.get(run.ui_url())
    found = _shows(chromium, "test/acc/worst_group/ravl")
    chromium.save_screenshot(str(tmp_path / "mlflow-runs.png"))
    assert found, chromium.current_url
    page = chromium.page_source
    assert "discovery/precision_at_10/ravl" in page and "test/acc/worst_group/standard" in page
    # The model-training view: the runs tab, not the GenAI view's traces / overview pages.
    assert f"/experiments/{run.experiment_id}/runs" in chromium.current_url, chromium.current_url
    assert "/traces" not in chromium.current_url and "/overview" not in chromium.current_url


_OPEN_AT = """
import sys, time
from ravl_med.tracking import Tracker
start = float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))
with Tracker("ravl-med/race", sys.argv[3], tracking_uri=sys.argv[1]):
    pass
"""


def test_two_processes_can_create_a_fresh_sqlite_store_at_once(tmp_path):
    # Regression: MLflow's set-up of a new SQLite store is not safe across processes; started at the
    # same instant, one of two benchmark processes died with "table ... already exists".
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    start = time.time() + 8.0  # both interpreters have imported mlflow by then
    procs = [subprocess.Popen([sys.executable, "-c", _OPEN_AT, uri, str(start), f"run-{i}"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("ravl-med/race").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["run-0", "run-1"]


def test_log_dispatches_on_the_result_type():
    """Each stage result type has one logger; anything else is refused rather than silently skipped."""
    from ravl_med.tracking.observe import log

    with pytest.raises(TypeError, match="no tracking for results of type dict"):
        log(None, {"not": "a stage result"})
