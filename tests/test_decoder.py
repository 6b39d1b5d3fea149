"""Decoder backends for LLaVA-NeXT, Qwen2-VL and Qwen2.5-VL: the captured map against an eager
``output_attentions`` oracle, generation unchanged, model and processor left as they were,
geometry and errors. Tiny random models (tests/tiny_decoders.py), CPU, fp32."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from api_prompt.attribution.base import create_attributor
from api_prompt.attribution.decoder import (
    LLaVANextAttributor,
    Qwen2VLAttributor,
    Qwen25VLAttributor,
)
from api_prompt.errors import ConfigError, UnsupportedModelError
from tiny_decoders import tiny_llava_next, tiny_qwen_vl

LAYER = 2
STEPS = 6
INIT = 0.5  # large random weights, so that greedy answers vary from row to row

FAMILIES = {
    "llava-next": (LLaVANextAttributor, lambda **kw: tiny_llava_next(initializer_range=INIT, **kw)),
    "qwen2-vl": (
        Qwen2VLAttributor,
        lambda **kw: tiny_qwen_vl(version="2", initializer_range=INIT, **kw),
    ),
    "qwen2.5-vl": (
        Qwen25VLAttributor,
        lambda **kw: tiny_qwen_vl(version="2.5", initializer_range=INIT, **kw),
    ),
    # spatial_merge_size 3 (the real checkpoints use 2): nothing may assume 2×2 patches per token
    "qwen2-vl merge 3": (
        Qwen2VLAttributor,
        lambda **kw: tiny_qwen_vl(version="2", merge_size=3, initializer_range=INIT, **kw),
    ),
    "qwen2.5-vl merge 3": (
        Qwen25VLAttributor,
        lambda **kw: tiny_qwen_vl(version="2.5", merge_size=3, initializer_range=INIT, **kw),
    ),
}

# wide, tall and square; different sizes, so grids and token counts differ from row to row
SIZES = ((60, 30), (30, 70), (40, 40))
QUERIES = ["What color is the car?", "Where is the dog in this picture, left or right?", "Count"]


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in SIZES]


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    """(name, attributor class, sdpa model, processor, eager copy with the same weights)."""
    cls, build = FAMILIES[request.param]
    model, processor = build()
    eager, _ = build(attn_implementation="eager")
    return request.param, cls, model, processor, eager


def _inputs(processor, images, queries):
    prompts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}],
            add_generation_prompt=True,
            tokenize=False,
        )
        for q in queries
    ]
    side = processor.tokenizer.padding_side
    processor.tokenizer.padding_side = "left"
    try:
        return processor(images=images, text=prompts, return_tensors="pt", padding=True)
    finally:
        processor.tokenizer.padding_side = side


def _generate(model, inputs, **options):
    return model.generate(
        **inputs,
        max_new_tokens=STEPS,
        do_sample=False,
        num_beams=1,
        pad_token_id=model.generation_config.pad_token_id,
        **options,
    )


def _grid(name, model, inputs):
    """(image-key positions, list of (name, rows, cols)) of one prompt, from the model's own
    image features: LLaVA-NeXT's newline tokens are the features equal to ``image_newline``."""
    image_id = model.config.image_token_id
    positions = (inputs["input_ids"][0] == image_id).nonzero()[:, 0]
    if name == "llava-next":
        with torch.no_grad():
            features = model.model.get_image_features(
                inputs["pixel_values"],
                inputs["image_sizes"],
                return_dict=True,
            ).pooler_output[0]
        newline = (features == model.model.image_newline).all(-1)
        side = model.config.vision_config.image_size // model.config.vision_config.patch_size
        rows = int(newline.sum())
        cols = int(newline[side * side :].nonzero()[0]) if rows else 0
        assert len(positions) == side * side + rows * (cols + 1)
        return positions[~newline], [("base", side, side), ("attention", rows, cols)]
    _, h, w = inputs["image_grid_thw"][0].tolist()
    merge = model.config.vision_config.spatial_merge_size
    return positions, [("attention", h // merge, w // merge)]


def _oracle(name, eager, processor, image, query, layer=LAYER):
    """docs/ALGORITHM.md §2 from eager ``output_attentions``, batch 1 like the reference."""
    inputs = _inputs(processor, [image], [query])
    with torch.no_grad():
        out = _generate(eager, inputs, output_attentions=True, return_dict_in_generate=True)
    keys, grids = _grid(name, eager, inputs)
    rows = []
    for step in out.attentions:  # one per generated token: prefill, then each fed-back token
        probs = step[layer][0, :, -1, keys]  # (heads, image keys)
        rows.append((probs / probs.sum(-1, keepdim=True)).mean(0))
    average = torch.stack(rows).mean(0)
    parts, start = {}, 0
    for part, h, w in grids:
        parts[part] = average[start : start + h * w].reshape(h, w).numpy()
        start += h * w
    tokens = out.sequences[0, inputs["input_ids"].shape[1] :]
    return parts, tokens


def _check(name, amap, expected, tokens, processor):
    assert amap.parts["attention"].shape == expected["attention"].shape
    np.testing.assert_allclose(amap.parts["attention"], expected["attention"], atol=1e-5, rtol=0)
    if name == "llava-next":
        np.testing.assert_allclose(
            amap.extra["base_attention"], expected["base"], atol=1e-5, rtol=0
        )
    assert amap.answer == processor.tokenizer.decode(tokens, skip_special_tokens=True).strip()
    assert amap.extra["passes"] == len(tokens)


@pytest.mark.slow
def test_batch_of_one_matches_eager_oracle(family):
    name, cls, model, processor, eager = family
    image, query = _images()[0], QUERIES[0]
    [amap] = cls(model, processor, layer=LAYER, max_new_tokens=STEPS)([image], [query])
    expected, tokens = _oracle(name, eager, processor, image, query)
    _check(name, amap, expected, tokens, processor)
    assert amap.extra["passes"] == STEPS
    total = amap.parts["attention"].sum() + (
        amap.extra["base_attention"].sum() if name == "llava-next" else 0
    )
    assert total == pytest.approx(1.0, abs=1e-5)


@pytest.mark.slow
def test_batch_of_three_with_early_eos_matches_per_image_oracle(family):
    """Different prompt lengths, image sizes and aspect ratios in one padded batch; rows finish
    at different steps and each row averages only its own passes."""
    name, cls, model, processor, eager = family
    images = _images()
    with torch.no_grad():
        plain = _generate(model, _inputs(processor, images, QUERIES))[:, -STEPS:]
    # Make a token that row 0 generates at step 2..5 the EOS, if no other row produces it earlier.
    eos = next(
        int(t)
        for t in plain[0, 1:-1]
        if all(int(t) not in plain[r, :3].tolist() for r in (1, 2)) and int(t) not in plain[0, :1]
    )
    saved = model.generation_config.eos_token_id, eager.generation_config.eos_token_id
    model.generation_config.eos_token_id = eager.generation_config.eos_token_id = eos
    try:
        maps = cls(model, processor, layer=LAYER, max_new_tokens=STEPS, batch_size=3)(
            images, QUERIES
        )
        for amap, image, query in zip(maps, images, QUERIES):
            expected, tokens = _oracle(name, eager, processor, image, query)
            _check(name, amap, expected, tokens, processor)
    finally:
        model.generation_config.eos_token_id, eager.generation_config.eos_token_id = saved
    assert maps[0].extra["passes"] < STEPS
    assert len({m.extra["passes"] for m in maps}) > 1
    assert len({m.parts["attention"].shape for m in maps}) == 3  # one grid per aspect ratio


@pytest.mark.slow
def test_answers_equal_plain_generate(family):
    name, cls, model, processor, _ = family
    images = _images()
    with torch.no_grad():
        plain = _generate(model, _inputs(processor, images, QUERIES))
    texts = processor.tokenizer.batch_decode(plain[:, -STEPS:], skip_special_tokens=True)
    maps = cls(model, processor, layer=LAYER, max_new_tokens=STEPS, batch_size=3)(images, QUERIES)
    assert [m.answer for m in maps] == [t.strip() for t in texts]


def _hooks(model):
    return {
        name: (list(m._forward_hooks.values()), list(m._forward_pre_hooks.values()))
        for name, m in model.named_modules()
    }


def _snapshot(model, processor):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        {name: m.training for name, m in model.named_modules()},
        (model.config._attn_implementation, model.config.text_config._attn_implementation),
        _hooks(model),
        (
            processor.tokenizer.padding_side,
            processor.image_processor.to_json_string(),
            processor.chat_template,
        ),
        _rope_deltas(model),
    )


def _rope_deltas(model):
    """Qwen2-VL's cached M-RoPE offsets (None for LLaVA-NeXT), which ``generate`` sets."""
    value = getattr(model.model, "rope_deltas", None)
    return None if value is None else value.clone()


def _assert_unchanged(model, processor, before):
    state, modes, impl, hooks, processor_state, rope_deltas = before
    after = model.state_dict()
    assert state.keys() == after.keys() and all(torch.equal(state[k], after[k]) for k in state)
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert (
        model.config._attn_implementation,
        model.config.text_config._attn_implementation,
    ) == impl
    assert impl == ("sdpa", "sdpa")
    assert _hooks(model) == hooks
    assert (
        processor.tokenizer.padding_side,
        processor.image_processor.to_json_string(),
        processor.chat_template,
    ) == processor_state
    after_deltas = _rope_deltas(model)
    assert (rope_deltas is None) == (after_deltas is None)
    assert rope_deltas is None or torch.equal(rope_deltas, after_deltas)


@pytest.mark.slow
def test_model_and_processor_left_unchanged_also_on_error(family, monkeypatch):
    name, cls, model, processor, _ = family
    with torch.no_grad():  # let transformers install its own lazy hooks first
        _generate(model, _inputs(processor, _images()[:1], QUERIES[:1]))
    processor.tokenizer.padding_side = "right"  # the attributor pads left, then must restore this
    model.train()  # a mode the attributor must restore
    try:
        before = _snapshot(model, processor)
        attributor = cls(model, processor, layer=-1, max_new_tokens=3)
        attributor(_images()[:2], QUERIES[:2])
        _assert_unchanged(model, processor, before)

        def failing_generate(**inputs):
            raise RuntimeError("boom")

        monkeypatch.setattr(model, "generate", failing_generate)
        with pytest.raises(RuntimeError, match="boom"):
            attributor(_images()[:1], QUERIES[:1])
        monkeypatch.undo()
        _assert_unchanged(model, processor, before)
    finally:
        model.eval()
        processor.tokenizer.padding_side = "left"


@pytest.mark.parametrize("layer", [4, -5, 1.5, "2", True])
def test_bad_layer_is_a_config_error(family, layer):
    name, cls, model, processor, _ = family
    with pytest.raises(ConfigError, match="layer"):
        cls(model, processor, layer=layer)


def test_default_layer_is_the_papers_relative_depth(family):
    name, cls, model, processor, _ = family
    assert cls(model, processor).layer == 4 * 20 // 32  # 2 of 4 layers


def test_layer_choice_matters(family):
    name, cls, model, processor, _ = family
    image, query = _images()[0], QUERIES[0]
    first = cls(model, processor, layer=0, max_new_tokens=2)([image], [query])[0]
    last = cls(model, processor, layer=3, max_new_tokens=2)([image], [query])[0]
    assert not np.allclose(first.parts["attention"], last.parts["attention"])


def test_wrong_family_is_refused(family):
    name, cls, model, processor, _ = family
    other = LLaVANextAttributor if name != "llava-next" else Qwen2VLAttributor
    with pytest.raises(UnsupportedModelError, match=other.name):
        other(model, processor)


def test_geometry_of_wide_and_tall_images(family):
    """Qwen: the whole image, grids following the aspect ratio. LLaVA-NeXT: the stitched grid of
    the tiles it chose, minus the padded rows/columns, and the box of the image that covers."""
    name, cls, model, processor, _ = family
    images = [Image.new("RGB", (60, 30)), Image.new("RGB", (30, 70))]
    maps = cls(model, processor, layer=LAYER, max_new_tokens=1)(images, ["a", "b"])
    assert [m.image_size for m in maps] == [(60, 30), (30, 70)]
    if name == "llava-next":
        # (60, 30): tiles 1×2 on a 24×48 canvas, nothing padded -> 4×8, the whole image.
        # (30, 70): tiles 3×1 on 72×24; resized to 24×56 at y=8, one 6 px row cut at top and bottom.
        assert [m.parts["attention"].shape for m in maps] == [(4, 8), (10, 4)]
        assert maps[0].region == (0.0, 0.0, 60.0, 30.0)
        assert maps[1].region == pytest.approx((0.0, (6 - 8) * 70 / 56, 30.0, (66 - 8) * 70 / 56))
        assert all(m.extra["base_attention"].shape == (4, 4) for m in maps)
        assert [m.extra["base_region"] for m in maps] == [
            (0.0, 0.0, 60.0, 30.0),
            (0.0, 0.0, 30.0, 70.0),
        ]
    else:
        # 60×30 -> 112×56 px (min_pixels) -> 8×4 patches -> 2×4 merged... as the processor says:
        inputs = _inputs(processor, images, ["a", "b"])
        merge = model.config.vision_config.spatial_merge_size
        expected = [(h // merge, w // merge) for _, h, w in inputs["image_grid_thw"].tolist()]
        assert [m.parts["attention"].shape for m in maps] == expected
        assert expected[0][1] > expected[0][0] and expected[1][0] > expected[1][1]
        assert [m.region for m in maps] == [(0.0, 0.0, 60.0, 30.0), (0.0, 0.0, 30.0, 70.0)]


@pytest.mark.slow
def test_saved_folder_through_registry_and_prompter(tmp_path, family):
    from api_prompt.prompter import Prompter

    name, cls, model, processor, _ = family
    FAMILIES[name][1](save_dir=tmp_path)
    image, query = _images()[0], QUERIES[0]
    loaded = create_attributor(
        cls.name, model=str(tmp_path), layer=LAYER, max_new_tokens=3, device="cpu"
    )
    assert type(loaded) is cls and loaded.describe()["backend"] == cls.name
    shared = cls(model, processor, layer=LAYER, max_new_tokens=3)
    np.testing.assert_allclose(
        loaded([image], [query])[0].parts["attention"],
        shared([image], [query])[0].parts["attention"],
        atol=1e-6,
    )
    result = Prompter(
        backend=cls.name, model=model, processor=processor, layer=LAYER, max_new_tokens=3
    )(image, query)
    assert result.image.size == image.size
    # a loaded model with its processor given as a folder (what ``-B processor=PATH`` passes)
    named = create_attributor(
        cls.name, model=model, processor=str(tmp_path), layer=LAYER, max_new_tokens=3
    )
    np.testing.assert_allclose(
        named([image], [query])[0].parts["attention"],
        shared([image], [query])[0].parts["attention"],
        atol=1e-6,
    )


@pytest.mark.installed
@pytest.mark.slow
def test_command_line_backend(tmp_path, name="qwen2-vl"):
    """``api-prompt --backend qwen2-vl`` on a saved folder: prompted image plus the saved map
    (the other names go through the same enum and registry; their loading is tested above)."""
    import subprocess
    import sys
    from pathlib import Path

    cls, build = FAMILIES[name]
    folder = tmp_path / "model"
    model, processor = build(save_dir=folder)
    image = _images()[0]
    image.save(tmp_path / "photo.png")
    command = [
        str(Path(sys.executable).with_name("api-prompt")),
        str(tmp_path / "photo.png"),
        QUERIES[0],
        "--backend",
        name,
        "--model",
        str(folder),
        "--layer",
        str(LAYER),
        "--device",
        "cpu",
        "--save-map",
        str(tmp_path / "map.npz"),
        "-q",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    saved = np.load(tmp_path / "map.npz")
    expected = cls(model, processor, layer=LAYER)([image], [QUERIES[0]])[0]
    np.testing.assert_allclose(saved["attention"], expected.parts["attention"], atol=1e-6)
    np.testing.assert_allclose(saved["mask"], expected.mask, atol=1e-6)
    with Image.open(tmp_path / "photo_api.png") as prompted:
        assert prompted.size == image.size
