"""The text embedding over the positions that can reach it (api_prompt.attribution.clip.text).

A CLIP text tower is causal and read at the end-of-text token, so running it only up to the
batch's last end-of-text token must give open_clip's own ``encode_text``: exactly in float64,
within float rounding in float32. Towers where that does not hold run the model's own method.
Runs on open_clip 3 (installed) and 4 (CI's source snapshot).
"""

from __future__ import annotations

from pathlib import Path

import open_clip
import pytest
import torch

from api_prompt.attribution.clip import CLIPAttributor
from api_prompt.attribution.clip.text import encode_text, trims

FIXTURE_MODEL = Path(__file__).parent / "fixtures" / "clip_reference" / "model"
QUERIES = ["a dog", "what is written on the sign next to the red car?", "Where is the cat?"]


def positions_seen(model: torch.nn.Module, tokens: torch.Tensor) -> int:
    """How many positions the text transformer ran over in ``encode_text(model, tokens)``."""
    seen = []
    handle = model.transformer.register_forward_pre_hook(
        lambda module, args: seen.append(args[0].shape[1])
    )
    try:
        with torch.no_grad():
            encode_text(model, tokens)
    finally:
        handle.remove()
    return seen[0]


@pytest.fixture(scope="module")
def fixture_model():
    name = f"local-dir:{FIXTURE_MODEL}"
    model, _, preprocess = open_clip.create_model_and_transforms(name)
    return model.eval(), open_clip.get_tokenizer(name), preprocess


def test_fixture_model_embeddings_equal_open_clips(fixture_model):
    model, tokenizer, _ = fixture_model
    tokens = tokenizer(QUERIES)
    assert trims(model)
    longest = int(tokens.argmax(dim=-1).max()) + 1
    assert positions_seen(model, tokens) == longest < tokens.shape[1]
    with torch.no_grad():
        torch.testing.assert_close(encode_text(model, tokens), model.encode_text(tokens))


def test_exact_in_float64_on_vit_b_16():
    """ViT-B-16's real text tower, random weights: in float64 the difference is rounding only."""
    torch.manual_seed(0)
    model, _, _ = open_clip.create_model_and_transforms("ViT-B-16", pretrained=None)
    model = model.eval().double()
    tokens = open_clip.get_tokenizer("ViT-B-16")(QUERIES)
    with torch.no_grad():
        ours, theirs = encode_text(model, tokens), model.encode_text(tokens)
    assert float((ours - theirs).abs().max()) < 1e-12


def test_a_query_that_fills_the_context_runs_the_whole_tower(fixture_model):
    model, tokenizer, _ = fixture_model
    tokens = tokenizer(["word " * 200, "a dog"])  # the tokenizer cuts the first at the context
    assert positions_seen(model, tokens) == tokens.shape[1]
    with torch.no_grad():
        torch.testing.assert_close(encode_text(model, tokens), model.encode_text(tokens))


def test_towers_it_cannot_trim_run_their_own_encode_text(fixture_model):
    model, tokenizer, _ = fixture_model
    tokens = tokenizer(QUERIES)

    class OwnEncodeText(type(model)):
        def encode_text(self, text, normalize=False):
            return super().encode_text(text, normalize) * 2

    subclassed = OwnEncodeText.__new__(OwnEncodeText)
    subclassed.__dict__.update(model.__dict__)
    assert not trims(subclassed)
    with torch.no_grad():
        torch.testing.assert_close(encode_text(subclassed, tokens), model.encode_text(tokens) * 2)

    siglip, _, _ = open_clip.create_model_and_transforms("ViT-B-16-SigLIP", pretrained=None)
    assert not trims(siglip)  # bidirectional text tower: every position reaches the pooled one


def test_the_attributor_encodes_queries_trimmed(fixture_model):
    model, tokenizer, preprocess = fixture_model
    attributor = CLIPAttributor(model, preprocess=preprocess, tokenizer=tokenizer)
    seen = []
    handle = model.transformer.register_forward_pre_hook(
        lambda module, args: seen.append(args[0].shape[1])
    )
    try:
        embeddings = attributor.text_embeddings(QUERIES)
    finally:
        handle.remove()
    assert seen == [int(tokenizer(QUERIES).argmax(dim=-1).max()) + 1]
    with torch.no_grad():
        expected = model.encode_text(tokenizer(QUERIES)).float()
    torch.testing.assert_close(embeddings, expected / expected.norm(dim=-1, keepdim=True))
