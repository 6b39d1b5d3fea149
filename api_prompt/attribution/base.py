"""What every attribution backend shares: the base class and the helpers backends use.

A backend is one module that subclasses :class:`Attributor`, plus one
:class:`~api_prompt.attribution.registry.BackendSpec` in the registry
(:mod:`api_prompt.attribution.registry`, where :data:`BACKENDS` and :func:`create_attributor`
live; they are re-exported here for older imports). Backends are imported only when first used,
so ``import api_prompt`` stays fast and a CLIP user never pays for importing the LLaVA stack.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from ..attention_map import AttentionMap, Box
from ..errors import ConfigError
from ..images import readable_rgb
from ..maps import combine_map, get_recipe
from ..settings import DEFAULT_ENHANCE, DEFAULT_KERNEL_SIZE
from .registry import BACKENDS, create_attributor

__all__ = [
    "AttentionMap",
    "Attributor",
    "BACKENDS",
    "Box",
    "create_attributor",
    "normalise_inputs",
    "resolve_device",
    "resolve_dtype",
    "check_layer",
    "temporary_hooks",
    "eval_mode",
    "chunks",
]


class Attributor:
    """Scores image patches against a text query. Loaded once, called many times.

    A backend implements :meth:`attribute_parts` on lists of RGB images and queries: the raw
    parts only, no mask. Making the mask is a recipe's job (:mod:`api_prompt.maps`), done once by
    whoever uses the parts: the :class:`~api_prompt.Prompter` with its own recipe and settings,
    or :meth:`attribute` (and ``__call__``, which accepts the looser inputs users have: one image
    or many, paths or arrays, one query for all) with :attr:`default_recipe` and this
    attributor's own :attr:`enhance` and :attr:`kernel_size`, for a caller that uses an
    attributor alone.

    An attributor written before :meth:`attribute_parts` existed, overriding only
    :meth:`attribute`, still works: its maps are taken as they come (a mask it made is kept
    where no recipe applies).
    """

    name: str = ""
    #: the recipe (:data:`api_prompt.maps.RECIPES`) that turns this backend's parts into a mask
    default_recipe: str | None = None
    #: how many blocks (layers) the loaded model has: the range of ``layer``; None for a backend
    #: without layers. Backends with a ``layer`` set it when they load the model.
    n_layers: int | None = None
    layer: int  # the block read, 0-based; declared only, set by the backends that have layers
    #: the settings of the mask :meth:`attribute` makes when the attributor is used alone
    enhance: float = DEFAULT_ENHANCE
    kernel_size: int = DEFAULT_KERNEL_SIZE

    def __call__(self, images, queries) -> list[AttentionMap]:
        images, queries = normalise_inputs(images, queries)
        return self.attribute(images, queries)

    def attribute_parts(
        self, images: list, queries: list[str], *, exact_parts: bool = True
    ) -> list[AttentionMap]:
        """One :class:`AttentionMap` per (image, query) pair, in order, holding the raw parts
        (``mask`` None). Backends implement this.

        ``exact_parts=False``: the caller needs only the mask, so a backend that ``stops_early``
        may return parts exact up to a positive affine map per image (CLIP's early exit); every
        other backend ignores it."""
        if type(self).attribute is Attributor.attribute:
            raise NotImplementedError(f"{type(self).__name__} must implement attribute_parts()")
        return self.attribute(images, queries)

    def attribute(self, images: list, queries: list[str], **options: Any) -> list[AttentionMap]:
        """:meth:`attribute_parts` with each map's mask made by :attr:`default_recipe` at this
        attributor's own :attr:`enhance` and :attr:`kernel_size`."""
        maps = self.attribute_parts(images, queries, **options)
        if self.default_recipe is None:
            return maps
        recipe = get_recipe(self.default_recipe)
        return [
            combine_map(amap, recipe, enhance=self.enhance, kernel_size=self.kernel_size)
            for amap in maps
        ]

    def describe(self) -> dict[str, Any]:
        """Settings and model identity, for run manifests. Backends extend it."""
        return {"backend": self.name}

    def query_overflow(self, query: str) -> tuple[int, int] | None:
        """``(tokens, context_length)`` when the text encoder will read only the start of
        ``query``; None when it fits or the backend reads any length (the default)."""
        return None


def normalise_inputs(images, queries) -> tuple[list, list[str]]:
    """Turn (image | images, query | queries) into two equally long lists of RGB images and str.

    One query is broadcast over many images. Blank queries are refused. The images are only
    read, so an upright RGB PIL image is used as it is (:func:`~api_prompt.images.readable_rgb`).
    """
    if not isinstance(images, (list, tuple)):
        images = [images]
    if isinstance(queries, str):
        queries = [queries] * len(images)
    queries = list(queries)
    if len(queries) != len(images):
        raise ConfigError(f"got {len(images)} images but {len(queries)} queries")
    for query in queries:
        if not isinstance(query, str) or not query.strip():
            raise ConfigError("the query is empty: pass the question the image should answer")
    return [readable_rgb(image) for image in images], queries


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` picks CUDA, then Apple MPS, then CPU; anything else is checked to exist."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available here")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device!r} requested but Apple MPS is not available here")
    return resolved


_DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}


def resolve_dtype(
    dtype: str | torch.dtype | None, default: torch.dtype = torch.float32
) -> torch.dtype:
    """Accept ``"fp32"``/``"fp16"``/``"bf16"`` (and long names) or a torch dtype."""
    if dtype is None:
        return default
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ConfigError(f"unknown dtype {dtype!r}; choose fp32, fp16 or bf16") from None


def check_layer(layer: int, n_layers: int) -> int:
    """Turn a possibly negative layer index into a 0-based one, or raise a clear ConfigError."""
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
        raise ConfigError(f"layer must be an integer, got {layer!r}")
    if not -n_layers <= layer < n_layers:
        raise ConfigError(
            f"layer {layer} is out of range for a model with {n_layers} blocks "
            f"(use 0..{n_layers - 1}, or -{n_layers}..-1 from the end)"
        )
    return int(layer) % n_layers


@contextmanager
def temporary_hooks() -> Iterator[list]:
    """Collect hook handles; every one is removed on exit, also when an exception is raised.

    >>> import torch
    >>> layer = torch.nn.Linear(2, 2)
    >>> with temporary_hooks() as handles:
    ...     handles.append(layer.register_forward_hook(lambda m, i, o: None))
    >>> len(layer._forward_hooks)
    0
    """
    handles: list = []
    try:
        yield handles
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Put a module and all its children in eval mode; restore every child's mode on exit."""
    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes.items():
            m.train(training)


def chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    """Consecutive slices of at most ``size`` items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
