"""Same command, config and seed -> same numbers, whatever the thread environment and machine (issue 14)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ravl_med.models.runtime import fixed_threads
from ravl_med.reproducibility import CPU_KERNEL_PINS, pin_cpu_kernels, provenance

REPO = Path(__file__).resolve().parents[1]

# What ``tests.reproducible_run`` gave on 2026-12-08 (AMD EPYC, AVX2 kernels pinned, 1 thread, the versions of
# constraints.txt). Another machine of the same kind must give the same bytes: CI checks it on every run. A
# change to the training or clustering numerics changes these on purpose: record the new values with
# ``python -m tests.reproducible_run /tmp/out`` and say why in the commit.
RECORDED_CHECKPOINT_SHA256 = "50e16d4a0c9cbe7b62dce0c41bf8186ecd805784a869bc2010ce976a0cf7797f"
RECORDED_CLUSTER_LABELS_SHA256 = "9e13dcf59d1663924409ce07b39ac6450709ad85c23ebba76ca78ef9a2c95a61"


def _run(out: Path, threads_env: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": threads_env, "MKL_NUM_THREADS": threads_env,
           "OPENBLAS_NUM_THREADS": threads_env, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "tests.reproducible_run", str(out)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_stage1_and_audit_identical_in_two_processes_with_different_thread_environments(tmp_path):
    # The processes differ in every thread variable the libraries read; the config's threads (1) rules.
    runs = [_run(tmp_path / "a", "1"), _run(tmp_path / "b", "2")]
    outputs = []
    for proc in runs:
        stdout, stderr = proc.communicate(timeout=900)
        assert proc.returncode == 0, stderr[-2000:]
        outputs.append(json.loads(stdout.strip().splitlines()[-1]))
    first, second = outputs
    assert first["sha256"] == second["sha256"]
    assert first["cluster_labels_sha256"] == second["cluster_labels_sha256"]
    assert first["ranked_clusters"] == second["ranked_clusters"]
    assert (first["outcome"], first["precision"]) == (second["outcome"], second["precision"])
    for record in (first["fit_provenance"], first["audit_provenance"]):
        assert record["threads"] == 1 and record["seed"] == 0
        assert record["versions"]["torch"] == torch.__version__.split("+")[0]
    assert first["fit_provenance"]["cpu_capability"] == second["fit_provenance"]["cpu_capability"]
    # Across machines: the bytes recorded on another machine of this kind.
    where = json.dumps({k: first["fit_provenance"][k] for k in ("cpu", "cpu_capability", "kernel_pins", "versions")})
    assert (first["sha256"], first["cluster_labels_sha256"]) == (
        RECORDED_CHECKPOINT_SHA256, RECORDED_CLUSTER_LABELS_SHA256), f"not the recorded run's bytes on {where}"


def test_fixed_threads_sets_and_restores_torch_and_blas_threads():
    from threadpoolctl import threadpool_info

    before = torch.get_num_threads()
    with fixed_threads(1):
        assert torch.get_num_threads() == 1
        assert all(pool["num_threads"] == 1 for pool in threadpool_info())
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads must be >= 1"):
        with fixed_threads(0):
            pass


def test_provenance_records_what_changes_results(monkeypatch):
    record = provenance(threads=3, seed=7, device="cpu")
    assert (record["threads"], record["seed"], record["device"]) == (3, 7, "cpu")
    assert record["versions"]["numpy"] and record["versions"]["kmedoids"]
    assert record["cpu"]
    json.dumps(record)  # JSON-ready
    # A pin the user set is left alone and recorded as set.
    monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")
    pins = pin_cpu_kernels()
    if pins:  # x86-64 with AVX2
        assert pins["MKL_CBWR"] == "COMPATIBLE"
        assert set(pins) == set(CPU_KERNEL_PINS)
        assert provenance(threads=1, seed=0)["kernel_pins"]["MKL_CBWR"] == "COMPATIBLE"


def test_threads_is_validated_in_configs():
    from ravl_med.config import ConfigError, FinetuneConfig, parse_config

    with pytest.raises(ConfigError, match="threads"):
        parse_config({"classes": ["a", "b"], "threads": 0}, FinetuneConfig)
