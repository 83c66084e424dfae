"""benchmarks/mitigation_settings.py: the per-family and pooled mitigation tables BENCHMARKS.md prints."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("mitigation_settings", ROOT / "benchmarks" / "mitigation_settings.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(folder: Path, artefact: str, seed: int, valid: bool, cf: float, up: float) -> None:
    """One benchmark ``result.json`` with two methods' image worst group (overall fixed)."""
    setting = f"{artefact}-pneumothorax-v0.90-s{seed}"
    def metrics(wga: float, acc: float) -> dict:
        return {"image_accuracy": acc, "image_worst_group": wga, "region_accuracy": 0.5, "region_worst_group": 0.1}

    row = {"setting": setting, "artefact": artefact, "spurious_class": "pneumothorax", "strength": 0.9,
           "seed": seed, "valid": valid, "shortcut_gap": 0.8 if valid else 0.0, "stage1": metrics(0.0, 0.6),
           "discovery": {"ravl": 1.0}, "audit_outcome": "found",
           "mitigation": {"counterfactual_upsampled": metrics(cf, 0.8), "upsampled": metrics(up, 0.7)}}
    (folder / setting).mkdir(parents=True)
    (folder / setting / "result.json").write_text(json.dumps(row))


def test_tables_per_family_pooled_and_paired_over_valid_settings_only(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    for seed, (cf, up) in enumerate([(0.4, 0.0), (0.6, 0.1)]):
        _row(a, "chest_drain", seed, True, cf, up)
    _row(b, "pacemaker", 0, True, 0.5, 0.2)
    _row(b, "pacemaker", 1, False, 0.9, 0.9)  # invalid: in no table

    _script().main([str(a), str(b)])
    out = capsys.readouterr().out

    assert "## chest_drain <-> pneumothorax, V 0.9: 2 of 2 valid" in out
    assert "## pacemaker <-> pneumothorax, V 0.9: 1 of 2 valid (gap s0 +0.80, s1 +0.00)" in out
    assert "counterfactual_upsampled per seed (worst group/overall): s0 0.40/0.800, s1 0.60/0.800" in out
    pooled = out.split("## All valid settings pooled (3)")[1]
    # mean worst group of counterfactual_upsampled over the 3 valid rows: (0.4 + 0.6 + 0.5) / 3
    assert "| counterfactual_upsampled | 3 | 0.800 [0.800, 0.800] | 0.500 [" in pooled
    # paired differences: 0.4, 0.5, 0.3 -> mean +0.400
    assert "| upsampled | 3 | +0.400 [" in pooled
