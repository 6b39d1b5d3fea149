"""lmms-eval model ``api_prompt``: any other lmms-eval model, shown attention-prompted images.

Installed with ``pip install "api-prompt[lmms-eval]"`` and registered through the entry-point group
``lmms_eval.models`` (what lmms-eval 0.7 reads, see :mod:`.lmms_manifest`)::

    lmms-eval --model api_prompt \\
        --model_args inner=llava_hf,pretrained=llava-hf/llava-1.5-7b-hf,api_model=ViT-L-14-336-quickgelu,api_preset=paper \\
        --tasks pope --batch_size 1 --output_path runs/

``model_args`` starting with ``api_`` configure the :class:`~api_prompt.Prompter`
(``api_backend``, ``api_model``, ``api_pretrained``, ``api_preset``, ``api_layer``,
``api_enhance``, ``api_kernel_size``, ``api_resample``, ``api_background``, ``api_geometry``,
``api_device``, ``api_dtype``, ``api_batch_size``); ``api_query`` says what the auxiliary model
attributes: ``first_line`` (default: the request text up to its first line break, i.e. the
question without lmms-eval's answer-format instructions) or ``context`` (the whole text).
``inner`` names the wrapped model (an lmms-eval model name, or ``module:Class`` for a model class
of your own); every other argument goes to it unchanged.

For each request the wrapper calls the task's ``doc_to_visual``, replaces every PIL image with
its attention-prompted version (other visuals, such as video paths, pass unchanged), and hands
the request to the inner model with a ``doc_to_visual`` that returns the prompted images.
Only models that lmms-eval runs in its simple (``doc_to_visual``) mode can be wrapped.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

from lmms_eval.api.model import lmms
from PIL import Image

from ..errors import ConfigError

__all__ = ["APIPromptModel"]

_PROMPTER_ARGS = {
    "api_backend": ("backend", str),
    "api_model": ("model", str),
    "api_pretrained": ("pretrained", str),
    "api_preset": ("preset", str),
    "api_layer": ("layer", int),
    "api_enhance": ("enhance", float),
    "api_kernel_size": ("kernel_size", int),
    "api_resample": ("resample", str),
    "api_background": ("background", int),
    "api_geometry": ("geometry", str),
    "api_device": ("device", str),
    "api_dtype": ("dtype", str),
}
_DOC_TO_VISUAL = 2  # position of doc_to_visual in the simple-mode request arguments
_QUERIES = ("first_line", "context")


class APIPromptModel(lmms):
    """An lmms-eval model that prompts each request's images, then asks ``inner``."""

    is_simple = True

    def __init__(
        self,
        inner: str | None = None,
        api_query: str = "first_line",
        api_batch_size: int = 16,
        **arguments: Any,
    ) -> None:
        super().__init__()
        if not inner:
            raise ConfigError(
                "api_prompt needs the model to wrap: --model_args inner=<lmms-eval model>,..."
            )
        if api_query not in _QUERIES:
            raise ConfigError(f"api_query must be one of {', '.join(_QUERIES)}, got {api_query!r}")
        prompter_options: dict[str, Any] = {}
        for key in list(arguments):
            if key in _PROMPTER_ARGS:
                name, kind = _PROMPTER_ARGS[key]
                value = arguments.pop(key)
                prompter_options[name] = None if value is None else kind(value)
        unknown = [key for key in arguments if key.startswith("api_")]
        if unknown:
            raise ConfigError(
                f"unknown api_prompt option {unknown[0]!r}; known: "
                + ", ".join(sorted([*_PROMPTER_ARGS, "api_query", "api_batch_size"]))
            )
        from ..prompter import Prompter

        backend = prompter_options.pop("backend", "clip")
        self.prompter = Prompter(backend, **prompter_options, batch_size=int(api_batch_size))
        self.query_mode = api_query
        self.batch_size = int(api_batch_size)
        self.inner = _inner_class(str(inner))(**arguments)
        self.task_dict = self.inner.task_dict  # lmms-eval fills it in place; both see the same

    # lmms-eval reads these from the model it was given
    @property
    def rank(self):
        return self.inner.rank

    @property
    def world_size(self):
        return self.inner.world_size

    def set_cache_hook(self, cache_hook) -> None:
        self.inner.set_cache_hook(cache_hook)

    def generate_until(self, requests):
        return self.inner.generate_until(self.prompted(requests))

    def loglikelihood(self, requests):
        return self.inner.loglikelihood(self.prompted(requests))

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("api_prompt does not prompt multi-round requests yet")

    def prompted(self, requests: list) -> list:
        """The same requests, with ``doc_to_visual`` returning attention-prompted images."""
        if self.inner.task_dict is not self.task_dict:
            self.inner.task_dict = self.task_dict
        visuals, jobs = [], []
        for position, request in enumerate(requests):
            context, _, doc_to_visual, doc_id, task, split = request.args[:6]
            items = list(doc_to_visual(self.task_dict[task][split][doc_id]) or [])
            visuals.append(items)
            query = self._query(context)
            jobs += [
                (position, slot, query)
                for slot, item in enumerate(items)
                if isinstance(item, Image.Image)
            ]
        for start in range(0, len(jobs), self.batch_size):
            chunk = jobs[start : start + self.batch_size]
            results = self.prompter.batch(
                [visuals[p][s].convert("RGB") for p, s, _ in chunk], [q for _, _, q in chunk]
            )
            for (position, slot, _), result in zip(chunk, results):
                visuals[position][slot] = result.image
        out = []
        for request, items in zip(requests, visuals):
            arguments = list(request.args)
            arguments[_DOC_TO_VISUAL] = _Fixed(items)
            out.append(dataclasses.replace(request, arguments=tuple(arguments)))
        return out

    def _query(self, context: Any) -> str:
        text = str(context or "").strip()
        if self.query_mode == "first_line":
            text = next((line.strip() for line in text.splitlines() if line.strip()), text)
        return text or "the image"


class _Fixed:
    """A ``doc_to_visual`` that returns the already prompted visuals of one request."""

    def __init__(self, items: list) -> None:
        self.items = items

    def __call__(self, doc: Any) -> list:
        return list(self.items)


def _inner_class(name: str):
    """The lmms-eval model class ``name`` (a registered name, or ``module:Class``)."""
    if ":" in name:
        module_name, _, class_name = name.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"cannot import the inner model {name!r}: {exc}") from exc
    else:
        from lmms_eval.models import get_model

        if name == "api_prompt":
            raise ConfigError("api_prompt cannot wrap itself: name another model with inner=")
        cls = get_model(name, force_simple=True)
    if not getattr(cls, "is_simple", True):
        raise ConfigError(f"{name} is a chat-mode model; api_prompt wraps simple-mode models only")
    return cls
