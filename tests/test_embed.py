"""embed_dataset and EmbeddingSet on a tiny phantom set with the tiny-rn backbone (CPU).

10 images written at 64 px and ingested at 64 px (the tiny-rn input is 128 px, so boxes are scaled
by 2 on the way), 4 x 4 region grid.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ravl_med.config import IngestConfig, RegionConfig
from ravl_med.data.dataset import RadiographDataset
from ravl_med.models import RegionEmbedder, create_backbone
from ravl_med.models import embed as embed_module
from ravl_med.models.embed import (
    EmbeddingSet,
    embed_dataset,
    embed_share,
    embedding_fingerprint,
    weights_fingerprint,
)
from ravl_med.phantom import PhantomSetting, write_setting

CLASSES = ["no finding", "cardiomegaly", "pleural effusion"]
N_IMAGES = 10
_EMBED_BATCH = embed_module._embed_batch  # the real one, before any test wraps it


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    setting = PhantomSetting(
        name="embed", artefact="chest_drain", spurious_class="cardiomegaly", strength=0.0,
        n_train=N_IMAGES, n_val=0, n_test=0, image_size=64, classes=CLASSES,
    )
    return write_setting(setting, tmp_path_factory.mktemp("phantom"), progress=False).manifest


@pytest.fixture(scope="module")
def dataset(manifest):
    return RadiographDataset(manifest, IngestConfig(image_size=64), CLASSES, cache=True)


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    model, preprocess, _ = create_backbone("tiny-rn")
    return model, preprocess


@pytest.fixture(scope="module")
def reference(backbone, dataset):
    """Uncached one-pass result, batch size 4."""
    model, preprocess = backbone
    return embed_dataset(model, preprocess, dataset, batch_size=4, progress=False)


class SimulatedKill(Exception):
    """Stands for the process being killed in the middle of a batch."""


class CountingBatches:
    """Wraps ``_embed_batch``: counts calls, records batch keys, optionally fails on call ``fail_on``."""

    def __init__(self, monkeypatch, fail_on: int | None = None) -> None:
        self.calls: list[list[str]] = []
        self.fail_on = fail_on
        monkeypatch.setattr(embed_module, "_embed_batch", self)

    def __call__(self, model, preprocess, embedder, batch, device, autocast):
        if self.fail_on is not None and len(self.calls) + 1 == self.fail_on:
            raise SimulatedKill("simulated kill")
        self.calls.append(list(batch["key"]))
        return _EMBED_BATCH(model, preprocess, embedder, batch, device, autocast)


def _direct(model, preprocess, dataset, mode="one_pass"):
    """Image and region embeddings computed directly with encode_image and RegionEmbedder."""
    items = [dataset[i] for i in range(len(dataset))]
    images = torch.stack([item["image"] for item in items])
    boxes = [preprocess.scale_boxes(item["regions"], 64, 64) for item in items]
    with torch.no_grad():
        x = preprocess(images)
        image = F.normalize(model.encode_image(x), dim=-1)
        regions = torch.cat(RegionEmbedder(model, mode=mode)(x, boxes))
    return image.numpy(), regions.numpy(), torch.cat(boxes).numpy(), [len(b) for b in boxes]


def _assert_same(a: EmbeddingSet, b: EmbeddingSet, atol: float = 1e-6) -> None:
    assert a.keys.tolist() == b.keys.tolist()
    np.testing.assert_array_equal(a.region_image, b.region_image)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.region_boxes, b.region_boxes)
    np.testing.assert_allclose(a.image_embeddings, b.image_embeddings, atol=atol, rtol=0)
    np.testing.assert_allclose(a.region_embeddings, b.region_embeddings, atol=atol, rtol=0)


def test_shapes_normalisation_and_region_bookkeeping(reference, dataset):
    result = reference
    counts = [dataset[i]["regions"].shape[0] for i in range(len(dataset))]
    m = sum(counts)
    assert len(result) == N_IMAGES and result.dim == 64
    assert result.image_embeddings.shape == (N_IMAGES, 64) and result.image_embeddings.dtype == np.float32
    assert result.region_embeddings.shape == (m, 64) and result.region_embeddings.dtype == np.float32
    assert result.region_boxes.shape == (m, 4) and result.region_boxes.dtype == np.float32
    assert result.region_image.dtype == np.int64 and result.labels.dtype == np.int64
    np.testing.assert_allclose(np.linalg.norm(result.image_embeddings, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(result.region_embeddings, axis=1), 1.0, atol=1e-5)
    assert result.keys.tolist() == dataset.keys
    np.testing.assert_array_equal(result.labels, dataset.labels.numpy())
    np.testing.assert_array_equal(result.region_counts, counts)
    assert result.regions_of(2).tolist() == list(range(sum(counts[:2]), sum(counts[:3])))
    # Boxes are in model-input pixels: ingested at 64 px, the tower takes 128 px.
    np.testing.assert_allclose(result.region_boxes[result.regions_of(0)], dataset[0]["regions"].numpy() * 2)
    assert result.region_boxes.max() <= 128


@pytest.mark.parametrize("mode", ["one_pass", "crop"])
def test_embeddings_equal_encode_image_and_region_embedder(backbone, dataset, mode):
    model, preprocess = backbone
    result = embed_dataset(model, preprocess, dataset, mode=mode, batch_size=4, progress=False)
    image, regions, boxes, counts = _direct(model, preprocess, dataset, mode)
    np.testing.assert_allclose(result.image_embeddings, image, atol=1e-5, rtol=0)
    np.testing.assert_allclose(result.region_embeddings, regions, atol=1e-5, rtol=0)
    np.testing.assert_allclose(result.region_boxes, boxes)
    np.testing.assert_array_equal(result.region_counts, counts)


def test_second_run_reads_the_cache_and_computes_nothing(backbone, dataset, reference, tmp_path, monkeypatch):
    model, preprocess = backbone
    first = CountingBatches(monkeypatch)
    cached = embed_dataset(model, preprocess, dataset, batch_size=4, cache_dir=tmp_path, progress=False)
    assert len(first.calls) == 3  # 10 images in batches of 4
    _assert_same(cached, reference)
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert folder.name == cached.fingerprint
    assert sorted(p.name for p in folder.glob("shard-*.npz")) == [f"shard-00000{i}.npz" for i in range(3)]
    assert (folder / "fingerprint.json").is_file()

    second = CountingBatches(monkeypatch)
    again = embed_dataset(model, preprocess, dataset, batch_size=4, cache_dir=tmp_path, progress=False)
    assert second.calls == []
    _assert_same(again, cached, atol=0)


def test_killed_run_resumes_with_only_the_missing_shards(backbone, dataset, reference, tmp_path, monkeypatch):
    model, preprocess = backbone
    uninterrupted = embed_dataset(model, preprocess, dataset, batch_size=3, progress=False)
    killed = CountingBatches(monkeypatch, fail_on=3)  # two shards finished, killed in the third
    with pytest.raises(SimulatedKill):
        embed_dataset(model, preprocess, dataset, batch_size=3, cache_dir=tmp_path, progress=False)
    assert len(killed.calls) == 2
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert sorted(p.name for p in folder.glob("shard-*.npz")) == ["shard-000000.npz", "shard-000001.npz"]

    resumed = CountingBatches(monkeypatch)
    result = embed_dataset(model, preprocess, dataset, batch_size=3, cache_dir=tmp_path, progress=False)
    keys = dataset.keys
    assert resumed.calls == [keys[6:9], keys[9:10]]
    _assert_same(result, uninterrupted)
    _assert_same(result, reference, atol=1e-5)  # batch size does not change the numbers beyond rounding


def test_shares_of_two_processes_fill_the_cache_and_give_the_single_process_set(
        backbone, dataset, reference, tmp_path, monkeypatch):
    # What each torchrun process does, here one after the other: 10 images in batches of 3 -> batches
    # 0..3; process 1 takes 1 and 3, process 0 takes 0 and 2 (one already in the cache: resumed).
    model, preprocess = backbone
    keys = dataset.keys
    counter = CountingBatches(monkeypatch)
    assert embed_share(model, preprocess, dataset, rank=1, world_size=2, cache_dir=tmp_path, batch_size=3,
                       progress=False) == 2
    assert counter.calls == [keys[3:6], keys[9:10]]
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert sorted(p.name for p in folder.glob("shard-*.npz")) == ["shard-000001.npz", "shard-000003.npz"]

    embed_share(model, preprocess, dataset, rank=0, world_size=3, cache_dir=tmp_path, batch_size=3, progress=False)
    counter = CountingBatches(monkeypatch)
    assert embed_share(model, preprocess, dataset, rank=0, world_size=2, cache_dir=tmp_path, batch_size=3,
                       progress=False) == 1
    assert counter.calls == [keys[6:9]]

    counter = CountingBatches(monkeypatch)
    merged = embed_dataset(model, preprocess, dataset, batch_size=3, cache_dir=tmp_path, progress=False)
    assert counter.calls == []  # rank 0 after the barrier: everything is read from the cache
    _assert_same(merged, embed_dataset(model, preprocess, dataset, batch_size=3, progress=False), atol=0)
    assert merged.fingerprint == folder.name
    with pytest.raises(ValueError, match="rank must be in"):
        embed_share(model, preprocess, dataset, rank=2, world_size=2, cache_dir=tmp_path)


def test_fingerprint_changes_with_ingest_config_and_weights(backbone, dataset, manifest):
    model, preprocess = backbone
    base, parts = embedding_fingerprint(model, preprocess, dataset)
    assert embedding_fingerprint(model, preprocess, dataset)[0] == base
    assert parts["weights"] == weights_fingerprint(model)

    other_regions = RadiographDataset(
        manifest, IngestConfig(image_size=64, regions=RegionConfig(grid_sizes=[2], overlap=0.0)), CLASSES
    )
    assert embedding_fingerprint(model, preprocess, other_regions)[0] != base
    assert embedding_fingerprint(model, preprocess, dataset, mode="crop")[0] != base
    assert embedding_fingerprint(model, preprocess, dataset, batch_size=8)[0] != base
    assert embedding_fingerprint(model, preprocess, dataset, keys=dataset.keys[::-1])[0] != base

    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.visual.attnpool.c_proj.bias.add_(1e-3)
    assert weights_fingerprint(changed) != weights_fingerprint(model)
    assert embedding_fingerprint(changed, preprocess, dataset)[0] != base
    # An explicit weights identity (a checkpoint sha256) replaces the state-dict hash.
    assert embedding_fingerprint(changed, preprocess, dataset, fingerprint="abc")[0] == (
        embedding_fingerprint(model, preprocess, dataset, fingerprint="abc")[0]
    )
    # The text tower does not change image or region embeddings.
    text_changed = copy.deepcopy(model)
    with torch.no_grad():
        text_changed.token_embedding.weight.add_(1.0)
    assert embedding_fingerprint(text_changed, preprocess, dataset)[0] == base


def test_changed_weights_or_ingest_config_are_not_served_stale(backbone, dataset, manifest, tmp_path, monkeypatch):
    model, preprocess = backbone
    old = embed_dataset(model, preprocess, dataset, batch_size=5, cache_dir=tmp_path, progress=False)
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.visual.attnpool.c_proj.weight.mul_(1.5).add_(0.01)
    counter = CountingBatches(monkeypatch)
    new = embed_dataset(changed, preprocess, dataset, batch_size=5, cache_dir=tmp_path, progress=False)
    assert len(counter.calls) == 2 and new.fingerprint != old.fingerprint
    assert not np.allclose(new.image_embeddings, old.image_embeddings, atol=1e-3)

    coarse = RadiographDataset(manifest, IngestConfig(image_size=64, regions=RegionConfig(grid_sizes=[2], overlap=0.0)), CLASSES)
    counter = CountingBatches(monkeypatch)
    regrid = embed_dataset(model, preprocess, coarse, batch_size=5, cache_dir=tmp_path, progress=False)
    assert len(counter.calls) == 2 and regrid.region_embeddings.shape[0] != old.region_embeddings.shape[0]
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 3


def test_stray_temp_file_is_ignored_and_a_corrupt_shard_recomputed(backbone, dataset, reference, tmp_path, monkeypatch):
    model, preprocess = backbone
    digest, _ = embedding_fingerprint(model, preprocess, dataset, batch_size=4)
    folder = tmp_path / digest
    folder.mkdir()
    (folder / ".shard-000000.npz.k1l2m3.tmp.npz").write_bytes(b"PK\x03\x04 half a shard")
    counter = CountingBatches(monkeypatch)
    result = embed_dataset(model, preprocess, dataset, batch_size=4, cache_dir=tmp_path, progress=False)
    assert len(counter.calls) == 3 and result.fingerprint == digest
    _assert_same(result, reference)

    (folder / "shard-000001.npz").write_bytes(b"not a zip file")  # e.g. a disk fault
    counter = CountingBatches(monkeypatch)
    result = embed_dataset(model, preprocess, dataset, batch_size=4, cache_dir=tmp_path, progress=False)
    assert counter.calls == [dataset.keys[4:8]]
    _assert_same(result, reference)


def test_embedding_set_save_load_round_trip(reference, tmp_path):
    folder = reference.save(tmp_path / "emb")
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["embeddings.json", "keys.npy", "image_embeddings.npy", "region_embeddings.npy", "region_image.npy",
         "region_boxes.npy", "labels.npy"]
    )
    loaded = EmbeddingSet.load(folder)
    _assert_same(loaded, reference, atol=0)
    assert loaded.fingerprint == reference.fingerprint
    (folder / "embeddings.json").unlink()  # a save that did not finish
    with pytest.raises(FileNotFoundError, match="did not finish"):
        EmbeddingSet.load(folder)
    with pytest.raises(ValueError, match="region_image"):
        EmbeddingSet(
            keys=["a", "b"], image_embeddings=np.zeros((2, 3)), region_embeddings=np.zeros((2, 3)),
            region_image=[1, 0], region_boxes=np.zeros((2, 4)), labels=[0, 1],
        )


def test_generic_dataset_without_keys_property_and_an_image_without_regions(backbone, tmp_path):
    model, preprocess = backbone
    generator = torch.Generator().manual_seed(1)
    items = [
        {"image": torch.rand(1, 128, 128, generator=generator), "regions": torch.tensor([[0.0, 0, 64, 64]]),
         "label": 1, "key": "a"},
        {"image": torch.rand(1, 128, 128, generator=generator), "regions": torch.zeros((0, 4)), "label": 0, "key": "b"},
        {"image": torch.rand(1, 128, 128, generator=generator),
         "regions": torch.tensor([[0.0, 0, 128, 128], [32, 32, 96, 96]]), "label": 2, "key": "c"},
    ]
    result = embed_dataset(model, preprocess, items, batch_size=2, cache_dir=tmp_path, progress=False)
    assert result.keys.tolist() == ["a", "b", "c"] and result.labels.tolist() == [1, 0, 2]
    assert result.region_image.tolist() == [0, 2, 2] and result.regions_of(1).size == 0
    # A whole-image box embeds like the whole image.
    np.testing.assert_allclose(result.region_embeddings[1], result.image_embeddings[2], atol=1e-5)
    again = embed_dataset(model, preprocess, items, batch_size=2, cache_dir=tmp_path, progress=False)
    _assert_same(again, result, atol=0)
