"""Published settings of the method, by name (ALGORITHM.md §4).

A preset fills the options the user did not set; explicit options always win.

| name        | enhance | kernel | resample | background | source                               |
|-------------|---------|--------|----------|------------|--------------------------------------|
| package     | 10      | 3      | lanczos  | 0          | PyPI ``apiprompting`` (the default)  |
| repo        | 5       | 3      | lanczos  | 0          | the reference repository's CLI       |
| mmvet       | 1       | 3      | bicubic  | 0          | the paper's MM-Vet tutorial          |
| llava-wild  | 10      | 7      | lanczos  | 200        | the paper's LLaVA-Bench (in-the-wild) tutorial |
"""

from __future__ import annotations

from .errors import ConfigError

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
