"""The whole method in one object: an attributor plus the overlay, with published presets.

>>> from api_prompt import Prompter                                              # doctest: +SKIP
>>> prompter = Prompter(model="local-dir:assets/synthshapes-clip", device="cpu")  # doctest: +SKIP
>>> result = prompter("scene.png", "a red circle")                               # doctest: +SKIP
>>> result.image.save("scene_api.png"); result.map.mask.shape                    # doctest: +SKIP
(8, 8)
"""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

from PIL import Image

from .attribution.base import AttentionMap, Attributor, create_attributor, normalise_inputs
from .errors import ConfigError
from .maps import check_kernel_size
from .overlay import Overlay
from .presets import resolve_settings


def check_settings(
    preset: str | None = None,
    *,
    enhance: float | None = None,
    kernel_size: int | None = None,
    resample: str | None = None,
    background: int | None = None,
    geometry: str = "stretch",
) -> tuple[dict[str, Any], Overlay]:
    """Resolve the preset and validate every map/overlay setting, without loading a model.

    Returns the resolved settings (``enhance``, ``kernel_size``, ``resample``, ``background``)
    and the :class:`Overlay` they describe. Raises :class:`~api_prompt.errors.ConfigError` for
    an unknown preset, an even or non-positive kernel size, a non-finite enhance coefficient,
    an unknown resample filter or geometry, or a background outside 0..255.

    >>> settings, overlay = check_settings("mmvet", background=200)
    >>> settings["enhance"], overlay.background
    (1.0, 200)
    """
    settings = resolve_settings(
        preset, enhance=enhance, kernel_size=kernel_size, resample=resample, background=background
    )
    settings["kernel_size"] = check_kernel_size(settings["kernel_size"])
    coe = settings["enhance"]
    if isinstance(coe, bool) or not isinstance(coe, numbers.Real) or not math.isfinite(coe):
        raise ConfigError(f"enhance must be a finite number, got {coe!r}")
    settings["enhance"] = float(coe)
    overlay = Overlay(
        resample=settings["resample"], background=settings["background"], geometry=geometry
    )
    return settings, overlay


@dataclass
class PromptResult:
    """A prompted image and the map that made it."""

    image: Image.Image
    map: AttentionMap


class Prompter:
    """Attention prompting with the settings fixed once and the model loaded once.

    Args:
        backend: ``"clip"`` (the paper's default) or ``"llava"``.
        model: what the backend's library takes (an open_clip name, ``hf-hub:``/``local-dir:``
            name or checkpoint for CLIP; a Hugging Face id or folder for LLaVA). None picks the
            paper's model for the backend.
        pretrained: open_clip pretrained tag (CLIP only).
        preset: published settings by name (see :mod:`api_prompt.presets`); explicit options win.
        layer, enhance, kernel_size: attribution settings (None: backend/preset default).
        resample, background, geometry: overlay settings (see :class:`api_prompt.Overlay`).
        device, dtype: where and in what precision the auxiliary model runs.
        attributor: an already built :class:`Attributor` to use instead of loading a model.
        **backend_options: passed to the backend's constructor (e.g. ``max_new_tokens``).
    """

    def __init__(
        self,
        backend: str = "clip",
        model: Any = None,
        *,
        pretrained: str | None = None,
        preset: str | None = None,
        layer: int | None = None,
        enhance: float | None = None,
        kernel_size: int | None = None,
        resample: str | None = None,
        background: int | None = None,
        geometry: str = "stretch",
        device: str | None = "auto",
        dtype: str | None = None,
        attributor: Attributor | None = None,
        **backend_options: Any,
    ) -> None:
        # Every cheap setting is checked before a model is loaded.
        self.settings, self.overlay = check_settings(
            preset, enhance=enhance, kernel_size=kernel_size, resample=resample,
            background=background, geometry=geometry,
        )
        if attributor is None:
            options = dict(
                model=model, pretrained=pretrained, layer=layer, device=device, dtype=dtype,
                enhance=self.settings["enhance"], kernel_size=self.settings["kernel_size"],
                **backend_options,
            )
            attributor = create_attributor(
                backend, **{key: value for key, value in options.items() if value is not None}
            )
        self.attributor = attributor

    def __call__(self, image, query: str) -> PromptResult:
        """Prompt one image for one query."""
        return self.batch([image], [query])[0]

    def batch(self, images: Sequence, queries: Sequence[str] | str) -> list[PromptResult]:
        """Prompt many images at once (batched through the model); one query may serve all."""
        images, queries = normalise_inputs(list(images), queries)
        for query in dict.fromkeys(queries):
            warn_if_truncated(self.attributor, query)
        maps = self.attributor.attribute(images, queries)
        return [PromptResult(self.overlay.apply(img, amap), amap) for img, amap in zip(images, maps)]

    def describe(self) -> dict[str, Any]:
        """Every setting that shapes the output, for manifests and reproducibility."""
        return {**self.attributor.describe(), **self.settings, "geometry": self.overlay.geometry}


def query_overflow(attributor: Attributor, query: str) -> tuple[int, int] | None:
    """``(tokens, context_length)`` when the attributor's text encoder will truncate ``query``.

    Works with open_clip tokenizers (``encode`` plus ``context_length``; start and end tokens
    are added). None when the query fits, or for a backend without such a tokenizer (LLaVA reads
    long prompts whole).
    """
    tokenizer = getattr(attributor, "tokenizer", None)
    context = getattr(tokenizer, "context_length", None)
    encode = getattr(tokenizer, "encode", None)
    if not isinstance(context, int) or not callable(encode):
        return None
    try:
        count = len(encode(query)) + 2  # start and end of text
    except Exception:  # an unusual tokenizer: better no warning than a failure
        return None
    return (count, context) if count > context else None


def warn_if_truncated(attributor: Attributor, query: str) -> None:
    """A :class:`UserWarning` when the text encoder reads only the start of ``query``.

    The CLIP tokenizer truncates as the reference does (keeping the end-of-text token); this
    only makes it visible.
    """
    overflow = query_overflow(attributor, query)
    if overflow is not None:
        count, context = overflow
        warnings.warn(
            f"the query is {count} tokens long but the text encoder reads {context}; "
            f"it was truncated to the first {context}",
            UserWarning,
            stacklevel=4,
        )


_last_prompter: tuple[tuple, Prompter] | None = None


def prompt(image, query: str, **options: Any) -> Image.Image:
    """Prompt one image in one call; the model stays loaded for later calls with the same options.

    Takes the same options as :class:`Prompter`.

    >>> from api_prompt import prompt                                     # doctest: +SKIP
    >>> prompt("car.jpg", "What color is the car?").save("car_api.png")  # doctest: +SKIP
    """
    global _last_prompter
    key = tuple(sorted((name, repr(value)) for name, value in options.items()))
    if _last_prompter is None or _last_prompter[0] != key:
        _last_prompter = (key, Prompter(**options))
    return _last_prompter[1](image, query).image
