"""Every setting of the method in one place: its default, its published presets and its one check.

The bottom of the package: nothing here imports from ``api_prompt`` except :mod:`.errors`, and
every other module (maps, overlay, presets, the Prompter, attributors, the CLI) asks this one for
a setting's rule, so a value is refused with the same message wherever it comes in.

Presets (docs/ALGORITHM.md §4) fill the settings the user did not give; explicit ones always win.

| name        | enhance | kernel | resample | background | source                               |
|-------------|---------|--------|----------|------------|--------------------------------------|
| package     | 10      | 3      | lanczos  | 0          | PyPI ``apiprompting`` (the default)  |
| repo        | 5       | 3      | lanczos  | 0          | the reference repository's CLI       |
| mmvet       | 1       | 3      | bicubic  | 0          | the paper's MM-Vet tutorial          |
| llava-wild  | 10      | 7      | lanczos  | 200        | the paper's LLaVA-Bench (in-the-wild) tutorial |

>>> resolve_settings("mmvet", background=200)["background"]
200
>>> check_enhance(-5)
Traceback (most recent call last):
...
api_prompt.errors.ConfigError: enhance must be a finite number > 0, got -5
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
from PIL import Image

from .errors import ConfigError

__all__ = [
    "PRESETS",
    "DEFAULT_PRESET",
    "DEFAULT_ENHANCE",
    "DEFAULT_KERNEL_SIZE",
    "RESAMPLE",
    "GEOMETRIES",
    "resolve_settings",
    "check_enhance",
    "check_kernel_size",
    "check_background",
    "check_geometry",
    "resolve_resample",
    "checked_settings",
]

PRESETS: dict[str, dict[str, Any]] = {
    "package": {"enhance": 10.0, "kernel_size": 3, "resample": "lanczos", "background": 0},
    "repo": {"enhance": 5.0, "kernel_size": 3, "resample": "lanczos", "background": 0},
    "mmvet": {"enhance": 1.0, "kernel_size": 3, "resample": "bicubic", "background": 0},
    "llava-wild": {"enhance": 10.0, "kernel_size": 7, "resample": "lanczos", "background": 200},
}

DEFAULT_PRESET = "package"
#: the published package's mask settings, also an attributor's own when it makes a mask alone
DEFAULT_ENHANCE: float = PRESETS[DEFAULT_PRESET]["enhance"]
DEFAULT_KERNEL_SIZE: int = PRESETS[DEFAULT_PRESET]["kernel_size"]

#: PIL filters by the names the CLI and presets use.
RESAMPLE: dict[str, Image.Resampling] = {
    "lanczos": Image.Resampling.LANCZOS,
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}

#: ``stretch``: the reference (map over the whole image); ``fit``: map over its true region.
GEOMETRIES = ("stretch", "fit")


def resolve_settings(preset: str | None = None, **explicit: Any) -> dict[str, Any]:
    """The preset's settings overridden by every explicit option that is not None (unchecked).

    >>> resolve_settings(None)["enhance"]
    10.0
    """
    name = DEFAULT_PRESET if preset is None else preset
    try:
        settings = dict(PRESETS[name])
    except (KeyError, TypeError):
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None
    settings.update({key: value for key, value in explicit.items() if value is not None})
    return settings


def check_enhance(enhance: Any) -> float:
    """The enhance coefficient as a float: a finite number > 0 (0 flattens every map to one
    level and a negative one inverts it), else ConfigError.

    >>> check_enhance(1)
    1.0
    """
    if (
        isinstance(enhance, bool)
        or not isinstance(enhance, numbers.Real)
        or not (math.isfinite(float(enhance)) and float(enhance) > 0)
    ):
        raise ConfigError(f"enhance must be a finite number > 0, got {enhance!r}")
    return float(enhance)


def check_kernel_size(kernel_size: Any) -> int:
    """``kernel_size`` if it is a valid box-filter size (odd, >= 1), else ConfigError.

    >>> check_kernel_size(3)
    3
    """
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, (int, np.integer)):
        raise ConfigError(f"kernel size must be an odd integer >= 1, got {kernel_size!r}")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ConfigError(f"kernel size must be an odd integer >= 1, got {kernel_size}")
    return int(kernel_size)


def check_background(background: Any) -> int:
    """The gray level ``g`` of the masked-out area: an integer in 0..255."""
    if isinstance(background, bool) or not isinstance(background, (int, np.integer)):
        raise ConfigError(f"background must be an integer gray level in 0..255, got {background!r}")
    if not 0 <= background <= 255:
        raise ConfigError(f"background must be in 0..255 (0 black, 255 white), got {background}")
    return int(background)


def check_geometry(geometry: Any) -> str:
    """A name in :data:`GEOMETRIES` (any case), lower-cased."""
    if not isinstance(geometry, str) or geometry.strip().lower() not in GEOMETRIES:
        raise ConfigError(f"unknown geometry {geometry!r}; choose one of: {', '.join(GEOMETRIES)}")
    return geometry.strip().lower()


def resolve_resample(resample: Any) -> Image.Resampling:
    """A PIL filter from a name in :data:`RESAMPLE` (any case) or one of those PIL filters.

    >>> resolve_resample("LANCZOS") is Image.Resampling.LANCZOS
    True
    """
    if isinstance(resample, Image.Resampling) and resample in RESAMPLE.values():
        return resample
    if isinstance(resample, str) and resample.strip().lower() in RESAMPLE:
        return RESAMPLE[resample.strip().lower()]
    raise ConfigError(f"unknown resample {resample!r}; choose one of: {', '.join(RESAMPLE)}")


def checked_settings(
    preset: str | None = None,
    *,
    enhance: Any = None,
    kernel_size: Any = None,
    resample: Any = None,
    background: Any = None,
    geometry: Any = "stretch",
) -> dict[str, Any]:
    """Resolve the preset and check every mask and overlay setting, without a model.

    Returns ``enhance`` (float), ``kernel_size`` (int), ``resample`` (as given: a valid name or
    PIL filter) and ``background`` (int); ``geometry`` is checked, not returned.

    >>> checked_settings("mmvet", background=200)
    {'enhance': 1.0, 'kernel_size': 3, 'resample': 'bicubic', 'background': 200}
    """
    settings = resolve_settings(
        preset, enhance=enhance, kernel_size=kernel_size, resample=resample, background=background
    )
    settings["kernel_size"] = check_kernel_size(settings["kernel_size"])
    settings["enhance"] = check_enhance(settings["enhance"])
    resolve_resample(settings["resample"])
    settings["background"] = check_background(settings["background"])
    check_geometry(geometry)
    return settings
