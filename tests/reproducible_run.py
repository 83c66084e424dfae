"""One short stage 1 + audit with the demo's model, recipe, regions and audit, in a process of its own.

``python -m tests.reproducible_run OUT`` writes the smoke suite's first phantom setting (400 training /
160 test images), fine-tunes the demo's model on it for 2 epochs, audits it with RaVL, and prints one
JSON line: the checkpoint's sha256, the audit's outcome, Precision@10, every region's cluster, the
ranked clusters and the provenance. ``tests/test_reproducibility.py`` runs it twice under different
thread environments and compares the lines.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from ravl_med.config import load_config
from ravl_med.phantom import find_suite, write_setting
from ravl_med.reproducibility import pin_cpu_kernels
from ravl_med.stages.audit import run_audit
from ravl_med.stages.config import BenchmarkConfig
from ravl_med.stages.finetune import run_finetune

DEMO = Path(__file__).resolve().parents[1] / "datasets" / "benchmarks" / "demo.yaml"


def main(out: Path) -> None:
    pin_cpu_kernels()  # as the CLI does first thing
    config = load_config(DEMO, BenchmarkConfig)
    config.finetune.epochs = 2
    config.audit.methods = ["ravl"]
    config.audit.discovery.n_boot = 50
    config.audit.discovery.n_stability = 3
    setting = find_suite("benchmark-smoke").settings()[0]
    manifest = write_setting(setting, out / "data", progress=False).manifest
    fit = run_finetune(config.finetune_config(setting, manifest, out / "stage1"), progress=False)
    audit = run_audit(config.audit_config(setting, manifest, out / "audit", fit.checkpoint, fit.sha256),
                      progress=False)
    ravl = audit.discoverers["ravl"]
    labels = [] if ravl.labels_ is None else ravl.labels_.tolist()
    print(json.dumps({
        "sha256": fit.sha256,
        "outcome": audit.outcome,
        "precision": audit.precision,
        "cluster_labels_sha256": hashlib.sha256(json.dumps(labels).encode()).hexdigest(),
        "ranked_clusters": audit.audit["methods"]["ravl"]["ranked_clusters"],
        "fit_provenance": fit.provenance,
        "audit_provenance": audit.audit["provenance"],
    }))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
