"""The whole method in one object: an attributor plus the overlay, with published presets.

>>> from api_prompt import Prompter                                              # doctest: +SKIP
>>> prompter = Prompter(model="local-dir:assets/synthshapes-clip", device="cpu")  # doctest: +SKIP
>>> result = prompter("scene.png", "a red circle")                               # doctest: +SKIP
>>> result.image.save("scene_api.png"); result.map.mask.shape                    # doctest: +SKIP
(8, 8)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Sequence

from PIL import Image

from .attention_map import AttentionMap
from .attribution.base import Attributor, normalise_inputs
from .attribution.registry import create_attributor, get_backend
from .errors import ConfigError
from .maps import get_recipe
from .overlay import Overlay
from .presets import check_settings


@dataclass
class PromptResult:
    """A prompted image and the map that made it."""

    image: Image.Image
    map: AttentionMap


class Prompter:
    """Attention prompting with the settings fixed once and the model loaded once.

    A Prompter is three stages, each public: :meth:`attribute` (the model: raw parts),
    :meth:`combine` (a recipe: parts → mask) and :meth:`render` (the overlay: mask → image).
    Calling it runs all three. The recipe and its settings are the Prompter's own, also around
    an attributor built elsewhere (whose own ``enhance``/``kernel_size`` are the defaults then,
    unless a preset or explicit settings are given).

    Args:
        backend: a name in :data:`~api_prompt.attribution.registry.BACKENDS`: ``"clip"`` (the
            paper's default), ``"llava"``, or any registered backend.
        model: what the backend's library takes (an open_clip name, ``hf-hub:``/``local-dir:``
            name or checkpoint for CLIP; a Hugging Face id or folder for LLaVA). None picks the
            paper's model for the backend.
        pretrained: open_clip pretrained tag (CLIP only: an option its backend spec declares).
        preset: published settings by name (see :mod:`api_prompt.presets`); explicit options win.
        layer: the block the backend reads (None: the backend's default).
        recipe: how parts become the mask (:data:`api_prompt.maps.RECIPES`); None: the backend's.
        enhance, kernel_size: the recipe's settings (None: the preset's).
        resample, background, geometry: overlay settings (see :class:`api_prompt.Overlay`).
        device, dtype: where and in what precision the auxiliary model runs.
        attributor: an already built :class:`Attributor` to use instead of loading a model.
        **backend_options: passed to the backend's constructor (e.g. ``max_new_tokens``), checked
            against the options its spec declares before anything loads.

    >>> import numpy as np
    >>> from api_prompt import AttentionMap, Prompter
    >>> from api_prompt.attribution.base import Attributor
    >>> class Ramp(Attributor):                      # a model-free attributor, for the example
    ...     default_recipe = "llava"
    ...     def attribute(self, images, queries):
    ...         ramp = np.arange(16, dtype=np.float32).reshape(4, 4)
    ...         return [AttentionMap(None, {"attention": ramp}, im.size, (0, 0, *im.size))
    ...                 for im in images]
    >>> prompter = Prompter(attributor=Ramp(), kernel_size=1)
    >>> amap = prompter.attribute(np.zeros((8, 8, 3), np.uint8), "q")[0]
    >>> amap.recipe, amap.mask.shape
    ('llava', (4, 4))
    >>> prompter.combine(amap, kernel_size=3).mask.shape    # no model: only the recipe runs
    (4, 4)
    >>> prompter.render(np.full((8, 8, 3), 255, np.uint8), amap).size
    (8, 8)
    """

    def __init__(
        self,
        backend: str = "clip",
        model: Any = None,
        *,
        pretrained: str | None = None,
        preset: str | None = None,
        layer: int | None = None,
        recipe: str | None = None,
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
        if attributor is not None and preset is None:
            # Around a ready attributor, the recipe settings it was built with are the defaults
            # (so the output and describe() agree with it); explicit settings still win.
            enhance = getattr(attributor, "enhance", None) if enhance is None else enhance
            kernel_size = getattr(attributor, "kernel_size", None) if kernel_size is None else kernel_size
        # Every cheap setting is checked before a model is loaded.
        self.settings, self.overlay = check_settings(
            preset, enhance=enhance, kernel_size=kernel_size, resample=resample,
            background=background, geometry=geometry,
        )
        if recipe is not None:
            get_recipe(recipe)
        if attributor is None:
            spec = get_backend(backend)
            options = dict(
                model=model, pretrained=pretrained, layer=layer, device=device, dtype=dtype,
                **backend_options,
            )
            for name in ("enhance", "kernel_size"):  # for a backend that makes its own mask too
                if spec.option(name) is not None and name not in backend_options:
                    options[name] = self.settings[name]
            attributor = create_attributor(
                spec.name, **{key: value for key, value in options.items() if value is not None}
            )
        self.attributor = attributor
        recipe = recipe or attributor.default_recipe
        self.recipe = get_recipe(recipe) if recipe else None

    # -- the stages ---------------------------------------------------------------------------

    def attribute(self, images, queries, *, warn: bool = True) -> list[AttentionMap]:
        """Run the model: one map per (image, query), its mask made by this Prompter's recipe.

        ``images`` is one image or a list (anything :func:`~api_prompt.load_image` takes);
        ``queries`` one string for all, or one per image. A query the text encoder reads only
        the start of gives a :class:`UserWarning`, unless ``warn`` is False (for a caller that
        reports it its own way, e.g. with :meth:`query_overflow`).
        """
        images, queries = normalise_inputs(images, queries)
        return self._attribute_loaded(images, queries, warn=warn)

    def combine(self, attention_map: AttentionMap, **settings: Any) -> AttentionMap:
        """A copy of ``attention_map`` with its mask made again from its raw parts; no model.

        ``settings`` (``enhance``, ``kernel_size``, ``recipe``) override this Prompter's for
        this call. A map from an attributor that returns only a mask (no raw parts) keeps it.
        """
        unknown = set(settings) - {"enhance", "kernel_size", "recipe"}
        if unknown:
            raise ConfigError(
                f"combine() takes enhance, kernel_size and recipe, not {', '.join(sorted(unknown))}"
            )
        recipe_name = settings.pop("recipe", None)
        recipe = get_recipe(recipe_name) if recipe_name else self.recipe
        resolved = self.settings
        if any(value is not None for value in settings.values()):
            resolved, _ = check_settings(None, **{**self.settings, **settings})
        if recipe is None or not attention_map.parts:
            if attention_map.mask is None:
                raise ConfigError("the map has neither a mask nor raw parts to make one from")
            return attention_map
        mask = recipe(attention_map.parts, enhance=resolved["enhance"], kernel_size=resolved["kernel_size"])
        return attention_map.with_mask(mask, recipe.name)

    def render(self, image, attention_map: AttentionMap, **overlay_settings: Any) -> Image.Image:
        """The prompted image; ``overlay_settings`` (``resample``, ``background``, ``geometry``)
        override this Prompter's for this call. No model."""
        overlay = self.overlay
        if overlay_settings:
            current = {"resample": self.settings["resample"], "background": self.overlay.background,
                       "geometry": self.overlay.geometry}
            unknown = set(overlay_settings) - set(current)
            if unknown:
                raise ConfigError(
                f"render() takes resample, background and geometry, not {', '.join(sorted(unknown))}"
            )
            current.update({k: v for k, v in overlay_settings.items() if v is not None})
            overlay = Overlay(**current)
        return overlay.apply(image, attention_map)

    def heatmap(self, image, attention_map: AttentionMap, *, colorbar: bool = False) -> Image.Image:
        """The map as a colour heat map over ``image`` (for people, not for the target model),
        laid out with this Prompter's geometry; see :func:`~api_prompt.overlay.render_heatmap`. No model."""
        from .overlay import render_heatmap

        return render_heatmap(image, attention_map, colorbar=colorbar, geometry=self.overlay.geometry)

    # -- all three ----------------------------------------------------------------------------

    def __call__(self, image, query: str) -> PromptResult:
        """Prompt one image for one query."""
        return self.batch([image], [query])[0]

    def batch(self, images: Sequence, queries: Sequence[str] | str) -> list[PromptResult]:
        """Prompt many images at once (batched through the model); one query may serve all."""
        images, queries = normalise_inputs(list(images), queries)
        maps = self._attribute_loaded(images, queries)
        return [PromptResult(self.render(img, amap), amap) for img, amap in zip(images, maps)]

    def _attribute_loaded(self, images: list, queries: list[str], *, warn: bool = True) -> list[AttentionMap]:
        if warn:
            for query in dict.fromkeys(queries):
                warn_if_truncated(self.attributor, query)
        return [self.combine(amap) for amap in self.attributor.attribute(images, queries)]

    def query_overflow(self, query: str) -> tuple[int, int] | None:
        """``(tokens, context_length)`` when the attributor's text encoder will truncate ``query``."""
        return query_overflow(self.attributor, query)

    def describe(self) -> dict[str, Any]:
        """Every setting that shapes the output, for manifests and reproducibility."""
        recipe = {"recipe": self.recipe.name} if self.recipe else {}
        return {**self.attributor.describe(), **self.settings, **recipe, "geometry": self.overlay.geometry}


def query_overflow(attributor: Attributor, query: str) -> tuple[int, int] | None:
    """``(tokens, context_length)`` when the attributor's text encoder will truncate ``query``.

    Asks the attributor (:meth:`~api_prompt.attribution.base.Attributor.query_overflow`); None
    when the query fits, or for an attributor without that method or one that reads any length.
    """
    ask = getattr(attributor, "query_overflow", None)
    return ask(query) if callable(ask) else None


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
