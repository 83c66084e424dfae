"""User mistakes give one clear line on stderr and exit code 2, before any work and before heavy imports.

Each test is one mistake a user met on an earlier version (unwritable outputs, a missing input, a
corrupt checkpoint, a missing tracking store, labels outside the classes, an unknown method, pydicom's
decoder noise, multi-label rows). Where the check must come before the stage runners (and torch,
MONAI, MLflow with them), the ``no_runners`` fixture makes importing a runner fail, so reaching one
fails the test.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pandas as pd
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit

from ravl_med.cli import main
from tests.factories import chest_like, write_cr_dicom

#: Modules that load torch/MONAI/MLflow or start a stage's work; the checks must come before them.
RUNNERS = (
    "ravl_med.data.scan",
    "ravl_med.models.runtime",
    "ravl_med.stages.audit",
    "ravl_med.stages.benchmark",
    "ravl_med.stages.finetune",
    "ravl_med.stages.mitigate",
    "ravl_med.phantom.writer",
    "ravl_med.phantom.digits",
    "ravl_med.phantom.sheet",
    "ravl_med.tracking.observe",
    "mlflow",
    "mlflow.tracking",
)
CLASSES = ["no finding", "pneumothorax"]


@pytest.fixture()
def no_runners(monkeypatch):
    """Importing a stage runner (or MLflow) raises ImportError for the duration of the test."""
    for name in RUNNERS:
        monkeypatch.setitem(sys.modules, name, None)


def one_line_error(capsys, command: str) -> str:
    """The single stderr line of a refused command (asserted), without its prefix."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1 and err.endswith("\n"), err
    prefix = f"ravl-med {command}: error: "
    assert err.startswith(prefix), err
    return err[len(prefix):].rstrip("\n")


