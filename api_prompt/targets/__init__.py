"""Target models: the vision-language models that answer on the (prompted) image.

Every target is called as ``target(images, questions, **generation) -> list[str]``.

- :class:`HFTarget`: any transformers image-text-to-text model with a chat template.
- :class:`OpenAITarget`: any OpenAI-compatible chat-completions server.
- :class:`CLIPZeroShotTarget` (``clip-zeroshot:MODEL``): multiple choice by CLIP similarity.
- any function ``(image, question) -> str``, through :func:`as_target`.

Each kind is a :class:`TargetSpec` in :data:`TARGETS` (its loader and the options it declares);
a new kind is one module plus one :func:`register_target` call, and ``--target KIND:NAME`` takes
it with no other change.

:func:`wrap` puts a :class:`~api_prompt.Prompter` in front of a target:

>>> from api_prompt.targets import wrap                                   # doctest: +SKIP
>>> ask = wrap("openai:gpt-4o-mini", prompter)                            # doctest: +SKIP
>>> ask("car.jpg", "What color is the car?")                              # doctest: +SKIP
'Red.'

``HFTarget`` (torch, transformers) and ``OpenAITarget`` are imported only when first used.
"""

from __future__ import annotations

import importlib

from .base import (
    TARGETS,
    BaseTarget,
    CallableTarget,
    Target,
    TargetError,
    TargetOption,
    TargetSpec,
    as_target,
    create_target,
    get_target,
    normalise_batch,
    register_target,
    split_target_spec,
    target_specs,
)
from .wrap import MODES, PromptedTarget, wrap

_LAZY = {
    "HFTarget": "api_prompt.targets.hf",
    "OpenAITarget": "api_prompt.targets.openai",
    "encode_image": "api_prompt.targets.openai",
    "CLIPZeroShotTarget": "api_prompt.targets.clip_zeroshot",
}

__all__ = [
    "Target",
    "BaseTarget",
    "CallableTarget",
    "TargetError",
    "HFTarget",
    "OpenAITarget",
    "PromptedTarget",
    "as_target",
    "create_target",
    "normalise_batch",
    "wrap",
    "encode_image",
    "MODES",
    "TARGETS",
    "CLIPZeroShotTarget",
    "split_target_spec",
    "TargetSpec",
    "TargetOption",
    "register_target",
    "get_target",
    "target_specs",
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'api_prompt.targets' has no attribute {name!r}")


def __dir__():
    return __all__
