"""Array and dictionary transforms of the ingestion path, on numpy and torch inputs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from ravl_med.data.errors import IngestError
from ravl_med.data.transforms import (
    CollapseGreyChannels,
    CropRegions,
    DisplayFlip,
    InvertMonochrome1,
    Letterbox,
    Letterboxd,
    RadiographQC,
    RadiologicalOrientationd,
    RegionGrid,
    RegionGridd,
    VOIWindow,
    display_flip_from_orientation,
    region_grid,
    window_to_unit,
)

ARRAY_TYPES = (np.asarray, torch.as_tensor)


def _bright_rectangle(rows=60, cols=90, box=(10, 5, 30, 25)) -> tuple[torch.Tensor, torch.Tensor]:
    """Image (1, rows, cols) with ones inside ``box`` (x0, y0, x1, y1), and that box as (1, 4)."""
    image = torch.zeros(1, rows, cols)
    x0, y0, x1, y1 = box
    image[0, y0:y1, x0:x1] = 1.0
    return image, torch.tensor([box], dtype=torch.float32)


def _bounds_of_ones(mask: torch.Tensor) -> torch.Tensor:
    ys, xs = torch.nonzero(mask[0] > 0.5, as_tuple=True)
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)


# --- windowing -----------------------------------------------------------------------------------


@pytest.mark.parametrize("as_array", ARRAY_TYPES)
def test_linear_window_follows_dicom_formula(as_array):
    # PS3.3 C.11.2.1.2.1: c=40, w=400 -> output 0 at x <= c - 0.5 - (w-1)/2 = -160 and 1 at x > 239.
    values = as_array(np.array([[-1000.0, -160.0, 39.5, 239.0, 3000.0]], dtype=np.float32))
    out = np.asarray(window_to_unit(values, center=40.0, width=400.0))
    np.testing.assert_allclose(out[0], [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-6)


def test_linear_exact_and_sigmoid_windows():
    values = torch.tensor([[-160.0, 40.0, 240.0]])
    np.testing.assert_allclose(window_to_unit(values, 40.0, 400.0, "LINEAR_EXACT")[0], [0.0, 0.5, 1.0], atol=1e-6)
    sigmoid = window_to_unit(values, 40.0, 400.0, "SIGMOID")[0]
    assert sigmoid[1] == pytest.approx(0.5)
    assert 0 < sigmoid[0] < 0.5 < sigmoid[2] < 1


def _meta_tensor(values, **meta) -> MetaTensor:
    return MetaTensor(torch.as_tensor(values, dtype=torch.float32), meta=meta)


def test_voi_prefers_lut_then_window_then_fallback():
    lut = np.linspace(0, 255, 11).astype(np.float32)  # 11 entries, 8-bit output
    image = _meta_tensor(
        [[[100.0, 105.0, 110.0, 200.0]]],
        voi_lut_data=lut, voi_lut_first=100, voi_lut_bits=8, window_center=150.0, window_width=100.0,
        voi_lut_function="LINEAR_EXACT", value_range=np.array([0.0, 4095.0]),
    )
    lut_out = VOIWindow(mode="auto")(image)
    np.testing.assert_allclose(lut_out[0, 0].numpy(), [0.0, 0.5, 1.0, 1.0], atol=1e-6)
    assert lut_out.meta["voi_applied"] == "VOI LUT"
    window_out = VOIWindow(mode="window")(image)
    np.testing.assert_allclose(window_out[0, 0].numpy(), [0.0, 0.05, 0.1, 1.0], atol=1e-6)
    none_out = VOIWindow(mode="none")(image)
    np.testing.assert_allclose(none_out[0, 0].numpy(), np.array([100, 105, 110, 200]) / 4095.0, atol=1e-6)
    configured = VOIWindow(window=(2047.5, 4096.0))(image)
    assert configured.meta["voi_applied"] == "window (configured)"


@pytest.mark.parametrize("as_array", ARRAY_TYPES)
def test_fallbacks_without_metadata(as_array):
    values = as_array(np.array([[[10.0, 20.0, 30.0, 50.0]]], dtype=np.float32))
    minmax = np.asarray(VOIWindow(fallback="value_range")(values))  # no known range -> min-max
    np.testing.assert_allclose(minmax[0, 0], [0.0, 0.25, 0.5, 1.0], atol=1e-6)
    big = as_array(np.linspace(0, 100, 1001, dtype=np.float32)[None, None])
    percentile = np.asarray(VOIWindow(fallback="percentile", percentiles=(10, 90))(big))
    assert percentile.min() == 0.0 and percentile.max() == 1.0
    assert percentile[0, 0, 500] == pytest.approx(0.5, abs=1e-3)


def test_monochrome1_inversion_is_idempotent():
    image = _meta_tensor([[[0.0, 0.25, 1.0]]], photometric_interpretation="MONOCHROME1")
    once = InvertMonochrome1()(image)
    np.testing.assert_allclose(once[0, 0].numpy(), [1.0, 0.75, 0.0])
    assert once.meta["photometric_interpretation"] == "MONOCHROME2"
    np.testing.assert_allclose(InvertMonochrome1()(once).numpy(), once.numpy())
    plain = torch.tensor([[[0.0, 1.0]]])
    assert InvertMonochrome1()(plain) is plain


# --- quality and channels ------------------------------------------------------------------------


@pytest.mark.parametrize("as_array", ARRAY_TYPES)
@pytest.mark.parametrize(
    "image, reason",
    [
        (np.full((1, 80, 80), 7.0, dtype=np.float32), "constant"),
        (np.pad(np.full((1, 80, 80), np.nan, dtype=np.float32), 0), "non_finite"),
        (np.random.default_rng(0).random((1, 10, 80)).astype(np.float32), "bad_size"),
        (np.random.default_rng(0).random((1, 80, 80, 3)).astype(np.float32), "volume"),
    ],
)
def test_quality_check_refuses(as_array, image, reason):
    with pytest.raises(IngestError) as caught:
        RadiographQC(min_side=64, max_side=4096)(as_array(image))
    assert caught.value.reason == reason


@pytest.mark.parametrize("as_array", ARRAY_TYPES)
def test_grey_rgb_collapses_and_colour_is_refused(as_array):
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 255, size=(1, 70, 70)).astype(np.float32)
    jpeg_like = np.concatenate([grey, grey + rng.integers(-2, 3, size=grey.shape), grey, np.full_like(grey, 255)])
    out = CollapseGreyChannels()(as_array(jpeg_like))
    assert tuple(out.shape) == (1, 70, 70)
    np.testing.assert_allclose(np.asarray(out), grey)
    colour = np.concatenate([grey, 255 - grey, grey])
    with pytest.raises(IngestError) as caught:
        CollapseGreyChannels()(as_array(colour))
    assert caught.value.reason == "colour"


# --- orientation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "orientation, expected",
    [
        ("L\\F", DisplayFlip()),
        ("R\\F", DisplayFlip(flip_cols=True)),
        ("L\\H", DisplayFlip(flip_rows=True)),
        ("R\\H", DisplayFlip(flip_rows=True, flip_cols=True)),
        ("F\\L", DisplayFlip(transpose=True)),
        ("H\\R", DisplayFlip(transpose=True, flip_rows=True, flip_cols=True)),
        ("FL\\LH", DisplayFlip(transpose=True)),
        ("A\\F", None),
        ("", None),
        ("L", None),
    ],
)
def test_display_flip_from_patient_orientation(orientation, expected):
    assert display_flip_from_orientation(orientation) == expected


@pytest.mark.parametrize("flags", list(itertools.product([False, True], repeat=3)))
def test_boxes_follow_every_display_flip(flags):
    image, boxes = _bright_rectangle()
    flip = DisplayFlip(*flags)
    moved = flip.apply_boxes(boxes, image.shape[-2:])
    torch.testing.assert_close(moved[0], _bounds_of_ones(flip.apply_image(image)))


def test_orientation_dict_moves_masks_and_boxes():
    image, boxes = _bright_rectangle()
    sample = {
        "image": MetaTensor(image.clone(), meta={"patient_orientation": "R\\H"}),
        "mask": image.clone(),
        "boxes": boxes,
    }
    out = RadiologicalOrientationd(["image", "mask"], box_keys="boxes")(sample)
    assert out["image"].meta["patient_orientation"] == "L\\F"
    torch.testing.assert_close(torch.as_tensor(out["mask"]), out["image"].as_tensor())
    torch.testing.assert_close(out["boxes"][0], _bounds_of_ones(out["image"]))
    # rows and columns both reversed: the rectangle moved to the bottom right
    assert out["boxes"][0, 0] > 90 / 2 and out["boxes"][0, 1] > 60 / 2


# --- letterbox and regions -----------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(60, 90), (90, 60), (64, 64), (300, 120)])
def test_letterbox_keeps_boxes_on_their_content(shape):
    rows, cols = shape
    box = (cols // 4, rows // 3, cols // 2, rows // 2)
    image, boxes = _bright_rectangle(rows, cols, box)
    sample = {"image": MetaTensor(image), "mask": image.clone(), "boxes": boxes}
    out = Letterboxd(["image", "mask"], size=128, mode=("auto", "nearest"), box_keys="boxes")(sample)
    assert tuple(out["image"].shape) == (1, 128, 128) and tuple(out["mask"].shape) == (1, 128, 128)
    assert set(torch.unique(torch.as_tensor(out["mask"])).tolist()) <= {0.0, 1.0}
    # the moved box bounds the resized rectangle to within one output pixel
    torch.testing.assert_close(out["boxes"][0], _bounds_of_ones(out["mask"]), atol=1.0, rtol=0)
    content = out["image"].meta["content_box"]
    scale = 128 / max(rows, cols)
    assert float(content[2] - content[0]) == pytest.approx(cols * scale, abs=1)
    assert float(content[3] - content[1]) == pytest.approx(rows * scale, abs=1)
    # nothing outside the content box (padding is zero)
    x0, y0, x1, y1 = (int(round(float(v))) for v in content)
    outside = out["image"].as_tensor().clone()
    outside[:, y0:y1, x0:x1] = 0
    assert float(outside.abs().max()) == 0.0


@pytest.mark.parametrize("shape", [(300, 200), (40, 30)])
def test_letterbox_keeps_a_constant_image_constant_up_to_its_edge(shape):
    # Regression: a zero-padded Gaussian pre-blur darkened the border of every downsized image
    # (0.89 at the edges, 0.80 in the corners), a frame a shortcut detector could learn.
    out = Letterbox(64)(MetaTensor(torch.ones(1, *shape)))
    x0, y0, x1, y1 = (int(round(float(v))) for v in out.meta["content_box"])
    torch.testing.assert_close(out[:, y0:y1, x0:x1].as_tensor(), torch.ones(1, y1 - y0, x1 - x0))


def test_letterbox_records_geometry_that_maps_boxes_back():
    image = MetaTensor(torch.rand(1, 200, 100))
    out = Letterbox(64)(image)
    scale, offset = out.meta["letterbox_scale"], out.meta["letterbox_offset"]
    model_box = torch.tensor([16.0 + 8, 8.0, 32.0 + 8, 40.0])
    original = (model_box - torch.tensor([offset[1], offset[0]] * 2)) / torch.tensor([scale[1], scale[0]] * 2)
    torch.testing.assert_close(Letterbox(64).map_boxes(original[None], (200, 100))[0], model_box)


def test_region_grid_counts_bounds_and_overlap():
    boxes, levels = region_grid((10.0, 20.0, 110.0, 220.0), grid_sizes=(2, 4))
    assert boxes.shape == (4 + 16, 4) and levels.tolist() == [0] * 4 + [1] * 16
    assert boxes[:, 0].min() == 10 and boxes[:, 2].max() == 110
    assert boxes[:, 1].min() == 20 and boxes[:, 3].max() == 220
    # without overlap each level tiles the area exactly
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    assert float(areas[levels == 0].sum()) == pytest.approx(100 * 200)
    overlapping, _ = region_grid((0.0, 0.0, 100.0, 100.0), grid_sizes=(2,), overlap=0.5)
    assert overlapping.shape == (9, 4)  # 3 x 3 half-overlapping cells of 50 x 50
    assert set(overlapping[:, 0].tolist()) == {0.0, 25.0, 50.0}
    with pytest.raises(ValueError):
        region_grid((0, 0, 10, 10), overlap=1.0)


def test_region_grid_covers_only_the_letterboxed_content():
    image = Letterbox(128)(MetaTensor(torch.rand(1, 100, 50)))
    boxes = RegionGrid(grid_sizes=(4,), within="content")(image)
    content = image.meta["content_box"]
    assert float(boxes[:, 0].min()) == pytest.approx(float(content[0]))
    assert float(boxes[:, 2].max()) == pytest.approx(float(content[2]))
    whole = RegionGridd(grid_sizes=(4,), within="image")({"image": image})
    assert float(whole["regions"][:, 2].max()) == 128.0 and whole["regions_scale"].shape == (16,)


@pytest.mark.parametrize("as_array", ARRAY_TYPES)
def test_crop_regions_samples_inside_each_box(as_array):
    image = np.zeros((1, 64, 64), dtype=np.float32)
    image[0, :, 32:] = 1.0  # right half bright
    boxes = torch.tensor([[0.0, 0.0, 32.0, 32.0], [32.0, 32.0, 64.0, 64.0], [16.0, 0.0, 48.0, 64.0]])
    crops = CropRegions(size=8)(as_array(image), boxes)
    assert crops.shape == (3, 1, 8, 8)
    assert float(crops[0].max()) == 0.0 and float(crops[1].min()) == 1.0
    assert float(crops[2, 0, :, :4].max()) == 0.0 and float(crops[2, 0, :, 4:].min()) == 1.0
