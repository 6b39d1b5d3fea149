"""The prompt style of each request: the server's default, or the one the request asks for.

The proxy shows each image's attention map to the upstream model in a prompt style
(:mod:`api_prompt.styles`: ``overlay``, the paper's and the default; ``crop``, which sends the
original *and* a zoomed crop; ``blur``; ``box``). The operator sets the default when the proxy
starts (``create_app(..., style=, style_options=)``, ``api-prompt serve --style``); a client may
ask for another style in one request with a top-level ``api_prompt`` object, which the ``openai``
SDK sends with ``extra_body``::

    client.chat.completions.create(model="m", messages=[...],
        extra_body={"api_prompt": {"style": "crop", "style_options": {"zoom": 448}}})

The proxy had no per-request option before: every other field goes upstream unchanged, so this
one field is taken out of the request before it is forwarded. A style asked for by name starts
from the server's overlay settings (resample, background, geometry) and the server's options of
that style; the request's options replace those they name (``null``: the style's own default).

A request's options are checked before any image is read or anything is sent upstream, and a
bad one is refused with 400 in one line that names the field and never repeats what the client
sent: ``api_prompt`` must be an object with only ``style`` and ``style_options``; ``style`` one of
the registered names; each option one the style takes, a number of at most
:data:`MAX_REQUEST_NUMBER` in size (so no request can ask for a giant zoomed crop) or a text of
at most :data:`MAX_REQUEST_TEXT` characters, and then whatever the style itself demands of it.

>>> styles = ServerStyles.create(None, "overlay", None)
>>> style, rest = styles.for_request({"model": "m", "api_prompt": {"style": "crop", "style_options": {"zoom": 64}}})
>>> style, rest
(CropStyle(crop_size=336, zoom=64, one_image='side-by-side', geometry='stretch'), {'model': 'm'})
>>> styles.for_request({"model": "m", "api_prompt": {"style": "zoom"}})
Traceback (most recent call last):
...
api_prompt.serve.messages.RequestError: api_prompt.style must be one of: overlay, crop, blur, box
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..presets import check_settings
from ..prompter import style_with
from ..styles import STYLES, Style, create_style
from ..styles import style_options as options_of
from .messages import RequestError

__all__ = ["REQUEST_FIELD", "MAX_REQUEST_NUMBER", "MAX_REQUEST_TEXT", "ServerStyles"]

#: The top-level field of a chat request that holds its prompt options (taken out upstream).
REQUEST_FIELD = "api_prompt"
#: Largest number a request may give a style option (pixels: crop size, zoom, line width).
MAX_REQUEST_NUMBER = 4096
#: Longest text a request may give a style option (a colour, a geometry name, ...).
MAX_REQUEST_TEXT = 64

_USAGE = 'an object such as {"style": "crop", "style_options": {"zoom": 448}}'


@dataclass(frozen=True)
class ServerStyles:
    """The server's default style, and the settings a style asked for by a request starts from.

    ``base`` holds the overlay settings every style that takes them gets (``resample``,
    ``background``, ``geometry``); ``options`` the operator's style options (options of any
    style, each used by the styles that take it); ``named`` each registered style built from
    those, checked once at startup.
    """

    default: Style
    base: dict[str, Any]
    options: dict[str, Any]
    named: dict[str, Style]

    @classmethod
    def create(
        cls, prompter: Any, style: str | None, style_options: dict[str, Any] | None
    ) -> ServerStyles:
        """The styles of a proxy around ``prompter`` (None: default overlay settings).

        ``style`` None keeps the prompter's own style (``overlay`` unless it was built with
        another). Raises a one-line :class:`~api_prompt.errors.ConfigError` for an unknown style,
        an option no style takes, or a value a style refuses, so a proxy never starts with them.
        """
        if style_options is not None and not isinstance(style_options, dict):
            raise ConfigError(
                "style_options must be a dict of option names and values, "
                f"got {type(style_options).__name__}"
            )
        if prompter is not None:
            base = {
                "resample": prompter.settings["resample"],
                "background": prompter.settings["background"],
                "geometry": prompter.overlay.geometry,
            }
            inherited = dict(getattr(prompter, "style_options", None) or {})
        else:
            settings, overlay = check_settings(None)
            base = {
                "resample": settings["resample"],
                "background": settings["background"],
                "geometry": overlay.geometry,
            }
            inherited = {}
        options = {**inherited, **(style_options or {})}
        taken = {option for style_class in STYLES.values() for option in options_of(style_class)}
        unknown = sorted(str(option) for option in options if option not in taken)
        if unknown:
            raise ConfigError(
                f"no prompt style takes {', '.join(unknown)}; the styles' options are: "
                f"{', '.join(sorted(taken))}"
            )
        if style is not None and (
            not isinstance(style, str) or style.strip().lower() not in STYLES
        ):
            raise ConfigError(f"unknown style {style!r}; choose one of: {', '.join(STYLES)}")
        named = {name: _build(name, base, options) for name in STYLES}
        if style is None:
            default = (
                prompter.style
                if prompter is not None and not style_options
                else named[prompter.style.name if prompter is not None else "overlay"]
            )
        else:
            default = named[style.strip().lower()]
        return cls(default, base, options, named)

    def for_request(self, body: dict[str, Any]) -> tuple[Style, dict[str, Any]]:
        """The style ``body`` asks for (the default when it names none), and ``body`` without its
        :data:`REQUEST_FIELD`; RequestError 400 for a field that is not a valid choice."""
        if REQUEST_FIELD not in body:
            return self.default, body
        rest = {key: value for key, value in body.items() if key != REQUEST_FIELD}
        choice = body[REQUEST_FIELD]
        if not isinstance(choice, dict):
            raise _refused(f"{REQUEST_FIELD} must be {_USAGE}")
        if set(choice) - {"style", "style_options"}:
            raise _refused(
                f"{REQUEST_FIELD} takes only 'style' and 'style_options', as in {_USAGE}"
            )
        name = choice.get("style")
        if name is None:
            name = self.default.name
        elif (
            not isinstance(name, str)
            or len(name) > MAX_REQUEST_TEXT
            or name.strip().lower() not in STYLES
        ):
            raise _refused(f"{REQUEST_FIELD}.style must be one of: {', '.join(STYLES)}", "style")
        name = name.strip().lower()
        options = choice.get("style_options")
        if options is None or options == {}:
            return (self.default if name == self.default.name else self.named[name]), rest
        if not isinstance(options, dict):
            raise _refused(
                f"{REQUEST_FIELD}.style_options must be an object of option names and values",
                "style_options",
            )
        accepted = options_of(STYLES[name])
        if any(key not in accepted for key in options):
            raise _refused(
                f"style {name!r} takes the options {', '.join(accepted)}", "style_options"
            )
        for key, value in options.items():
            _check_value(key, value)
        given = {
            **{
                key: value
                for key, value in {**self.base, **self.options}.items()
                if key in accepted
            },
            **options,
        }
        try:
            return create_style(name, **given), rest
        except ConfigError as exc:
            raise _refused(
                f"{REQUEST_FIELD}.style_options: {' '.join(str(exc).split())}", "style_options"
            ) from None
        except Exception:  # a value of a type the style's checks did not expect
            raise _refused(
                f"{REQUEST_FIELD}.style_options holds a value of the wrong type for style {name!r}",
                "style_options",
            ) from None


def _build(name: str, base: dict[str, Any], options: dict[str, Any]) -> Style:
    """Style ``name`` with the overlay settings and the options it takes, built as a Prompter
    builds its own (so the proxy's pictures are ``Prompter(style=..., style_options=...)``'s)."""
    try:
        return style_with(name, base, base["geometry"], options)
    except ConfigError:
        raise
    except Exception as exc:  # a value of a type the style's checks did not expect
        raise ConfigError(
            f"style {name!r} cannot take these options ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())})"
        ) from None


def _check_value(key: str, value: Any) -> None:
    """A request's option value: null, a bounded number or a short text (nothing nested)."""
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value) or abs(value) > MAX_REQUEST_NUMBER:
            raise _refused(
                f"{REQUEST_FIELD}.style_options.{key} must be a number of at most "
                f"{MAX_REQUEST_NUMBER:,}",
                f"style_options.{key}",
            )
        return
    if isinstance(value, str) and len(value) <= MAX_REQUEST_TEXT:
        return
    raise _refused(
        f"{REQUEST_FIELD}.style_options.{key} must be a number (at most {MAX_REQUEST_NUMBER:,}) "
        f"or a text of at most {MAX_REQUEST_TEXT} characters",
        f"style_options.{key}",
    )


def _refused(message: str, param: str | None = None) -> RequestError:
    return RequestError(
        400, message, param=REQUEST_FIELD + (f".{param}" if param else ""), code="invalid_style"
    )
