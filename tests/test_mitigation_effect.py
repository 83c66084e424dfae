"""RaVL mitigation raises worst-group accuracy above standard fine-tuning in the digits setting, on the CPU.

Standard fine-tuning is the stage-1 model of ``tests/shortcut_fixtures.py`` (the recipe, seed 0).
RaVL runs the paper's protocol: audit the stage-1 model on the test split, label the training
regions by nearest stage-1 medoid, then fine-tune from the same initialisation (a seed-0 random
tiny-rn) with the same recipe, seed and number of steps, adding the region terms. Both models are
scored on the test split, where the feature is independent of the class.

Spurious clusters:

* digits: those a reviewer would confirm from the audit's galleries, i.e. kept clusters tied to the
  spurious class whose top regions are mostly the planted feature (Precision@10 >= 0.5 against the
  ground truth). The digits audit splits the square over several such clusters; the top one alone
  labels too few regions to change anything.
The phantom counterpart (chest drain <-> cardiomegaly, one seed) is not claimed here: with the thread
count pinned at 1 it gave RaVL 0.08 vs standard 0.18 worst-group accuracy; issue 16 measures
mitigation over >= 5 seeds with intervals (benchmarks/, BENCHMARKS.md) instead of one CI seed.
"""

from __future__ import annotations

import json

import pytest

from ravl_med.evaluate.groups import worst_group_accuracy
from ravl_med.stages.audit import run_audit
from ravl_med.stages.config import AuditConfig, MitigateConfig, MitigationEvaluation
from ravl_med.stages.mitigate import run_mitigation
from ravl_med.stages.review import run_review
from tests.shortcut_fixtures import ShortcutRun, describe

pytestmark = pytest.mark.slow


def _mitigate(run: ShortcutRun, tmp_path) -> dict:
    """Audits ``run``'s model, then RaVL fine-tunes with the spurious clusters of the module docstring."""
    ingest = run.config.ingest.model_copy(deep=True)
    audit = run_audit(AuditConfig(
        backbone=run.config.backbone, checkpoint=run.result.checkpoint, sha256=run.result.sha256,
        manifest=run.config.manifest, split="test", classes=list(run.config.classes), templates=list(run.templates),
        ingest=ingest, methods=["ravl"], discovery={"n_boot": 0, "n_stability": 0}, output_dir=tmp_path / "audit", batch_size=64,
        device="cpu", precision="fp32"), progress=False)
    ranked = json.loads((audit.output_dir / "audit.json").read_text())["methods"]["ravl"]["ranked_clusters"]
    assert ranked[0]["attribute_name"] == run.spurious_class
    spurious_ranks = [c["rank"] for c in ranked if c["attribute_name"] == run.spurious_class and c["precision_at_k"] >= 0.5]
    assert 1 in spurious_ranks, [(c["rank"], c["attribute_name"], c["precision_at_k"]) for c in ranked]
    # same recipe, seed and budget as stage 1, from the same (random, seed 0) initialisation
    finetune = run.config.model_copy(update={"checkpoint": None, "ingest": ingest, "output_dir": tmp_path / "ravl",
                                             "cache_images": True}, deep=True)
    config = MitigateConfig(finetune=finetune, method="ravl", stage1_checkpoint=run.result.checkpoint,
                            stage1_sha256=run.result.sha256, audit_dir=audit.output_dir, spurious_ranks=spurious_ranks,
                            evaluation=MitigationEvaluation(spurious_class=run.spurious_class, n_boot=0))
    run_review(audit.output_dir, spurious_ranks)  # what the reviewer confirmed from the galleries
    result = run_mitigation(config, progress=False)
    summary = result.to_json()
    assert summary["result"]["steps"] == run.result.steps
    return {"evaluation": result.evaluation, "region_labels": summary["region_labels"], "spurious_ranks": spurious_ranks}


def _check(run: ShortcutRun, mitigated: dict) -> None:
    standard = worst_group_accuracy(run.table)
    ravl = mitigated["evaluation"].image_worst_group
    shown = mitigated["evaluation"].images.by_group.drop(columns=["class_index"]).round(3).to_string(index=False)
    print(f"standard (stage 1):\n{describe(run)}\nRaVL: worst group {ravl:.3f} (standard {standard:.3f}), "
          f"spurious ranks {mitigated['spurious_ranks']}, region labels {mitigated['region_labels']}\n{shown}")
    assert ravl > standard, f"RaVL worst-group accuracy {ravl:.3f} is not above standard fine-tuning's {standard:.3f}"


def test_ravl_beats_standard_fine_tuning_on_the_digits_setting(digits_shortcut, tmp_path):
    _check(digits_shortcut, _mitigate(digits_shortcut, tmp_path))
