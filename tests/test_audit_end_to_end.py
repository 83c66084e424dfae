"""RaVL finds the planted shortcut of a fine-tuned model (issue acceptance: Precision@10 >= 0.8).

The models come from ``tests/shortcut_fixtures.py``: tiny-rn fine-tuned on the CPU until it learned
the shortcut (square -> "three" in the digits setting, chest drain -> pneumothorax in the phantom
setting). The audit runs on the decorrelated test split, as a user would run it.
"""

from __future__ import annotations

import json

import pytest

from ravl_med.stages.audit import run_audit
from ravl_med.stages.config import AuditConfig
from tests.shortcut_fixtures import ShortcutRun

# The audit with one intra-op thread too, like the fixtures' training (see ``run_recipe``).
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

BASELINES = ["random", "distilling_failures", "george", "domino"]


def _audit(run: ShortcutRun, out) -> dict:
    config = AuditConfig(
        backbone=run.config.backbone,
        checkpoint=run.result.checkpoint,
        sha256=run.result.sha256,
        manifest=run.config.manifest,
        split="test",
        classes=list(run.config.classes),
        templates=list(run.templates),
        ingest=run.config.ingest,
        methods=["ravl", *BASELINES],
        discovery={"n_boot": 200, "n_stability": 0},  # stability: tests/test_discovery_null.py
        output_dir=out,
        batch_size=64,
        device="cpu",
        precision="fp32",
    )
    result = run_audit(config, progress=False)
    return json.loads((result.output_dir / "audit.json").read_text())


def _check(audit: dict, spurious_class: str) -> None:
    ravl = audit["methods"]["ravl"]
    summary = json.dumps({m: audit["methods"][m].get("precision_at_k") for m in audit["methods"]})
    assert audit["outcome"] == "found", audit["notes"]
    top = ravl["ranked_clusters"][0]
    assert top["attribute_name"] == spurious_class, top
    assert ravl["precision_at_k"] >= 0.8, summary
    print(f"P@10 per method: {summary}")


def test_ravl_finds_the_square_in_the_digits_setting(digits_shortcut, tmp_path):
    _check(_audit(digits_shortcut, tmp_path / "audit"), digits_shortcut.spurious_class)


def test_ravl_finds_the_chest_drain_in_the_phantom_setting(phantom_shortcut, tmp_path):
    # The default candidate regions (2 x 2, 3 x 3 and 4 x 4 cells with half-cell overlap) and hit rule
    # ("visible"). With a single 3 x 3 grid this model's top cluster was the cell next to the drain
    # (P@10 0.1): its one-pass embedding sees the drain, the crop does not.
    _check(_audit(phantom_shortcut, tmp_path / "audit"), phantom_shortcut.spurious_class)
