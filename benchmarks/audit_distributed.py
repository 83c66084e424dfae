"""Wall time of ``ravl-med audit`` alone vs under ``torchrun`` with 2 CPU processes (gloo).

A phantom test split (200 images by default) written at 128 px, tiny-rn's input size, so no resize;
the default region grid (83 boxes per image); batches of 25 (8 batches: 4 per process); a random
tiny-rn checkpoint; RaVL with its null models and stability refits off and few bootstrap resamples,
so that the embedding is most of the work. Every run starts from an empty cache, with
``threads: 1`` per process (the setting the two-process audit reproduces bit for bit). Runs, one
after the other:

* ``1 process``: ``python -m ravl_med audit ...``;
* ``torchrun x2``: ``python -m torch.distributed.run --standalone --nproc_per_node 2 -m ravl_med audit ...``;
* ``1 process, 2 threads`` (``--no-threads`` skips it): the other way to use two cores; its
  numbers differ from the others in the last bits (results depend on the thread count).

Prints per run the command's wall time (interpreter start and imports included: each torchrun
process imports torch and open_clip itself) and the embedding phase (``audit.json``'s
``embedding.time_s``: under torchrun rank 0's, from the first barrier until every shard is read), the
ratios to one process, and whether the two single-thread runs wrote the same cache shards.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/audit_distributed.py [--images 200] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["no finding", "cardiomegaly", "pneumothorax"]


def prepare(work: Path, images: int, batch_size: int) -> Path:
    """Phantom data, a random tiny-rn checkpoint and the audit YAML under ``work``; returns the YAML."""
    import torch

    from ravl_med.models import create_backbone, save_checkpoint
    from ravl_med.phantom import PhantomSetting, write_setting

    setting = PhantomSetting(name="ddp-bench", artefact="chest_drain", spurious_class="pneumothorax", strength=0.9,
                             n_train=2, n_val=0, n_test=images, image_size=128, classes=CLASSES)
    manifest = write_setting(setting, work / "phantom", progress=False).manifest
    torch.manual_seed(0)
    model, _, _ = create_backbone("tiny-rn")
    sha = save_checkpoint(model, work / "model" / "model.safetensors")
    config = {
        "backbone": "tiny-rn", "checkpoint": str(work / "model"), "sha256": sha, "manifest": str(manifest),
        "classes": CLASSES, "methods": ["ravl"], "batch_size": batch_size, "device": "cpu", "precision": "fp32",
        "threads": 1, "ingest": {"image_size": 128},
        "discovery": {"n_boot": 50, "n_stability": 0, "structure_null": 0, "n_permutations": 99},
    }
    path = work / "audit.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def audit(launcher: list[str], config: Path, out: Path) -> tuple[float, dict]:
    """Runs the audit with ``launcher`` in front of ``-m ravl_med``; (wall seconds, audit.json)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *launcher, "-m", "ravl_med", "audit", "--config", str(config),
                           "--out", str(out), "--no-progress", "--no-tracking"],
                          capture_output=True, text=True, env=env, cwd=REPO_ROOT)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"audit failed ({' '.join(launcher) or 'alone'}):\n{done.stderr[-3000:]}")
    return wall, json.loads((out / "audit.json").read_text())


def same_shards(a: Path, b: Path) -> bool:
    first, second = sorted(a.glob("cache/*/shard-*.npz")), sorted(b.glob("cache/*/shard-*.npz"))
    if [p.relative_to(a) for p in first] != [p.relative_to(b) for p in second]:
        return False
    for x, y in zip(first, second):
        with np.load(x) as one, np.load(y) as two:
            if one.files != two.files or any(not np.array_equal(one[k], two[k]) for k in one.files):
                return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=25)
    parser.add_argument("--work", type=Path, help="working folder (default: a temporary one)")
    parser.add_argument("--no-threads", action="store_true", help="skip the single process with 2 threads")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="audit-ddp-"))
    config = prepare(work, args.images, args.batch_size)
    runs = [("1 process", [], config), ("torchrun x2", ["-m", "torch.distributed.run", "--standalone",
                                                         "--nproc_per_node", "2"], config)]
    if not args.no_threads:
        threaded = work / "audit-2threads.yaml"
        threaded.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()), "threads": 2}))
        runs.append(("1 process, 2 threads", [], threaded))

    n_batches = -(-args.images // args.batch_size)
    print(f"{args.images} images, {n_batches} batches of {args.batch_size}, tiny-rn at 128 px, 83 regions per image, "
          f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} before")
    print(f"{'run':22s} {'wall s':>8s} {'embedding s':>12s} {'wall speed-up':>14s} {'embedding speed-up':>19s}")
    results = {}
    for index, (name, launcher, path) in enumerate(runs):
        wall, record = audit(launcher, path, work / f"run-{index}")
        embedding = record["embedding"]["time_s"]
        results[name] = (wall, embedding)
        base_wall, base_embedding = results["1 process"]
        print(f"{name:22s} {wall:8.1f} {embedding:12.1f} {base_wall / wall:13.2f}x {base_embedding / embedding:18.2f}x",
              flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    print(f"same cache shards (1 process vs torchrun x2): {same_shards(work / 'run-0', work / 'run-1')}")
    print(f"work folder: {work}")


if __name__ == "__main__":
    main()
