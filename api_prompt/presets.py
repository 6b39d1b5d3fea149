"""Published settings of the method, by name (docs/ALGORITHM.md §4).

A preset fills the options the user did not set; explicit options always win.
:func:`check_settings` resolves and validates them without torch or a model.

| name        | enhance | kernel | resample | background | source                               |
|-------------|---------|--------|----------|------------|--------------------------------------|
| package     | 10      | 3      | lanczos  | 0          | PyPI ``apiprompting`` (the default)  |
| repo        | 5       | 3      | lanczos  | 0          | the reference repository's CLI       |
| mmvet       | 1       | 3      | bicubic  | 0          | the paper's MM-Vet tutorial          |
| llava-wild  | 10      | 7      | lanczos  | 200        | the paper's LLaVA-Bench (in-the-wild) tutorial |
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from .errors import ConfigError
from .overlay import Overlay

PRESETS: dict[str, dict] = {
    "package": {"enhance": 10.0, "kernel_size": 3, "resample": "lanczos", "background": 0},
    "repo": {"enhance": 5.0, "kernel_size": 3, "resample": "lanczos", "background": 0},
    "mmvet": {"enhance": 1.0, "kernel_size": 3, "resample": "bicubic", "background": 0},
    "llava-wild": {"enhance": 10.0, "kernel_size": 7, "resample": "lanczos", "background": 200},
}

DEFAULT_PRESET = "package"


def resolve_settings(preset: str | None = None, **explicit) -> dict:
    """The preset's settings overridden by every explicit option that is not None.

    >>> resolve_settings("mmvet", background=200)["background"]
    200
    >>> resolve_settings(None)["enhance"]
    10.0
    """
    name = DEFAULT_PRESET if preset is None else preset
    try:
        settings = dict(PRESETS[name])
    except KeyError:
        raise ConfigError(
            f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}"
        ) from None
    settings.update({key: value for key, value in explicit.items() if value is not None})
    return settings


def check_kernel_size(kernel_size: int) -> int:
    """Return ``kernel_size`` if it is a valid box-filter size (odd, >= 1), else raise ConfigError."""
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, (int, np.integer)):
        raise ConfigError(f"kernel size must be an odd integer >= 1, got {kernel_size!r}")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ConfigError(f"kernel size must be an odd integer >= 1, got {kernel_size}")
    return int(kernel_size)


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
