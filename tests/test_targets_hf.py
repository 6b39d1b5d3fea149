"""HFTarget on tiny random models of two families (LLaVA and Qwen2-VL), built offline.

The answers are gibberish, but deterministic; generation is limited to printable ASCII tokens
(``suppress_tokens``, which also checks that generation options reach ``generate``) so that
different inputs visibly give different answers.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from PIL import Image

from api_prompt.errors import ConfigError, ModelLoadError
from api_prompt.targets import HFTarget, as_target, create_target

tiny_hf = pytest.importorskip("tiny_hf")
from tiny_vlms import tiny_qwen2_vl  # noqa: E402

BUILDERS = {"llava": tiny_hf.tiny_llava, "qwen2_vl": tiny_qwen2_vl}
QUESTIONS = [
    "What?",
    "What color is the car, really?",
    "Is there a dog on the left?",
    "Which object is red?",
]


def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    shapes = [(40, 50), (70, 50), (33, 90), (64, 64)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in shapes]


def printable_only(tokenizer) -> list[int]:
    """Token ids whose text is not printable ASCII (to suppress them)."""
    bad = []
    for token_id in range(len(tokenizer)):
        text = tokenizer.decode([token_id])
        if not text or not all(32 <= ord(char) < 127 for char in text):
            bad.append(token_id)
    return bad


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def family(request):
    model, processor = BUILDERS[request.param]()
    return request.param, model, processor, printable_only(processor.tokenizer)


@pytest.mark.slow
def test_batched_answers_equal_one_by_one(family):
    name, model, processor, bad = family
    target = HFTarget(model, processor, batch_size=4, max_new_tokens=6, suppress_tokens=bad)
    pictures = images()
    batched = target(pictures, QUESTIONS)
    single = [target.ask(picture, question) for picture, question in zip(pictures, QUESTIONS)]
    assert batched == single
    assert all(isinstance(answer, str) and answer == answer.strip() for answer in batched)
    assert len(set(batched)) > 1, "answers should depend on the input"
    assert target(pictures, QUESTIONS) == batched  # greedy: deterministic
    # batches of 3 + 1: padding differs from the batch of 4, answers do not
    assert (
        HFTarget(model, processor, batch_size=3, max_new_tokens=6, suppress_tokens=bad)(
            pictures, QUESTIONS
        )
        == batched
    )


def test_only_new_tokens_and_generation_options(family):
    name, model, processor, bad = family
    target = HFTarget(model, processor, max_new_tokens=3)
    calls = []
    original = model.generate

    def spy(**kwargs):
        calls.append(kwargs)
        output = original(**kwargs)
        calls[-1]["output"] = output
        return output

    model.generate = spy
    try:
        answer = target.ask(images()[0], "What?", suppress_tokens=bad, max_new_tokens=4)
    finally:
        del model.generate
    (call,) = calls
    assert (
        call["max_new_tokens"] == 4
        and call["do_sample"] is False
        and call["suppress_tokens"] == bad
    )
    new_tokens = call["output"][0, call["input_ids"].shape[1] :]
    assert answer == processor.batch_decode(new_tokens[None], skip_special_tokens=True)[0].strip()
    assert "What?" not in answer and len(new_tokens) <= 4
    assert call["attention_mask"][0, -1] == 1  # left padding: the prompt ends at the right edge


@pytest.mark.slow
def test_several_images_per_question(family):
    name, model, processor, bad = family
    target = HFTarget(model, processor, max_new_tokens=5, suppress_tokens=bad)
    pictures = images()
    two = target([[pictures[0], pictures[1]], pictures[2]], QUESTIONS[:2])
    assert len(two) == 2
    assert two[0] == target.ask([pictures[0], pictures[1]], QUESTIONS[0])


def test_model_is_left_as_it_was(family):
    name, model, processor, bad = family
    model.train()
    try:
        HFTarget(model, processor, max_new_tokens=2).ask(images()[0], "What?")
        assert model.training
    finally:
        model.eval()


def test_tokenizer_without_pad_token_pads_with_eos_and_is_left_unchanged(family):
    name, model, processor, bad = family
    tokenizer = processor.tokenizer
    pictures = images()
    expected = HFTarget(model, processor, max_new_tokens=4, suppress_tokens=bad)(
        pictures, QUESTIONS
    )
    saved = tokenizer.pad_token
    tokenizer.pad_token = None
    try:
        answers = HFTarget(model, processor, max_new_tokens=4, suppress_tokens=bad)(
            pictures, QUESTIONS
        )
        assert tokenizer.pad_token is None
    finally:
        tokenizer.pad_token = saved
    assert answers == expected


@pytest.mark.slow
def test_loads_from_a_saved_folder(family, tmp_path):
    name, model, processor, bad = family
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    from_objects = HFTarget(model, processor, max_new_tokens=5, suppress_tokens=bad)(
        images(), QUESTIONS
    )
    loaded = HFTarget(str(tmp_path), device="cpu", max_new_tokens=5, suppress_tokens=bad)
    assert type(loaded.model) is type(model) and loaded.model is not model
    assert loaded.model.dtype == torch.float32 and loaded.model.device.type == "cpu"
    assert loaded(images(), QUESTIONS) == from_objects
    spec = create_target(f"hf:{tmp_path}", device="cpu", max_new_tokens=5, suppress_tokens=bad)
    assert spec(images()[:1], QUESTIONS[:1]) == from_objects[:1]


def test_missing_weights_fail_fast_with_advice(tmp_path, monkeypatch):
    start = time.monotonic()
    with pytest.raises(ModelLoadError, match="does not exist"):
        HFTarget(str(tmp_path / "nowhere"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(ModelLoadError, match="Supply the weights"):  # one quick Hub request at most
        HFTarget("api-prompt-tests/no-such-model", local_files_only=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="Supply the weights"):
        HFTarget("api-prompt-tests/no-such-model")
    with pytest.raises(ModelLoadError, match="save_pretrained"):
        as_target("hf:api-prompt-tests/no-such-model", local_files_only=True)
    assert time.monotonic() - start < 20


def test_bad_arguments(family):
    name, model, processor, bad = family
    with pytest.raises(ConfigError, match="processor"):
        HFTarget(model)
    with pytest.raises(ConfigError, match="dtype"):
        HFTarget(model, processor, dtype="fp16")
    with pytest.raises(ConfigError, match="question is empty"):
        HFTarget(model, processor)(images()[:1], [" "])
    with pytest.raises(ConfigError, match="2 images but 1 questions"):
        HFTarget(model, processor)(images()[:2], ["a"])
