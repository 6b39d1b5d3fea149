"""What every prompt style shares: the base class, the registry, and where the grid lies.

A style turns one image and its :class:`~api_prompt.AttentionMap` into what the target sees.
Configure it once, then call :meth:`Style.apply`; a new style is one module with a subclass
registered by :func:`register_style`.

>>> from api_prompt.styles import STYLES, create_style
>>> list(STYLES)
['overlay', 'crop', 'blur', 'box']
>>> create_style("overlay", background=200)
OverlayStyle(resample='lanczos', background=200, geometry='stretch')
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from PIL import Image

from ..errors import ConfigError
from ..overlay import as_rgb
from ..settings import check_geometry

if TYPE_CHECKING:  # pragma: no cover
    from ..attention_map import AttentionMap

__all__ = [
    "Style",
    "STYLES",
    "register_style",
    "create_style",
    "style_options",
    "grid_geometry",
    "as_rgb",
]

#: style name -> class. ``overlay`` (the paper's) is the default everywhere.
STYLES: dict[str, type[Style]] = {}


class Style:
    """Base class: ``apply(image, attention_map) -> list of images`` the target sees, in order.

    Subclasses set ``name`` and implement :meth:`apply`; their constructor's keyword arguments
    are the style's options (each validated there, before any model runs). Styles that give the
    target more than one image override :meth:`single` for consumers that take one image.
    """

    name: ClassVar[str] = ""

    def apply(self, image: Any, attention_map: AttentionMap) -> list[Image.Image]:
        raise NotImplementedError

    def single(self, image: Any, attention_map: AttentionMap) -> Image.Image:
        """One image for a consumer that takes only one (a batch export, a single-image target)."""
        return self.single_from(self.apply(image, attention_map))

    def single_from(self, images: list[Image.Image]) -> Image.Image:
        """One image made of :meth:`apply`'s images (a style that makes several overrides it)."""
        if len(images) != 1:  # pragma: no cover - multi-image styles override this
            raise ConfigError(
                f"style {self.name!r} makes {len(images)} images; it must define single_from()"
            )
        return images[0]

    __call__ = apply

    def describe(self) -> dict[str, Any]:
        """The style's name and every option, for manifests."""
        return {
            "style": self.name,
            **{key: getattr(self, key) for key in style_options(type(self))},
        }

    def __repr__(self) -> str:
        options = ", ".join(f"{key}={getattr(self, key)!r}" for key in style_options(type(self)))
        return f"{type(self).__name__}({options})"


def register_style(cls: type[Style]) -> type[Style]:
    """Class decorator: add a :class:`Style` subclass to :data:`STYLES` under its ``name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    STYLES[cls.name] = cls
    return cls


def style_options(cls: type[Style]) -> list[str]:
    """The option names a style's constructor takes (keyword arguments), in order."""
    return [
        name
        for name, parameter in inspect.signature(cls.__init__).parameters.items()
        if name != "self" and parameter.kind is parameter.KEYWORD_ONLY
    ]


def create_style(name: str | Style, **options: Any) -> Style:
    """A style by name with its options; options that are None take the style's defaults.

    Options the style does not take are refused (a one-line :class:`ConfigError`), so a typo
    never passes silently; a :class:`Style` instance is returned as it is.
    """
    if isinstance(name, Style):
        return name
    key = str(name).strip().lower()
    if key not in STYLES:
        raise ConfigError(f"unknown style {name!r}; choose one of: {', '.join(STYLES)}")
    cls = STYLES[key]
    given = {option: value for option, value in options.items() if value is not None}
    unknown = set(given) - set(style_options(cls))
    if unknown:
        raise ConfigError(
            f"style {key!r} takes {', '.join(style_options(cls)) or 'no options'}, "
            f"not {', '.join(sorted(unknown))}"
        )
    return cls(**given)


def grid_geometry(
    attention_map: AttentionMap, size: tuple[int, int], geometry: str
) -> tuple[float, float, float, float]:
    """Where the map's cells lie on an image of ``size`` (W, H): ``(left, top, cell_w, cell_h)``.

    ``stretch`` spreads the grid over the whole image (the reference); ``fit`` over the map's
    ``region``, scaled to ``size`` (see :class:`~api_prompt.Overlay`).

    >>> import numpy as np
    >>> from api_prompt import AttentionMap
    >>> amap = AttentionMap(np.zeros((2, 4), np.float32), {}, (80, 40), (20.0, 0.0, 60.0, 40.0))
    >>> grid_geometry(amap, (80, 40), "stretch"), grid_geometry(amap, (160, 80), "fit")
    ((0.0, 0.0, 20.0, 20.0), (40.0, 0.0, 20.0, 40.0))
    """
    rows, cols = attention_map.grid_shape
    width, height = size
    if check_geometry(geometry) == "stretch":
        return 0.0, 0.0, width / cols, height / rows
    left, top, right, bottom = (float(v) for v in attention_map.region)
    map_w, map_h = attention_map.image_size
    sx, sy = width / map_w, height / map_h
    return left * sx, top * sy, (right - left) * sx / cols, (bottom - top) * sy / rows


def mask_array(attention_map: AttentionMap) -> np.ndarray:
    """The map's mask as float64, refusing a map that has none yet."""
    if attention_map.mask is None:
        raise ConfigError("the map has no mask yet: combine its parts with a recipe first")
    return np.asarray(attention_map.mask, dtype=np.float64)
