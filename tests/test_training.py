"""Contrastive fine-tuning on a small phantom set with the tiny-rn backbone (CPU).

The phantom set: 3 classes with large visible findings (no finding, cardiomegaly, pleural effusion),
96 training and 48 validation images at 128 px (the tiny-rn input size), balanced classes, so
zero-shot chance accuracy is 1/3.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from ravl_med.cli import main
from ravl_med.config import ConfigError, FinetuneConfig, IngestConfig, load_config
from ravl_med.data.dataset import RadiographDataset
from ravl_med.models import create_backbone, load_state_dict
from ravl_med.models.optim import parameter_groups, warmup_cosine
from ravl_med.models.training import Trainer
from ravl_med.models.training_records import latest_state
from ravl_med.models.zeroshot import CXR_TEMPLATES, class_text_embeddings, zero_shot_predictions
from ravl_med.phantom import PhantomSetting, write_setting

REPO_ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["no finding", "cardiomegaly", "pleural effusion"]


@pytest.fixture(scope="session")
def phantom_manifest(tmp_path_factory) -> Path:
    setting = PhantomSetting(
        name="finetune", artefact="chest_drain", spurious_class="cardiomegaly", strength=0.0,
        n_train=96, n_val=48, n_test=0, image_size=128, classes=CLASSES,
    )
    return write_setting(setting, tmp_path_factory.mktemp("phantom"), progress=False).manifest


def _derived(manifest: Path, out: Path, *, blank_reports: bool = False, n_train: int | None = None,
             n_val: int | None = None) -> Path:
    """A copy of the manifest with absolute paths, optionally fewer rows or no reports."""
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    table["path"] = [str(manifest.parent / p) for p in table["path"]]
    if blank_reports:
        table["report"] = ""
    parts = []
    for split, n in (("train", n_train), ("val", n_val)):
        rows = table[table["split"] == split]
        parts.append(rows if n is None else rows.head(n))
    out.parent.mkdir(parents=True, exist_ok=True)
    pd.concat(parts).to_csv(out, index=False)
    return out


def _config(manifest: Path, out: Path, **overrides) -> FinetuneConfig:
    values = dict(
        backbone="tiny-rn", manifest=manifest, classes=CLASSES, ingest=IngestConfig(image_size=128),
        epochs=2, batch_size=16, lr=1e-3, weight_decay=0.1, warmup_steps=6, label_aware=True,
        checkpoint_every=0, output_dir=out, seed=0, device="cpu",
    )
    values.update(overrides)
    return FinetuneConfig(**values)


def test_finetune_lowers_loss_and_beats_chance(phantom_manifest, tmp_path):
    # Reports are blanked, so each pair's text is the label sentence "a chest x-ray showing <class>.",
    # and zero-shot uses that one template: a randomly initialised text tower cannot learn the
    # wording of free-text reports in the few steps a CPU test allows.
    manifest = _derived(phantom_manifest, tmp_path / "pairs.csv", blank_reports=True)
    config = _config(manifest, tmp_path / "run", epochs=20, templates=["a chest x-ray showing {}."],
                     cache_images=True, threads=1)
    result = Trainer(config, progress=False).fit()
    history = result.history
    assert len(history) == 20 and result.steps == 20 * 6
    losses = [h.train_loss for h in history]
    assert losses[-1] < losses[0] - 0.5, losses
    accuracy = history[-1].val_accuracy
    assert accuracy is not None and accuracy > result.chance + 0.2, [h.val_accuracy for h in history]
    assert all(h.images_per_s > 0 for h in history)
    # The final weights load back through the registry with their checksum.
    assert result.checkpoint.is_file()
    model, _, _ = create_backbone("tiny-rn", checkpoint=result.checkpoint, sha256=result.sha256)
    assert (tmp_path / "run" / "metrics.json").is_file()
    print("losses", [round(x, 3) for x in losses], "val accuracy", [h.val_accuracy for h in history])


def test_resume_from_a_mid_run_state_gives_identical_weights(phantom_manifest, tmp_path):
    # 96 rows / 16 = 6 micro-batches per epoch, 2 per optimizer step: 3 steps per epoch, 6 in all.
    manifest = _derived(phantom_manifest, tmp_path / "pairs.csv", n_val=6)
    common = dict(epochs=2, grad_accum_steps=2, checkpoint_every=2, warmup_steps=2, keep_checkpoints=3)
    straight = Trainer(_config(manifest, tmp_path / "a", **common), progress=False).fit()

    class Interrupted(RuntimeError):
        pass

    def interrupt(step: int, metrics: dict[str, float]) -> None:
        if step == 5:
            raise Interrupted

    config_b = _config(manifest, tmp_path / "b", **common)
    with pytest.raises(Interrupted):
        Trainer(config_b, progress=False, on_step=interrupt).fit()
    state = latest_state(tmp_path / "b")
    assert state is not None and state.name == "state-00000004.pt"  # mid second epoch
    resumed = Trainer(config_b, progress=False).fit(resume=True)

    assert resumed.steps == straight.steps == 6
    weights_a, weights_b = load_state_dict(straight.checkpoint), load_state_dict(resumed.checkpoint)
    assert weights_a.keys() == weights_b.keys()
    for name in weights_a:
        assert torch.equal(weights_a[name], weights_b[name]), name
    assert resumed.sha256 == straight.sha256
    assert resumed.step_losses == straight.step_losses
    assert [h.train_loss for h in resumed.history] == [h.train_loss for h in straight.history]


def test_max_steps_stops_and_resume_finishes(phantom_manifest, tmp_path):
    manifest = _derived(phantom_manifest, tmp_path / "pairs.csv", n_train=32, n_val=0)
    config = _config(manifest, tmp_path / "run", epochs=2, batch_size=8)
    first = Trainer(config, progress=False).fit(max_steps=3)
    assert first.steps == 3 and first.stopped_early and first.history == []
    second = Trainer(config, progress=False).fit(resume=True)
    assert second.steps == 8 and len(second.history) == 2 and second.history[0].val_accuracy is None


def test_step_callback_gets_loss_and_learning_rate(phantom_manifest, tmp_path):
    # 32 rows / 8 = 4 optimizer steps, warm-up over 2: multipliers 0.5, 1, then cosine 1, 0.5.
    manifest = _derived(phantom_manifest, tmp_path / "pairs.csv", n_train=32, n_val=0)
    config = _config(manifest, tmp_path / "run", epochs=1, batch_size=8, warmup_steps=2, lr=1e-3)
    seen: list[tuple[int, dict[str, float]]] = []
    result = Trainer(config, progress=False, on_step=lambda step, metrics: seen.append((step, metrics))).fit()
    assert [step for step, _ in seen] == [1, 2, 3, 4]
    assert [m["lr"] for _, m in seen] == pytest.approx([5e-4, 1e-3, 1e-3, 5e-4])
    assert [m["loss"] for _, m in seen] == result.step_losses


def _direct_worst_group(trainer: Trainer, manifest: Path, config: FinetuneConfig) -> float:
    """Worst-group zero-shot accuracy of the trained model on val, from boolean masks of ``artefact_present``."""
    val = RadiographDataset(manifest, config.ingest, CLASSES, split="val")
    trainer.model_.eval()
    with torch.no_grad():
        text = class_text_embeddings(trainer.model_, trainer.tokenizer_, CLASSES, CXR_TEMPLATES)
    labels, predictions = zero_shot_predictions(trainer.model_, trainer.preprocess_, text, val,
                                                batch_size=config.batch_size)
    present = val.table["artefact_present"].astype(int).to_numpy().astype(bool)
    accuracies = []
    for c in range(len(CLASSES)):
        for flag in (True, False):
            mask = (labels == c) & (present == flag)
            if mask.any():
                accuracies.append(float((predictions[mask] == c).mean()))
    return min(accuracies)


def test_epochs_report_val_worst_group_when_the_manifest_marks_the_feature(phantom_manifest, tmp_path):
    manifest = _derived(phantom_manifest, tmp_path / "pairs.csv", n_train=16)  # all 48 val rows, both flags
    config = _config(manifest, tmp_path / "run", epochs=1, batch_size=8, warmup_steps=1)
    trainer = Trainer(config, progress=False)
    result = trainer.fit()
    epoch = result.history[-1]
    assert result.feature == "chest_drain"
    assert epoch.val_worst_group == _direct_worst_group(trainer, manifest, config)
    assert epoch.val_worst_group <= epoch.val_accuracy
    assert len(epoch.val_groups) == 2 * len(CLASSES) and sum(g["count"] for g in epoch.val_groups) == 48
    assert min(g["accuracy"] for g in epoch.val_groups) == epoch.val_worst_group
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["feature"] == "chest_drain" and saved["history"][-1]["val_worst_group"] == epoch.val_worst_group

    # Without artefact_present the groups are unknown: overall accuracy only.
    unmarked = tmp_path / "unmarked.csv"
    pd.read_csv(manifest, dtype=str, keep_default_na=False).drop(columns=["artefact_present"]).to_csv(unmarked, index=False)
    plain = Trainer(_config(unmarked, tmp_path / "plain", epochs=1, batch_size=8, warmup_steps=1), progress=False).fit()
    assert plain.feature is None and plain.history[-1].val_accuracy is not None
    assert plain.history[-1].val_worst_group is None and plain.history[-1].val_groups is None
    assert plain.history[-1].val_accuracy == epoch.val_accuracy  # same seed, same training


def test_frozen_text_tower_does_not_change(phantom_manifest, tmp_path):
    manifest = _derived(phantom_manifest, tmp_path / "pairs.csv", n_train=16, n_val=0)
    trainer = Trainer(_config(manifest, tmp_path / "run", epochs=1, batch_size=8, freeze_text=True), progress=False)
    result = trainer.fit()
    torch.manual_seed(0)  # the trainer seeds 0 before building the model: same initialisation
    before, _, _ = create_backbone("tiny-rn")
    after = load_state_dict(result.checkpoint)
    for name, value in before.state_dict().items():
        if name.startswith("token_embedding") or name.startswith("transformer.") or name == "text_projection":
            assert torch.equal(value, after[name]), name
    assert not torch.equal(before.state_dict()["visual.conv1.weight"], after["visual.conv1.weight"])


def test_parameter_groups_and_schedule():
    model, _, _ = create_backbone("tiny-rn")
    decay, no_decay = parameter_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert any(p is model.logit_scale for p in no_decay["params"])
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim < 2 for p in no_decay["params"])
    multiplier = warmup_cosine(4, 14)
    assert [multiplier(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert multiplier(9) == pytest.approx(0.5) and multiplier(14) == pytest.approx(0.0)


def test_finetune_yaml_loads_and_bad_templates_are_refused(tmp_path):
    config = load_config(REPO_ROOT / "configs" / "finetune.yaml", FinetuneConfig)
    assert config.backbone == "tiny-rn" and config.label_aware
    bad = tmp_path / "bad.yaml"
    bad.write_text("classes: [a, b]\ntemplates: ['no slot']\n")
    with pytest.raises(ConfigError, match="templates"):
        load_config(bad, FinetuneConfig)
    missing = tmp_path / "missing.yaml"
    missing.write_text("backbone: tiny-rn\n")
    with pytest.raises(ConfigError, match="classes: required key is missing"):
        load_config(missing, FinetuneConfig)


def _write_yaml(path: Path, manifest: Path, out: Path, **overrides) -> Path:
    data = {
        "backbone": "tiny-rn", "manifest": str(manifest), "classes": CLASSES, "ingest": {"image_size": 128},
        "epochs": 1, "batch_size": 4, "lr": 1e-3, "warmup_steps": 1, "checkpoint_every": 0,
        "output_dir": str(out), "device": "cpu",
    }
    data.update(overrides)
    path.write_text(yaml.safe_dump(data))
    return path


def test_cli_finetune_smoke_and_errors(phantom_manifest, tmp_path, capsys):
    manifest = _derived(phantom_manifest, tmp_path / "pairs.csv", n_train=8, n_val=6)
    config = _write_yaml(tmp_path / "ft.yaml", manifest, tmp_path / "unused")
    assert main(["finetune", "--config", str(config), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "epoch 1: train loss" in out and "val zero-shot accuracy" in out and "sha256" in out
    assert (tmp_path / "run" / "model.safetensors").is_file()

    assert main(["finetune", "--config", str(config), "--manifest", str(tmp_path / "nope.csv")]) == 2
    assert "manifest not found" in capsys.readouterr().err

    bad_backbone = _write_yaml(tmp_path / "bb.yaml", manifest, tmp_path / "bb", backbone="tiny-nope")
    assert main(["finetune", "--config", str(bad_backbone), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "unknown backbone 'tiny-nope'" in err and "tiny-rn" in err and "Traceback" not in err

    val_only = tmp_path / "val_only.csv"
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    table[table["split"] == "val"].to_csv(val_only, index=False)
    assert main(["finetune", "--config", str(config), "--manifest", str(val_only), "--no-progress"]) == 2
    assert "no usable rows in split 'train': the manifest has no labelled row there (rows per split: val" in (
        capsys.readouterr().err)


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(phantom_manifest, tmp_path):
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        pytest.skip("torchrun not installed")
    manifest = _derived(phantom_manifest, tmp_path / "pairs.csv", n_train=16, n_val=0)
    config = _write_yaml(tmp_path / "ft.yaml", manifest, tmp_path / "run", label_aware=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    # 16 rows / (4 per process x 2 processes) = 2 optimizer steps, one training state at the epoch's end.
    done = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "ravl_med", "finetune",
         "--config", str(config), "--no-progress"],
        capture_output=True, text=True, env=env, timeout=240, cwd=REPO_ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    states = sorted((tmp_path / "run" / "checkpoints").glob("state-*.pt"))
    assert [p.name for p in states] == ["state-00000002.pt"]
    assert (tmp_path / "run" / "model.safetensors").is_file()
    assert done.stdout.count("weights:") == 1  # only rank 0 reports
