"""Mitigation methods on a tiny phantom set with the tiny-rn backbone and a synthetic audit (CPU).

The "stage-1 model" is a seeded random tiny-rn saved as a checkpoint; the synthetic audit's medoids are
three of its own region embeddings, the first one spurious, so both kinds of region occur.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from ravl_med.cli import main
from ravl_med.config import ConfigError, FinetuneConfig, IngestConfig
from ravl_med.data.dataset import RadiographDataset
from ravl_med.data.manifest import Manifest
from ravl_med.mitigate.methods import (
    GroupBalancedSampler,
    GroupDROObjective,
    stage1_groups,
)
from ravl_med.mitigate.regions import (
    Stage1Medoids,
    label_training_regions,
    stage1_medoids,
    training_region_labels,
)
from ravl_med.mitigate.registry import MITIGATION_METHODS
from ravl_med.models import create_backbone
from ravl_med.models.embed import embed_dataset
from ravl_med.models.regions import RegionEmbedder
from ravl_med.models.training_records import latest_state
from ravl_med.models.weights import save_checkpoint
from ravl_med.phantom import PhantomSetting, write_setting
from ravl_med.stages.config import MitigateConfig, MitigationEvaluation
from ravl_med.stages.mitigate import STAGE1_REGION_CACHE, labelling_agreement, run_mitigation
from ravl_med.stages.review import run_review

CLASSES = ["no finding", "cardiomegaly", "pleural effusion"]


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    root = tmp_path_factory.mktemp("mitigate")
    setting = PhantomSetting(
        name="mitigate", artefact="chest_drain", spurious_class="cardiomegaly", strength=0.9,
        n_train=16, n_val=0, n_test=0, image_size=128, classes=CLASSES,
    )
    manifest = write_setting(setting, root / "phantom", progress=False).manifest
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    table["path"] = [str(manifest.parent / p) for p in table["path"]]
    table.to_csv(root / "manifest.csv", index=False)
    torch.manual_seed(0)
    model, preprocess, _ = create_backbone("tiny-rn")
    checkpoint = root / "stage1.safetensors"
    sha = save_checkpoint(model, checkpoint)
    train = RadiographDataset(root / "manifest.csv", IngestConfig(image_size=128), CLASSES, split="train")
    emb = embed_dataset(model, preprocess, train, batch_size=16, progress=False)
    audit = root / "audit"
    audit.mkdir()
    Stage1Medoids(emb.region_embeddings[[0, 5, 10]], [0, 1, 2], [1, 0, 0], [True, False, False]).save(audit)
    return SimpleNamespace(root=root, manifest=root / "manifest.csv", checkpoint=checkpoint, sha=sha, audit=audit)


def _config(stage1, out: Path, method: str, **overrides) -> MitigateConfig:
    ft = FinetuneConfig(
        backbone="tiny-rn", checkpoint=stage1.checkpoint, sha256=stage1.sha, manifest=stage1.manifest,
        classes=CLASSES, ingest=IngestConfig(image_size=128), epochs=5, batch_size=8, lr=1e-3, warmup_steps=1,
        checkpoint_every=0, output_dir=out, seed=0, device="cpu",
    )
    values: dict = {"finetune": ft, "audit_dir": stage1.audit, "method": method,
                    "stage1_checkpoint": stage1.checkpoint, "stage1_sha256": stage1.sha,
                    "spurious_prompts": ["a chest x-ray with a chest drain."]}
    values.update(overrides)
    return MitigateConfig(**values)


def test_label_training_regions_by_nearest_medoid():
    medoids = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    regions = np.array([[2.0, 0.1], [0.1, 3.0], [-0.5, -0.1], [0.6, 0.8]])  # norms differ: cosine decides
    assert label_training_regions(regions, medoids, [1]).tolist() == [False, True, False, True]
    assert label_training_regions(regions, medoids, np.array([True, False, True])).tolist() == [True, False, True, False]
    assert label_training_regions(np.zeros((0, 2)), medoids, [0]).shape == (0,)
    with pytest.raises(ValueError):
        label_training_regions(regions, np.zeros((2, 3)), [0])


def test_stage1_medoids_predict_is_the_labelling_rule():
    rng = np.random.default_rng(0)
    regions = rng.standard_normal((500, 8)) * rng.uniform(0.1, 5.0, (500, 1))
    medoids = Stage1Medoids(rng.standard_normal((4, 8)), [0, 1, 2, 3], [1, 0, 2, 0], [True, False, True, False])
    nearest = medoids.predict(regions)
    assert nearest.dtype == np.int64 and set(nearest.tolist()) <= {0, 1, 2, 3}
    labels = label_training_regions(regions, medoids.embeddings, medoids.spurious)
    assert np.array_equal(medoids.spurious[nearest], labels)
    with pytest.raises(ValueError):
        medoids.predict(np.zeros((2, 3)))


def test_stage1_medoids_from_a_discoverer_and_round_trip(tmp_path):
    regions = np.eye(4, dtype=np.float32)
    disc = SimpleNamespace(medoids_=np.array([3, 1, 0]), outcome_="found",
                           ranked_clusters_=[SimpleNamespace(cluster=2, rank=1, attribute_name="pneumothorax"),
                                             SimpleNamespace(cluster=0, rank=2, attribute_name=None)])
    medoids = stage1_medoids(disc, regions)
    assert medoids.rank.tolist() == [2, 0, 1] and medoids.spurious.tolist() == [True, False, True]
    assert medoids.tied_to.tolist() == ["", "", "pneumothorax"] and medoids.kept_ranks == [1, 2]
    assert np.array_equal(medoids.embeddings, regions[[3, 1, 0]])
    top = medoids.with_spurious_ranks([1])
    assert top.spurious.tolist() == [False, False, True]
    loaded = Stage1Medoids.load(top.save(tmp_path))
    assert loaded.spurious.tolist() == [False, False, True] and np.array_equal(loaded.embeddings, top.embeddings)
    assert loaded.regions is None and loaded.outcome == "found" and loaded.spurious_ranks == [1]
    assert loaded.tied_to.tolist() == ["", "", "pneumothorax"]
    grid = {"image_size": 128, "regions": {"grid_sizes": [3], "overlap": 0.0, "within": "content"}}
    assert Stage1Medoids.load(stage1_medoids(disc, regions, regions=grid).save(tmp_path)).regions == grid
    assert stage1_medoids(disc, regions, outcome="too_little_data").outcome == "too_little_data"
    assert loaded.region_mode == "one_pass"
    assert Stage1Medoids.load(stage1_medoids(disc, regions, region_mode="crop").save(tmp_path)).region_mode == "crop"
    with np.load(tmp_path / "medoids.npz") as data:  # a file of an earlier version: no region_mode recorded
        np.savez(tmp_path / "old.npz", **{k: data[k] for k in data.files if k != "region_mode"})
    assert Stage1Medoids.load(tmp_path / "old.npz").region_mode == "one_pass"


def test_training_regions_are_embedded_as_the_audit_embedded_them(stage1):
    # Medoids from a crop-mode audit: the training regions are embedded as crops before the nearest-medoid
    # search (one-pass embeddings of the same boxes differ), so a medoid equal to a region's crop
    # embedding claims that region.
    model, preprocess, _ = create_backbone("tiny-rn", checkpoint=stage1.checkpoint)
    train = RadiographDataset(stage1.manifest, IngestConfig(image_size=128), CLASSES, split="train")
    crops = embed_dataset(model, preprocess, train, mode="crop", batch_size=16, progress=False)
    one_pass = embed_dataset(model, preprocess, train, mode="one_pass", batch_size=16, progress=False)
    chosen = [0, 7, 30]  # three regions of the first two images
    medoids = Stage1Medoids(crops.region_embeddings[chosen], [0, 1, 2], [1, 2, 3], [True, False, False],
                            region_mode="crop")
    labels = training_region_labels(model, preprocess, train, medoids, batch_size=16)
    flags = np.concatenate([labels[str(k)] for k in crops.keys])
    assert np.array_equal(flags, medoids.spurious[medoids.predict(crops.region_embeddings)])
    assert flags[0] and not flags[7] and not flags[30]
    one_pass_flags = medoids.spurious[medoids.predict(one_pass.region_embeddings)]
    assert not np.array_equal(flags, one_pass_flags)  # the mode matters on this model


def test_labelling_agreement_counts():
    labelled = np.array([True, True, False, False, True])
    present = np.array([True, False, True, False, True])
    assert labelling_agreement(labelled, present) == {
        "n_feature_images": 3, "n_labelled_images": 3, "precision": 2 / 3, "recall": 2 / 3}
    assert labelling_agreement(np.zeros(2, bool), np.zeros(2, bool))["precision"] is None


def test_groups_and_balanced_sampler():
    labels_ = {"a": np.array([False, True]), "b": np.array([False]), "c": np.array([True])}
    groups = stage1_groups([0, 0, 1, -1], ["a", "b", "c", "d"], labels_)
    assert groups.tolist() == [1, 0, 3, -1]
    many = np.array([0] * 90 + [1] * 10)
    sampler = GroupBalancedSampler(many, seed=3)
    sampler.set_epoch(1)
    first = list(sampler)
    assert first == list(sampler) and len(first) == 100
    assert 30 <= sum(many[i] == 1 for i in first) <= 70  # 10% of rows, about half of the draws
    halves = []
    for rank in (0, 1):
        shard = GroupBalancedSampler(many, rank, 2, seed=3)
        shard.set_epoch(1)
        halves.append(list(shard))
    assert len(halves[0]) == len(halves[1]) == 50
    assert sorted(halves[0] + halves[1]) == sorted(first)


def test_one_pass_image_embedding_matches_encode_image(stage1):
    torch.manual_seed(0)
    model, preprocess, _ = create_backbone("tiny-rn", checkpoint=stage1.checkpoint)
    model.train()  # training mode: BatchNorm uses batch statistics in both paths
    images = preprocess(torch.rand(2, 1, 128, 128))
    whole = torch.tensor([[0.0, 0.0, 128.0, 128.0]])
    from_regions = torch.stack([r[0] for r in RegionEmbedder(model)(images, [whole, whole])])
    direct = torch.nn.functional.normalize(model.encode_image(images), dim=-1)
    assert torch.allclose(from_regions, direct, atol=1e-4)


def test_ravl_loss_is_finite_and_falls(stage1, tmp_path):
    config = _config(stage1, tmp_path / "out", "ravl")
    config.finetune.batch_size = 16  # one batch = the whole training split: the same images each step
    summary = run_mitigation(config, max_steps=5, progress=False, force=True).to_json()
    losses = summary["result"]["step_losses"]
    assert len(losses) == 5 and all(np.isfinite(losses))
    assert losses[-1] < losses[0]
    stats = summary["region_labels"]
    assert 0 < stats["spurious_fraction"] < 1 and stats["spurious_ranks"] == [1]
    truth = stats["ground_truth"]  # the phantom manifest says which training images carry the feature
    train = Manifest.read(config.finetune.manifest).table.query("split == 'train'")
    assert truth["n_feature_images"] == int(train["artefact_present"].astype(int).sum())
    assert truth["n_labelled_images"] == sum(stats["group_sizes"][g] for g in stats["group_sizes"] if g.endswith("|with"))
    assert (tmp_path / "out" / "ravl" / "model.safetensors").is_file()
    assert (tmp_path / "out" / "ravl" / "mitigate.json").is_file()


def test_methods_of_one_folder_embed_the_training_regions_once(stage1, tmp_path):
    # The first method that labels regions embeds them with the stage-1 model into the folder's cache; a
    # second method reads those shards (none written or rewritten) and gets the same labels.
    def shards(out: Path) -> dict[Path, int]:
        return {p: p.stat().st_mtime_ns for p in (out / STAGE1_REGION_CACHE).rglob("shard-*.npz")}

    first = run_mitigation(_config(stage1, tmp_path / "out", "upsampled"), max_steps=1, progress=False, force=True)
    written = shards(tmp_path / "out")
    assert written
    second = run_mitigation(_config(stage1, tmp_path / "out", "vl_gdro"), max_steps=1, progress=False, force=True)
    assert shards(tmp_path / "out") == written
    assert second.region_labels["group_sizes"] == first.region_labels["group_sizes"]
    assert second.region_labels["spurious_fraction"] == first.region_labels["spurious_fraction"]


@pytest.mark.parametrize("method", [m for m, spec in MITIGATION_METHODS.items() if m != "ravl" and not spec.counterfactual])
def test_every_baseline_runs(stage1, tmp_path, method):
    summary = run_mitigation(_config(stage1, tmp_path / "out", method), max_steps=2, progress=False,
                             force=True).to_json()
    assert summary["result"]["steps"] == 2 and all(np.isfinite(summary["result"]["step_losses"]))


def _partial_audit(stage1, folder: Path) -> Path:
    """An audit whose spurious medoid is one region of one image, far from most others: some images carry it."""
    model, preprocess, _ = create_backbone("tiny-rn", checkpoint=stage1.checkpoint)
    train = RadiographDataset(stage1.manifest, IngestConfig(image_size=128), CLASSES, split="train")
    emb = embed_dataset(model, preprocess, train, batch_size=16, progress=False).region_embeddings
    first = emb[:25]  # image 0's regions as the relevant medoids, plus the region least like them
    far = int(np.argmin((emb / np.linalg.norm(emb, axis=1, keepdims=True)
                         @ (first / np.linalg.norm(first, axis=1, keepdims=True)).T).max(axis=1)))
    medoids = np.concatenate([emb[[far]], first])
    folder.mkdir()
    Stage1Medoids(medoids, list(range(26)), [1] + [0] * 25, [True] + [False] * 25).save(folder)
    return folder


def test_counterfactual_methods_run_without_ground_truth(stage1, tmp_path):
    table = pd.read_csv(stage1.manifest, dtype=str, keep_default_na=False)
    blind = table.drop(columns=[c for c in table.columns if c.startswith("mask_") or c.startswith("artefact")])
    blind.to_csv(tmp_path / "manifest.csv", index=False)
    audit = _partial_audit(stage1, tmp_path / "audit")
    for method in ("counterfactual", "counterfactual_upsampled", "counterfactual_ravl", "counterfactual_paste",
                   "counterfactual_paste_upsampled"):
        config = _config(stage1, tmp_path / "out", method, audit_dir=audit)
        config.finetune.manifest = tmp_path / "manifest.csv"
        summary = run_mitigation(config, max_steps=2, progress=False, force=True).to_json()
        assert summary["result"]["steps"] == 2 and all(np.isfinite(summary["result"]["step_losses"]))
        labelled = sum(n for g, n in summary["region_labels"]["group_sizes"].items() if g.endswith("|with"))
        assert 0 < labelled < len(blind.query("split == 'train'"))
    # Every training image carrying the feature: nothing to swap, one clear error.
    with pytest.raises(ConfigError, match="counterfactual: .*with and without"):
        run_mitigation(_config(stage1, tmp_path / "all", "counterfactual"), max_steps=1, progress=False, force=True)


def test_oracle_reads_the_masks_and_says_so(stage1, tmp_path, caplog):
    table = pd.read_csv(stage1.manifest, dtype=str, keep_default_na=False)
    phantom = Path(table["path"][0]).parents[2]  # the phantom folder the mask paths are relative to
    table["mask_artefact"] = [str(phantom / m) if m else "" for m in table["mask_artefact"]]
    table.to_csv(tmp_path / "manifest.csv", index=False)
    config = _config(stage1, tmp_path / "out", "oracle_counterfactual")
    config.finetune.manifest = tmp_path / "manifest.csv"
    summary = run_mitigation(config, max_steps=2, progress=False, force=True).to_json()
    assert summary["result"]["steps"] == 2 and "ORACLE" in caplog.text
    table.drop(columns=["mask_artefact"]).to_csv(tmp_path / "blind.csv", index=False)
    config.finetune.manifest = tmp_path / "blind.csv"
    with pytest.raises(ConfigError, match="ground-truth artefact masks"):
        run_mitigation(config, max_steps=1, progress=False)


def test_missing_audit_and_prompts_are_config_errors(stage1, tmp_path):
    with pytest.raises(ConfigError, match="medoids.npz"):
        run_mitigation(_config(stage1, tmp_path, "ravl", audit_dir=tmp_path), max_steps=1, progress=False)
    with pytest.raises(ConfigError, match="spurious_prompts"):
        run_mitigation(_config(stage1, tmp_path, "spurious_aware", spurious_prompts=[]), max_steps=1, progress=False)


def test_mitigation_refuses_regions_unlike_the_audits(stage1, tmp_path):
    """The medoids record the region grid they were made from; labelling other regions would be silently wrong."""
    audit = tmp_path / "audit"
    audit.mkdir()
    grid = {"image_size": 128, "regions": {"grid_sizes": [3], "overlap": 0.0, "within": "content"}}
    medoids = Stage1Medoids.load(stage1.audit)
    Stage1Medoids(medoids.embeddings, medoids.clusters, medoids.rank, medoids.spurious, grid).save(audit)
    with pytest.raises(ConfigError, match="finetune.ingest.*grid_sizes"):  # the config's default grids
        run_mitigation(_config(stage1, tmp_path / "out", "ravl", audit_dir=audit), max_steps=1, progress=False)


def _audit_copy(stage1, folder: Path, rank, outcome: str = "found") -> Path:
    """The fixture's medoids with other ranks/outcome, and an audit.json listing the kept clusters."""
    folder.mkdir()
    medoids = Stage1Medoids.load(stage1.audit)
    rank = np.asarray(rank)
    Stage1Medoids(medoids.embeddings, medoids.clusters, rank, rank > 0, outcome=outcome,
                  tied_to=np.where(rank > 0, "cardiomegaly", "")).save(folder)
    clusters = [{"rank": int(r), "attribute_name": "cardiomegaly", "n_regions": 10, "n_images": 5}
                for r in sorted(rank[rank > 0])]
    (folder / "audit.json").write_text(json.dumps({"primary_method": "ravl", "outcome": outcome, "methods": {
        "ravl": {"outcome": outcome, "ranked_clusters": clusters}}}))
    return folder


