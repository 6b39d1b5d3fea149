"""The whole method in one object: an attributor plus the overlay, with published presets.

Long because: the Prompter's three stages (attribute, combine, render), its presets and styles
are one public object, documented in one place.

>>> from api_prompt import Prompter                                              # doctest: +SKIP
>>> prompter = Prompter(model="local-dir:assets/synthshapes-clip", device="cpu")  # doctest: +SKIP
>>> result = prompter("scene.png", "a red circle")                               # doctest: +SKIP
>>> result.image.save("scene_api.png"); result.map.mask.shape                    # doctest: +SKIP
(8, 8)
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from .attention_map import AttentionMap
from .attribution.base import Attributor, normalise_inputs
from .attribution.registry import create_attributor, get_backend
from .errors import ConfigError
from .maps import Recipe, combine_map, combine_maps, get_recipe
from .overlay import Overlay
from .presets import check_settings
from .protocols import PrompterLike  # noqa: F401  (re-exported: the type batch/eval/serve annotate with)

#: Recipes that min-max normalise each part first, so a positive affine map of a part changes
#: nothing: they may be fed the early-exit parts (``exact_parts=False``).
SCALE_FREE_RECIPES = frozenset({"clip-soft-or", "siglip-soft-or", "llava"})


@dataclass
class PromptResult:
    """A prompted image and the map that made it.

    ``image`` is one picture (for one-image consumers: files, batch exports); ``images`` is what
    the target is shown, in order: ``[image]`` for the one-image styles, the original and the
    zoomed crop for ``crop`` (see :mod:`api_prompt.styles`).
    """

    image: Image.Image
    map: AttentionMap
    images: list[Image.Image] | None = None

    def __post_init__(self) -> None:
        if self.images is None:
            self.images = [self.image]


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
        style: how the map is shown to the target, a name in :data:`api_prompt.styles.STYLES`
            (``"overlay"``, the paper's, by default; ``"crop"``, ``"blur"``, ``"box"``) or a
            :class:`~api_prompt.styles.Style`. The overlay settings above go to the styles that
            take them; ``style_options`` holds the others (e.g. ``{"crop_size": 224}``); an option
            of another style is kept for :meth:`style_named`, one no style takes is an error.
        device, dtype: where and in what precision the auxiliary model runs.
        attributor: an already built :class:`Attributor` to use instead of loading a model.
        exact_parts: False (default): a prompter needs only the mask, so where the backend allows
            it (CLIP class-token towers) the model stops after block L' and each map's raw parts
            are the reference's up to a positive affine map per image (same mask; marked
            ``extra["exact_parts"] = False``). True: parts in the reference's scale (the full
            forward pass), e.g. to save them. Each stage call can override it.
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
        exact_parts: bool = False,
        style: Any = "overlay",
        style_options: dict[str, Any] | None = None,
        **backend_options: Any,
    ) -> None:
        if attributor is not None and preset is None:
            # Around a ready attributor, the recipe settings it was built with are the defaults
            # (so the output and describe() agree with it); explicit settings still win.
            enhance = getattr(attributor, "enhance", None) if enhance is None else enhance
            kernel_size = (
                getattr(attributor, "kernel_size", None) if kernel_size is None else kernel_size
            )
        # Every cheap setting is checked before a model is loaded.
        self.settings, self.overlay = check_settings(
            preset,
            enhance=enhance,
            kernel_size=kernel_size,
            resample=resample,
            background=background,
            geometry=geometry,
        )
        if recipe is not None:
            get_recipe(recipe)
        self.style = _make_style(style, style_options, self.settings, geometry)
        self.style_options = dict(style_options or {})
        if attributor is None:
            # the attributor returns raw parts; the mask is made here, once, by the recipe below
            attributor = create_attributor(
                get_backend(backend).name,
                **{
                    key: value
                    for key, value in dict(
                        model=model,
                        pretrained=pretrained,
                        layer=layer,
                        device=device,
                        dtype=dtype,
                        **backend_options,
                    ).items()
                    if value is not None
                },
            )
        self.attributor = attributor
        recipe = recipe or attributor.default_recipe
        self.recipe = get_recipe(recipe) if recipe else None
        self.exact_parts = bool(exact_parts)

    # -- the stages ---------------------------------------------------------------------------

    def attribute(
        self, images, queries, *, warn: bool = True, exact_parts: bool | None = None
    ) -> list[AttentionMap]:
        """Run the model: one map per (image, query), its mask made by this Prompter's recipe.

        ``images`` is one image or a list (anything :func:`~api_prompt.load_image` takes);
        ``queries`` one string for all, or one per image. A query the text encoder reads only
        the start of gives a :class:`UserWarning`, unless ``warn`` is False (for a caller that
        reports it its own way, e.g. with :meth:`query_overflow`). ``exact_parts``: see the class
        (None: this Prompter's setting).
        """
        images, queries = normalise_inputs(images, queries)
        return self._attribute_loaded(images, queries, warn=warn, exact_parts=exact_parts)

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
        if not _needs_recipe(attention_map, recipe) or recipe is None:
            return attention_map
        return combine_map(
            attention_map, recipe, enhance=resolved["enhance"], kernel_size=resolved["kernel_size"]
        )

    def _combine_all(self, maps: Sequence[AttentionMap]) -> list[AttentionMap]:
        """:meth:`combine` on each map with this Prompter's settings, one recipe call for the
        maps of the same grid (a call per map cost the model's thread 0.4 ms per image on the
        CPU, the time a GPU takes to attribute several images)."""
        todo = [i for i, amap in enumerate(maps) if _needs_recipe(amap, self.recipe)]
        combined = list(maps)
        if todo and self.recipe is not None:
            made = combine_maps(
                [maps[i] for i in todo],
                self.recipe,
                enhance=self.settings["enhance"],
                kernel_size=self.settings["kernel_size"],
            )
            for i, amap in zip(todo, made):
                combined[i] = amap
        return combined

    def render(self, image, attention_map: AttentionMap, **overlay_settings: Any) -> Image.Image:
        """The prompted image; ``overlay_settings`` (``resample``, ``background``, ``geometry``)
        override this Prompter's for this call. No model."""
        overlay = self.overlay
        if overlay_settings:
            current = {
                "resample": self.settings["resample"],
                "background": self.overlay.background,
                "geometry": self.overlay.geometry,
            }
            unknown = set(overlay_settings) - set(current)
            if unknown:
                raise ConfigError(
                    f"render() takes resample, background and geometry, not {', '.join(sorted(unknown))}"
                )
            current.update({k: v for k, v in overlay_settings.items() if v is not None})
            overlay = Overlay(**current)
        if overlay_settings or self.style.name == "overlay":
            return overlay.apply(image, attention_map)
        return self.style.single(image, attention_map)

    def style_named(self, name: str):
        """Another style with this Prompter's settings: the overlay settings and the
        ``style_options`` it takes (for comparing styles on the same maps, as ``eval`` does)."""
        key = str(name).strip().lower()
        if key == self.style.name:
            return self.style
        return style_with(key, self.settings, self.overlay.geometry, self.style_options)

    def heatmap(self, image, attention_map: AttentionMap, *, colorbar: bool = False) -> Image.Image:
        """The map as a colour heat map over ``image`` (for people, not for the target model),
        laid out with this Prompter's geometry; see :func:`~api_prompt.figures.render_heatmap`. No model."""
        from .figures import render_heatmap

        return render_heatmap(
            image, attention_map, colorbar=colorbar, geometry=self.overlay.geometry
        )

    # -- all three ----------------------------------------------------------------------------

    def __call__(self, image, query: str, *, exact_parts: bool | None = None) -> PromptResult:
        """Prompt one image for one query (``exact_parts``: see the class)."""
        return self.batch([image], [query], exact_parts=exact_parts)[0]

    def batch(
        self, images: Sequence, queries: Sequence[str] | str, *, exact_parts: bool | None = None
    ) -> list[PromptResult]:
        """Prompt many images at once (batched through the model); one query may serve all."""
        images, queries = normalise_inputs(list(images), queries)
        maps = self._attribute_loaded(images, queries, exact_parts=exact_parts)
        results = []
        for image, amap in zip(images, maps):
            shown = self.style.apply(image, amap)
            results.append(PromptResult(self.style.single_from(shown), amap, shown))
        return results

    def _attribute_loaded(
        self,
        images: list,
        queries: list[str],
        *,
        warn: bool = True,
        exact_parts: bool | None = None,
    ) -> list[AttentionMap]:
        if warn:
            for query in dict.fromkeys(queries):
                warn_if_truncated(self.attributor, query)
        exact = self.exact_parts if exact_parts is None else exact_parts
        early = (
            not exact
            and getattr(self.attributor, "stops_early", False)
            and self.recipe is not None
            and self.recipe.name in SCALE_FREE_RECIPES
        )
        # raw parts from an Attributor; an object with only ``attribute`` (duck-typed) as it is
        parts_of = getattr(self.attributor, "attribute_parts", None)
        if parts_of is None:
            maps = self.attributor.attribute(images, queries)
        else:
            maps = (
                parts_of(images, queries, exact_parts=False) if early else parts_of(images, queries)
            )
        return self._combine_all(maps)

    def query_overflow(self, query: str) -> tuple[int, int] | None:
        """``(tokens, context_length)`` when the attributor's text encoder will truncate ``query``."""
        return query_overflow(self.attributor, query)

    def describe(self) -> dict[str, Any]:
        """Every setting that shapes the output, for manifests and reproducibility."""
        recipe = {"recipe": self.recipe.name} if self.recipe else {}
        # the default style adds nothing, so manifests written before styles existed still match
        style = {} if self.style.name == "overlay" else self.style.describe()
        return {
            **self.attributor.describe(),
            **self.settings,
            **recipe,
            "geometry": self.overlay.geometry,
            **style,
        }


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


def _make_style(
    style: Any, options: dict[str, Any] | None, settings: dict[str, Any], geometry: str
):
    """The Prompter's style: the overlay settings go to the styles that take them."""
    from .styles import STYLES, Style, style_options

    if isinstance(style, Style):
        if options:
            raise ConfigError("style_options apply to a style given by name, not to a Style object")
        return style
    options = dict(options or {})
    taken = {option for cls in STYLES.values() for option in style_options(cls)}
    unknown = sorted(set(options) - taken)
    if unknown:
        raise ConfigError(
            f"no prompt style takes {', '.join(unknown)}; the styles' options are: "
            f"{', '.join(sorted(taken))}"
        )
    # options of other styles are kept for style_named() (eval compares styles on one map)
    return style_with(style, settings, geometry, options)


def style_with(name: Any, settings: dict[str, Any], geometry: str, options: dict[str, Any]):
    """Style ``name`` with the overlay settings and those of ``options`` that it takes (the one
    way a Prompter, the proxy and the playground build a style, so their pixels agree)."""
    from .styles import STYLES, create_style, style_options

    key = name.strip().lower() if isinstance(name, str) else name
    accepted = style_options(STYLES[key]) if key in STYLES else []
    given = {
        "resample": settings["resample"],
        "background": settings["background"],
        "geometry": geometry,
        **options,
    }
    return create_style(
        name, **{option: value for option, value in given.items() if option in accepted}
    )


def _needs_recipe(attention_map: AttentionMap, recipe: Recipe | None) -> bool:
    """Whether ``recipe`` makes ``attention_map``'s mask from its parts (False: the map keeps its
    mask); a ConfigError when the map has no mask to keep or parts the recipe must not read."""
    if recipe is None or not attention_map.parts:
        if attention_map.mask is None:
            raise ConfigError("the map has neither a mask nor raw parts to make one from")
        return False
    if attention_map.extra.get("exact_parts") is False and recipe.name not in SCALE_FREE_RECIPES:
        raise ConfigError(
            f"recipe {recipe.name!r} may depend on the parts' scale, and this map's parts are "
            "exact only up to a positive affine map: attribute with exact_parts=True for it"
        )
    return True
