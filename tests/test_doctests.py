"""The runnable examples in the docstrings of the model-free modules stay true."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "api_prompt.maps",
    "api_prompt.settings",
    "api_prompt.presets",
    "api_prompt.figures",
    "api_prompt.protocols",
    "api_prompt.attribution.base",
    "api_prompt.attribution.clip",
    "api_prompt.attribution.clip.decomposition",
    "api_prompt.attribution.clip.class_token",
    "api_prompt.attribution.clip.registry",
    "api_prompt.attribution.registry",
    "api_prompt.attention_map",
    "api_prompt.attribution.llava",
    "api_prompt.images",
    "api_prompt.overlay",
    "api_prompt.prompter",
    "api_prompt.batch.sources",
    "api_prompt.batch.store",
    "api_prompt.batch.runner",
    "api_prompt.targets.base",
    "api_prompt.targets.wrap",
    "api_prompt.targets.openai",
    "api_prompt.targets.http",
    "api_prompt.styles",
    "api_prompt.styles.base",
    "api_prompt.styles.overlay",
    "api_prompt.styles.crop",
    "api_prompt.styles.blur",
    "api_prompt.styles.box",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
