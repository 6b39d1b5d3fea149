"""LLaVA backend: the captured map against an eager ``output_attentions`` oracle, generation
unchanged, model left as it was, geometry and errors. Tiny random models, CPU, fp32."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from PIL import Image

from api_prompt.attribution.llava import PAD_COLOUR, PROMPT_TEMPLATE, LLaVAAttributor, pad_to_square
from api_prompt.errors import ConfigError, ModelLoadError
from tiny_hf import tiny_llava

LAYER = 2
STEPS = 6
INIT = 0.5  # large random weights, so that greedy answers vary from row to row


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for w, h in ((30, 20), (18, 40), (24, 24))
    ]


QUERIES = ["What color is the car?", "Where is the dog in this picture, left or right?", "Count"]


@pytest.fixture(scope="module")
def tiny():
    """(sdpa model, processor, eager copy with the same weights)."""
    model, processor = tiny_llava(seed=0, initializer_range=INIT)
    eager, _ = tiny_llava(seed=0, initializer_range=INIT, attn_implementation="eager")
    return model, processor, eager


def _inputs(processor, images, queries):
    squares = [pad_to_square(image)[0] for image in images]
    prompts = [PROMPT_TEMPLATE.format(question=q) for q in queries]
    processor.tokenizer.padding_side = "left"
    return processor(images=squares, text=prompts, return_tensors="pt", padding=True)


def _generate(model, inputs, **options):
    return model.generate(
        **inputs,
        max_new_tokens=STEPS,
        do_sample=False,
        num_beams=1,
        pad_token_id=model.generation_config.pad_token_id,
        **options,
    )


def _oracle(eager, processor, image, query, layer=LAYER):
    """docs/ALGORITHM.md §2 from eager ``output_attentions``, batch 1 like the reference."""
    inputs = _inputs(processor, [image], [query])
    with torch.no_grad():
        out = _generate(eager, inputs, output_attentions=True, return_dict_in_generate=True)
    positions = (inputs["input_ids"][0] == eager.config.image_token_id).nonzero()[:, 0]
    rows = []
    for step in out.attentions:  # one per generated token: prefill, then each fed-back token
        probs = step[layer][0, :, -1, positions]  # (heads, image keys)
        rows.append((probs / probs.sum(-1, keepdim=True)).mean(0))
    grid = int(len(positions) ** 0.5)
    tokens = out.sequences[0, inputs["input_ids"].shape[1] :]
    return torch.stack(rows).mean(0).reshape(grid, grid).numpy(), tokens


@pytest.mark.slow
def test_batch_of_one_matches_eager_oracle(tiny):
    model, processor, eager = tiny
    image, query = _images()[0], QUERIES[0]
    [amap] = LLaVAAttributor(model, processor, layer=LAYER, max_new_tokens=STEPS)([image], [query])
    expected, tokens = _oracle(eager, processor, image, query)
    assert amap.parts["attention"].shape == (4, 4)
    np.testing.assert_allclose(amap.parts["attention"], expected, atol=1e-5, rtol=0)
    assert amap.answer == processor.tokenizer.decode(tokens, skip_special_tokens=True).strip()
    assert amap.extra["passes"] == len(tokens) == STEPS


@pytest.mark.slow
def test_batch_with_early_eos_matches_per_image_oracle(tiny):
    """Rows of a batch finish at different steps; each row averages only its own passes."""
    model, processor, eager = tiny
    images = _images()
    with torch.no_grad():
        plain = _generate(model, _inputs(processor, images, QUERIES))[:, -STEPS:]
    # Make the token that row 0 generates third into EOS, if no other row produces it earlier.
    eos = next(
        int(t)
        for t in plain[0, 1:]
        if all(int(t) not in plain[r, :3].tolist() for r in (1, 2)) and int(t) not in plain[0, :1]
    )
    saved = model.generation_config.eos_token_id, eager.generation_config.eos_token_id
    model.generation_config.eos_token_id = eager.generation_config.eos_token_id = eos
    try:
        attributor = LLaVAAttributor(
            model, processor, layer=LAYER, max_new_tokens=STEPS, batch_size=3
        )
        maps = attributor(images, QUERIES)
        for amap, image, query in zip(maps, images, QUERIES):
            expected, tokens = _oracle(eager, processor, image, query)
            np.testing.assert_allclose(amap.parts["attention"], expected, atol=1e-5, rtol=0)
            assert amap.extra["passes"] == len(tokens)
            answer = processor.tokenizer.decode(tokens, skip_special_tokens=True).strip()
            assert amap.answer == answer
    finally:
        model.generation_config.eos_token_id, eager.generation_config.eos_token_id = saved
    assert maps[0].extra["passes"] < STEPS
    assert len({m.extra["passes"] for m in maps}) > 1


@pytest.mark.slow
def test_answers_equal_plain_generate(tiny):
    model, processor, _ = tiny
    images = _images()
    with torch.no_grad():
        plain = _generate(model, _inputs(processor, images, QUERIES))
    texts = processor.tokenizer.batch_decode(plain[:, -STEPS:], skip_special_tokens=True)
    maps = LLaVAAttributor(model, processor, layer=LAYER, max_new_tokens=STEPS)(images, QUERIES)
    assert [m.answer for m in maps] == [t.strip() for t in texts]


def _snapshot(model):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        {name: m.training for name, m in model.named_modules()},
        model.config._attn_implementation,
        model.config.text_config._attn_implementation,
        _hooks(model),
    )


def _hooks(model):
    """Every registered forward hook (transformers installs some of its own on first use)."""
    return {
        name: (list(m._forward_hooks.values()), list(m._forward_pre_hooks.values()))
        for name, m in model.named_modules()
    }


def _assert_unchanged(model, before):
    state, modes, impl, text_impl, hooks = before
    after = model.state_dict()
    assert state.keys() == after.keys()
    assert all(torch.equal(state[k], after[k]) for k in state)
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert (model.config._attn_implementation, model.config.text_config._attn_implementation) == (
        impl,
        text_impl,
    )
    assert _hooks(model) == hooks


@pytest.mark.slow
def test_model_left_unchanged_also_on_error(tiny, monkeypatch):
    model, processor, _ = tiny
    with torch.no_grad():  # let transformers install its own lazy hooks first
        _generate(model, _inputs(processor, _images()[:1], QUERIES[:1]))
    model.train()  # a mode the attributor must restore
    try:
        before = _snapshot(model)
        attributor = LLaVAAttributor(model, processor, layer=-1, max_new_tokens=3)
        attributor(_images()[:2], QUERIES[:2])
        _assert_unchanged(model, before)

        real_generate = model.generate

        def failing_generate(**inputs):
            model(**{k: inputs[k] for k in ("input_ids", "attention_mask", "pixel_values")})
            raise RuntimeError("boom")

        monkeypatch.setattr(model, "generate", failing_generate)
        with pytest.raises(RuntimeError, match="boom"):
            attributor(_images()[:1], QUERIES[:1])
        monkeypatch.setattr(model, "generate", real_generate)
        _assert_unchanged(model, before)
    finally:
        model.eval()


def test_mask_range_and_attention_is_a_distribution(tiny):
    model, processor, _ = tiny
    maps = LLaVAAttributor(model, processor, layer=LAYER, max_new_tokens=3)(_images(), QUERIES)
    for amap in maps:
        assert amap.mask.dtype == np.float32 and amap.mask.shape == (4, 4)
        assert 0.0 <= amap.mask.min() and amap.mask.max() <= 1.0
        assert amap.parts["attention"].dtype == np.float32
        assert amap.parts["attention"].sum() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.slow
def test_layer_choice_matters(tiny):
    model, processor, _ = tiny
    image, query = _images()[0], QUERIES[0]
    first = LLaVAAttributor(model, processor, layer=0, max_new_tokens=2)([image], [query])[0]
    last = LLaVAAttributor(model, processor, layer=3, max_new_tokens=2)([image], [query])[0]
    assert not np.allclose(first.parts["attention"], last.parts["attention"])


@pytest.mark.parametrize("layer", [4, -5, 1.5, "20"])
def test_bad_layer_is_a_config_error(tiny, layer):
    model, processor, _ = tiny
    with pytest.raises(ConfigError):
        LLaVAAttributor(model, processor, layer=layer)


def test_bad_options_are_config_errors(tiny):
    model, processor, _ = tiny
    for options in (
        {"kernel_size": 2},
        {"max_new_tokens": 0},
        {"batch_size": 0},
        {"pretrained": "openai"},
    ):
        with pytest.raises(ConfigError):
            LLaVAAttributor(model, processor, **options)


@pytest.mark.parametrize(
    "size, region",
    [
        ((40, 20), (0.0, -10.0, 40.0, 30.0)),
        ((21, 50), (-14.0, 0.0, 36.0, 50.0)),
        ((7, 7), (0.0, 0.0, 7.0, 7.0)),
    ],
)
def test_padding_geometry(size, region):
    image = Image.new("RGB", size, (255, 255, 255))
    square, box = pad_to_square(image)
    side = max(size)
    assert square.size == (side, side) and box == region
    pixels = np.asarray(square)
    left, top = int(-box[0]), int(-box[1])
    assert (pixels[top : top + size[1], left : left + size[0]] == 255).all()
    padding = np.ones((side, side), bool)
    padding[top : top + size[1], left : left + size[0]] = False
    assert (pixels[padding] == PAD_COLOUR).all()


def test_region_reported_for_wide_and_tall(tiny):
    model, processor, _ = tiny
    images = [Image.new("RGB", (40, 20)), Image.new("RGB", (21, 50))]
    maps = LLaVAAttributor(model, processor, layer=LAYER, max_new_tokens=1)(images, ["a", "b"])
    assert [m.region for m in maps] == [(0.0, -10.0, 40.0, 30.0), (-14.0, 0.0, 36.0, 50.0)]
    assert [m.image_size for m in maps] == [(40, 20), (21, 50)]


@pytest.mark.slow
def test_loads_from_a_local_folder_and_through_prompter(tmp_path, tiny):
    from api_prompt.prompter import Prompter

    model, processor, _ = tiny
    tiny_llava(seed=0, initializer_range=INIT, save_dir=tmp_path)
    image, query = _images()[0], QUERIES[0]
    loaded = LLaVAAttributor(str(tmp_path), layer=LAYER, max_new_tokens=3, device="cpu")
    shared = LLaVAAttributor(model, processor, layer=LAYER, max_new_tokens=3)
    np.testing.assert_allclose(
        loaded([image], [query])[0].parts["attention"],
        shared([image], [query])[0].parts["attention"],
        atol=1e-6,
    )
    assert loaded.describe()["dtype"] == "float32"

    prompter = Prompter(
        backend="llava", model=model, processor=processor, layer=LAYER, max_new_tokens=3
    )
    result = prompter(image, query)
    assert result.image.size == image.size


def test_missing_weights_fail_fast_with_advice(tmp_path, monkeypatch):
    start = time.perf_counter()
    with pytest.raises(ModelLoadError, match="local folder"):
        LLaVAAttributor(str(tmp_path / "nowhere"), device="cpu")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE=1"):
        LLaVAAttributor("nobody/no-such-llava", device="cpu")
    assert time.perf_counter() - start < 10


@pytest.mark.slow
def test_command_line_backend_llava(tmp_path, tiny):
    """``api-prompt --backend llava`` on a saved folder: prompted image plus attention and mask."""
    import subprocess
    import sys
    from pathlib import Path

    model, processor, _ = tiny
    folder = tmp_path / "llava"
    tiny_llava(seed=0, initializer_range=INIT, save_dir=folder)
    image = _images()[0]
    image.save(tmp_path / "photo.png")
    command = [
        str(Path(sys.executable).with_name("api-prompt")),
        str(tmp_path / "photo.png"),
        QUERIES[0],
        "--backend",
        "llava",
        "--model",
        str(folder),
        "--layer",
        str(LAYER),
        "--device",
        "cpu",
        "--preset",
        "llava-wild",
        "--save-map",
        str(tmp_path / "map.npz"),
        "-q",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    saved = np.load(tmp_path / "map.npz")
    expected = LLaVAAttributor(model, processor, layer=LAYER, kernel_size=7)([image], [QUERIES[0]])[
        0
    ]
    np.testing.assert_allclose(saved["attention"], expected.parts["attention"], atol=1e-6)
    np.testing.assert_allclose(saved["mask"], expected.mask, atol=1e-6)
    with Image.open(tmp_path / "photo_api.png") as prompted:
        assert prompted.size == image.size

    command[command.index("--layer") + 1] = "20"  # LLaVA-1.5's layer does not exist in 4 layers
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 2 and "out of range" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
def test_default_layer_follows_the_relative_rule_so_a_small_folder_loads(tmp_path, tiny):
    """No layer given: n_layers * 20 // 32 (2 of 4), so Prompter(backend="llava", model=folder)
    works on a small model (a fixed 20 was out of range for it)."""
    from api_prompt.prompter import Prompter

    model, processor, _ = tiny
    tiny_llava(seed=0, initializer_range=INIT, save_dir=tmp_path)
    prompter = Prompter(backend="llava", model=str(tmp_path), device="cpu", max_new_tokens=2)
    assert prompter.attributor.layer == 4 * 20 // 32 == 2
    image, query = _images()[0], QUERIES[0]
    expected = LLaVAAttributor(model, processor, layer=2, max_new_tokens=2)([image], [query])[0]
    np.testing.assert_allclose(
        prompter.attribute(image, query)[0].parts["attention"],
        expected.parts["attention"],
        atol=1e-6,
    )


def test_chat_template_prompt_keeps_the_llava_v1_system_sentence(tiny):
    """A processor with a chat template writes the prompt with it; a tokenizer that spells the
    system sentence gets it as a system turn, which here is exactly the llava_v1 prompt."""
    model, processor, _ = tiny
    attributor = LLaVAAttributor(model, processor, layer=LAYER)
    assert attributor._prompts(["What is it?"]) == [PROMPT_TEMPLATE.format(question="What is it?")]
    processor.chat_template = processor.chat_template.replace("USER: ", "HUMAN: ")
    try:
        [prompt] = attributor._prompts(["What is it?"])
    finally:
        processor.chat_template = processor.chat_template.replace("HUMAN: ", "USER: ")
    assert "HUMAN: <image>\nWhat is it?" in prompt and prompt.startswith("A chat between")
