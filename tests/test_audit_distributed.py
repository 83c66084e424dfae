"""``ravl-med audit`` under ``torchrun``: two CPU processes (gloo) give the single process's audit.

The same config is audited twice, once alone (in this process, as the CLI) and once in a subprocess
with ``python -m torch.distributed.run --nproc_per_node 2``: 24 phantom images in batches of 8, so
rank 0 embeds batches 0 and 2 and rank 1 batch 1 into the cache; rank 0 then reads all three and runs
discovery and the outputs. The cache shards, ``audit.json`` (but for the output paths, the process
count and the timings), the stage-1 medoids, ``clusters.csv`` and the galleries must be the same,
and only rank 0 reports. The random tiny-rn predicts one class for every image, so RaVL keeps no
cluster here; its silhouette per k and medoids, and the baselines' ranked clusters, are compared.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ravl_med.cli import main
from ravl_med.models import create_backbone, save_checkpoint
from ravl_med.phantom import PhantomSetting, write_setting

REPO_ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["no finding", "cardiomegaly", "pneumothorax"]
N_TEST, BATCH = 24, 8

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def audit_config(tmp_path_factory) -> Path:
    """A tiny phantom test split, a random tiny-rn checkpoint and an audit YAML for them."""
    root = tmp_path_factory.mktemp("ddp")
    setting = PhantomSetting(name="ddp", artefact="chest_drain", spurious_class="pneumothorax", strength=0.0,
                             n_train=2, n_val=0, n_test=N_TEST, image_size=64, classes=CLASSES)
    manifest = write_setting(setting, root / "phantom", progress=False).manifest
    torch.manual_seed(0)
    model, _, _ = create_backbone("tiny-rn")
    sha = save_checkpoint(model, root / "model" / "model.safetensors")
    config = {
        "backbone": "tiny-rn", "checkpoint": str(root / "model"), "sha256": sha, "manifest": str(manifest),
        "classes": CLASSES, "methods": ["ravl", "random", "george"], "batch_size": BATCH, "device": "cpu",
        "precision": "fp32", "min_images_per_class": 1, "min_zero_shot_accuracy": 0.0,
        "ingest": {"image_size": 64, "regions": {"grid_sizes": [2, 3], "overlap": 0.0}},
        "discovery": {"n_boot": 50, "n_stability": 0, "structure_null": 0, "n_permutations": 99},
        "report": {"gallery_regions": 4},
    }
    path = root / "audit.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _torchrun_audit(config: Path, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "ravl_med", "audit", "--config", str(config), "--out", str(out), "--no-progress",
                           "--no-tracking"],
                          capture_output=True, text=True, env=env, timeout=300, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def _comparable(out: Path) -> dict:
    """audit.json without what differs legitimately between the two runs."""
    audit = json.loads((out / "audit.json").read_text())
    audit["config"].pop("output_dir")
    audit["embedding"].pop("cache_dir")
    audit["embedding"].pop("processes")
    audit["embedding"].pop("time_s")
    for method in audit["methods"].values():
        method.pop("fit_time_s", None)
    return audit


def _arrays(out: Path, pattern: str) -> dict[str, dict[str, np.ndarray]]:
    """The arrays of each ``.npz`` file under ``out`` matching ``pattern``, by path relative to ``out``."""
    found = {}
    for path in sorted(out.glob(pattern)):
        with np.load(path) as data:
            found[str(path.relative_to(out))] = {name: data[name] for name in data.files}
    return found


def _assert_same_arrays(one: dict, two: dict) -> None:
    assert list(one) == list(two)
    for name in one:
        assert one[name].keys() == two[name].keys(), name
        for array in one[name]:
            np.testing.assert_array_equal(one[name][array], two[name][array], err_msg=f"{name}: {array}")


@pytest.mark.slow
def test_two_processes_audit_as_one(audit_config, tmp_path, capsys):
    alone, shared = tmp_path / "alone", tmp_path / "torchrun"
    assert main(["audit", "--config", str(audit_config), "--out", str(alone), "--no-progress", "--no-tracking"]) == 0
    assert capsys.readouterr().out.count("report:") == 1
    done = _torchrun_audit(audit_config, shared)
    assert done.stdout.count("report:") == 1  # rank 0 reports, rank 1 exits quietly
    assert "embedded" not in done.stderr  # rank 0 found rank 1's shard (no "embedded ... again" warning)

    # The merged cache: the same fingerprint folder, the same three shards, bit for bit.
    shards = _arrays(alone, "cache/*/shard-*.npz")
    assert len(shards) == N_TEST // BATCH
    _assert_same_arrays(shards, _arrays(shared, "cache/*/shard-*.npz"))
    _assert_same_arrays(_arrays(alone, "medoids.npz"), _arrays(shared, "medoids.npz"))

    audit_one, audit_two = _comparable(alone), _comparable(shared)
    assert json.loads((shared / "audit.json").read_text())["embedding"]["processes"] == 2
    assert audit_two["embedding"] == audit_one["embedding"]  # both computed all three batches
    for method in audit_one["methods"]:
        assert audit_two["methods"][method]["ranked_clusters"] == audit_one["methods"][method]["ranked_clusters"]
    assert audit_one["methods"]["random"]["ranked_clusters"]
    assert (audit_two["outcome"], audit_two["notes"]) == (audit_one["outcome"], audit_one["notes"])
    assert audit_two == audit_one
    assert (shared / "clusters.csv").read_bytes() == (alone / "clusters.csv").read_bytes()
    galleries = sorted(p.name for p in alone.glob("gallery-*.png"))
    assert galleries == sorted(p.name for p in shared.glob("gallery-*.png")) and galleries
    for name in galleries:
        assert (shared / name).read_bytes() == (alone / name).read_bytes(), name