def test_mitigation_does_no_harm_without_a_finding(stage1, tmp_path):
    """No kept cluster (the audit found no significant shortcut): refuse before any work, unless forced."""
    audit = _audit_copy(stage1, tmp_path / "audit", [0, 0, 0], outcome="not_significant")
    config = _config(stage1, tmp_path / "out", "ravl", audit_dir=audit)
    with pytest.raises(ConfigError, match="no significant shortcut \\(outcome not_significant\\).*--force"):
        run_mitigation(config, max_steps=1, progress=False)
    assert not (tmp_path / "out").exists()
    stats = run_mitigation(config, max_steps=1, progress=False, force=True).region_labels
    assert stats["spurious_ranks"] == [] and stats["forced"] and stats["spurious_fraction"] == 0.0
    few = _audit_copy(stage1, tmp_path / "few", [1, 0, 0], outcome="too_little_data")
    with pytest.raises(ConfigError, match="too little data to conclude.*--force"):
        run_mitigation(_config(stage1, tmp_path / "out", "ravl", audit_dir=few), max_steps=1, progress=False)
    # Methods that do not read the audit's clusters are not gated.
    run_mitigation(_config(stage1, tmp_path / "out", "vl_erm", audit_dir=audit), max_steps=1, progress=False)


def test_mitigation_reads_the_review(stage1, tmp_path):
    """review.yaml decides the spurious clusters (report ranks); unfinished or empty reviews are refused."""
    audit = _audit_copy(stage1, tmp_path / "audit", [2, 0, 1])
    config = _config(stage1, tmp_path / "out", "ravl", audit_dir=audit, spurious_ranks=[3])
    # No review: the audit cannot tell a shortcut from the class's own evidence, so a person decides.
    with pytest.raises(ConfigError, match="no review.yaml: .*ravl-med review .* --spurious RANKS.*--force"):
        run_mitigation(config, max_steps=1, progress=False)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="spurious_ranks \\(no review, forced\\): the audit kept no cluster of rank"):
        run_mitigation(config, max_steps=1, progress=False, force=True)
    forced = run_mitigation(config.model_copy(update={"spurious_ranks": [1]}), max_steps=1, progress=False,
                            force=True).region_labels
    assert forced["spurious_ranks"] == [1] and forced["forced"] and forced["spurious_from"].endswith("forced)")
    run_review(audit)
    with pytest.raises(ConfigError, match="cluster\\(s\\) \\[1, 2\\] not reviewed yet"):
        run_mitigation(config, max_steps=1, progress=False)
    run_review(audit, [])
    with pytest.raises(ConfigError, match="review.yaml marks no cluster spurious"):
        run_mitigation(config, max_steps=1, progress=False)
    run_review(audit, [2])
    result = run_mitigation(config.model_copy(update={"evaluation": MitigationEvaluation(spurious_class="no finding")}),
                            max_steps=1, progress=False)
    stats = result.region_labels
    assert stats["spurious_ranks"] == [2] and stats["spurious_from"] == "review.yaml" and not stats["forced"]
    assert stats["tied_to"] == ["cardiomegaly"]
    assert any("--spurious-class 'no finding'" in note and "'cardiomegaly'" in note for note in result.notes)


