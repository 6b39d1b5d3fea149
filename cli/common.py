"""What the sub-commands share: the prompt options, building a Prompter, and error handling."""

from __future__ import annotations

import re
import shlex
from contextlib import contextmanager
from dataclasses import dataclass, fields
from enum import Enum
from typing import Annotated, Iterator, Optional

import click
import typer
from typer.core import TyperCommand

from api_prompt.errors import APIPromptError, ConfigError
from api_prompt.images import DEFAULT_MAX_PIXELS
from api_prompt.overlay import GEOMETRIES, RESAMPLE
from api_prompt.presets import PRESETS

try:  # recent typer releases vendor click, with their own exception classes
    from typer._click.exceptions import UsageError as _VendoredUsageError
    from typer._click.globals import get_current_context as _current_context
except ImportError:  # pragma: no cover - typer on top of the click package
    _VendoredUsageError = click.UsageError
    _current_context = click.get_current_context
_USAGE_ERRORS = (click.UsageError, _VendoredUsageError)


#: Upsampling filters and geometries, from the overlay's own tables.
Resample = Enum("Resample", {name: name for name in RESAMPLE}, type=str)
Geometry = Enum("Geometry", {name: name for name in GEOMETRIES}, type=str)
#: The backend used when --backend is not given.
DEFAULT_BACKEND = "clip"
#: Where to read more, said at the end of ``api-prompt --help``.
DOCS_HINT = ("the documentation is the docs/ folder of the source distribution "
             "(a site: pip install -e '.\\[dev]' && mkdocs serve); start with docs/getting-started.md")
#: Device kinds torch knows (checked here without importing torch; whether the device is
#: present is checked when the model loads).
_DEVICE = re.compile(r"(auto|cpu|mps|meta|(cuda|xpu|hpu|npu|xla|mtia)(:\d+)?)")
_DTYPES = ("fp32", "float32", "fp16", "float16", "half", "bf16", "bfloat16")


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


