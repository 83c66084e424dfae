"""The ravl-med command: help, version, errors, and ingest outputs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from ravl_med import __version__
from ravl_med.cli import main
from ravl_med.config import IngestConfig
from ravl_med.data.manifest import Manifest
from ravl_med.data.pipeline import load_radiograph
from tests.factories import chest_like, write_cr_dicom


def test_version_and_help_run_as_a_console_script():
    script = Path(sys.executable).parent / "ravl-med"
    out = subprocess.run([str(script), "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"ravl-med {__version__}"
    helped = subprocess.run([sys.executable, "-m", "ravl_med", "--help"], capture_output=True, text=True, check=True)
    for command in ("validate", "ingest"):
        assert command in helped.stdout


def test_help_loads_neither_torch_nor_monai():
    # Regression: `ravl-med --help` took 4-7 s because the phantom command's artefact list imported
    # the phantom package, whose MONAI transforms loaded torch and MONAI.
    probe = ("import sys; from ravl_med.cli import build_parser; build_parser().format_help(); "
             "print(sorted(m for m in ('torch', 'monai', 'mlflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "usage: ravl-med" in capsys.readouterr().out


def test_bad_config_is_one_clear_line(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("intensity:\n  voi: windw\n")
    (tmp_path / "data").mkdir()
    assert main(["validate", str(tmp_path / "data"), "--config", str(config), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "intensity.voi: got 'windw'; allowed: 'auto', 'lut', 'window' or 'none'" in err
    assert "Traceback" not in err


def test_missing_manifest_is_a_clear_error(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope.csv"), "--no-progress"]) == 2
    assert "manifest not found" in capsys.readouterr().err


@pytest.fixture()
def small_dataset(tmp_path):
    folder = tmp_path / "site"
    folder.mkdir()
    write_cr_dicom(folder / "a.dcm", chest_like(120, 90, seed=1), ViewPosition="PA", PixelSpacing=[0.2, 0.2])
    write_cr_dicom(folder / "b.dcm", 4095 - chest_like(90, 120, seed=2), PhotometricInterpretation="MONOCHROME1")
    Image.fromarray(chest_like(100, 100, seed=3, bits=8).astype(np.uint8)).save(folder / "c.png")
    (folder / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")
    rows = [
        {"path": "a.dcm", "label": "pneumothorax", "report": "Small right pneumothorax.", "split": "train", "site": "A"},
        {"path": "b.dcm", "label": "no finding", "report": "No acute disease.", "split": "test", "site": "B"},
        {"path": "c.png", "label": "no finding", "report": "", "split": "val", "site": "A"},
        {"path": "broken.dcm", "label": "no finding", "report": "", "split": "val", "site": "B"},
        {"path": "missing.dcm", "label": "no finding", "report": "", "split": "val", "site": "B"},
    ]
    manifest = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


def test_ingest_writes_model_ready_images_and_a_clean_manifest(tmp_path, small_dataset, capsys):
    out = tmp_path / "out"
    assert main(["ingest", str(small_dataset), "--out", str(out), "--no-progress", "--config", "configs/ingest.yaml"]) == 0
    printed = capsys.readouterr().out
    assert "usable images: 3    refused: 2" in printed
    quarantine = pd.read_csv(out / "quarantine.csv")
    assert sorted(zip(quarantine["path"].map(lambda p: p.rsplit("/", 1)[-1]), quarantine["reason"])) == [
        ("broken.dcm", "truncated"),
        ("missing.dcm", "missing_file"),
    ]
    ingested = Manifest.read(out / "manifest.csv")
    table = ingested.table.set_index("report")
    assert list(ingested.table["split"]) == ["train", "test", "val"]
    assert table.loc["Small right pneumothorax.", "view_position"] == "PA"
    assert float(table.loc["Small right pneumothorax.", "pixel_spacing_row_mm"]) == pytest.approx(0.2)
    assert list(ingested.table["rows"].astype(int)) == [120, 90, 100]
    assert ingested.attribute_columns[0] == "site"
    # Each written image equals the pipeline's output to 16-bit precision, and loads back unchanged.
    for original, written in zip(["a.dcm", "b.dcm", "c.png"], ingested.table["path"]):
        direct = load_radiograph(small_dataset.parent / original, IngestConfig())["image"]
        again = load_radiograph(written, IngestConfig())["image"]
        assert again.shape == (1, 224, 224)
        torch.testing.assert_close(again.as_tensor(), direct.as_tensor(), atol=1.0 / 65535, rtol=0)
    summary = (out / "summary.json").read_text()
    assert '"usable": 3' in summary


def test_validate_exit_codes(tmp_path, small_dataset, capsys):
    assert main(["validate", str(small_dataset), "--quarantine", str(tmp_path / "q.json"), "--no-progress"]) == 0
    assert sorted(pd.read_json(tmp_path / "q.json")["reason"]) == ["missing_file", "truncated"]
    empty = tmp_path / "bad"
    empty.mkdir()
    (empty / "x.dcm").write_text("nothing")
    assert main(["validate", str(empty), "--quarantine", str(tmp_path / "q2.csv"), "--no-progress"]) == 1
    assert "none of the 1 entries" in capsys.readouterr().out


class _Reached(Exception):
    """Raised by a stubbed stage runner with the config the command built (nothing is computed)."""

    def __init__(self, config) -> None:
        super().__init__("stage runner reached")
        self.config = config


def _stop(config, *args, **kwargs):
    raise _Reached(config)


@pytest.mark.parametrize("command", ["finetune", "audit", "mitigate", "benchmark", "demo"])
def test_device_option_reaches_every_device_field_of_the_config(command, tmp_path, monkeypatch):
    import ravl_med.cli.benchmark
    import ravl_med.stages.audit
    import ravl_med.stages.finetune
    import ravl_med.stages.mitigate

    manifest = tmp_path / "manifest.csv"
    pd.DataFrame([{"path": f"{split}.dcm", "label": "no finding", "report": "", "split": split}
                  for split in ("train", "val", "test")]).to_csv(manifest, index=False)
    model = {"manifest": str(manifest), "classes": ["no finding", "pneumothorax"], "device": "cuda"}
    config = tmp_path / "config.yaml"
    if command == "mitigate":
        model = {"finetune": model, "stage1_checkpoint": str(tmp_path / "stage1"), "audit_dir": str(tmp_path)}
    config.write_text(yaml.safe_dump(model))
    for module, runner in ((ravl_med.stages.finetune, "run_finetune"), (ravl_med.stages.audit, "run_audit"),
                           (ravl_med.stages.mitigate, "run_mitigation"), (ravl_med.cli.benchmark, "run_tracked")):
        monkeypatch.setattr(module, runner, _stop)
    source = {"benchmark": ["--suite", "smoke"], "demo": []}.get(command, ["--config", str(config)])

    with pytest.raises(_Reached) as reached:
        main([command, *source, "--device", "cpu", "--no-tracking", "--no-progress"])
    built = reached.value.config
    # Every device field the command's stages read: the benchmark's stage 1, mitigations and
    # evaluations run on finetune.device, its audit on audit.device.
    fields = {"finetune": ["device"], "audit": ["device"], "mitigate": ["finetune.device"],
              "benchmark": ["finetune.device", "audit.device"], "demo": ["finetune.device", "audit.device"]}
    for field in fields[command]:
        value = built
        for part in field.split("."):
            value = getattr(value, part)
        assert value == "cpu", field


def test_device_option_refuses_other_values(capsys):
    with pytest.raises(SystemExit):
        main(["audit", "--config", "x.yaml", "--device", "tpu"])
    assert "invalid choice: 'tpu'" in capsys.readouterr().err
