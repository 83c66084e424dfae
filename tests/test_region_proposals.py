"""Content-driven candidate regions (superpixel boxes), their config and their place in the pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from ravl_med.config import ConfigError, IngestConfig, ProposalConfig, parse_config
from ravl_med.data.pipeline import ingest_transforms, load_radiograph, run_ingest_transforms
from ravl_med.data.transforms import (
    REGION_FAMILIES,
    Letterbox,
    RegionGridd,
    RegionProposals,
    RegionProposalsd,
    propose_regions,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ARRAY_TYPES = (np.asarray, torch.as_tensor)
METHODS = (("slic", (16, 48)), ("felzenszwalb", (50.0, 200.0)))


def _textured(seed: int = 0, side: int = 96) -> np.ndarray:
    """(1, side, side) smooth random texture in [0, 1]: something with edges everywhere."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((1, 8, 8))
    image = np.kron(coarse, np.ones((side // 8, side // 8)))
    return np.clip(image + 0.05 * rng.standard_normal(image.shape), 0, 1).astype(np.float32)


def _box_coverage(boxes: torch.Tensor, blob) -> tuple[torch.Tensor, torch.Tensor]:
    """Per box: share of the blob (x0, y0, x1, y1) inside it, and share of the box the blob fills."""
    b = torch.as_tensor(blob, dtype=torch.float32)
    wx = (torch.minimum(boxes[:, 2], b[2]) - torch.maximum(boxes[:, 0], b[0])).clamp(min=0)
    wy = (torch.minimum(boxes[:, 3], b[3]) - torch.maximum(boxes[:, 1], b[1])).clamp(min=0)
    inter = wx * wy
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / ((b[2] - b[0]) * (b[3] - b[1])), inter / area


@pytest.mark.parametrize("method, granularity", METHODS)
@pytest.mark.parametrize("as_array", ARRAY_TYPES)
def test_proposals_lie_in_the_content_with_sides_in_bounds(method, granularity, as_array):
    image = Letterbox(96)(MetaTensor(torch.as_tensor(_textured(side=96))[:, :, 16:80]))  # 96 x 64 -> pillarbox
    content = [float(v) for v in image.meta["content_box"]]
    assert content[0] > 0  # there is padding to stay out of
    transform = RegionProposals(method, granularity, min_size=0.1, max_size=0.6)
    boxes, levels = transform.propose(MetaTensor(as_array(image.numpy()), meta=image.meta))
    assert boxes.dtype == torch.float32 and boxes.shape[1] == 4 and boxes.shape[0] == levels.shape[0] > 0
    assert float(boxes[:, 0].min()) >= content[0] and float(boxes[:, 2].max()) <= content[2]
    assert float(boxes[:, 1].min()) >= content[1] and float(boxes[:, 3].max()) <= content[3]
    fw = (boxes[:, 2] - boxes[:, 0]) / (content[2] - content[0])
    fh = (boxes[:, 3] - boxes[:, 1]) / (content[3] - content[1])
    assert float(torch.minimum(fw, fh).min()) >= 0.1 - 1e-6 and float(torch.maximum(fw, fh).max()) <= 0.6 + 1e-6
    assert set(levels.tolist()) <= {0, 1}


@pytest.mark.parametrize("method, granularity", METHODS)
def test_proposals_are_deterministic(method, granularity):
    image = torch.as_tensor(_textured(seed=3))
    first = propose_regions(image, (0, 0, 96, 96), method, granularity)
    again = propose_regions(image.clone(), (0, 0, 96, 96), method, granularity)
    torch.testing.assert_close(first[0], again[0], rtol=0, atol=0)
    assert first[1].tolist() == again[1].tolist()


@pytest.mark.parametrize("method, granularity", METHODS)
def test_a_bright_blob_gets_a_box_that_tightly_covers_it(method, granularity):
    blob = (70, 40, 90, 60)  # x0, y0, x1, y1: 20 x 20 on a 128 x 128 dark image with a faint gradient
    image = torch.linspace(0, 0.2, 128).repeat(128, 1)[None]
    image[0, blob[1]:blob[3], blob[0]:blob[2]] = 0.9
    boxes, _ = propose_regions(image, (0, 0, 128, 128), method, granularity, margin=0.1)
    holds, fills = _box_coverage(boxes, blob)
    # all of the blob, and the blob at least half the box (a 10% margin per side leaves it ~70%)
    assert bool(((holds >= 0.99) & (fills >= 0.5)).any())


def test_overlapping_duplicates_go_and_margin_grows_boxes():
    image = torch.zeros(1, 64, 64)
    image[0, 16:32, 16:32] = 1.0
    tight, _ = propose_regions(image, (0, 0, 64, 64), granularity=(8, 8), sigma=0.0, margin=0.0, max_iou=1.0)
    assert len({tuple(b) for b in tight.tolist()}) == tight.shape[0]  # the repeated scale adds nothing
    assert [16.0, 16.0, 32.0, 32.0] in tight.tolist()
    grown, _ = propose_regions(image, (0, 0, 64, 64), granularity=(8,), sigma=0.0, margin=0.25)
    assert [12.0, 12.0, 36.0, 36.0] in grown.tolist()


@pytest.mark.parametrize("value", [0.0, 0.5, 1.0])
def test_content_without_contrast_has_no_proposals_and_a_sample_keeps_one_box(value):
    image = torch.full((1, 64, 48), value)
    boxes, levels = propose_regions(image, (0, 0, 48, 64))
    assert boxes.shape == (0, 4) and levels.shape == (0,)
    # proposals only: the whole content is the one region
    alone = RegionProposalsd()({"image": image})
    assert alone["regions"].tolist() == [[0.0, 0.0, 48.0, 64.0]]
    assert alone["regions_family"].tolist() == [REGION_FAMILIES.index("proposal")]
    # after a grid: the grid boxes alone
    both = RegionProposalsd()(RegionGridd(grid_sizes=(2,))({"image": image}))
    assert both["regions"].shape == (4, 4) and both["regions_family"].tolist() == [0] * 4


def test_grid_then_proposals_number_levels_and_families_in_order():
    image = torch.as_tensor(_textured(seed=1))
    sample = RegionProposalsd(granularity=(12, 30))(RegionGridd(grid_sizes=(2, 3))({"image": image}))
    families, levels = sample["regions_family"], sample["regions_scale"]
    assert sample["regions"].shape[0] == families.shape[0] == levels.shape[0]
    grid = families == REGION_FAMILIES.index("grid")
    assert int(grid.sum()) == 4 + 9 and bool(grid[:13].all())  # grid boxes first
    assert set(levels[grid].tolist()) == {0, 1} and set(levels[~grid].tolist()) <= {2, 3}


def test_bad_transform_settings_are_refused():
    with pytest.raises(ValueError, match="min_size"):
        RegionProposals(min_size=0.5, max_size=0.2)
    with pytest.raises(ValueError, match="method"):
        RegionProposals(method="watershed")


# --- config --------------------------------------------------------------------------------------


def test_default_regions_are_multi_scale_grids_recorded_without_a_proposals_key():
    config = IngestConfig()
    assert config.regions.grid_sizes == [2, 3, 4] and config.regions.overlap == 0.5 and config.regions.proposals is None
    # Grids only: recorded as grid settings were before proposals existed (older medoids stay comparable).
    assert config.region_setting() == {"image_size": 224,
                                       "regions": {"grid_sizes": [2, 3, 4], "overlap": 0.5, "within": "content"}}


@pytest.mark.parametrize("proposals", [{}, {"method": "felzenszwalb", "scale": [50, 400], "sigma": 0.5},
                                       {"n_segments": [16, 48], "compactness": 0.3, "margin": 0.0, "max_iou": 1.0}])
def test_proposal_config_round_trips_and_is_part_of_the_region_setting(proposals):
    config = parse_config({"regions": {"grid_sizes": [2, 3], "overlap": 0.5, "proposals": proposals}}, IngestConfig)
    assert parse_config(config.model_dump(mode="json"), IngestConfig) == config
    setting = config.region_setting()["regions"]
    assert setting["proposals"] == config.regions.proposals.model_dump(mode="json")
    assert setting["proposals"]["method"] == proposals.get("method", "slic")
    other = parse_config({"regions": {"grid_sizes": [2, 3], "overlap": 0.5, "proposals": {**proposals, "margin": 0.3}}},
                         IngestConfig)
    assert other.region_setting() != config.region_setting()  # mitigation tells them apart


def test_proposals_only_and_method_defaults():
    config = parse_config({"regions": {"grid_sizes": [], "proposals": {"method": "felzenszwalb"}}}, IngestConfig)
    assert config.regions.proposals.granularity() == [100.0] and config.regions.proposals.n_segments is None
    assert ProposalConfig().granularity() == [24.0] and ProposalConfig().compactness == 0.1


@pytest.mark.parametrize(
    "regions, expected",
    [
        ({"grid_sizes": []}, ["c.yaml: regions: no candidate regions"]),
        ({"proposals": {"method": "felzenszwalb", "n_segments": [8]}}, ["regions.proposals.n_segments", "'slic'"]),
        ({"proposals": {"compactness": 0.1, "method": "felzenszwalb"}}, ["regions.proposals.compactness"]),
        ({"proposals": {"min_size": 0.5, "max_size": 0.2}}, ["regions.proposals.max_size", "min_size"]),
        ({"proposals": {"n_segments": [1]}}, ["regions.proposals.n_segments.0", "greater than or equal to 2"]),
        ({"proposals": {"method": "watershed"}}, ["regions.proposals.method", "'watershed'", "'slic'"]),
        ({"proposals": {"segments": 24}}, ["regions.proposals.segments", "unknown key", "n_segments"]),
        ({"proposals": {"max_iou": 0}}, ["regions.proposals.max_iou", "greater than 0"]),
    ],
)
def test_bad_proposal_settings_are_one_line_errors_naming_the_key(regions, expected):
    with pytest.raises(ConfigError) as err:
        parse_config({"regions": regions}, IngestConfig, "c.yaml")
    message = str(err.value)
    assert "\n" not in message
    for part in expected:
        assert part in message


# --- pipeline ------------------------------------------------------------------------------------


def test_pipeline_attaches_grid_and_proposals_to_real_samples(cxr_samples):
    config = parse_config({"image_size": 128, "regions": {"grid_sizes": [2], "overlap": 0.0,
                                                          "proposals": {"n_segments": [16]}}}, IngestConfig)
    paths = sorted(p for p in cxr_samples.iterdir() if p.suffix in (".png", ".jpg"))[:2]
    assert paths
    transform = ingest_transforms(config)
    for path in paths:
        sample = run_ingest_transforms(transform, {"image": str(path)})
        boxes, content = sample["regions"], [float(v) for v in sample["image"].meta["content_box"]]
        assert boxes.shape[0] == sample["regions_scale"].shape[0] == sample["regions_family"].shape[0] > 4
        assert sample["regions_family"][:4].tolist() == [0] * 4 and bool((sample["regions_family"][4:] == 1).all())
        assert float(boxes[:, 0].min()) >= content[0] and float(boxes[:, 3].max()) <= content[3]
        again = load_radiograph(path, config)  # a second ingestion (mitigation's) gives the same boxes
        torch.testing.assert_close(again["regions"], boxes, rtol=0, atol=0)


# --- consumers -----------------------------------------------------------------------------------


def test_embedding_and_region_labelling_follow_variable_box_counts(tmp_path):
    from ravl_med.data.dataset import RadiographDataset
    from ravl_med.mitigate.regions import images_with_spurious_region, label_training_regions
    from ravl_med.models import create_backbone
    from ravl_med.models.embed import embed_dataset
    from ravl_med.phantom import PhantomSetting, write_setting

    classes = ["no finding", "cardiomegaly"]
    setting = PhantomSetting(name="proposals", artefact="pacemaker", spurious_class="cardiomegaly", strength=0.0,
                             n_train=6, n_val=0, n_test=0, image_size=64, classes=classes)
    manifest = write_setting(setting, tmp_path, progress=False).manifest
    config = parse_config({"image_size": 64, "regions": {"grid_sizes": [],
                                                         "proposals": {"method": "felzenszwalb", "scale": [50, 200]}}},
                          IngestConfig)
    dataset = RadiographDataset(manifest, config, classes)
    counts = [dataset[i]["regions"].shape[0] for i in range(len(dataset))]
    assert min(counts) >= 1 and len(set(counts)) > 1  # the counts do differ here
    torch.manual_seed(0)
    model, preprocess, _ = create_backbone("tiny-rn")
    embeddings = embed_dataset(model, preprocess, dataset, batch_size=4, progress=False)
    assert embeddings.region_counts.tolist() == counts and embeddings.region_embeddings.shape[0] == sum(counts)
    medoids = embeddings.region_embeddings[[0, -1]]
    spurious = label_training_regions(embeddings.region_embeddings, medoids, [0])
    by_key = {str(k): spurious[embeddings.regions_of(i)] for i, k in enumerate(embeddings.keys)}
    assert [len(by_key[str(dataset[i]["key"])]) for i in range(len(dataset))] == counts
    assert images_with_spurious_region(list(by_key), by_key).shape == (len(dataset),)