def test_a_recipe_unlike_stage_ones_is_named(stage1, tmp_path):
    """Stage 2 should train with the stage-1 recipe (recorded by finetune in metrics.json): differences are named."""
    import shutil

    folder = tmp_path / "stage1"
    folder.mkdir()
    shutil.copy(stage1.checkpoint, folder / "model.safetensors")
    config = _config(stage1, tmp_path / "out", "vl_erm", stage1_checkpoint=folder)
    recipe = config.finetune.model_dump(mode="json") | {"lr": 0.01, "output_dir": "elsewhere"}
    (folder / "metrics.json").write_text(json.dumps({"sha256": stage1.sha, "config": recipe}))
    notes = run_mitigation(config, max_steps=1, progress=False, force=True).notes
    assert [n for n in notes if "recipe" in n] == [
        f"warning: the mitigation recipe differs from the stage-1 model's ({(folder / 'metrics.json').as_posix()}): "
        "lr 0.01 in stage 1, 0.001 here. RaVL compares methods trained with the stage-1 recipe; set the same values "
        "in finetune."]


def test_standard_with_the_stage_one_recipe_is_the_stage_one_model(stage1, tmp_path):
    """Same recipe, starting weights, data and seed as stage 1: 'standard' reuses the stage-1 model, not retrained."""
    import shutil

    folder = tmp_path / "stage1"
    folder.mkdir()
    shutil.copy(stage1.checkpoint, folder / "model.safetensors")
    config = _config(stage1, tmp_path / "out", "standard", stage1_checkpoint=folder)
    history = [{"epoch": 0, "train_loss": 1.5, "val_accuracy": None, "images_per_s": 10.0, "steps": 2}]
    record = {"sha256": stage1.sha, "steps": 2, "step_losses": [1.6, 1.4], "history": history,
              "config": config.finetune.model_dump(mode="json") | {"output_dir": "stage1-run"}}
    (folder / "metrics.json").write_text(json.dumps(record))
    result = run_mitigation(config, progress=False)
    assert result.fit.checkpoint == folder / "model.safetensors" and result.fit.steps == 2
    assert result.notes[0].startswith("standard: the stage-1 model itself")
    assert not (tmp_path / "out" / "standard" / "model.safetensors").exists()  # nothing trained
    assert json.loads((tmp_path / "out" / "standard" / "mitigate.json").read_text())["result"]["sha256"] == stage1.sha
    record["config"]["seed"] = 1  # another seed: another model, trained
    (folder / "metrics.json").write_text(json.dumps(record))
    result = run_mitigation(config.model_copy(update={"finetune": config.finetune.model_copy(
        update={"output_dir": tmp_path / "other", "epochs": 1})}), progress=False)
    assert result.fit.checkpoint == tmp_path / "other" / "standard" / "model.safetensors"


