"""What the sub-commands share: argument checks, messages in the command line's words, a status
line, and one-line errors (the prompt options are in :mod:`.options`)."""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from typing import TYPE_CHECKING, Annotated

import click
import typer
from typer.core import TyperCommand

from api_prompt.batch.sources import READERS
from api_prompt.errors import APIPromptError, ConfigError
from api_prompt.images import DEFAULT_MAX_PIXELS

# Recent typer releases vendor click (typer._click): their commands take and raise that copy's
# classes, not the click package's. Older ones run on the click package. mypy checks against the
# typer installed, which vendors it; at run time either works.
if TYPE_CHECKING:
    from typer._click import Context as ClickContext
    from typer._click.exceptions import UsageError as _VendoredUsageError
    from typer._click.globals import get_current_context as _current_context
else:
    try:
        from typer._click import Context as ClickContext
        from typer._click.exceptions import UsageError as _VendoredUsageError
        from typer._click.globals import get_current_context as _current_context
    except ImportError:  # pragma: no cover - typer on top of the click package
        ClickContext = click.Context
        _VendoredUsageError = click.UsageError
        _current_context = click.get_current_context
_USAGE_ERRORS = (click.UsageError, _VendoredUsageError)


if TYPE_CHECKING:  # a str Enum whose members, the readers' names, are known at run time only

    class InputFormat(str, Enum): ...

else:
    #: The data formats batch and eval read (``--input-format``), from the readers' table.
    InputFormat = Enum("InputFormat", {name: name for name in READERS}, type=str)
#: Where to read more, said at the end of ``api-prompt --help``.
DOCS_HINT = (
    "the documentation is the docs/ folder of the source distribution "
    "(a site: pip install -e '.\\[dev]' && mkdocs serve); start with docs/getting-started.md"
)
#: Device kinds torch knows (checked here without importing torch; whether the device is
#: present is checked when the model loads).
_DEVICE = re.compile(r"(auto|cpu|mps|meta|(cuda|xpu|hpu|npu|xla|mtia)(:\d+)?)")


