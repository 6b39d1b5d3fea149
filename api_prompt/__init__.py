"""api-prompt: Attention Prompting on Image for vision-language models.

>>> from api_prompt import prompt                                        # doctest: +SKIP
>>> prompted = prompt("car.jpg", "What color is the car?")              # doctest: +SKIP
>>> prompted.save("car_api.png")                                        # doctest: +SKIP

The public names are imported lazily, so ``import api_prompt`` does not import torch models,
open_clip or transformers until they are used.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("api-prompt")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

_PUBLIC = {
    "prompt": "api_prompt.prompter",
    "Prompter": "api_prompt.prompter",
    "PromptResult": "api_prompt.prompter",
    "PRESETS": "api_prompt.presets",
    "CLIPAttributor": "api_prompt.attribution.clip",
    "LLaVAAttributor": "api_prompt.attribution.llava",
    "LLaVANextAttributor": "api_prompt.attribution.decoder",
    "Qwen2VLAttributor": "api_prompt.attribution.decoder",
    "AttentionMap": "api_prompt.attention_map",
    "create_attributor": "api_prompt.attribution.base",
    "Overlay": "api_prompt.overlay",
    "render_heatmap": "api_prompt.overlay",
    "load_image": "api_prompt.images",
    "wrap": "api_prompt.targets",
    "HFTarget": "api_prompt.targets",
    "OpenAITarget": "api_prompt.targets",
    "as_target": "api_prompt.targets",
    "APIPromptError": "api_prompt.errors",
    "evaluate": "api_prompt.evaluation.runner",
}

__all__ = sorted(_PUBLIC) + ["__version__"]


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'api_prompt' has no attribute {name!r}")


def __dir__():
    return __all__
