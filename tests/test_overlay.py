"""Overlay: bit-exact against the reference outputs, geometry modes; heat maps and figures
(:mod:`api_prompt.figures`)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from api_prompt.attribution.base import AttentionMap
from api_prompt.errors import ConfigError
from api_prompt.figures import render_heatmap, side_by_side
from api_prompt.overlay import (
    RESAMPLE,
    Overlay,
    blend,
    mask_to_uint8,
    resolve_resample,
)


def make_map(mask, image_size, region=None) -> AttentionMap:
    mask = np.asarray(mask, dtype=np.float32)
    region = region if region is not None else (0.0, 0.0, *map(float, image_size))
    return AttentionMap(mask=mask, parts={}, image_size=tuple(image_size), region=tuple(region))


def one_hot(grid: int, row: int, col: int) -> np.ndarray:
    mask = np.zeros((grid, grid), np.float32)
    mask[row, col] = 1.0
    return mask


def bright(image: Image.Image) -> np.ndarray:
    """Boolean H×W: pixels that kept the (white) image rather than the black background."""
    return np.asarray(image)[..., 0] > 127


def boxes(size, left, top, right, bottom) -> np.ndarray:
    expected = np.zeros((size[1], size[0]), bool)
    expected[top:bottom, left:right] = True
    return expected


WHITE = (255, 255, 255)


# ---------------------------------------------------------------------------------------------
# Golden fixture: the reference's own outputs


def boundary_cells(mask: np.ndarray) -> np.ndarray:
    """Cells where float rounding may flip floor(255·m): 255·m within 1e-4 of an integer."""
    scaled = 255.0 * mask.astype(np.float64)
    return np.abs(scaled - np.rint(scaled)) < 1e-4


@pytest.fixture(params=range(4), ids=lambda i: f"case{i}")
def case(request, clip_cases, clip_fixture_dir, expected_npz):
    spec = clip_cases[request.param]
    image = Image.open(clip_fixture_dir / spec["image"]).convert("RGB")
    expected = np.asarray(Image.open(clip_fixture_dir / spec["expected_image"]).convert("RGB"))
    name = spec["name"]
    return spec, image, expected, expected_npz[f"{name}_mask"], expected_npz[f"{name}_mask_u8"]


def test_mask_to_uint8_matches_the_reference(case):
    _, _, _, mask, mask_u8 = case
    ours = mask_to_uint8(mask)
    assert ours.dtype == np.uint8
    differs = ours != mask_u8
    assert not np.any(differs & ~boundary_cells(mask))
    assert np.all(np.abs(ours.astype(int) - mask_u8) <= 1)


def test_stretch_overlay_reproduces_the_reference_image(case):
    spec, image, expected, mask, _ = case
    overlay = Overlay(resample=spec["resample"], background=spec["background"])
    out = np.asarray(overlay.apply(image, make_map(mask, image.size))).astype(int)
    assert out.shape == expected.shape
    diff = np.abs(out - expected)
    assert diff.max() <= 1
    edge = boundary_cells(mask)
    if not edge.any():
        np.testing.assert_array_equal(out, expected)
        return
    # Pixels a ±1 flip of the boundary cells can reach are the only ones allowed to differ.
    reachable = np.zeros(out.shape[:2], bool)
    for step in (-1, 1):
        nudged = np.clip(mask_to_uint8(mask).astype(int) + step * edge, 0, 255).astype(np.uint8)
        resized = Image.fromarray(nudged).resize(image.size, resolve_resample(spec["resample"]))
        alt = np.asarray(blend(image, resized, spec["background"])).astype(int)
        reachable |= np.any(alt != out, axis=2)
    assert not np.any(np.any(diff > 0, axis=2) & ~reachable)


def test_all_float32_blend_would_not_match_the_reference(
    clip_cases, clip_fixture_dir, expected_npz
):
    """Why blend keeps the background term in float64: float32 throughout changes pixels."""
    spec = next(c for c in clip_cases if c["background"] != 0)
    image = Image.open(clip_fixture_dir / spec["image"]).convert("RGB")
    mask_u8 = expected_npz[f"{spec['name']}_mask_u8"]
    resized = np.asarray(
        Image.fromarray(mask_u8).resize(image.size, resolve_resample(spec["resample"]))
    )
    pixels = np.asarray(image, np.float32)
    alpha = (resized.astype(np.float32) / np.float32(255))[..., None]
    float32_only = (pixels * alpha + (1 - alpha) * np.float32(spec["background"])).astype(np.uint8)
    expected = np.asarray(Image.open(clip_fixture_dir / spec["expected_image"]).convert("RGB"))
    assert np.any(float32_only != expected)
    np.testing.assert_array_equal(np.asarray(blend(image, resized, spec["background"])), expected)


# ---------------------------------------------------------------------------------------------
# Building blocks


def test_mask_to_uint8_floors_and_clips():
    mask = np.array([[0.0, 0.999, 1.0, 0.5], [-0.2, 1.3, 0.0039, 0.0040]], np.float32)
    assert mask_to_uint8(mask).tolist() == [[0, 254, 255, 127], [0, 255, 0, 1]]


@pytest.mark.parametrize("bad", [np.zeros(4), np.zeros((2, 2, 2)), np.array([[np.nan]])])
def test_mask_to_uint8_rejects_bad_masks(bad):
    with pytest.raises(ValueError):
        mask_to_uint8(bad)


def test_blend_keeps_image_fades_to_gray_and_truncates():
    image = Image.new("RGB", (3, 1), (200, 100, 50))
    out = blend(image, np.array([[255, 0, 192]], np.uint8), background=100)
    assert out.getpixel((0, 0)) == (200, 100, 50)
    assert out.getpixel((1, 0)) == (100, 100, 100)
    # 200·192/255 + 100·63/255 = 175.29 -> 175; 50·0.753 + 24.7 = 62.35 -> 62 (truncated)
    assert out.getpixel((2, 0)) == (175, 100, 62)
    assert image.getpixel((0, 0)) == (200, 100, 50)  # input untouched


def test_blend_rejects_a_mask_of_the_wrong_size():
    with pytest.raises(ValueError, match="resize the mask"):
        blend(Image.new("RGB", (4, 4)), np.zeros((2, 2), np.uint8))


def test_resample_names_are_case_insensitive():
    assert set(RESAMPLE) == {"lanczos", "bicubic", "bilinear", "nearest"}
    assert resolve_resample("LANCZOS") is Image.Resampling.LANCZOS
    assert resolve_resample(" Bicubic ") is Image.Resampling.BICUBIC
    assert resolve_resample(Image.Resampling.NEAREST) is Image.Resampling.NEAREST


@pytest.mark.parametrize(
    "options, message",
    [
        ({"resample": "cubic"}, "lanczos, bicubic, bilinear, nearest"),
        ({"resample": Image.Resampling.BOX}, "choose one of"),
        ({"background": 256}, "0..255"),
        ({"background": -1}, "0..255"),
        ({"background": 0.5}, "integer"),
        ({"background": True}, "integer"),
        ({"geometry": "crop"}, "stretch, fit"),
    ],
)
def test_invalid_settings_raise_value_errors_that_list_the_choices(options, message):
    with pytest.raises(ValueError, match=message) as caught:
        Overlay(**options)
    assert isinstance(caught.value, ConfigError)


def test_overlay_returns_a_new_rgb_image_of_the_input_size_and_is_callable():
    image = Image.new("RGB", (30, 20), "white")
    amap = make_map(np.full((4, 4), 0.5), image.size)
    overlay = Overlay()
    out = overlay.apply(image, amap)
    assert out is not image and out.mode == "RGB" and out.size == (30, 20)
    assert out.getpixel((5, 5)) == (127, 127, 127)
    np.testing.assert_array_equal(np.asarray(overlay(image, amap)), np.asarray(out))
    assert "lanczos" in repr(overlay)


def test_overlay_accepts_arrays_and_non_rgb_images():
    amap = make_map(np.ones((2, 2)), (4, 3))
    from_array = Overlay().apply(np.full((3, 4, 3), 9, np.uint8), amap)
    from_gray = Overlay().apply(Image.new("L", (4, 3), 9), amap)
    assert from_array.getpixel((0, 0)) == from_gray.getpixel((0, 0)) == (9, 9, 9)


# ---------------------------------------------------------------------------------------------
# Geometry


def test_stretch_ignores_the_region():
    image = Image.new("RGB", (200, 100), WHITE)
    amap = make_map(one_hot(4, 0, 0), image.size, region=(50, 0, 150, 100))
    out = Overlay(resample="nearest").apply(image, amap)
    np.testing.assert_array_equal(bright(out), boxes(image.size, 0, 0, 50, 25))


def test_fit_equals_stretch_when_the_region_is_the_whole_image():
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8))
    amap = make_map(rng.random((8, 8)), image.size)
    for resample in RESAMPLE:
        fit = Overlay(resample=resample, geometry="fit").apply(image, amap)
        stretch = Overlay(resample=resample).apply(image, amap)
        np.testing.assert_array_equal(np.asarray(fit), np.asarray(stretch))


@pytest.mark.parametrize(
    "size, region, cell, expected_box",
    [
        # CLIP centre crop of a wide image: the map covers x in [50, 150); left strip replicates
        ((200, 100), (50, 0, 150, 100), (0, 0), (0, 0, 75, 25)),
        ((200, 100), (50, 0, 150, 100), (3, 3), (125, 75, 200, 100)),
        ((200, 100), (50, 0, 150, 100), (1, 2), (100, 25, 125, 50)),
        # CLIP centre crop of a tall image: the map covers y in [50, 150)
        ((100, 200), (0, 50, 100, 150), (0, 1), (25, 0, 50, 75)),
        ((100, 200), (0, 50, 100, 150), (2, 2), (50, 100, 75, 125)),
        # LLaVA padded square of a wide image: y in [-50, 150), rows outside are cropped
        ((200, 100), (0, -50, 200, 150), (1, 2), (100, 0, 150, 50)),
        ((200, 100), (0, -50, 200, 150), (0, 2), (0, 0, 0, 0)),
        # LLaVA padded square of a tall image: x in [-50, 150)
        ((100, 200), (-50, 0, 150, 200), (2, 1), (0, 100, 50, 150)),
    ],
    ids=[
        "clip-wide-tl",
        "clip-wide-br",
        "clip-wide-mid",
        "clip-tall-top",
        "clip-tall-mid",
        "llava-wide",
        "llava-wide-padding",
        "llava-tall",
    ],
)
def test_fit_places_a_bright_cell_where_the_model_looked(size, region, cell, expected_box):
    image = Image.new("RGB", size, WHITE)
    amap = make_map(one_hot(4, *cell), size, region)
    out = Overlay(resample="nearest", geometry="fit").apply(image, amap)
    np.testing.assert_array_equal(bright(out), boxes(size, *expected_box))


def test_fit_replicates_the_crop_edge_over_the_unseen_strips():
    mask = np.random.default_rng(2).random((8, 8)).astype(np.float32)
    mask[:, 0], mask[:, -1] = 0.6, 0.2
    size = (320, 100)  # centre crop x in [110, 210), cells 12.5 px wide
    amap = make_map(mask, size, region=(110, 0, 210, 100))
    weights = Overlay(resample="lanczos", geometry="fit").resized_mask(amap, size)
    assert weights.shape == (100, 320)
    # Beyond LANCZOS's 3-cell reach from the crop border, the strips are the edge value exactly.
    assert np.all(weights[:, :72] == 153) and np.all(weights[:, 248:] == 51)
    assert weights[:, 110:210].std() > 10  # the crop itself keeps the map's structure


def test_fit_scales_the_region_to_a_larger_copy_of_the_image():
    small = make_map(one_hot(4, 1, 2), (200, 100), region=(0, -50, 200, 150))
    big = Image.new("RGB", (400, 200), WHITE)
    out = Overlay(resample="nearest", geometry="fit").apply(big, small)
    np.testing.assert_array_equal(bright(out), boxes(big.size, 200, 0, 300, 100))


@pytest.mark.parametrize("region", [(10, 0, 10, 100), (0, 0, 100, -5), (0, 0, np.nan, 1), (1, 2)])
def test_fit_rejects_invalid_regions(region):
    amap = make_map(np.ones((2, 2)), (100, 100), region=region)
    with pytest.raises(ValueError, match="region"):
        Overlay(geometry="fit").apply(Image.new("RGB", (100, 100)), amap)


# ---------------------------------------------------------------------------------------------
# Heat maps and figures


@pytest.fixture
def scene():
    image = Image.fromarray(np.random.default_rng(3).integers(0, 256, (90, 120, 3), dtype=np.uint8))
    return image, make_map(np.random.default_rng(4).random((8, 8)), image.size, (15, 0, 105, 90))


@pytest.mark.parametrize("geometry", ["stretch", "fit"])
def test_heatmap_has_the_image_size_and_colours_it(scene, geometry):
    image, amap = scene
    heat = render_heatmap(image, amap, geometry=geometry)
    assert heat.size == image.size and heat.mode == "RGB"
    assert np.abs(np.asarray(heat).astype(int) - np.asarray(image)).mean() > 10


def test_heatmap_alpha_zero_is_the_image_and_alpha_one_is_the_colormap(scene):
    image, amap = scene
    np.testing.assert_array_equal(
        np.asarray(render_heatmap(image, amap, alpha=0.0)), np.asarray(image)
    )
    hot = make_map(np.ones((8, 8)), image.size)
    assert render_heatmap(image, hot, alpha=1.0, cmap="gray").getpixel((3, 3)) == WHITE


def test_heatmap_colorbar_adds_a_strip(scene):
    image, amap = scene
    with_bar = render_heatmap(image, amap, colorbar=True)
    assert with_bar.width > image.width and with_bar.height >= image.height
    tall = Image.new("RGB", (120, 400))
    bar_tall = render_heatmap(tall, make_map(np.ones((8, 8)), tall.size), colorbar=True)
    assert bar_tall.height == 400 and bar_tall.width > 120


def test_heatmap_colorbar_drawn_once_per_name_and_height_is_the_same_bar(scene):
    import matplotlib

    image, amap = scene
    first = render_heatmap(image, amap, colorbar=True, cmap="viridis")
    again = render_heatmap(image, amap, colorbar=True, cmap="viridis")  # the cached strip
    drawn = render_heatmap(
        image, amap, colorbar=True, cmap=matplotlib.colormaps["viridis"]
    )  # drawn anew
    assert np.array_equal(np.asarray(first), np.asarray(drawn))
    assert np.array_equal(np.asarray(again), np.asarray(drawn))
    assert not np.array_equal(
        np.asarray(first), np.asarray(render_heatmap(image, amap, colorbar=True))
    )  # jet


@pytest.mark.parametrize("options", [{"alpha": 1.5}, {"cmap": "no-such-map"}, {"geometry": "x"}])
def test_heatmap_rejects_bad_options(scene, options):
    with pytest.raises(ValueError):
        render_heatmap(*scene, **options)


def test_side_by_side_lines_images_up_with_labels():
    images = [Image.new("RGB", (40, 20), "red"), Image.new("RGB", (10, 10), "blue")]
    row = side_by_side(images, gap=4)
    assert row.size == (40 + 4 + 20, 20)
    labelled = side_by_side(images, ["input", "API"], gap=4)
    assert labelled.width == row.width and labelled.height > row.height
    caption = np.asarray(labelled)[: labelled.height - 20]
    assert caption.min() < 128  # the labels are drawn in black on white
    with pytest.raises(ValueError, match="labels"):
        side_by_side(images, ["only one"])


@pytest.mark.parametrize("background", [0, 1, 100, 127, 128, 200, 254, 255])
def test_blend_by_table_is_the_reference_arithmetic(background):
    """blend() looks levels up in a table; every pixel equals the reference's float arithmetic."""
    rng = np.random.default_rng(background)
    pixels = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    mask = rng.integers(0, 256, (37, 53), dtype=np.uint8)
    mask[0, :2] = (0, 255)
    alpha = (mask.astype(np.float32) / np.float32(255.0))[..., None]
    expected = pixels.astype(np.float32) * alpha + (1 - alpha) * np.full(
        pixels.shape, background, np.float64
    )
    got = np.asarray(blend(Image.fromarray(pixels), mask, background))
    np.testing.assert_array_equal(got, expected.astype(np.uint8))
    with pytest.raises(ValueError, match="8-bit"):
        blend(Image.fromarray(pixels), mask.astype(np.float32), background)


def test_figures_keep_their_old_import_path():
    """The figures moved from api_prompt.overlay to api_prompt.figures; old imports still work."""
    from api_prompt import overlay

    assert overlay.render_heatmap is render_heatmap and overlay.side_by_side is side_by_side
    with pytest.raises(AttributeError):
        overlay.no_such_name  # noqa: B018


@pytest.mark.parametrize("background", [0, 1, 128, 255])
def test_blend_of_every_mask_and_pixel_level_is_the_reference_arithmetic(background):
    """Every (mask level, pixel level) pair, each channel: the integer path (background 0) and
    the table lookup (any other background) give the reference's float arithmetic exactly."""
    mask = np.repeat(np.arange(256, dtype=np.uint8), 256).reshape(256, 256)
    pixels = np.stack([mask.T, mask.T[::-1], np.roll(mask.T, 7, axis=1)], axis=-1)
    alpha = (mask.astype(np.float32) / np.float32(255.0))[..., None]
    expected = pixels.astype(np.float32) * alpha + (1 - alpha) * np.full(
        pixels.shape, background, np.float64
    )
    got = np.asarray(blend(Image.fromarray(np.ascontiguousarray(pixels)), mask, background))
    np.testing.assert_array_equal(got, expected.astype(np.uint8))