def check_device_name(device: str) -> str:
    """``--device``'s value checked by its shape, without torch (whether it exists is checked when
    the model loads).

    >>> check_device_name("cuda:1")
    'cuda:1'
    >>> check_device_name("gpu")
    Traceback (most recent call last):
    ...
    api_prompt.errors.ConfigError: unknown device 'gpu': use auto, cpu, cuda, cuda:N or mps
    """
    if not _DEVICE.fullmatch(str(device).strip()):
        raise ConfigError(f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps")
    return str(device).strip()


def plural(count: int, noun: str) -> str:
    """``1 sample``, ``2 samples``: a count with its noun in the right number.

    >>> plural(1, "sample"), plural(0, "sample"), plural(3, "shard")
    ('1 sample', '0 samples', '3 shards')
    """
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def check_image_argument(text: str) -> None:
    """Refuse an IMAGE argument that is a URL, with a sentence that says what to do.

    The command line reads local files only (the proxy, ``api-prompt serve``, is where images can
    be fetched, with its limits); a URL would otherwise be read as a file name.

    >>> check_image_argument("https://example.com/a.jpg")
    Traceback (most recent call last):
    ...
    api_prompt.errors.ConfigError: IMAGE 'https://example.com/a.jpg' is a URL: the command line reads local image files only; download it first (e.g. curl -o image.jpg https://example.com/a.jpg) and pass the file
    """
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", text.strip()):
        raise ConfigError(
            f"IMAGE {text!r} is a URL: the command line reads local image files only; download it "
            f"first (e.g. curl -o image.jpg {shlex.quote(text)}) and pass the file"
        )


def image_argument(text: str):
    """IMAGE as a path: a local file, or a shipped example named ``example:NAME`` (see
    ``api-prompt examples``); URLs are refused (:func:`check_image_argument`)."""
    from pathlib import Path

    from api_prompt.hub import EXAMPLE_SCHEME, example_image

    check_image_argument(text)
    return example_image(text) if text.startswith(EXAMPLE_SCHEME) else Path(text)


_KEYWORD_ADVICE = re.compile(r"\b([a-z][a-z0-9_]*)=('[^']*'|\"[^\"]*\"|[^\s,;'\")]+)?")


def for_command_line(message: str, options: dict[str, str]) -> str:
    """A message written for Python callers, with its ``name=value`` advice said as options.

    Errors are raised in Python's words (``model='local-dir:/m'``); on the command line the same
    advice reads ``--model local-dir:/m``. ``options`` maps parameter names to the command's
    options; other ``name=`` texts are left as they are.

    >>> for_command_line("'/m' is a folder: load it with model='local-dir:/m'", {"model": "--model"})
    "'/m' is a folder: load it with --model local-dir:/m"
    >>> for_command_line("pass image_root= to read them elsewhere", {"image_root": "--image-root"})
    'pass --image-root to read them elsewhere'
    """

    def option(match: re.Match) -> str:
        flag = options.get(match.group(1))
        if flag is None:
            return match.group(0)
        value = match.group(2)
        if not value:
            return flag
        if value[0] in "'\"":
            value = shlex.quote(value[1:-1])
        return f"{flag} {value}"

    return _KEYWORD_ADVICE.sub(option, message)


def _command_options() -> dict[str, str]:
    """The running command's parameters by name, each with its long option."""
    context = _current_context(silent=True)
    if context is None:
        return {}
    return {
        param.name: next((opt for opt in param.opts if opt.startswith("--")), param.opts[0])
        for param in context.command.params
        if param.name and param.opts and getattr(param, "param_type_name", "") == "option"
    }


def parse_key_value(text: str, flag: str = "--backend-option") -> tuple[str, str]:
    """``KEY=VALUE`` of a repeatable option (``--backend-option``, ``--style-option``,
    ``--target-option``), split; the value is typed later, by whatever declares the option.

    >>> parse_key_value("crop-size=64", "--style-option")
    ('crop_size', '64')
    >>> parse_key_value("crop_size", "--style-option")
    Traceback (most recent call last):
    ...
    api_prompt.errors.ConfigError: --style-option expected KEY=VALUE, got 'crop_size'
    """
    key, sep, value = str(text).partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not key:
        raise ConfigError(f"{flag} expected KEY=VALUE, got {text!r}")
    return key, value.strip()


QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")]
MaxPixelsOpt = Annotated[
    int,
    typer.Option(
        "--max-pixels",
        min=1,
        max=DEFAULT_MAX_PIXELS,
        metavar="N",
        help=f"Refuse images of more than N pixels (width x height) before decoding them (the "
        f"decompression-bomb guard). Default and highest value: the library's limit, {DEFAULT_MAX_PIXELS:,}.",
    ),
]


@contextmanager
def status(message: str, *, quiet: bool) -> Iterator[None]:
    """A spinner on stderr while slow work runs (silent with --quiet or when not a terminal)."""
    if quiet:
        yield
        return
    from rich.console import Console

    console = Console(stderr=True)
    if console.is_terminal:
        with console.status(message + " ..."):
            yield
    else:
        console.print(message + " ...", highlight=False, markup=False, soft_wrap=True)
        yield


@contextmanager
def handle_errors(debug: bool) -> Iterator[None]:
    """Turn expected failures into one line on stderr and exit code 2 (tracebacks with --debug)."""
    try:
        yield
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None
    except (APIPromptError, OSError, ValueError) as exc:
        if debug:
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        typer.echo(f"error: {for_command_line(message, _command_options())}", err=True)
        raise typer.Exit(2) from None


#: help texts made from a registry, by option flag: made again whenever a command's options are
#: read, so a backend, style, target kind, benchmark or output format registered after the
#: command line was imported is listed in ``--help`` too
REGISTRY_HELP: dict[str, Callable[[], str]] = {}


def registry_help(flag: str, text: Callable[[], str]) -> str:
    """``text()`` now, and again each time the option ``flag`` is shown (see :data:`REGISTRY_HELP`)."""
    REGISTRY_HELP[flag] = text
    return text()


def _with_registry_help(params: list) -> list:
    for param in params:
        text = REGISTRY_HELP.get(param.opts[0]) if getattr(param, "opts", None) else None
        if text is not None:
            param.help = text()
    return params


def _without_type_labels(params: list) -> list:
    """Flags (``--quiet``, ``--help``) shown without a ``<bool>`` label in ``--help``."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class OneLineErrorCommand(TyperCommand):
    """A command whose usage errors (bad option value, missing argument) are one line on stderr.

    Click would print a usage block and a boxed message; scripts and people reading logs get
    ``error: <what was wrong> (see 'api-prompt prompt --help')`` (the help of the command that
    was run) and exit code 2 instead. ``cli/app.py`` registers every command with it.
    """

    def get_params(self, ctx: ClickContext) -> list:
        return _without_type_labels(_with_registry_help(super().get_params(ctx)))

    def parse_args(self, ctx: ClickContext, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except _USAGE_ERRORS as exc:
            message = " ".join(exc.format_message().replace("Value error, ", "").split())
            command = ctx.command_path or "api-prompt"
            typer.echo(f"error: {message} (see '{command} --help')", err=True)
            raise typer.Exit(2) from None
