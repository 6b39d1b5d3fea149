"""Published settings of the method, by name (docs/ALGORITHM.md §4), and the check that also
builds the :class:`~api_prompt.overlay.Overlay` they describe.

The presets, their defaults and the rule of each setting live in :mod:`api_prompt.settings` (the
bottom of the package); this module adds :func:`check_settings`, which needs the overlay.

>>> settings, overlay = check_settings("mmvet", background=200)
>>> settings["enhance"], overlay.background
(1.0, 200)
"""

from __future__ import annotations

from typing import Any

from .overlay import Overlay
from .settings import DEFAULT_PRESET, PRESETS, check_kernel_size, checked_settings, resolve_settings

__all__ = ["PRESETS", "DEFAULT_PRESET", "resolve_settings", "check_kernel_size", "check_settings"]


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
    an unknown preset or any value :mod:`api_prompt.settings` refuses (an even or non-positive
    kernel size, an enhance coefficient that is not a finite number > 0, an unknown resample
    filter or geometry, a background outside 0..255).
    """
    settings = checked_settings(
        preset,
        enhance=enhance,
        kernel_size=kernel_size,
        resample=resample,
        background=background,
        geometry=geometry,
    )
    overlay = Overlay(
        resample=settings["resample"], background=settings["background"], geometry=geometry
    )
    return settings, overlay
