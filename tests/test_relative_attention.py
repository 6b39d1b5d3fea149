"""ViCrop's relative attention on the decoder backends: the question's map over the generic
instruction's map, each checked against the eager ``output_attentions`` oracle of test_decoder."""

from __future__ import annotations

import numpy as np
import pytest

from api_prompt.attribution.decoder import LLaVANextAttributor, Qwen2VLAttributor
from api_prompt.attribution.decoder.attributor import GENERIC_QUERY, RELATIVE_EPSILON
from api_prompt.errors import ConfigError
from test_decoder import LAYER, QUERIES, STEPS, _images, _oracle
from tiny_decoders import tiny_llava_next, tiny_qwen_vl

# the builders' default initialisation: attention spread over the image, so the ratio of two maps
# is well conditioned (test_decoder's large weights give generic attention near 1e-9 on some keys,
# where the 1e-5 agreement of each map with the oracle says nothing about their ratio)
FAMILIES = {
    "qwen2-vl": (Qwen2VLAttributor, lambda **kw: tiny_qwen_vl(version="2", **kw)),
    "llava-next": (LLaVANextAttributor, lambda **kw: tiny_llava_next(**kw)),
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    cls, build = FAMILIES[request.param]
    model, processor = build()
    eager, _ = build(attn_implementation="eager")
    return request.param, cls, model, processor, eager


@pytest.mark.slow
def test_relative_map_is_the_ratio_of_two_oracle_maps(family):
    name, cls, model, processor, eager = family
    images = _images()[:2]
    attributor = cls(model, processor, layer=LAYER, max_new_tokens=STEPS, relative=True)
    maps = attributor(images, QUERIES[:2])
    for image, query, amap in zip(images, QUERIES, maps):
        question, _ = _oracle(name, eager, processor, image, query)
        generic, _ = _oracle(name, eager, processor, image, GENERIC_QUERY)
        np.testing.assert_allclose(
            amap.parts["attention_question"], question["attention"], atol=1e-5, rtol=0
        )
        np.testing.assert_allclose(
            amap.parts["attention_generic"], generic["attention"], atol=1e-5, rtol=0
        )
        expected = question["attention"].astype(np.float64) / (
            generic["attention"] + RELATIVE_EPSILON
        )
        np.testing.assert_allclose(amap.parts["attention"], expected, rtol=1e-4)
        assert expected.max() / expected.min() > 1.01  # the ratio is not trivially flat
        assert amap.extra["relative"] is True
        assert 0.0 <= amap.mask.min() and amap.mask.max() <= 1.0
    assert attributor.describe()["relative"] is True


@pytest.mark.slow
def test_generic_maps_are_computed_with_the_questions_and_cached_per_image(family, monkeypatch):
    name, cls, model, processor, _ = family
    image = _images()[0]
    attributor = cls(model, processor, layer=LAYER, max_new_tokens=2, relative=True, batch_size=8)
    calls = []
    original = attributor._attribute_batch
    monkeypatch.setattr(
        attributor,
        "_attribute_batch",
        lambda images, queries: calls.append(list(queries)) or original(images, queries),
    )
    first = attributor([image, image], ["What color?", "Where?"])
    assert calls == [["What color?", "Where?", GENERIC_QUERY]]  # one batched pass, one generic row
    second = attributor([image], ["What color?"])
    assert calls[1] == ["What color?"]  # the generic map came from the cache
    # the same map up to float noise of a different batch (padding changes summation order)
    np.testing.assert_allclose(first[0].parts["attention"], second[0].parts["attention"], rtol=1e-5)


def test_relative_options_are_checked_and_off_by_default(family):
    _, cls, model, processor, _ = family
    plain = cls(model, processor, layer=LAYER, max_new_tokens=2)
    assert "relative" not in plain.describe()  # old manifests still match
    assert "attention_generic" not in plain(_images()[:1], ["q"])[0].parts
    with pytest.raises(ConfigError, match="generic_query"):
        cls(model, processor, layer=LAYER, relative=True, generic_query="  ")
    with pytest.raises(ConfigError, match="relative must be true or false"):
        cls(model, processor, layer=LAYER, relative="yes")
