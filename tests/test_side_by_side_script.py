"""benchmarks/side_by_side.py: two models' benchmark folders, paired by setting and seed (issue 15)."""

import importlib.util
import json
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def _script(monkeypatch, precision: dict[str, float]):
    """The script, with the re-scoring of stored audits replaced by ``precision`` (audit folder -> RaVL P@10)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # the script imports rescore_discovery from there
    spec = importlib.util.spec_from_file_location("side_by_side", ROOT / "benchmarks" / "side_by_side.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "rescore", lambda audit, rules: {"ravl": {"visible": precision[str(audit)]}})
    return module


def _setting(folder: Path, seed: int, *, gap: float, clean: float, reused: bool, wga: float | None) -> Path:
    """One finished setting folder: result.json, groups/stage1.csv, stage1/metrics.json, audit/audit.json."""
    root = folder / f"chest_drain-pneumothorax-v0.90-s{seed}"
    (root / "groups").mkdir(parents=True)
    (root / "stage1").mkdir()
    (root / "audit").mkdir()
    scores = {"image_accuracy": 0.7, "image_worst_group": 0.0, "region_accuracy": 0.6, "region_worst_group": 0.2}
    mitigation = {} if wga is None else {"upsampled": {**scores, "image_worst_group": wga, "train_s": 60.0}}
    (root / "result.json").write_text(json.dumps({
        "setting": root.name, "spurious_class": "pneumothorax", "shortcut_gap": gap, "valid": gap >= 0.2,
        "stage1": {**scores, "train_s": 100.0 + seed}, "mitigation": mitigation}))
    pd.DataFrame([{"class": "pneumothorax", "feature_present": False, "accuracy": clean},
                  {"class": "pneumothorax", "feature_present": True, "accuracy": 1.0}]).to_csv(
        root / "groups" / "stage1.csv", index=False)
    (root / "stage1" / "metrics.json").write_text(json.dumps({"history": [{"images_per_s": 10.0},
                                                                           {"images_per_s": 30.0}]}))
    (root / "audit" / "audit.json").write_text(json.dumps({
        "embedding": {"batches_reused": 13 if reused else 0, "time_s": 0.1 if reused else 50.0},
        "methods": {"ravl": {"fit_time_s": 5.0}}}))
    return root / "audit"


def _row(out: str, measure: str) -> list[str]:
    line = next(line for line in out.splitlines() if line.startswith(f"| {measure} |"))
    return [cell.strip() for cell in line.strip("|").split("|")][1:]


def test_paired_by_seed_over_settings_both_models_finished(tmp_path, monkeypatch, capsys):
    tiny, hybrid = tmp_path / "tiny", tmp_path / "hybrid"
    precision = {}
    for seed, (gap_t, gap_h, p_t, p_h) in enumerate([(0.9, 0.3, 1.0, 1.0), (0.8, 0.2, 1.0, 0.0), (0.7, 0.1, 0.5, 1.0)]):
        precision[str(_setting(tiny, seed, gap=gap_t, clean=0.1, reused=False, wga=0.1))] = p_t
        precision[str(_setting(hybrid, seed, gap=gap_h, clean=0.7, reused=seed != 1, wga=None))] = p_h
    _setting(tiny, 3, gap=0.5, clean=0.1, reused=False, wga=0.1)  # only one model finished seed 3: left out
    script = _script(monkeypatch, precision)

    script.main([str(tiny), str(hybrid)])
    out = capsys.readouterr().out

    assert "### chest_drain-pneumothorax-v0.90 (3 seeds: s0, s1, s2)" in out
    assert _row(out, "stage1/gap")[0].startswith("0.80 [")  # tiny-rn: (0.9 + 0.8 + 0.7) / 3
    assert _row(out, "stage1/gap")[2].startswith("-0.60 [")  # paired hybrid - tiny: -0.6 each
    assert _row(out, "stage1/pneumothorax without artefact")[2].startswith("0.60 [")
    assert _row(out, "stage1/images per s")[0].startswith("20.00 [")
    # P@10 only where the model learned the shortcut: the hybrid's seed 2 (gap 0.1) is left out, and the pairs too.
    assert _row(out, "stage1/valid")[1].startswith("0.67 [")
    assert _row(out, "discovery/ravl P@10")[0].startswith("0.83 [")  # tiny-rn: (1 + 1 + 0.5) / 3
    assert _row(out, "discovery/ravl P@10")[1].startswith("0.50 [")  # hybrid: (1 + 0) / 2, not (1 + 0 + 1) / 3
    assert _row(out, "discovery/ravl P@10")[2].startswith("-0.50 [")  # pairs s0, s1
    # A reused embedding cache times the reading, not the model: left out, the other seed kept.
    assert _row(out, "audit/embedding s")[1] == "50.00 (n=1)"
    # A method only one model ran is named, not compared.
    assert "mitigation/upsampled/image WGA" not in [line.split("|")[1].strip() for line in out.splitlines()
                                                     if line.startswith("|")]
    assert "Only in one of the two runs (not compared): mitigation/upsampled/core-region WGA" in out


def test_nothing_finished_in_both_says_so(tmp_path, monkeypatch, capsys):
    _setting(tmp_path / "tiny", 0, gap=0.9, clean=0.1, reused=False, wga=None)
    (tmp_path / "hybrid").mkdir()
    _script(monkeypatch, {}).main([str(tmp_path / "tiny"), str(tmp_path / "hybrid")])
    assert "no setting finished in both" in capsys.readouterr().out
