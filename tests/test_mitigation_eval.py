"""Stage-2 evaluation (``ravl_med.evaluate.GroupAccuracy``, ``ravl_med.stages.evaluate``): metrics against
hand computations, and a random tiny-rn on a few phantom images end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ravl_med.config import IngestConfig
from ravl_med.data.dataset import RadiographDataset
from ravl_med.data.manifest import Manifest
from ravl_med.evaluate import GroupAccuracy
from ravl_med.models import create_backbone
from ravl_med.models.embed import embed_dataset
from ravl_med.models.zeroshot import CXR_TEMPLATES
from ravl_med.phantom import PhantomSetting, write_setting
from ravl_med.stages.evaluate import core_regions_from_masks, evaluate_model

CLASSES = ["no finding", "cardiomegaly", "pneumothorax"]


def _hand_metrics(labels, predictions, present, n_classes):
    known = (labels >= 0) & (labels < n_classes)
    overall = (labels[known] == predictions[known]).mean()
    accs = []
    for c in range(n_classes):
        for flag in (True, False):
            m = known & (labels == c) & (present == flag)
            if m.any():
                accs.append((labels[m] == predictions[m]).mean())
    return overall, min(accs)


def test_image_metrics_match_boolean_masks():
    rng = np.random.default_rng(3)
    labels = rng.integers(-1, 3, size=200)
    predictions = rng.integers(0, 3, size=200)
    present = rng.random(200) < 0.4
    out = GroupAccuracy(labels=labels, predictions=predictions, feature_present=present, classes=CLASSES, n_boot=200)
    overall, worst = _hand_metrics(labels, predictions, present, 3)
    assert out.overall == pytest.approx(overall)
    assert out.worst_group == pytest.approx(worst)
    assert out.count == int((labels >= 0).sum())
    table = out.by_group
    assert len(table) == 6 and {"count", "accuracy", "ci_low", "ci_high"} <= set(table.columns)
    assert (table["ci_low"] <= table["accuracy"] + 1e-12).all() and (table["accuracy"] <= table["ci_high"] + 1e-12).all()


def test_image_metrics_small_exact():
    labels = np.array([0, 0, 1, 1, 1, 2])
    predictions = np.array([0, 1, 1, 1, 0, 2])
    present = np.array([True, False, True, True, False, False])
    out = GroupAccuracy(labels=labels, predictions=predictions, feature_present=present, classes=CLASSES, n_boot=0)
    assert out.overall == pytest.approx(4 / 6)
    assert out.worst_group == 0.0  # (class 0, absent) and (class 1, absent) both wrong
    row = out.by_group.query("class_index == 1 and feature_present").iloc[0]
    assert row["count"] == 2 and row["accuracy"] == 1.0


def test_region_metrics_use_core_regions_and_image_labels():
    labels = np.array([0, 1, 2])
    present = np.array([False, True, False])
    region_image = np.array([0, 0, 1, 1, 1, 2, 2])
    region_pred = np.array([0, 2, 1, 0, 1, 2, 2])
    core = np.array([True, False, True, True, True, False, True])
    out = GroupAccuracy.of_regions(region_predictions=region_pred, region_image=region_image, labels=labels,
                                   feature_present=present, scored=core, classes=CLASSES)
    # core regions: img0 -> 0 (right); img1 -> 1, 0, 1 (2/3); img2 -> 2 (right)
    assert out.count == 5
    assert out.overall == pytest.approx(4 / 5)
    assert out.worst_group == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        GroupAccuracy.of_regions(region_predictions=region_pred, region_image=region_image, labels=labels,
                                 feature_present=present, scored=core[:-1], classes=CLASSES)


@pytest.fixture(scope="module")
def phantom_test_set(tmp_path_factory):
    setting = PhantomSetting(name="mit-eval", artefact="chest_drain", spurious_class="pneumothorax", strength=0.0,
                             n_train=2, n_val=0, n_test=9, image_size=64, classes=CLASSES)
    manifest = write_setting(setting, tmp_path_factory.mktemp("phantom"), progress=False).manifest
    dataset = RadiographDataset(Manifest.read(manifest, classes=CLASSES), IngestConfig(image_size=64), CLASSES,
                                split="test", cache=True)
    return manifest, dataset


def test_core_regions_from_masks(phantom_test_set):
    manifest, dataset = phantom_test_set
    boxes = np.array([[0, 0, 64, 64], [0, 0, 1, 1]] * len(dataset), dtype=np.float32)
    region_image = np.repeat(np.arange(len(dataset)), 2)
    core = core_regions_from_masks(dataset, boxes, region_image, manifest.parent)
    assert core.dtype == bool and core.shape == (2 * len(dataset),)
    assert core[0::2].all()  # the whole image holds every mask (finding, or lung for no finding)
    # boxes in model pixels (side 128) are scaled back to the 64 px frame
    scaled = core_regions_from_masks(dataset, boxes * 2, region_image, manifest.parent, model_side=128)
    np.testing.assert_array_equal(core, scaled)


def test_evaluate_model_end_to_end(phantom_test_set):
    manifest, dataset = phantom_test_set
    torch.manual_seed(0)
    model, preprocess, tokenizer = create_backbone("tiny-rn")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        embeddings = embed_dataset(model, preprocess, dataset, batch_size=8, progress=False, precision="fp32")
        side = int(preprocess.image_size)
        core = core_regions_from_masks(dataset, embeddings.region_boxes, embeddings.region_image, manifest.parent,
                                       model_side=side)
        present = dataset.table["artefact_present"].astype(int).to_numpy().astype(bool)
        out = evaluate_model(model, preprocess, tokenizer, dataset, CLASSES, CXR_TEMPLATES, present, core,
                             batch_size=8, n_boot=100)
        again = evaluate_model(model, preprocess, tokenizer, dataset, CLASSES, CXR_TEMPLATES, present, core,
                               batch_size=8, n_boot=100, embeddings=embeddings)
        images_only = evaluate_model(model, preprocess, tokenizer, dataset, CLASSES, CXR_TEMPLATES, present,
                                     batch_size=8, n_boot=0)
    finally:
        torch.set_num_threads(threads)
    assert core.any()
    for key in ("image_accuracy", "image_worst_group", "region_accuracy", "region_worst_group"):
        assert np.isfinite(getattr(out, key)) and 0.0 <= getattr(out, key) <= 1.0, key
        assert getattr(again, key) == pytest.approx(getattr(out, key), abs=1e-6), key
    assert out.n_images == len(dataset) and out.n_core_regions == int(core.sum())
    assert out.images.by_group["count"].sum() == len(dataset)
    assert images_only.region_accuracy is None
    assert images_only.image_accuracy == out.image_accuracy
    overall, worst = _hand_metrics(out.labels, out.predictions, present, len(CLASSES))
    assert out.image_accuracy == pytest.approx(overall) and out.image_worst_group == pytest.approx(worst)


def test_run_evaluation_groups_from_ground_truth_or_from_the_audit(phantom_test_set, tmp_path):
    import pandas as pd

    from ravl_med.discover.medoids import Stage1Medoids
    from ravl_med.mitigate.regions import training_region_labels
    from ravl_med.models.weights import save_checkpoint
    from ravl_med.stages.evaluate import run_evaluation

    manifest, dataset = phantom_test_set
    torch.manual_seed(0)
    model, preprocess, _ = create_backbone("tiny-rn")
    checkpoint = tmp_path / "model.safetensors"
    save_checkpoint(model, checkpoint)
    ingest = IngestConfig(image_size=64)
    truth = run_evaluation("tiny-rn", checkpoint, manifest, ingest, CLASSES, CXR_TEMPLATES, n_boot=0, batch_size=8)
    assert truth.groups_from == "ground truth" and truth.feature == "chest_drain"
    assert truth.n_feature_present == int(dataset.table["artefact_present"].astype(int).sum())
    assert truth.region_accuracy is not None  # the phantom masks give core regions
    # A hospital manifest says nothing about the feature: the audit's spurious cluster decides.
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False).drop(columns=["artefact_present"])
    table["path"] = [str(manifest.parent / p) for p in table["path"]]
    for column in ("mask_finding", "lung_mask", "mask_artefact"):
        if column in table:
            table[column] = [str(manifest.parent / p) if p else "" for p in table[column]]
    plain = tmp_path / "manifest.csv"
    table.to_csv(plain, index=False)
    with pytest.raises(ValueError, match="artefact_present"):
        run_evaluation("tiny-rn", checkpoint, plain, ingest, CLASSES, CXR_TEMPLATES, n_boot=0)
    emb = embed_dataset(model, preprocess, dataset, batch_size=8, progress=False, precision="fp32")
    medoids = Stage1Medoids(emb.region_embeddings[[0, 7]], [0, 1], [1, 0], [True, False])
    audit = run_evaluation("tiny-rn", checkpoint, plain, ingest, CLASSES, CXR_TEMPLATES, n_boot=0, batch_size=8,
                           stage1_checkpoint=checkpoint, medoids=medoids)
    flags = training_region_labels(model, preprocess, dataset, medoids, batch_size=8)
    assert audit.groups_from == "audit"
    assert audit.n_feature_present == sum(bool(f.any()) for f in flags.values()) > 0
    assert audit.image_accuracy == pytest.approx(truth.image_accuracy)  # same model, same images
