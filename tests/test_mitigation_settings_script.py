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
    _row(b, "pacemaker", 1, False, 0.9, 0.9)  # invalid: in no table of valid settings

    _script().main([str(a), str(b)])
    out = capsys.readouterr().out

    assert "## chest_drain <-> pneumothorax, V 0.9: 2 of 2 valid" in out
    assert "## pacemaker <-> pneumothorax, V 0.9: 1 of 2 valid (gap s0 +0.80, s1 +0.00)" in out
    assert "counterfactual_upsampled per seed (worst group/overall): s0 0.40/0.800, s1 0.60/0.800" in out
    pooled = out.split("## All valid settings pooled (3)")[1].split("## Invalid settings")[0]
    # mean worst group of counterfactual_upsampled over the 3 valid rows: (0.4 + 0.6 + 0.5) / 3
    assert "| counterfactual_upsampled | 3 | 0.800 [0.800, 0.800] | 0.500 [" in pooled
    # paired differences: 0.4, 0.5, 0.3 -> mean +0.400
    assert "| upsampled | 3 | +0.400 [" in pooled


def test_invalid_settings_mitigated_anyway_are_pooled_apart_against_standard(tmp_path, capsys):
    for seed, (cf, up) in enumerate([(0.7, 0.5), (1.0, 0.6)]):
        _row(tmp_path, "chest_drain", seed, False, cf, up)
        row = json.loads((tmp_path / f"chest_drain-pneumothorax-v0.90-s{seed}" / "result.json").read_text())
        row["mitigation"]["standard"] = {**row["mitigation"]["upsampled"], "image_worst_group": 0.8,
                                         "image_accuracy": 0.75}
        (tmp_path / row["setting"] / "result.json").write_text(json.dumps(row))
    _row(tmp_path, "pacemaker", 0, True, 0.5, 0.2)  # valid: not in the do-no-harm tables

    _script().main([str(tmp_path)])
    out = capsys.readouterr().out

    harm = out.split("## Invalid settings, mitigated anyway: do no harm (2: ")[1]
    assert harm.startswith("chest_drain-pneumothorax-v0.90-s0, chest_drain-pneumothorax-v0.90-s1)")
    assert "| standard | 2 | 0.750 [0.750, 0.750] | 0.800 [0.800, 0.800] |" in harm
    # minus standard, paired: counterfactual_upsampled -0.1, +0.2 (mean +0.05); upsampled -0.3, -0.2 (mean -0.25)
    assert "| counterfactual_upsampled | 2 | +0.050 [" in harm
    assert "| upsampled | 2 | -0.250 [" in harm
    assert "| standard | 2 | +" not in harm.split("method minus standard")[1]
