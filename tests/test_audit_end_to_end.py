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


def test_the_hospital_flow_without_ground_truth(phantom_shortcut, tmp_path, capsys):
    """validate -> audit -> review (rank 1) -> mitigate -> evaluation from the audit's groups, all through the
    CLI, on a manifest stripped of every ground-truth column (as a hospital's manifest is)."""
    import pandas as pd
    import yaml

    from ravl_med.cli import main

    run = phantom_shortcut
    table = pd.read_csv(run.config.manifest, dtype=str, keep_default_na=False)
    table = table.drop(columns=[c for c in table.columns if c.startswith(("artefact", "mask_", "lung_mask"))])
    table["path"] = [str(run.config.manifest.parent / p) for p in table["path"]]
    manifest = tmp_path / "hospital.csv"
    table.to_csv(manifest, index=False)
    regions = {"grid_sizes": [3], "overlap": 0.5, "within": "content"}  # the demo's, a quarter of the default's cost
    ingest = run.config.ingest.model_dump(mode="json") | {"regions": regions}
    common = {"backbone": run.config.backbone, "manifest": str(manifest), "classes": list(run.config.classes),
              "templates": list(run.templates), "ingest": ingest, "device": "cpu"}

    def cli(*argv) -> str:
        code = main([*argv, "--no-tracking"] if argv[0] in ("audit", "mitigate") else list(argv))
        out, err = capsys.readouterr()
        assert code == 0, err
        return out

    cli("validate", str(manifest), "--quarantine", str(tmp_path / "quarantine.csv"))
    audit_dir = tmp_path / "audit"
    (tmp_path / "audit.yaml").write_text(yaml.safe_dump(common | {
        "checkpoint": str(run.result.checkpoint), "sha256": run.result.sha256, "split": "test", "methods": ["ravl"],
        "discovery": {"n_boot": 200, "n_stability": 0}, "output_dir": str(audit_dir), "batch_size": 64,
        "precision": "fp32"}))
    printed = cli("audit", "--config", str(tmp_path / "audit.yaml"), "--no-progress")
    audit = json.loads((audit_dir / "audit.json").read_text())
    assert audit["outcome"] == "found" and audit["ground_truth"] is None, audit["notes"]
    assert "ravl-med review" in printed
    reviewed = cli("review", str(audit_dir), "--spurious", "1")
    assert "cluster 1: tied to 'pneumothorax'" in reviewed
    counter = audit["methods"][audit["primary_method"]]["ranked_clusters"][0]["counter_gallery"]
    assert f"counter-examples: {counter or 'none: '}" in reviewed

    recipe = {k: v for k, v in run.config.model_dump(mode="json").items() if k not in common}
    (tmp_path / "mitigate.yaml").write_text(yaml.safe_dump({
        "finetune": recipe | common | {"checkpoint": None, "output_dir": str(tmp_path / "mitigate")},
        "audit_dir": str(audit_dir), "stage1_checkpoint": str(run.result.checkpoint),
        "stage1_sha256": run.result.sha256, "method": "ravl", "evaluation": {"n_boot": 100}}))
    printed = cli("mitigate", "--config", str(tmp_path / "mitigate.yaml"), "--max-steps", "2", "--no-progress")
    assert "spurious clusters (report ranks): [1], from review.yaml" in printed
    assert "groups from audit" in printed  # no ground truth: the groups come from the audit's cluster
    result = json.loads((tmp_path / "mitigate" / "ravl" / "mitigate.json").read_text())
    assert result["region_labels"]["spurious_ranks"] == [1] and "ground_truth" not in result["region_labels"]
    assert (tmp_path / "mitigate" / "ravl" / "evaluation.json").is_file()