def parse_backend(name: str) -> str:
    """``--backend``'s value checked against the registry at parse time (so a backend registered
    after this module was imported is accepted too)."""
    from api_prompt.attribution.registry import BACKENDS

    name = str(name).strip()
    if name not in BACKENDS:
        raise typer.BadParameter(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")
    return name


def parse_backend_option(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` of ``--backend-option``, split (the value is typed later, by the spec)."""
    key, sep, value = str(text).partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not key:
        raise ConfigError(f"--backend-option expected KEY=VALUE, got {text!r}")
    return key, value.strip()


#: backend options that have a command-line flag of their own
_OWN_FLAGS = ("pretrained", "enhance", "kernel_size")


def _backends_help() -> str:
    from api_prompt.attribution.registry import backend_specs

    described = "; ".join(f"{spec.name}: {spec.help}" for spec in backend_specs())
    return f"Auxiliary model family ({described})."


def _models_help() -> str:
    from api_prompt.attribution.registry import backend_specs

    described = " ".join(f"{spec.name}: {spec.model_help or spec.default_model}." for spec in backend_specs())
    return f"What the backend's library loads. {described}"


def _layers_help() -> str:
    from api_prompt.attribution.registry import backend_specs

    rules = ", ".join(f"{spec.name} {spec.default_layer.replace(' ', '')}" for spec in backend_specs())
    return f"0-based block to read (negative counts from the end). Default: {rules}."


def _backend_options_help() -> str:
    from api_prompt.attribution.registry import backend_specs

    declared = "; ".join(
        f"{spec.name}: {', '.join(names)}"
        for spec in backend_specs()
        if (names := [option.name for option in spec.options
                      if option.name not in _OWN_FLAGS and option.type is not object])
    )
    return f"An option of the backend, typed and checked by its spec (repeatable). {declared}."


_MODEL = "Model"
_MAP = "Map and overlay (a preset fills what you leave unset)"

BackendOpt = Annotated[str, typer.Option(
    "--backend", parser=parse_backend, metavar="NAME", help=_backends_help(), rich_help_panel=_MODEL,
)]
ModelOpt = Annotated[Optional[str], typer.Option(
    "--model", "-m", rich_help_panel=_MODEL, show_default=False, help=_models_help(),
)]
PretrainedOpt = Annotated[Optional[str], typer.Option(
    "--pretrained", rich_help_panel=_MODEL, show_default=False,
    help="open_clip pretrained tag or checkpoint path (default 'openai' for the default model); "
    "only for backends whose spec declares it.",
)]
LayerOpt = Annotated[Optional[int], typer.Option(
    "--layer", rich_help_panel=_MODEL, show_default=False, help=_layers_help(),
)]
BackendOptionOpt = Annotated[Optional[list[str]], typer.Option(
    "--backend-option", "-B", metavar="KEY=VALUE", rich_help_panel=_MODEL, show_default=False,
    help=_backend_options_help(),
)]
DeviceOpt = Annotated[str, typer.Option("--device", rich_help_panel=_MODEL, help="auto, cpu, cuda, cuda:N or mps.")]
DtypeOpt = Annotated[Optional[str], typer.Option(
    "--dtype", rich_help_panel=_MODEL, show_default=False,
    help="fp32, fp16 or bf16 (default: fp32 for CLIP, fp16 for LLaVA on GPU).",
)]
PresetOpt = Annotated[Optional[str], typer.Option(
    "--preset", rich_help_panel=_MAP, show_default=False,
    help=f"Published settings: {', '.join(PRESETS)} (default package). Explicit options override it.",
)]
EnhanceOpt = Annotated[Optional[float], typer.Option(
    "--enhance", rich_help_panel=_MAP, show_default=False, help="Contrast coefficient coe (preset: 10).",
)]
KernelOpt = Annotated[Optional[int], typer.Option(
    "--kernel-size", "-k", rich_help_panel=_MAP, show_default=False,
    help="Odd box-filter size on the grid; 1 = no smoothing (preset: 3).",
)]
ResampleOpt = Annotated[Optional[Resample], typer.Option(
    "--resample", rich_help_panel=_MAP, show_default=False, help="Upsampling filter (preset: lanczos).",
)]
BackgroundOpt = Annotated[Optional[int], typer.Option(
    "--background", "-g", rich_help_panel=_MAP, show_default=False,
    help="Gray level 0-255 shown where the map is low (preset: 0).",
)]
GeometryOpt = Annotated[Geometry, typer.Option(
    "--geometry", rich_help_panel=_MAP,
    help="stretch: the map over the whole image, as the paper; fit: where the model actually looked.",
)]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")]
MaxPixelsOpt = Annotated[int, typer.Option(
    "--max-pixels", min=1, max=DEFAULT_MAX_PIXELS, metavar="N",
    help=f"Refuse images of more than N pixels (width x height) before decoding them (the "
    f"decompression-bomb guard). Default and highest value: the library's limit, {DEFAULT_MAX_PIXELS:,}.",
)]


@dataclass(frozen=True)
class PromptOptions:
    """The prompt options shared by ``prompt``, ``batch`` and ``ask``, as the user gave them.

    Built once per command: :meth:`check` refuses bad values without loading a model, and
    :meth:`build` loads the :class:`~api_prompt.Prompter` they describe.
    """

    backend: str
    model: Optional[str]
    pretrained: Optional[str]
    layer: Optional[int]
    device: str
    dtype: Optional[str]
    preset: Optional[str]
    enhance: Optional[float]
    kernel_size: Optional[int]
    resample: Optional[Resample]
    background: Optional[int]
    geometry: Geometry
    #: ``KEY=VALUE`` texts of ``--backend-option``, typed by the backend's spec
    backend_options: tuple[str, ...] = ()

    @classmethod
    def from_command(cls, parameters: dict) -> "PromptOptions":
        """The options among a command's parameters (its ``locals()``), read by name: every
        command declares them alike (``--backend-option`` as ``backend_option``)."""
        names = [field.name for field in fields(cls) if field.name != "backend_options"]
        return cls(**{name: parameters[name] for name in names},
                   backend_options=tuple(parameters["backend_option"] or ()))

    def settings(self) -> dict:
        """The map and overlay settings (``preset`` included), as a Prompter takes them."""
        return dict(
            preset=self.preset, enhance=self.enhance, kernel_size=self.kernel_size,
            resample=self.resample.value if self.resample else None, background=self.background,
            geometry=self.geometry.value,
        )

    def check(self) -> None:
        """Refuse bad map, overlay, device, dtype, model and backend options without torch.

        Only what the options themselves say is checked here (the device's name, a local model
        folder that exists); whether the device is present needs torch and is checked by
        :meth:`check_device`.
        """
        from api_prompt.hub import check_model_name
        from api_prompt.presets import check_settings

        settings = self.settings()
        check_settings(settings.pop("preset"), **settings)
        check_device_name(self.device)
        if self.dtype is not None and str(self.dtype).lower() not in _DTYPES:
            raise ConfigError(f"unknown dtype {self.dtype!r}; choose fp32, fp16 or bf16")
        self.checked_backend_options()
        from api_prompt.attribution.registry import get_backend

        check_model_name(self.model, open_clip=get_backend(self.backend).option("pretrained") is not None,
                         pretrained=self.pretrained)

    def check_device(self) -> None:
        """Whether ``--device`` is present here (imports torch: call it after the cheap checks)."""
        from api_prompt.attribution.base import resolve_device

        resolve_device(self.device)

    def checked_backend_options(self, **extra) -> dict:
        """``--pretrained`` and ``--backend-option``, typed and checked against the backend's
        spec (a ConfigError names what it does not take), plus those of ``extra`` (a command's
        own settings, e.g. ``batch_size``) that the spec declares."""
        from api_prompt.attribution.registry import COMMON_OPTIONS, get_backend

        spec = get_backend(self.backend)
        given = dict(parse_backend_option(text) for text in self.backend_options)
        for key in given:
            if key in COMMON_OPTIONS or key in _OWN_FLAGS:
                flag = "--" + key.replace("_", "-")
                raise ConfigError(f"give {key} as {flag}, not as --backend-option")
            declared = spec.option(key)
            if declared is not None and declared.type is object:
                raise ConfigError(f"the {spec.name} backend's option {key!r} can only be given in Python")
        if self.pretrained is not None:
            if spec.option("pretrained") is None:
                raise ConfigError(
                    f"--pretrained is not an option of the {spec.name} backend (it is for CLIP): "
                    f"pass the checkpoint with --model"
                )
            given["pretrained"] = self.pretrained
        # a command's own settings (batch's --batch-size) reach only backends that declare them
        extra = {key: value for key, value in extra.items() if value is not None and spec.option(key)}
        return spec.check_options({**given, **extra})

    def build(self, *, quiet: bool, **backend_options):
        """The Prompter the options describe, with a status line while the model loads.

        ``backend_options`` (e.g. ``batch_size``) go to the backend's constructor when its spec
        declares them.
        """
        from api_prompt.prompter import Prompter

        options = self.checked_backend_options(**backend_options)
        with status(f"Loading {self.backend} model {self.model or '(default)'}", quiet=quiet):
            return Prompter(
                self.backend, self.model, layer=self.layer, device=self.device, dtype=self.dtype,
                **self.settings(), **options,
            )


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
        raise typer.Exit(130)
    except (APIPromptError, OSError, ValueError) as exc:
        if debug:
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        typer.echo(f"error: {for_command_line(message, _command_options())}", err=True)
        raise typer.Exit(2)


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
    was run) and exit code 2 instead. Use it with ``@app.command("name", cls=OneLineErrorCommand)``.
    """

    def get_params(self, ctx: click.Context) -> list:
        return _without_type_labels(super().get_params(ctx))

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except _USAGE_ERRORS as exc:
            message = " ".join(exc.format_message().replace("Value error, ", "").split())
            command = ctx.command_path or "api-prompt"
            typer.echo(f"error: {message} (see '{command} --help')", err=True)
            raise typer.Exit(2) from None