def test_cli_mitigate_smoke(stage1, tmp_path, capsys):
    config = _config(stage1, tmp_path / "ignored", "ravl").model_dump(mode="json")
    path = tmp_path / "mitigate.yaml"
    path.write_text(yaml.safe_dump(config))
    code = main(["mitigate", "--config", str(path), "--method", "vl_gdro", "--out", str(tmp_path / "cli"),
                 "--max-steps", "1", "--no-progress", "--force"])
    assert code == 0
    assert '"method": "vl_gdro"' in capsys.readouterr().out
    assert (tmp_path / "cli" / "vl_gdro" / "mitigate.json").is_file()
    assert main(["mitigate", "--config", str(path), "--audit", str(tmp_path / "nowhere"), "--max-steps", "1"]) == 2


def test_vl_gdro_resumes_with_its_group_weights(stage1, tmp_path):
    # 16 rows / 8 = 2 steps per epoch; the interrupted run stops after step 1 (mid-epoch) and resumes.
    straight = run_mitigation(_config(stage1, tmp_path / "a", "vl_gdro"), max_steps=3, progress=False,
                              force=True).to_json()
    config = _config(stage1, tmp_path / "b", "vl_gdro")
    run_mitigation(config, max_steps=1, progress=False, force=True)
    saved = torch.load(latest_state(tmp_path / "b" / "vl_gdro"), weights_only=False)["objective"]["group_weights"]
    assert saved.shape == (2 * len(CLASSES),) and not torch.allclose(saved, torch.full_like(saved, saved.mean()))
    resumed = run_mitigation(config, resume=True, max_steps=3, progress=False, force=True).to_json()
    # From uniform weights the second step's loss (sum_g q_g L_g) would differ.
    assert resumed["result"]["step_losses"] == straight["result"]["step_losses"]
    final = [torch.load(latest_state(out / "vl_gdro"), weights_only=False)["objective"]["group_weights"]
             for out in (tmp_path / "a", tmp_path / "b")]
    assert torch.equal(final[0], final[1])


def test_group_dro_state_round_trip():
    objective = GroupDROObjective(4)
    objective.group_weights = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    restored = GroupDROObjective(4)
    restored.load_state_dict(objective.state_dict())
    assert torch.equal(restored.group_weights, objective.group_weights)
    with pytest.raises(ValueError, match="shape"):
        GroupDROObjective(6).load_state_dict(objective.state_dict())