@pytest.fixture()
def manifest(tmp_path) -> Path:
    """Four rows of the two classes (train and test); the image files are never read by these tests."""
    rows = [{"path": f"{name}.png", "label": label, "split": split}
            for name, label, split in (("a", "pneumothorax", "train"), ("b", "no finding", "train"),
                                       ("c", "pneumothorax", "test"), ("d", "no finding", "test"))]
    path = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def write_yaml(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture()
def audit_config(tmp_path, manifest) -> Path:
    return write_yaml(tmp_path / "audit.yaml", [f"manifest: {manifest}", f"classes: {CLASSES}",
                                                f"output_dir: {tmp_path / 'audit'}"])


@pytest.fixture()
def finetune_config(tmp_path, manifest) -> Path:
    return write_yaml(tmp_path / "finetune.yaml", [f"manifest: {manifest}", f"classes: {CLASSES}",
                                                   f"output_dir: {tmp_path / 'finetune'}"])


@pytest.fixture()
def read_only_dir(tmp_path) -> Path:
    """A mode-555 folder (skipped as root, which may write anywhere)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):
        folder.chmod(0o755)
        pytest.skip("running as root: a mode-555 folder is writable")
    yield folder
    folder.chmod(0o755)


def unwritable(kind: str, tmp_path: Path, request) -> Path:
    """An output folder that cannot be made: an existing file, a path below a file, or in a read-only folder."""
    blocker = tmp_path / "blocker.txt"
    blocker.write_text("not a folder\n")
    if kind == "existing file":
        return blocker
    if kind == "below a file":
        return blocker / "out"
    return request.getfixturevalue("read_only_dir") / "out"


# 1 -------------------------------------------------------------------------------------------- #

@pytest.mark.parametrize("kind", ["existing file", "below a file", "read-only folder"])
def test_ingest_refuses_an_out_it_cannot_write(kind, tmp_path, manifest, request, no_runners, capsys):
    out = unwritable(kind, tmp_path, request)
    assert main(["ingest", str(manifest), "--out", str(out), "--no-progress"]) == 2
    message = one_line_error(capsys, "ingest")
    assert message.startswith(f"--out {out}: "), message
    expected = {"existing file": "is a file, not a folder", "below a file": "cannot create this folder",
                "read-only folder": "cannot create this folder (Permission denied)"}[kind]
    assert expected in message
    assert (tmp_path / "blocker.txt").read_text() == "not a folder\n"


# 2 -------------------------------------------------------------------------------------------- #

def test_audit_out_in_a_read_only_folder_fails_before_start_up(read_only_dir, audit_config, no_runners, capsys):
    out = read_only_dir / "audit"
    assert main(["audit", "--config", str(audit_config), "--out", str(out), "--no-tracking"]) == 2
    assert one_line_error(capsys, "audit") == f"--out {out}: cannot create this folder (Permission denied)"


def _commands(tmp_path: Path, manifest: Path, audit_config: Path, finetune_config: Path, out: Path) -> dict:
    """argv per command, each writing to ``out`` (a file name below ``out`` where the command writes a file)."""
    mitigate_config = write_yaml(tmp_path / "mitigate.yaml", [
        "finetune:", f"  manifest: {manifest}", f"  classes: {CLASSES}", f"  output_dir: {tmp_path / 'm'}"])
    return {
        "ingest": ["ingest", str(manifest), "--out", str(out)],
        "validate --quarantine": ["validate", str(manifest), "--quarantine", str(out / "q.csv")],
        "validate --report": ["validate", str(manifest), "--quarantine", str(tmp_path / "q.csv"),
                              "--report", str(out / "r.json")],
        "finetune": ["finetune", "--config", str(finetune_config), "--out", str(out), "--no-tracking"],
        "audit": ["audit", "--config", str(audit_config), "--out", str(out), "--no-tracking"],
        "mitigate": ["mitigate", "--config", str(mitigate_config), "--out", str(out), "--no-tracking"],
        "benchmark": ["benchmark", "--suite", "smoke", "--out", str(out), "--no-tracking"],
        "demo": ["demo", "--out", str(out), "--no-tracking"],
        "phantom write": ["phantom", "write", "--out", str(out), "--artefact", "chest_drain",
                          "--spurious-class", "pneumothorax", "--strength", "0.9"],
        "phantom digits": ["phantom", "digits", "--out", str(out)],
        "phantom sheet": ["phantom", "sheet", "--out", str(out / "sheet.png")],
        "manifest": ["manifest", "dicom", "--root", str(tmp_path), "--out", str(out / "manifest.csv")],
    }


@pytest.mark.parametrize("command", ["ingest", "validate --quarantine", "validate --report", "finetune", "audit",
                                     "mitigate", "benchmark", "demo", "phantom write", "phantom digits",
                                     "phantom sheet", "manifest"])
def test_every_output_folder_is_checked_before_any_work(command, tmp_path, manifest, audit_config, finetune_config,
                                                        no_runners, capsys):
    out = tmp_path / "blocker.txt" / "out"
    out.parent.write_text("not a folder\n")
    argv = _commands(tmp_path, manifest, audit_config, finetune_config, out)[command]
    assert main(argv) == 2
    message = one_line_error(capsys, argv[0])
    assert "cannot create this folder (Not a directory)" in message or "its folder" in message, message
    assert str(out) in message


def test_audit_output_dir_from_the_config_is_named_as_such(tmp_path, manifest, no_runners, capsys):
    (tmp_path / "blocker.txt").write_text("")
    config = write_yaml(tmp_path / "audit.yaml", [f"manifest: {manifest}", f"classes: {CLASSES}",
                                                  f"output_dir: {tmp_path / 'blocker.txt'}"])
    assert main(["audit", "--config", str(config), "--no-tracking"]) == 2
    assert one_line_error(capsys, "audit") == f"{config}: output_dir {tmp_path / 'blocker.txt'}: is a file, not a folder"


# 3 -------------------------------------------------------------------------------------------- #

def test_validate_in_a_read_only_folder_without_quarantine(read_only_dir, manifest, monkeypatch, no_runners,
                                                            capsys):
    monkeypatch.chdir(read_only_dir)
    assert main(["validate", str(manifest), "--no-progress"]) == 2
    message = one_line_error(capsys, "validate")
    assert message == (f"--quarantine quarantine.csv: cannot write in its folder {read_only_dir} "
                       "(Permission denied)")


# 4 -------------------------------------------------------------------------------------------- #

def test_validate_on_a_missing_path_fails_before_torch_loads(tmp_path, no_runners, capsys):
    assert main(["validate", str(tmp_path / "nonexistent"), "--no-progress"]) == 2
    assert one_line_error(capsys, "validate") == f"missing_file: manifest not found: {tmp_path / 'nonexistent'}"
    assert not (tmp_path / "quarantine.csv").exists()


# 5 -------------------------------------------------------------------------------------------- #

@pytest.mark.parametrize(("command", "damage"), [("audit", "garbage"), ("finetune", "truncated")])
def test_corrupt_checkpoint_is_named(command, damage, tmp_path, audit_config, finetune_config, capsys):
    import torch
    from safetensors.torch import save_file

    weights = tmp_path / "model.safetensors"
    if damage == "garbage":
        weights.write_bytes(b"\x93this is not a checkpoint" * 8)
    else:
        save_file({"w": torch.zeros(64)}, str(weights))
        weights.write_bytes(weights.read_bytes()[:-100])
    config = audit_config if command == "audit" else finetune_config
    config.write_text(config.read_text() + f"checkpoint: {weights}\n")
    argv = [command, "--config", str(config), "--no-tracking", "--no-progress"]
    assert main(argv) == 2
    message = one_line_error(capsys, command)
    assert f"{weights}: not a valid safetensors/torch checkpoint" in message, message


# 6 -------------------------------------------------------------------------------------------- #

@pytest.mark.parametrize("given", ["--tracking-uri", "default"])
def test_runs_compare_refuses_a_missing_store_and_creates_none(given, tmp_path, monkeypatch, no_runners, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    argv = ["runs", "compare"]
    if given == "--tracking-uri":
        argv += ["--tracking-uri", "sqlite:///typo/mlruns.db"]
    assert main(argv) == 2
    message = one_line_error(capsys, "runs")
    store = tmp_path / ("typo/mlruns.db" if given == "--tracking-uri" else "mlruns.db")
    assert f"no tracking store at {store}" in message, message
    assert list(tmp_path.iterdir()) == []


# 7 -------------------------------------------------------------------------------------------- #

def test_labels_outside_the_classes_are_named_with_the_classes(tmp_path, no_runners, capsys):
    rows = [{"path": f"{i}.png", "label": label, "split": "test"} for i, label in enumerate(["Effusion", "Effusion",
                                                                                             "Mass"])]
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    config = write_yaml(tmp_path / "audit.yaml", [f"manifest: {tmp_path / 'm.csv'}", f"classes: {CLASSES}",
                                                  f"output_dir: {tmp_path / 'audit'}"])
    assert main(["audit", "--config", str(config), "--no-tracking"]) == 2
    assert one_line_error(capsys, "audit") == (
        f"{tmp_path / 'm.csv'}: no usable rows in split 'test': its rows there are labelled 'Effusion' (2), "
        "'Mass' (1); the configured classes are 'no finding', 'pneumothorax'")


# 8 -------------------------------------------------------------------------------------------- #

def test_unknown_audit_method_names_the_option(audit_config, no_runners, capsys):
    assert main(["audit", "--config", str(audit_config), "--methods", "ravl,georg", "--no-tracking"]) == 2
    assert one_line_error(capsys, "audit") == (
        "--methods: unknown value 'georg'; choose from 'ravl', 'random', 'distilling_failures', 'george' or 'domino'")


# 9 -------------------------------------------------------------------------------------------- #

def test_pydicom_decoder_errors_go_to_the_quarantine_only(tmp_path, caplog, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    path = write_cr_dicom(folder / "bad-jpeg.dcm", chest_like(32, 32, bits=8), bits_stored=8)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.BitsAllocated = 8
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xe0" + b"not a jpeg stream" * 8])
    ds.save_as(path)
    quarantine = tmp_path / "q.csv"
    with caplog.at_level(logging.DEBUG, logger="pydicom"):
        assert main(["validate", str(folder), "--quarantine", str(quarantine), "--no-progress"]) == 1
    assert [r for r in caplog.records if r.name.startswith("pydicom")] == []
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    detail = pd.read_csv(quarantine)["detail"].tolist()
    assert len(detail) == 1 and "Unable to decode" in detail[0]


# 10 ------------------------------------------------------------------------------------------- #

def test_multi_label_rows_are_refused_not_reduced(tmp_path, no_runners, capsys):
    labels = ["pneumothorax", "no finding|pneumothorax", "no finding", "no finding|pneumothorax"]
    rows = [{"path": f"{i}.png", "label": label, "split": "test"} for i, label in enumerate(labels)]
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    config = write_yaml(tmp_path / "audit.yaml", [f"manifest: {tmp_path / 'm.csv'}", f"classes: {CLASSES}",
                                                  f"output_dir: {tmp_path / 'audit'}"])
    assert main(["audit", "--config", str(config), "--no-tracking"]) == 2
    message = one_line_error(capsys, "audit")
    assert message.startswith(f"bad_row: {tmp_path / 'm.csv'}, split 'test': 2 row(s) with several labels, "
                              f"e.g. {tmp_path / '1.png'}: 'no finding|pneumothorax'; "), message
