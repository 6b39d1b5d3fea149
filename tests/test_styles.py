"""Prompt styles (api_prompt.styles): golden pixels computed independently here, properties over
any size and mode, and ``overlay`` bit-identical to :class:`api_prompt.Overlay`."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image, ImageFilter

from api_prompt import AttentionMap, Overlay
from api_prompt.errors import ConfigError
from api_prompt.styles import (
    STYLES,
    BlurStyle,
    BoxStyle,
    CropStyle,
    OverlayStyle,
    attention_box,
    create_style,
)
from api_prompt.styles.blur import gaussian_blur, mix


def make_map(mask, size, region=None) -> AttentionMap:
    mask = np.asarray(mask, dtype=np.float32)
    return AttentionMap(
        mask=mask, parts={}, image_size=size, region=region or (0.0, 0.0, *map(float, size))
    )


def pattern(width: int, height: int) -> Image.Image:
    """An image whose every pixel differs from its neighbours, so a crop's origin shows."""
    y, x = np.mgrid[0:height, 0:width]
    return Image.fromarray(
        np.stack([x % 256, y % 256, (x * 7 + y * 13) % 256], -1).astype(np.uint8)
    )


# ---------------------------------------------------------------------------------------------
# overlay: the paper's, unchanged


def test_overlay_style_is_the_overlay_bit_for_bit_on_the_reference_cases(
    clip_cases, clip_fixture_dir, expected_npz
):
    for case in clip_cases:
        image = Image.open(clip_fixture_dir / case["image"]).convert("RGB")
        amap = make_map(expected_npz[f"{case['name']}_mask"], image.size)
        options = dict(resample=case["resample"].lower(), background=case["background"])
        (styled,) = create_style("overlay", **options).apply(image, amap)
        assert styled.tobytes() == Overlay(**options).apply(image, amap).tobytes()
        with Image.open(clip_fixture_dir / case["expected_image"]) as reference:
            expected = np.asarray(reference.convert("RGB"), dtype=int)
        assert np.abs(np.asarray(styled, dtype=int) - expected).max() <= 1


# ---------------------------------------------------------------------------------------------
# crop: ViCrop's adaptive box, checked against a plain loop written from the rule's statement


