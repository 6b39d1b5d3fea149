"""api-prompt: Attention Prompting on Image for vision-language models.

>>> from api_prompt import prompt                                        # doctest: +SKIP
>>> prompted = prompt("car.jpg", "What color is the car?")              # doctest: +SKIP
>>> prompted.save("car_api.png")                                        # doctest: +SKIP

The public names are imported lazily, so ``import api_prompt`` does not import torch models,
open_clip or transformers until they are used. Each extension point has its registration
function here (a backend, a recipe, a decomposition, a prompt style, a target kind, a benchmark,
an output format) beside the record it registers; ``docs/extending.md`` shows one of each.

>>> import api_prompt
>>> sorted(name for name in api_prompt.__all__ if name.startswith("register_"))  # doctest: +NORMALIZE_WHITESPACE
['register_backend', 'register_benchmark', 'register_decomposition', 'register_output_format',
 'register_recipe', 'register_style', 'register_target']
>>> from api_prompt import score
>>> score("pope", "Yes, there is.", {"answer": "yes"})
1.0
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

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
    "render_heatmap": "api_prompt.figures",
    "load_image": "api_prompt.images",
    "wrap": "api_prompt.targets",
    "HFTarget": "api_prompt.targets",
    "OpenAITarget": "api_prompt.targets",
    "as_target": "api_prompt.targets",
    "APIPromptError": "api_prompt.errors",
    "evaluate": "api_prompt.evaluation.runner",
    "SigLIPAttributor": "api_prompt.attribution.clip",
    # the protocols a user's own target or prompter satisfies
    "Target": "api_prompt.targets",
    "PrompterLike": "api_prompt.protocols",
    # scoring one answer the way a benchmark's official code does
    "score": "api_prompt.evaluation",
    # the extension points: the record each registry holds, and its registration function
    "BackendSpec": "api_prompt.attribution.registry",
    "register_backend": "api_prompt.attribution.registry",
    "Recipe": "api_prompt.maps",
    "register_recipe": "api_prompt.maps",
    "Decomposition": "api_prompt.attribution.clip",
    "register_decomposition": "api_prompt.attribution.clip",
    "Style": "api_prompt.styles",
    "register_style": "api_prompt.styles",
    "TargetSpec": "api_prompt.targets",
    "register_target": "api_prompt.targets",
    "Benchmark": "api_prompt.evaluation",
    "register_benchmark": "api_prompt.evaluation",
    "OutputFormat": "api_prompt.batch",
    "register_output_format": "api_prompt.batch",
}

if TYPE_CHECKING:  # the same names for type checkers, which do not run __getattr__
    from .attention_map import AttentionMap
    from .attribution.base import create_attributor
    from .attribution.clip import (
        CLIPAttributor,
        Decomposition,
        SigLIPAttributor,
        register_decomposition,
    )
    from .attribution.decoder import LLaVANextAttributor, Qwen2VLAttributor
    from .attribution.llava import LLaVAAttributor
    from .attribution.registry import BackendSpec, register_backend
    from .batch import OutputFormat, register_output_format
    from .errors import APIPromptError
    from .evaluation import Benchmark, register_benchmark, score
    from .evaluation.runner import evaluate
    from .figures import render_heatmap
    from .images import load_image
    from .maps import Recipe, register_recipe
    from .overlay import Overlay
    from .presets import PRESETS
    from .prompter import Prompter, PromptResult, prompt
    from .protocols import PrompterLike
    from .styles import Style, register_style
    from .targets import (
        HFTarget,
        OpenAITarget,
        Target,
        TargetSpec,
        as_target,
        register_target,
    )
    from .targets.wrap import wrap

# Written out (not computed from _PUBLIC) so that linters and type checkers read it.
__all__ = [
    "APIPromptError",
    "AttentionMap",
    "BackendSpec",
    "Benchmark",
    "CLIPAttributor",
    "Decomposition",
    "HFTarget",
    "LLaVAAttributor",
    "LLaVANextAttributor",
    "OpenAITarget",
    "OutputFormat",
    "Overlay",
    "PRESETS",
    "PromptResult",
    "Prompter",
    "PrompterLike",
    "Qwen2VLAttributor",
    "Recipe",
    "SigLIPAttributor",
    "Style",
    "Target",
    "TargetSpec",
    "as_target",
    "create_attributor",
    "evaluate",
    "load_image",
    "prompt",
    "register_backend",
    "register_benchmark",
    "register_decomposition",
    "register_output_format",
    "register_recipe",
    "register_style",
    "register_target",
    "render_heatmap",
    "score",
    "wrap",
    "__version__",
]


def __getattr__(name: str) -> object:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'api_prompt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
