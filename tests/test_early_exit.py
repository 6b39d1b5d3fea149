"""Early exit: a CLIP mask from blocks 0..L' only, equal to the full computation's mask.

The final LayerNorm's statistics and the embedding norm enter Ψcls and Ψcomp as one positive
affine map per image (docs/ALGORITHM.md §1), which the recipe's min-max removes; so a caller that
needs only the mask (``exact_parts=False``, the Prompter's default) stops the tower after block
L'. These tests pin that the mask is the same (≤ 1e-6) on the golden fixture, on random towers of
several shapes and on ViT-B-16's real shape, that the later blocks really do not run, that the
parts a user asks for keep the reference's scale, and that the model is left as it was.
The same file runs on open_clip 3 (installed) and 4 (CI's source snapshot).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from api_prompt.attribution.clip import CLIPAttributor
from api_prompt.errors import ConfigError
from api_prompt.maps import RECIPES, Recipe, minmax, register_recipe
from api_prompt.prompter import SCALE_FREE_RECIPES, Prompter

FIXTURE_DIR = Path(__file__).parent / "fixtures" / "clip_reference"
CASES = json.loads((FIXTURE_DIR / "cases.json").read_text())["cases"]
MASK_TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def fixture_model():
    name = f"local-dir:{FIXTURE_DIR / 'model'}"
    model, _, preprocess = open_clip.create_model_and_transforms(name)
    return model.eval(), preprocess, open_clip.get_tokenizer(name)


@pytest.fixture(scope="module")
def images():
    return [Image.open(FIXTURE_DIR / case["image"]).convert("RGB") for case in CASES]


def run_counts(model):
    """Forward-call counters on every block and on ln_post (handles to remove afterwards)."""
    counts = {
        "ln_post": 0,
        **{index: 0 for index in range(len(model.visual.transformer.resblocks))},
    }
    handles = [
        model.visual.ln_post.register_forward_pre_hook(
            lambda *_: counts.__setitem__("ln_post", counts["ln_post"] + 1)
        )
    ]
    for index, block in enumerate(model.visual.transformer.resblocks):
        handles.append(
            block.register_forward_pre_hook(
                lambda *_, index=index: counts.__setitem__(index, counts[index] + 1)
            )
        )
    return counts, handles


def assert_same_masks(full, fast):
    for exact, early in zip(full, fast, strict=True):
        assert exact.extra["exact_parts"] is True and early.extra["exact_parts"] is False
        assert np.abs(exact.mask - early.mask).max() <= MASK_TOLERANCE
        for name in ("psi_cls", "psi_comp"):  # the same up to a positive affine map
            np.testing.assert_allclose(
                minmax(early.parts[name]), minmax(exact.parts[name]), atol=1e-5, rtol=0
            )
            assert (
                np.corrcoef(early.parts[name].ravel(), exact.parts[name].ravel())[0, 1] > 1 - 1e-6
            )


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_golden_fixture_masks_are_the_full_computations(case, fixture_model, expected_npz):
    model, preprocess, tokenizer = fixture_model
    attr = CLIPAttributor(
        model,
        preprocess=preprocess,
        tokenizer=tokenizer,
        layer=case["layer"],
        enhance=case["enhance"],
        kernel_size=case["kernel_size"],
    )
    image = Image.open(FIXTURE_DIR / case["image"]).convert("RGB")
    full = attr.attribute([image], [case["query"]])
    fast = attr.attribute([image], [case["query"]], exact_parts=False)
    assert_same_masks(full, fast)
    assert (
        np.abs(fast[0].mask - expected_npz[f"{case['name']}_mask"]).max() <= 1e-5
    )  # the reference's


@pytest.mark.slow
def test_later_blocks_do_not_run(fixture_model, images):
    model, preprocess, tokenizer = fixture_model
    attr = CLIPAttributor(model, preprocess=preprocess, tokenizer=tokenizer, layer=2)
    counts, handles = run_counts(model)
    try:
        attr.attribute(images[:2], ["a dog", "a cat"], exact_parts=False)
        assert [counts[i] for i in range(6)] == [1, 1, 1, 0, 0, 0] and counts["ln_post"] == 0
        attr.attribute(images[:2], ["a dog", "a cat"])  # the default: the whole tower
        assert [counts[i] for i in range(6)] == [2, 2, 2, 1, 1, 1] and counts["ln_post"] == 1
    finally:
        for handle in handles:
            handle.remove()


def tiny_clip(seed=0, **vision):
    vision_cfg = {
        "image_size": 64,
        "patch_size": 16,
        "layers": 4,
        "width": 32,
        "head_width": 8,
        **vision,
    }
    text_cfg = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
    torch.manual_seed(seed)
    return open_clip.model.CLIP(embed_dim=16, vision_cfg=vision_cfg, text_cfg=text_cfg).eval()


SHAPES = [
    ({}, 2),
    ({}, -1),  # L' = the last block: only ln_post and the projection are skipped
    ({}, 0),
    ({"ls_init_value": 0.1}, 1),
    ({"patch_size": 8, "image_size": 48, "layers": 6, "width": 48, "head_width": 16}, 3),
    ({"layers": 3, "width": 64, "head_width": 32, "mlp_ratio": 2.0}, 1),
    ({"final_ln_after_pool": True}, 2),
]


@pytest.mark.slow
@pytest.mark.parametrize("vision, layer", SHAPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_random_towers_of_several_shapes(vision, layer, seed, fixture_model, images):
    try:
        model = tiny_clip(seed, **vision)
    except TypeError as exc:  # an option this open_clip major does not have
        pytest.skip(f"open_clip {open_clip.__version__}: {exc}")
    size = model.visual.image_size
    preprocess = open_clip.image_transform(
        size[0] if isinstance(size, (tuple, list)) else size, is_train=False
    )
    attr = CLIPAttributor(
        model, preprocess=preprocess, tokenizer=fixture_model[2], layer=layer, batch_size=3
    )
    queries = ["a dog", "the red sign", "what is on the left?", "a dog"]
    assert_same_masks(
        attr.attribute(images, queries), attr.attribute(images, queries, exact_parts=False)
    )


@pytest.mark.slow
def test_real_shape_vit_b_16(fixture_model, images):
    """ViT-B-16's real shape (12 blocks, width 768, 14×14 grid), random weights, default L' = 10."""
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-16", pretrained=None)
    attr = CLIPAttributor(
        model.eval(), preprocess=preprocess, tokenizer=open_clip.get_tokenizer("ViT-B-16")
    )
    assert attr.layer == 10
    queries = ["what is written on the sign?", "a dog"]
    full = attr.attribute(images[:2], queries)
    fast = attr.attribute(images[:2], queries, exact_parts=False)
    assert fast[0].mask.shape == (14, 14)
    assert_same_masks(full, fast)


def test_early_exit_allocates_no_more_than_a_plain_forward(images):
    """The peak-memory target (≤ 1.0× a plain forward), ViT-B-16's real shape, random weights: the
    early exit keeps block L''s tokens, which the forward pass holds at that moment anyway, and
    encodes the text after the image, so nothing is held through the image forward that a plain
    forward does not hold. (The text tower then runs beside those tokens: below the image
    forward's peak at real image sizes, not at toy ones like 64 px.)"""
    from benchmarks.bench_clip import baseline_call, peak_extra_memory

    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-16", pretrained=None)
    model.eval()
    tokenizer = open_clip.get_tokenizer("ViT-B-16")
    attr = CLIPAttributor(model, preprocess=preprocess, tokenizer=tokenizer)
    batch = images[:2]
    queries = ["where is the dog?", "what is written on the sign?"]

    def early(batch, queries):
        attr._text_cache.clear()  # encode the text every time, as the plain forward does
        attr.attribute(batch, queries, exact_parts=False)

    plain = baseline_call(model, preprocess, tokenizer, torch.device("cpu"), torch.float32)
    early(batch, queries), plain(batch, queries)  # warm-up
    cpu = torch.device("cpu")
    assert peak_extra_memory(early, batch, queries, cpu) <= peak_extra_memory(
        plain, batch, queries, cpu
    )


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, {
        m: m.training for m in model.modules()
    }


def test_model_is_left_unchanged(fixture_model, images):
    model, preprocess, tokenizer = fixture_model
    model.train()
    model.visual.transformer.resblocks[1].eval()
    try:
        weights, modes = snapshot(model)
        attr = CLIPAttributor(model, preprocess=preprocess, tokenizer=tokenizer, layer=3)
        attr.attribute(images[:2], ["a dog", "a cat"], exact_parts=False)
        assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
        assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == 0
        assert all(m.training == modes[m] for m in model.modules())
    finally:
        model.eval()


# -- who asks for what --------------------------------------------------------------------------


@pytest.mark.slow
def test_prompter_stops_early_and_gives_the_same_images(fixture_model, images):
    model, preprocess, tokenizer = fixture_model
    attr = CLIPAttributor(model, preprocess=preprocess, tokenizer=tokenizer, layer=3)
    prompter = Prompter(attributor=attr)
    counts, handles = run_counts(model)
    try:
        fast = prompter.batch(images, "a red shape")
        assert counts[4] == 0 and counts["ln_post"] == 0
        exact = prompter.batch(images, "a red shape", exact_parts=True)
        assert counts[4] == 1 and counts["ln_post"] == 1
    finally:
        for handle in handles:
            handle.remove()
    for early, full in zip(fast, exact, strict=True):
        assert early.map.extra["exact_parts"] is False and full.map.extra["exact_parts"] is True
        assert np.abs(early.map.mask - full.map.mask).max() <= MASK_TOLERANCE
        difference = np.abs(np.asarray(early.image, np.int16) - np.asarray(full.image, np.int16))
        assert difference.max() <= 1  # floor(255·m) may flip where 255·m is an integer ± 1e-6
    # the parts a user asks for are the reference's: what the attributor's default returns
    reference = attr.attribute(images[:1], ["a red shape"])[0]
    asked = Prompter(attributor=attr, exact_parts=True).attribute(images[0], "a red shape")[0]
    np.testing.assert_array_equal(asked.parts["psi_cls"], reference.parts["psi_cls"])
    np.testing.assert_array_equal(asked.parts["psi_comp"], reference.parts["psi_comp"])


def test_default_attributor_parts_are_the_reference_scale(fixture_model, images, expected_npz):
    """The Python contract: ``attributor(...)[0].parts["psi_cls"]`` is Ψcls itself."""
    model, preprocess, tokenizer = fixture_model
    case = CASES[0]
    attr = CLIPAttributor(model, preprocess=preprocess, tokenizer=tokenizer, layer=case["layer"])
    amap = attr(Image.open(FIXTURE_DIR / case["image"]), case["query"])[0]
    for part in ("psi_cls", "psi_comp"):
        expected = expected_npz[f"{case['name']}_{part}"]
        np.testing.assert_allclose(amap.parts[part], expected, atol=1e-5 * np.ptp(expected), rtol=0)


@pytest.mark.slow
def test_a_scale_dependent_recipe_is_refused_on_early_parts(fixture_model, images):
    model, preprocess, tokenizer = fixture_model
    prompter = Prompter(
        attributor=CLIPAttributor(model, preprocess=preprocess, tokenizer=tokenizer, layer=3)
    )
    amap = prompter.attribute(images[0], "a dog")[0]
    register_recipe(
        Recipe(
            "test-raw-cls",
            ("psi_cls", "psi_comp"),
            lambda cls, comp, coe, kernel_size: np.clip(cls, 0, 1),
            "scale-dependent",
        )
    )
    try:
        assert "test-raw-cls" not in SCALE_FREE_RECIPES
        with pytest.raises(ConfigError, match="exact_parts=True"):
            prompter.combine(amap, recipe="test-raw-cls")
        # a Prompter built with that recipe asks for exact parts by itself
        own = Prompter(attributor=prompter.attributor, recipe="test-raw-cls").attribute(
            images[0], "a dog"
        )[0]
        assert own.extra["exact_parts"] is True
    finally:
        RECIPES.pop("test-raw-cls")


@pytest.mark.slow
def test_attention_pooled_towers_run_the_whole_trunk():
    """SigLIP: ψ_pool is the probe's attention over the last block's tokens, so no early exit."""
    attr = CLIPAttributor("local-dir:assets/synthshapes-siglip", device="cpu")
    assert attr.stops_early is False
    image = Image.new("RGB", (96, 80), (200, 30, 30))
    amap = Prompter(attributor=attr).attribute(image, "a red square")[0]
    assert amap.extra["exact_parts"] is True and sorted(amap.parts) == ["psi_pool", "psi_token"]
    with pytest.raises(ConfigError, match="needs the whole tower"):
        attr.raw_maps([image], ["a red square"], exact_parts=False)


CLI = Path(sys.executable).parent / "api-prompt"


@pytest.mark.slow
@pytest.mark.skipif(
    not CLI.exists(), reason="the api-prompt command is not installed (pip install -e .)"
)
def test_save_map_writes_the_reference_scale(expected_npz, tmp_path):
    case = CASES[0]
    saved_map = tmp_path / "map.npz"
    command = [
        str(CLI),
        str(FIXTURE_DIR / case["image"]),
        case["query"],
        "--model",
        f"local-dir:{FIXTURE_DIR / 'model'}",
        "--layer",
        str(case["layer"]),
        "-o",
        str(tmp_path / "out.png"),
        "--save-map",
        str(saved_map),
        "--device",
        "cpu",
        "--quiet",
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    with np.load(saved_map) as saved:
        for part in ("psi_cls", "psi_comp"):
            expected = expected_npz[f"{case['name']}_{part}"]
            np.testing.assert_allclose(saved[part], expected, atol=1e-5 * np.ptp(expected), rtol=0)