def vicrop_box_by_loops(mask, size, crop_size, ratios=(1, 1.2, 1.4, 1.6, 1.8, 2)):
    """The rule as ViCrop's paper code states it, loop by loop (stretch geometry)."""
    rows, cols = mask.shape
    width, height = size
    cell_w, cell_h = width / cols, height / rows
    found = []
    for ratio in ratios:
        bw = min(max(int(crop_size * ratio / cell_w), 1), cols)
        bh = min(max(int(crop_size * ratio / cell_h), 1), rows)
        if cols - bw < 1 and rows - bh < 1:
            if ratio == 1:
                return 0, 0, width, height
            continue
        sums = np.zeros((rows - bh + 1, cols - bw + 1))
        best, best_at = -np.inf, (0, 0)
        for x in range(cols - bw + 1):
            for y in range(rows - bh + 1):
                sums[y, x] = mask[y : y + bh, x : x + bw].sum()
                if sums[y, x] > best:
                    best, best_at = sums[y, x], (x, y)
        x, y = best_at
        around = []
        if x > 0:
            around.append(sums[y, x - 1])
        if x < sums.shape[1] - 1:
            around.append(sums[y, x + 1])
        if y > 0:
            around.append(sums[y - 1, x])
        if y < sums.shape[0] - 1:
            around.append(sums[y + 1, x])
        found.append(((best - np.mean(around)) / (bw * bh), best_at, (bw, bh), crop_size * ratio))
    sharpness = [f[0] for f in found]
    _, (x, y), (bw, bh), side = found[int(np.argmax(sharpness))]
    cx, cy = int(x * cell_w + cell_w * bw / 2), int(y * cell_h + cell_h * bh / 2)
    cx = side // 2 if cx < side // 2 else cx
    cy = side // 2 if cy < side // 2 else cy
    cx = width - side // 2 if cx > width - side // 2 else cx
    cy = height - side // 2 if cy > height - side // 2 else cy
    return (
        int(max(0, cx - side // 2)),
        int(max(0, cy - side // 2)),
        int(min(width, cx + side // 2)),
        int(min(height, cy + side // 2)),
    )


@given(
    grid=st.tuples(st.integers(2, 24), st.integers(2, 24)),
    size=st.tuples(st.integers(16, 3000), st.integers(16, 3000)),
    crop_size=st.integers(8, 700),
    seed=st.integers(0, 2**32 - 1),
)
def test_crop_box_equals_the_rule_computed_by_plain_loops(grid, size, crop_size, seed):
    # quantised values, so window sums tie exactly and the tie rule is exercised too
    mask = np.random.default_rng(seed).integers(0, 5, size=grid).astype(np.float64) / 4
    cells = (0.0, 0.0, size[0] / grid[1], size[1] / grid[0])
    assert attention_box(mask, size, cells, crop_size) == vicrop_box_by_loops(mask, size, crop_size)


def test_crop_gives_the_original_and_the_zoomed_pixels_of_the_attended_corner():
    image = pattern(400, 300)
    mask = np.zeros((3, 4), np.float32)
    mask[2, 3] = 1.0  # bottom-right cell: x 300..400, y 200..300
    original, zoomed = CropStyle(crop_size=100, zoom=100).apply(image, make_map(mask, image.size))
    assert original.tobytes() == image.tobytes()
    # ratio 1 gives a window of one cell; its peak is the sharpest, so the box is that cell
    np.testing.assert_array_equal(np.asarray(zoomed), np.asarray(image)[200:300, 300:400])


def test_crop_zoom_and_one_image_options():
    image = pattern(400, 300)
    mask = np.zeros((3, 4), np.float32)
    mask[0, 0] = 1.0
    amap = make_map(mask, image.size)
    zoomed = CropStyle(crop_size=100, zoom=250).apply(image, amap)[1]
    assert zoomed.size == (250, 250)
    expected = np.asarray(image.crop((0, 0, 100, 100)).resize((250, 250), Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(np.asarray(zoomed), expected)
    assert CropStyle(crop_size=100, one_image="crop").single(image, amap).size == (100, 100)
    both = CropStyle(crop_size=100).single(image, amap)
    assert both.height == 300 and both.width > 400  # original and crop in one picture


def test_crop_of_an_image_smaller_than_the_crop_is_the_whole_image():
    image = pattern(64, 48)
    mask = np.random.default_rng(0).random((8, 8))
    box = CropStyle(crop_size=336).box(image, make_map(mask, image.size))
    assert box == (0, 0, 64, 48)


def test_crop_with_fit_geometry_places_the_grid_on_its_region():
    image = pattern(400, 200)
    mask = np.zeros((2, 2), np.float32)
    mask[0, 0] = 1.0  # the region's top-left cell: x 100..200, y 0..100
    amap = make_map(mask, image.size, region=(100.0, 0.0, 300.0, 200.0))
    assert CropStyle(crop_size=100, geometry="fit").box(image, amap) == (100, 0, 200, 100)
    assert CropStyle(crop_size=100, geometry="stretch").box(image, amap) == (50, 0, 150, 100)


# ---------------------------------------------------------------------------------------------
# blur and box


def test_blur_mixes_sharp_and_blurred_pixels_by_the_8_bit_map():
    image = pattern(16, 8)
    mask = np.array([[0.0, 1.0], [0.5, 0.25]], np.float32)
    amap = make_map(mask, image.size)
    (out,) = BlurStyle(blur=0.125, resample="nearest").apply(image, amap)  # radius 2 px
    blurred = np.asarray(image.filter(ImageFilter.GaussianBlur(2.0)), dtype=np.float64)
    weights = np.floor(mask.astype(np.float32) * np.float32(255)).astype(np.float64)
    weights = np.kron(weights, np.ones((4, 8)))[..., None]  # nearest: each cell 8×4 pixels
    expected = np.rint((np.asarray(image, np.float64) * weights + blurred * (255 - weights)) / 255)
    np.testing.assert_array_equal(np.asarray(out), expected.astype(np.uint8))


@pytest.mark.slow
def test_the_blend_rounds_every_reachable_sum_to_the_nearest_level():
    # every (sharp, blurred, m) triple, through the 16-bit arithmetic, against float rounding
    sharp, blurred, m = (
        v.reshape(-1, 1) for v in np.meshgrid(*[np.arange(256)] * 3, indexing="ij")
    )
    out = mix(
        sharp[..., None].astype(np.uint8), blurred[..., None].astype(np.uint8), m.astype(np.uint8)
    )
    expected = np.rint((sharp * m + blurred * (255 - m)) / 255.0)
    np.testing.assert_array_equal(out[..., 0], expected.astype(np.uint8))


def test_a_wide_blur_is_close_to_the_full_resolution_blur():
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).resize((800, 600))
    fast = np.asarray(gaussian_blur(image, 24.0), dtype=float)
    full = np.asarray(image.filter(ImageFilter.GaussianBlur(24.0)), dtype=float)
    inner = (slice(48, -48), slice(48, -48))  # edges are handled differently by design
    assert np.abs(fast - full)[inner].mean() < 2.0 and np.abs(fast - full)[inner].max() < 16


def test_box_draws_the_outline_of_the_attended_cells_and_nothing_else():
    image = Image.new("RGB", (20, 20), "black")
    mask = np.zeros((2, 2), np.float32)
    mask[1, 0] = 1.0  # cells x 0..9, y 10..19
    mask[1, 1] = 0.4  # under the threshold: left out
    (out,) = BoxStyle(width=1, color="#00ff00").apply(image, make_map(mask, image.size))
    expected = np.zeros((20, 20, 3), np.uint8)
    for y in range(10, 20):
        for x in range(0, 10):
            if x in (0, 9) or y in (10, 19):
                expected[y, x] = (0, 255, 0)
    np.testing.assert_array_equal(np.asarray(out), expected)
    assert image.getpixel((0, 10)) == (0, 0, 0), "the input image must not be drawn on"


def test_box_ellipse_stays_inside_its_box():
    image = Image.new("RGB", (40, 40), "black")
    mask = np.zeros((4, 4), np.float32)
    mask[1:3, 1:3] = 1.0
    style = BoxStyle(shape="ellipse", width=2)
    (out,) = style.apply(image, make_map(mask, image.size))
    left, top, right, bottom = style.box(image, make_map(mask, image.size))
    drawn = np.argwhere(np.asarray(out).any(axis=2))
    assert (left, top, right, bottom) == (10, 10, 29, 29)
    assert drawn[:, 0].min() >= top and drawn[:, 0].max() <= bottom
    assert drawn[:, 1].min() >= left and drawn[:, 1].max() <= right
    assert not np.asarray(out)[10, 10].any(), "an ellipse leaves the box's corners alone"


# ---------------------------------------------------------------------------------------------
# every style: any size and mode, deterministic, options checked before anything runs

MODES = ("RGB", "L", "RGBA", "P", "I;16", "CMYK", "1", "LA")


@given(
    style=st.sampled_from(sorted(STYLES)),
    mode=st.sampled_from(MODES),
    size=st.tuples(st.integers(1, 120), st.integers(1, 120)),
    grid=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    seed=st.integers(0, 2**32 - 1),
)
def test_every_style_takes_any_size_and_mode_and_is_deterministic(style, mode, size, grid, seed):
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(
        mode
    )
    amap = make_map(rng.random(grid), size)
    made = create_style(style, **({"crop_size": 32} if style == "crop" else {}))
    first, second = made.apply(image, amap), made.apply(image, amap)
    assert [im.tobytes() for im in first] == [im.tobytes() for im in second]
    assert all(im.mode == "RGB" for im in first)
    if style == "crop":
        assert first[0].size == size and max(first[1].size) == 32
    else:
        assert [im.size for im in first] == [size]
    assert made.single(image, amap).mode == "RGB"


def test_unknown_styles_and_options_are_one_line_errors():
    with pytest.raises(
        ConfigError, match="unknown style 'zoom'; choose one of: overlay, crop, blur, box"
    ):
        create_style("zoom")
    with pytest.raises(
        ConfigError, match="style 'blur' takes blur, resample, geometry, not background"
    ):
        create_style("blur", background=3)
    for name, options in [
        ("crop", {"crop_size": 0}),
        ("blur", {"blur": 2.0}),
        ("box", {"color": "nocolor"}),
        ("box", {"shape": "star"}),
        ("overlay", {"background": 300}),
        ("crop", {"one_image": "both"}),
    ]:
        with pytest.raises(ConfigError) as error:
            create_style(name, **options)
        assert "\n" not in str(error.value)


def test_describe_names_every_option():
    assert create_style("crop").describe() == {
        "style": "crop",
        "crop_size": 336,
        "zoom": 336,
        "one_image": "side-by-side",
        "geometry": "stretch",
    }
    assert isinstance(create_style(OverlayStyle()), OverlayStyle)


# ---------------------------------------------------------------------------------------------
# through the Prompter and wrap(): what the target receives


class CornerAttributor:
    """A model-free attributor: all attention on the bottom-right cell of a 4×4 grid."""

    default_recipe = None
    n_layers = 1

    def attribute(self, images, queries):
        mask = np.zeros((4, 4), np.float32)
        mask[3, 3] = 1.0
        return [
            AttentionMap(mask, {}, im.size, (0.0, 0.0, *map(float, im.size)), query=q)
            for im, q in zip(images, queries)
        ]

    __call__ = attribute

    def describe(self):
        return {"backend": "corner"}


def test_prompter_with_a_style_gives_what_the_target_sees_and_one_image():
    from api_prompt import Prompter

    image = pattern(400, 400)
    prompter = Prompter(
        attributor=CornerAttributor(), style="crop", style_options={"crop_size": 100}
    )
    result = prompter(image, "q")
    original, zoomed = result.images
    assert original.tobytes() == image.tobytes()
    np.testing.assert_array_equal(
        np.asarray(zoomed)[:1], np.asarray(image.crop((300, 300, 400, 400)).resize((100, 100)))[:1]
    )
    assert result.image.size[0] > 400  # side by side for one-image use
    assert prompter.describe()["style"] == "crop" and prompter.describe()["crop_size"] == 100
    default = Prompter(attributor=CornerAttributor())
    assert "style" not in default.describe()  # old manifests still match
    assert default(image, "q").images == [default(image, "q").image]
    blurred = Prompter(
        attributor=CornerAttributor(), style="blur", background=200, resample="nearest"
    )
    assert blurred.style.resample == "nearest"  # overlay settings reach it
    with pytest.raises(ConfigError, match="no prompt style takes crop_sise"):
        Prompter(attributor=CornerAttributor(), style="box", style_options={"crop_sise": 3})
    boxed = Prompter(attributor=CornerAttributor(), style="box", style_options={"crop_size": 50})
    assert boxed.style_named("crop").crop_size == 50  # kept for the other styles


def test_openai_target_receives_the_original_then_the_crop_in_one_turn(monkeypatch):
    from api_prompt import Prompter, wrap
    from api_prompt.targets import OpenAITarget
    from test_targets_openai import FakeOpenAI, request_images

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    image = pattern(400, 400)
    prompter = Prompter(
        attributor=CornerAttributor(), style="crop", style_options={"crop_size": 100}
    )
    with FakeOpenAI() as server:
        ask = wrap(OpenAITarget("test", base_url=server.base_url), prompter)
        assert ask(image, "what is in the corner?") == "echo: what is in the corner?"
        original, zoomed = request_images(server.requests[0])
    assert np.array_equal(np.asarray(original), np.asarray(image))
    assert np.array_equal(np.asarray(zoomed), np.asarray(prompter(image, "q").images[1]))


def test_hf_target_gets_two_images_in_one_turn_through_its_chat_template():
    from api_prompt import Prompter, wrap
    from api_prompt.targets import HFTarget
    from tiny_vlms import tiny_qwen2_vl

    model, processor = tiny_qwen2_vl()
    target = HFTarget(model, processor, max_new_tokens=4)
    conversations = []
    build = target._conversation
    target._conversation = lambda images, question: (
        conversations.append(build(images, question)) or conversations[-1]
    )
    image = pattern(96, 96)
    prompter = Prompter(
        attributor=CornerAttributor(), style="crop", style_options={"crop_size": 24, "zoom": 48}
    )
    answer = wrap(target, prompter)(image, "What?")
    (turn,) = conversations[0]
    assert [part["type"] for part in turn["content"]] == ["image", "image", "text"]
    assert turn["content"][0]["image"].tobytes() == image.tobytes()
    del target._conversation
    assert answer == target.ask(prompter(image, "What?").images, "What?")
