"""The Python API: ``Prompter``, ``prompt()`` and ``check_settings`` (presets, validation, pixels)."""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import api_prompt.prompter as prompter_module
from api_prompt import PRESETS, AttentionMap, Prompter, prompt
from api_prompt.attribution.base import Attributor
from api_prompt.errors import ConfigError
from api_prompt.prompter import check_settings

FIXTURE = Path(__file__).parent / "fixtures" / "clip_reference"
MODEL = f"local-dir:{FIXTURE / 'model'}"


class FixedMap(Attributor):
    """A model-free attributor: the same diagonal 4×4 map for every image."""

    name = "fixed"

    def __init__(self) -> None:
        self.calls = 0

    def attribute(self, images, queries):
        self.calls += 1
        mask = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
        return [
            AttentionMap(
                mask=mask, parts={}, image_size=im.size, region=(0.0, 0.0, *im.size), query=q
            )
            for im, q in zip(images, queries)
        ]


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a model would be loaded."""
    monkeypatch.setattr(
        prompter_module, "create_attributor", lambda *a, **k: pytest.fail("a model was loaded")
    )


# --------------------------------------------------------------------------------------------
# Settings and presets (no model)


def test_default_settings_are_the_package_preset() -> None:
    settings, overlay = check_settings()
    assert (
        settings
        == PRESETS["package"]
        == {"enhance": 10.0, "kernel_size": 3, "resample": "lanczos", "background": 0}
    )
    assert repr(overlay) == "Overlay(resample='lanczos', background=0, geometry='stretch')"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_resolves(name: str) -> None:
    settings, overlay = check_settings(name)
    assert settings == {**PRESETS[name], "enhance": float(PRESETS[name]["enhance"])}
    assert overlay.background == PRESETS[name]["background"]


def test_explicit_options_override_the_preset() -> None:
    settings, overlay = check_settings(
        "llava-wild", kernel_size=1, background=0, resample="NEAREST"
    )
    assert settings == {"enhance": 10.0, "kernel_size": 1, "resample": "NEAREST", "background": 0}
    assert overlay.resample is Image.Resampling.NEAREST
    # None means "not set": the preset keeps its value.
    assert check_settings("mmvet", enhance=None)[0]["enhance"] == 1.0


@pytest.mark.parametrize(
    "options, words",
    [
        ({"preset": "best"}, "unknown preset 'best'"),
        ({"kernel_size": 2}, "odd integer >= 1, got 2"),
        ({"kernel_size": 0}, "odd integer >= 1, got 0"),
        ({"kernel_size": -1}, "odd integer >= 1, got -1"),
        ({"kernel_size": 3.0}, "kernel size"),
        ({"enhance": math.nan}, "enhance must be a finite number"),
        ({"enhance": "10"}, "enhance must be a finite number"),
        ({"background": 256}, "0..255"),
        ({"background": -1}, "0..255"),
        ({"resample": "cubic"}, "unknown resample 'cubic'"),
        ({"geometry": "crop"}, "unknown geometry 'crop'"),
    ],
)
def test_bad_settings_are_refused_before_any_model(no_model, options: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(words)):
        Prompter(model=MODEL, device="cpu", **options)


def test_prompter_with_a_ready_attributor(no_model) -> None:
    attributor = FixedMap()
    prompter = Prompter(attributor=attributor, preset="llava-wild", kernel_size=3)
    assert prompter.attributor is attributor
    assert prompter.settings["background"] == 200 and prompter.settings["kernel_size"] == 3
    assert prompter.describe() == {"backend": "fixed", **prompter.settings, "geometry": "stretch"}
    image = Image.new("RGBA", (12, 8), (10, 20, 30, 255))
    result = prompter(image, "anything")
    assert result.image.mode == "RGB" and result.image.size == (12, 8)
    assert result.map.query == "anything"
    # Two images and one query: one batched call.
    results = prompter.batch([image, np.zeros((3, 5, 3), np.uint8)], "q")
    assert [r.image.size for r in results] == [(12, 8), (5, 3)] and attributor.calls == 2


@pytest.mark.parametrize("query", ["", "   ", "\n\t"])
def test_blank_query_is_refused(query: str) -> None:
    with pytest.raises(ConfigError, match="query is empty"):
        Prompter(attributor=FixedMap())(Image.new("RGB", (4, 4)), query)


# --------------------------------------------------------------------------------------------
# The real (tiny) CLIP model


@pytest.fixture(scope="module")
def photo() -> Path:
    return FIXTURE / "images" / "wide.png"


@pytest.mark.slow
def test_prompt_and_prompter_give_the_same_pixels(photo: Path) -> None:
    query = "What color is the car on the left?"
    options = dict(model=MODEL, device="cpu", preset="mmvet", background=40)
    by_prompter = Prompter(**options)(photo, query).image
    by_function = prompt(photo, query, **options)
    assert isinstance(by_function, Image.Image) and by_function.size == (151, 97)
    assert np.array_equal(np.asarray(by_prompter), np.asarray(by_function))
    # The model stays loaded for the next call with the same options ...
    kept = prompter_module._last_prompter[1]
    prompt(np.asarray(by_prompter), "Is there a dog?", **options)
    assert prompter_module._last_prompter[1] is kept
    # A query longer than CLIP's 77 tokens is truncated, with a warning; a short one is not.
    with pytest.warns(UserWarning, match="tokens long .* truncated to the first 77"):
        prompt(photo, " ".join(["a red car beside a tall building"] * 12), **options)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prompt(photo, "Où est la voiture ? 車はどこ？", **options)
    # ... and other options give another prompter.
    prompt(photo, query, **{**options, "background": 0})
    assert prompter_module._last_prompter[1] is not kept


def test_layer_out_of_range_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="out of range"):
        Prompter(model=MODEL, device="cpu", layer=6)


@pytest.mark.slow
def test_prompter_reproduces_the_reference_images(clip_cases: list[dict]) -> None:
    """Each golden case through the whole pipeline, within one gray level of the reference."""
    for case in clip_cases:
        prompter = Prompter(
            model=MODEL,
            device="cpu",
            layer=case["layer"],
            enhance=case["enhance"],
            kernel_size=case["kernel_size"],
            resample=case["resample"],
            background=case["background"],
        )
        result = prompter(FIXTURE / case["image"], case["query"])
        with Image.open(FIXTURE / case["expected_image"]) as reference:
            expected = np.asarray(reference.convert("RGB"), dtype=int)
        assert result.map.grid == case["grid"]
        difference = np.abs(np.asarray(result.image, dtype=int) - expected)
        assert difference.max() <= 1, case["name"]
        assert (difference > 0).mean() < 0.05, case["name"]


# --------------------------------------------------------------------------------------------
# The stages: attribute (model) · combine (recipe) · render (overlay)


class RawParts(Attributor):
    """A model-free attributor returning raw decoder-style parts, built with its own settings."""

    name = "raw"
    default_recipe = "llava"

    def __init__(self, enhance: float = 5.0, kernel_size: int = 3) -> None:
        self.enhance, self.kernel_size, self.calls = enhance, kernel_size, 0

    def attribute(self, images, queries):
        self.calls += 1
        rng = np.random.default_rng(len(images))
        return [
            AttentionMap(
                mask=None,
                parts={"attention": rng.random((3, 5), dtype=np.float32)},
                image_size=im.size,
                region=(0.0, 0.0, *im.size),
                query=q,
            )
            for im, q in zip(images, queries)
        ]


def test_a_ready_attributor_gets_the_prompters_explicit_settings(no_model) -> None:
    from api_prompt.maps import combine_llava

    attributor = RawParts(enhance=5.0, kernel_size=3)
    image = np.zeros((6, 10, 3), np.uint8)
    # No settings given: the attributor's own are used, and describe() says so.
    own = Prompter(attributor=attributor)
    amap = own.attribute(image, "q")[0]
    np.testing.assert_allclose(
        amap.mask, combine_llava(amap.parts["attention"], coe=5.0, kernel_size=3)
    )
    assert own.describe()["enhance"] == 5.0 and own.describe()["recipe"] == "llava"
    # Explicit settings are applied, not silently replaced by the attributor's.
    explicit = Prompter(attributor=attributor, enhance=1.0, kernel_size=1)
    amap = explicit.attribute(image, "q")[0]
    np.testing.assert_allclose(
        amap.mask, combine_llava(amap.parts["attention"], coe=1.0, kernel_size=1)
    )
    assert amap.recipe == "llava" and explicit.describe()["kernel_size"] == 1


def test_combine_and_render_need_no_model(no_model) -> None:
    from api_prompt.maps import combine_llava

    attributor = RawParts()
    prompter = Prompter(attributor=attributor, kernel_size=1)
    image = Image.new("RGB", (10, 6), (200, 100, 50))
    amap = prompter.attribute(image, "q")[0]
    assert amap.grid_shape == (3, 5) and attributor.calls == 1
    smoothed = prompter.combine(amap, kernel_size=3)
    np.testing.assert_allclose(
        smoothed.mask, combine_llava(amap.parts["attention"], coe=5.0, kernel_size=3)
    )
    assert smoothed.parts is amap.parts and amap.mask is not smoothed.mask
    gray = prompter.render(image, amap, background=255)
    black = prompter.render(image, amap)
    assert np.asarray(gray).sum() > np.asarray(black).sum()
    assert attributor.calls == 1  # neither combine nor render ran the model
    with pytest.raises(ConfigError, match="recipe 'clip-soft-or' needs the part"):
        prompter.combine(amap, recipe="clip-soft-or")
    with pytest.raises(ConfigError, match="odd integer"):
        prompter.combine(amap, kernel_size=2)
    with pytest.raises(ConfigError, match="render\\(\\) takes"):
        prompter.render(image, amap, kernel_size=3)


@pytest.mark.parametrize("value", [-5, 0, -0.5])
def test_enhance_has_one_rule_wherever_it_comes_in(value) -> None:
    """check_settings, the Prompter, the CLIP attributor and the decoder attributors refuse the
    same values with the same message (it was: check_settings accepted -5, CLIP refused it, the
    decoder took float() of anything), before any model loads."""
    from api_prompt.attribution.registry import get_backend
    from api_prompt.settings import check_enhance

    message = re.escape(f"enhance must be a finite number > 0, got {value!r}")
    with pytest.raises(ConfigError, match=message):
        check_enhance(value)
    with pytest.raises(ConfigError, match=message):
        check_settings(enhance=value)
    with pytest.raises(ConfigError, match=message):
        Prompter(attributor=RawParts(), enhance=value)
    for backend in ("clip", "siglip", "llava", "llava-next", "qwen2-vl"):
        with pytest.raises(ConfigError, match=message):  # checked before the (missing) model loads
            get_backend(backend).create(model="/no/such/model", enhance=value)
    assert check_enhance(1) == 1.0 and check_settings(enhance=0.5)[0]["enhance"] == 0.5


class PartsOnly(Attributor):
    """A backend as backends are written now: raw parts only, its own mask settings."""

    name = "parts-only"
    default_recipe = "llava"

    def __init__(self) -> None:
        self.enhance, self.kernel_size = 5.0, 3

    def attribute_parts(self, images, queries, *, exact_parts=True):
        ramp = np.arange(15, dtype=np.float32).reshape(3, 5) ** 2
        return [
            AttentionMap(None, {"attention": ramp}, im.size, (0.0, 0.0, *im.size), query=q)
            for im, q in zip(images, queries)
        ]


def test_the_prompter_combines_raw_parts_once(no_model, monkeypatch) -> None:
    """The attributor returns raw parts (no mask); the Prompter makes the mask once, with its own
    recipe and settings; the attributor used alone adds the mask of its own recipe and settings."""
    import api_prompt.attribution.base as base_module
    from api_prompt.maps import combine_llava, combine_map, combine_maps

    calls = []

    def counting(*args, **kwargs):
        calls.append(kwargs)
        return combine_map(*args, **kwargs)

    def counting_all(*args, **kwargs):
        calls.append(kwargs)
        return combine_maps(*args, **kwargs)

    monkeypatch.setattr(prompter_module, "combine_maps", counting_all)
    monkeypatch.setattr(base_module, "combine_map", counting)
    attributor, image = PartsOnly(), np.zeros((6, 10, 3), np.uint8)
    raw = attributor.attribute_parts([Image.fromarray(image)], ["q"])[0]
    assert raw.mask is None and raw.recipe is None
    prompted = Prompter(attributor=attributor, enhance=1.0, kernel_size=1).attribute(image, "q")[0]
    assert calls == [{"enhance": 1.0, "kernel_size": 1}]  # once, with the Prompter's settings
    np.testing.assert_allclose(
        prompted.mask, combine_llava(prompted.parts["attention"], coe=1.0, kernel_size=1)
    )
    alone = attributor(image, "q")[0]
    assert calls[1:] == [{"enhance": 5.0, "kernel_size": 3}] and alone.recipe == "llava"
    np.testing.assert_allclose(
        alone.mask, combine_llava(alone.parts["attention"], coe=5.0, kernel_size=3)
    )
