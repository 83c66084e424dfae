"""RadiographDataset and collate on a tiny phantom set."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from ravl_med.config import IngestConfig
from ravl_med.data.dataset import RadiographDataset, collate, label_sentence
from ravl_med.data.errors import IngestError
from ravl_med.data.manifest import Manifest
from ravl_med.models import create_backbone
from ravl_med.phantom import PhantomSetting, write_setting

CLASSES = ["no finding", "cardiomegaly", "pleural effusion"]


@pytest.fixture(scope="module")
def small_manifest(tmp_path_factory):
    setting = PhantomSetting(
        name="ds", artefact="chest_drain", spurious_class="cardiomegaly", strength=0.0,
        n_train=6, n_val=3, n_test=0, image_size=64, classes=CLASSES,
    )
    return write_setting(setting, tmp_path_factory.mktemp("phantom"), progress=False).manifest


def test_items_have_image_regions_text_label_key(small_manifest):
    ds = RadiographDataset(small_manifest, IngestConfig(image_size=64), CLASSES, split="train")
    assert len(ds) == 6
    item = ds[0]
    assert item["image"].shape == (1, 64, 64) and item["image"].dtype == torch.float32
    assert type(item["image"]) is torch.Tensor  # plain tensor, no MONAI metadata in batches
    assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    assert item["regions"].ndim == 2 and item["regions"].shape[1] == 4
    table = pd.read_csv(small_manifest)
    train = table[table["split"] == "train"].reset_index(drop=True)
    assert item["text"] == train.loc[0, "report"]
    assert item["label"] == CLASSES.index(train.loc[0, "label"])
    assert isinstance(item["key"], str) and item["key"]
    assert torch.equal(ds.labels, torch.tensor([CLASSES.index(x) for x in train["label"]]))


def test_split_filter_and_tokens(small_manifest):
    _, _, tokenizer = create_backbone("tiny-rn")
    ds = RadiographDataset(small_manifest, IngestConfig(image_size=64), CLASSES, tokenizer, split="val")
    assert len(ds) == 3
    assert ds[1]["tokens"].shape == (32,) and ds[1]["tokens"].dtype == torch.int64


def _relabelled(small_manifest, tmp_path, label: str) -> Manifest:
    """The small manifest (labels not checked against classes) with row 0 labelled ``label`` and no report."""
    table = pd.read_csv(small_manifest)
    table["path"] = [str(small_manifest.parent / p) for p in table["path"]]
    table.loc[0, "report"] = ""
    table.loc[0, "label"] = label
    return Manifest.from_frame(table.astype(str).replace("nan", ""), root=tmp_path)


def test_empty_report_falls_back_to_a_label_sentence_and_unknown_label_is_minus_one(small_manifest, tmp_path):
    ds = RadiographDataset(_relabelled(small_manifest, tmp_path, "nodule|cardiomegaly"), IngestConfig(image_size=64))
    assert ds.text(0) == label_sentence(["nodule", "cardiomegaly"]) == "a chest x-ray showing nodule and cardiomegaly."
    ds = RadiographDataset(_relabelled(small_manifest, tmp_path, "nodule"), IngestConfig(image_size=64), CLASSES)
    assert ds[0]["label"] == -1  # not one of the classes


def test_several_labels_are_refused_with_classes_not_reduced_to_the_first(small_manifest, tmp_path):
    # Regression: the row's first label was taken as its class, silently dropping the others.
    manifest = _relabelled(small_manifest, tmp_path, "cardiomegaly|pleural effusion")
    with pytest.raises(IngestError, match=r"split 'train': 1 row\(s\) with several labels, e\.g\. .*: "
                       r"'cardiomegaly\|pleural effusion';") as caught:
        RadiographDataset(manifest, IngestConfig(image_size=64), CLASSES, split="train")
    assert caught.value.reason == "bad_row"


def test_collate_stacks_images_and_keeps_regions_as_a_list(small_manifest):
    ds = RadiographDataset(small_manifest, IngestConfig(image_size=64), CLASSES, split="train")
    batch = collate([ds[i] for i in range(3)])
    assert batch["image"].shape == (3, 1, 64, 64)
    assert isinstance(batch["regions"], list) and len(batch["regions"]) == 3
    assert batch["label"].shape == (3,) and batch["label"].dtype == torch.int64
    assert len(batch["text"]) == len(batch["key"]) == 3


def test_unreadable_file_fails_fast_naming_key_and_reason(small_manifest, tmp_path):
    table = pd.read_csv(small_manifest)
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")
    table["path"] = [str(small_manifest.parent / p) for p in table["path"]]
    table.loc[0, "path"] = str(broken)
    table.loc[0, "key"] = "row-zero"
    path = tmp_path / "manifest.csv"
    table.to_csv(path, index=False)
    ds = RadiographDataset(path, IngestConfig(image_size=64), CLASSES)
    with pytest.raises(IngestError, match="row key row-zero") as info:
        ds[0]
    assert "ravl-med validate" in str(info.value)
    assert ds[1]["image"].shape == (1, 64, 64)


def test_text_can_always_be_the_label_sentence(tmp_path):
    import pandas as pd

    from ravl_med.data.dataset import RadiographDataset, label_sentence

    path = tmp_path / "m.csv"
    pd.DataFrame([{"path": "a.png", "label": "nodule", "report": "Small nodule, right upper lobe."}]).to_csv(path, index=False)
    assert RadiographDataset(path, classes=["nodule"]).text(0) == "Small nodule, right upper lobe."
    assert RadiographDataset(path, classes=["nodule"], text="labels").text(0) == label_sentence(["nodule"])
