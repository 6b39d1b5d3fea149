"""The prompt options, declared once: every command that makes a prompt (``prompt``, ``ask``,
``batch``, ``eval``, ``serve``, ``playground``) takes them through :func:`prompt_options` and gets
one :class:`PromptOptions`, which checks them without torch and builds the Prompter.

Choices and help come from the registries (backends, styles, presets); ``--backend-option`` is
typed by the backend's spec and ``--style-option`` by the style, with the same code
(:class:`~api_prompt.attribution.registry.BackendOption`).

Long because: the sixteen declarations, their help from the registries and the checks that read
them are one contract (what every prompting command takes), kept in one place to read.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, fields
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any

import typer

from api_prompt.errors import ConfigError
from api_prompt.settings import GEOMETRIES, PRESETS, RESAMPLE

from .common import check_device_name, parse_key_value, registry_help, status

if TYPE_CHECKING:  # str Enums whose members, the tables' names, are known at run time only

    class Resample(str, Enum): ...

    class Geometry(str, Enum): ...

else:
    #: Upsampling filters and geometries, from the overlay's own tables.
    Resample = Enum("Resample", {name: name for name in RESAMPLE}, type=str)
    Geometry = Enum("Geometry", {name: name for name in GEOMETRIES}, type=str)

#: The backend used when --backend is not given.
DEFAULT_BACKEND = "clip"

_DTYPES = ("fp32", "float32", "fp16", "float16", "half", "bf16", "bfloat16")


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
    return parse_key_value(text, "--backend-option")


def parse_style(name: str) -> str:
    """``--style``'s value checked against the style registry at parse time (a style registered
    after this module was imported is accepted too)."""
    from api_prompt.styles import STYLES

    key = str(name).strip().lower()
    if key not in STYLES:
        raise typer.BadParameter(f"unknown style {name!r}; choose one of: {', '.join(STYLES)}")
    return key


def style_option(style: str, key: str):
    """The option ``key`` of the style called ``style``, declared as the backends declare theirs
    (a :class:`~api_prompt.attribution.registry.BackendOption`, so values are typed by the same
    code): its type from the style constructor's annotation, its default from its signature.
    None when the style takes no such option.

    >>> style_option("crop", "crop_size").convert("64")
    64
    >>> style_option("box", "width")          # int | None: an integer, or unset
    BackendOption(name='width', type=<class 'int'>, default=None, help='')
    >>> style_option("overlay", "crop_size") is None
    True
    """
    import types
    import typing

    from api_prompt.attribution.registry import BackendOption
    from api_prompt.styles import STYLES, style_options

    cls = STYLES[style]
    if key not in style_options(cls):
        return None
    parameter = inspect.signature(cls.__init__, eval_str=True).parameters[key]
    kind = parameter.annotation
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        kind = next((arg for arg in typing.get_args(kind) if arg is not type(None)), str)
    if kind not in (str, int, float, bool):
        kind = str
    default = None if parameter.default is inspect.Parameter.empty else parameter.default
    return BackendOption(key, kind, default, "")


#: backend options that have a command-line flag of their own
_OWN_FLAGS = ("pretrained", "enhance", "kernel_size")


def _backends_help() -> str:
    from api_prompt.attribution.registry import backend_specs

    described = "; ".join(f"{spec.name}: {spec.help}" for spec in backend_specs())
    return f"Auxiliary model family ({described})."


def _models_help() -> str:
    from api_prompt.attribution.registry import backend_specs

    described = " ".join(
        f"{spec.name}: {spec.model_help or spec.default_model}." for spec in backend_specs()
    )
    return f"What the backend's library loads. {described}"


def _layers_help() -> str:
    from api_prompt.attribution.registry import backend_specs

    rules = ", ".join(
        f"{spec.name} {spec.default_layer.replace(' ', '')}" for spec in backend_specs()
    )
    return f"0-based block to read (negative counts from the end). Default: {rules}."


def _backend_options_help() -> str:
    from api_prompt.attribution.registry import backend_specs

    declared = "; ".join(
        f"{spec.name}: {', '.join(names)}"
        for spec in backend_specs()
        if (
            names := [
                option.name
                for option in spec.options
                if option.name not in _OWN_FLAGS and option.type is not object
            ]
        )
    )
    return f"An option of the backend, typed and checked by its spec (repeatable). {declared}."


#: style options that have a command-line flag of their own (the overlay settings)
_OWN_STYLE_FLAGS = ("resample", "background", "geometry")


def _styles_help() -> str:
    from api_prompt.styles import STYLES

    def first_line(cls: type) -> str:
        line = (cls.__doc__ or "").strip().splitlines()[0].rstrip(".").replace("``", "")
        return line[:1].lower() + line[1:]

    described = "; ".join(f"{name}: {first_line(cls)}" for name, cls in STYLES.items())
    return f"How the map is shown to the target ({described})."


def _style_options_help() -> str:
    from api_prompt.styles import STYLES, style_options

    declared = "; ".join(
        f"{name}: {', '.join(names)}"
        for name, cls in STYLES.items()
        if (names := [key for key in style_options(cls) if key not in _OWN_STYLE_FLAGS])
    )
    return (
        f"An option of the style, typed and checked by the style (repeatable). {declared}. "
        "crop's one_image=side-by-side|crop is what one-image outputs (batch, -o) get."
    )


def _recipes_help() -> str:
    return (
        "How the map's raw parts are combined into the mask (a registered recipe, e.g. "
        "clip-soft-or, siglip-soft-or, llava). Default: the backend's."
    )


_MODEL = "Model"
_MAP = "Map and overlay (a preset fills what you leave unset)"
_STYLE = "Prompt style"

BackendOpt = Annotated[
    str,
    typer.Option(
        "--backend",
        parser=parse_backend,
        metavar="NAME",
        help=registry_help("--backend", _backends_help),
        rich_help_panel=_MODEL,
    ),
]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        rich_help_panel=_MODEL,
        show_default=False,
        help=_models_help(),
    ),
]
PretrainedOpt = Annotated[
    str | None,
    typer.Option(
        "--pretrained",
        rich_help_panel=_MODEL,
        show_default=False,
        help="open_clip pretrained tag or checkpoint path (default 'openai' for the default model); "
        "only for backends whose spec declares it.",
    ),
]
LayerOpt = Annotated[
    int | None,
    typer.Option(
        "--layer",
        rich_help_panel=_MODEL,
        show_default=False,
        help=_layers_help(),
    ),
]
BackendOptionOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--backend-option",
        "-B",
        metavar="KEY=VALUE",
        rich_help_panel=_MODEL,
        show_default=False,
        help=registry_help("--backend-option", _backend_options_help),
    ),
]
DeviceOpt = Annotated[
    str, typer.Option("--device", rich_help_panel=_MODEL, help="auto, cpu, cuda, cuda:N or mps.")
]
DtypeOpt = Annotated[
    str | None,
    typer.Option(
        "--dtype",
        rich_help_panel=_MODEL,
        show_default=False,
        help="fp32, fp16 or bf16 (default: fp32 for CLIP, fp16 for LLaVA on GPU).",
    ),
]
PresetOpt = Annotated[
    str | None,
    typer.Option(
        "--preset",
        rich_help_panel=_MAP,
        show_default=False,
        help=f"Published settings: {', '.join(PRESETS)} (default package). Explicit options override it.",
    ),
]
EnhanceOpt = Annotated[
    float | None,
    typer.Option(
        "--enhance",
        rich_help_panel=_MAP,
        show_default=False,
        help="Contrast coefficient coe (preset: 10).",
    ),
]
KernelOpt = Annotated[
    int | None,
    typer.Option(
        "--kernel-size",
        "-k",
        rich_help_panel=_MAP,
        show_default=False,
        help="Odd box-filter size on the grid; 1 = no smoothing (preset: 3).",
    ),
]
ResampleOpt = Annotated[
    Resample | None,
    typer.Option(
        "--resample",
        rich_help_panel=_MAP,
        show_default=False,
        help="Upsampling filter (preset: lanczos).",
    ),
]
BackgroundOpt = Annotated[
    int | None,
    typer.Option(
        "--background",
        "-g",
        rich_help_panel=_MAP,
        show_default=False,
        help="Gray level 0-255 shown where the map is low (preset: 0).",
    ),
]
GeometryOpt = Annotated[
    Geometry,
    typer.Option(
        "--geometry",
        rich_help_panel=_MAP,
        help="stretch: the map over the whole image, as the paper; fit: where the model actually looked.",
    ),
]
RecipeOpt = Annotated[
    str | None,
    typer.Option(
        "--recipe",
        rich_help_panel=_MAP,
        metavar="NAME",
        show_default=False,
        help=registry_help("--recipe", _recipes_help),
    ),
]
StyleOpt = Annotated[
    str,
    typer.Option(
        "--style",
        parser=parse_style,
        metavar="NAME",
        rich_help_panel=_STYLE,
        help=registry_help("--style", _styles_help),
    ),
]
StyleOptionOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--style-option",
        "-S",
        metavar="KEY=VALUE",
        rich_help_panel=_STYLE,
        show_default=False,
        help=registry_help("--style-option", _style_options_help),
    ),
]


@dataclass(frozen=True)
class PromptOptions:
    """The prompt options every command that makes a prompt shares, as the user gave them.

    Declared once (:func:`prompt_options` adds them to a command) and built once per command:
    :meth:`check` refuses bad values without loading a model, and :meth:`build` loads the
    :class:`~api_prompt.Prompter` they describe.
    """

    backend: str
    model: str | None
    pretrained: str | None
    layer: int | None
    device: str
    dtype: str | None
    preset: str | None
    enhance: float | None
    kernel_size: int | None
    resample: Resample | None
    background: int | None
    geometry: Geometry
    #: ``KEY=VALUE`` texts of ``--backend-option``, typed by the backend's spec
    backend_options: tuple[str, ...] = ()
    recipe: str | None = None
    style: str = "overlay"
    #: ``KEY=VALUE`` texts of ``--style-option``, typed by the style
    style_options: tuple[str, ...] = ()

    @classmethod
    def from_command(cls, parameters: dict) -> PromptOptions:
        """The options among a command's parameters, read by name (``--backend-option`` as
        ``backend_option``, ``--style-option`` as ``style_option``), as :func:`prompt_options`
        declares them."""
        repeated = {"backend_options": "backend_option", "style_options": "style_option"}
        given = {
            field.name: parameters[repeated.get(field.name, field.name)]
            for field in fields(cls)
            if repeated.get(field.name, field.name) in parameters
        }
        return cls(**{**given, **{name: tuple(given.get(name) or ()) for name in repeated}})

    def settings(self) -> dict:
        """The map and overlay settings (``preset`` included), as a Prompter takes them."""
        return dict(
            preset=self.preset,
            enhance=self.enhance,
            kernel_size=self.kernel_size,
            resample=self.resample.value if self.resample else None,
            background=self.background,
            geometry=self.geometry.value,
        )

    def check(self, also_styles: tuple[str, ...] = ()) -> None:
        """Refuse bad map, overlay, style, device, dtype, model and backend options without torch
        (``also_styles``: see :meth:`build`).

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

        check_model_name(
            self.model,
            open_clip=get_backend(self.backend).option("pretrained") is not None,
            pretrained=self.pretrained,
        )
        self.checked_style_options(also=tuple(also_styles))

    def check_device(self) -> None:
        """Whether ``--device`` is present here and ``--recipe`` is known (imports torch: call it
        after the cheap checks)."""
        from api_prompt.attribution.base import resolve_device

        resolve_device(self.device)
        if self.recipe is not None:
            from api_prompt.maps import get_recipe

            get_recipe(self.recipe)

    def checked_style_options(self, also: tuple[str, ...] = ()) -> dict:
        """``--style-option`` typed and checked by the styles in use: ``--style`` and ``also``
        (the styles ``eval --conditions`` names). An option none of them takes, or a value the
        style refuses, is a ConfigError. The overlay settings have flags of their own.

        >>> PromptOptions("clip", None, None, None, "auto", None, None, None, None, None, None,
        ...               Geometry.stretch, style="crop", style_options=("crop_size=64",)).checked_style_options()
        {'crop_size': 64}
        """
        from api_prompt.styles import STYLES, create_style, style_options

        in_use = list(dict.fromkeys([self.style, *(name for name in also if name in STYLES)]))
        checked: dict = {}
        for key, value in (parse_key_value(text, "--style-option") for text in self.style_options):
            if key in _OWN_STYLE_FLAGS:
                raise ConfigError(f"give {key} as --{key}, not as --style-option")
            owner, declared = next(
                ((name, option) for name in in_use if (option := style_option(name, key))),
                (None, None),
            )
            if declared is None:
                taken = "; ".join(
                    f"{name}: {', '.join(k for k in style_options(STYLES[name]) if k not in _OWN_STYLE_FLAGS) or 'none'}"
                    for name in in_use
                )
                raise ConfigError(
                    f"no style in use takes the option {key!r} (style options: {taken})"
                )
            try:
                checked[key] = declared.convert(value)
            except ConfigError as exc:
                raise ConfigError(f"the {owner} style's {exc}") from None
        for name in in_use:  # values each style refuses (an unknown one_image, a bad colour)
            create_style(
                name, **{key: value for key, value in checked.items() if style_option(name, key)}
            )
        return checked

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
                raise ConfigError(
                    f"the {spec.name} backend's option {key!r} can only be given in Python"
                )
        if self.pretrained is not None:
            if spec.option("pretrained") is None:
                raise ConfigError(
                    f"--pretrained is not an option of the {spec.name} backend (it is for CLIP): "
                    f"pass the checkpoint with --model"
                )
            given["pretrained"] = self.pretrained
        # a command's own settings (batch's --batch-size) reach only backends that declare them
        extra = {
            key: value for key, value in extra.items() if value is not None and spec.option(key)
        }
        return spec.check_options({**given, **extra})

    def build(self, *, quiet: bool, also_styles: tuple[str, ...] = (), **backend_options):
        """The Prompter the options describe, with a status line while the model loads.

        ``backend_options`` (e.g. ``batch_size``) go to the backend's constructor when its spec
        declares them; ``also_styles`` are other styles the Prompter will show (``eval``'s
        conditions), whose options ``--style-option`` may give.
        """
        from api_prompt.prompter import Prompter

        options = self.checked_backend_options(**backend_options)
        styles = self.checked_style_options(also=tuple(also_styles))
        with status(f"Loading {self.backend} model {self.model or '(default)'}", quiet=quiet):
            return Prompter(
                self.backend,
                self.model,
                layer=self.layer,
                device=self.device,
                dtype=self.dtype,
                recipe=self.recipe,
                style=self.style,
                style_options=styles or None,
                **self.settings(),
                **options,
            )


#: The shared prompt options, in the order ``--help`` lists them: (parameter, option, default).
PROMPT_PARAMETERS: tuple[tuple[str, Any, Any], ...] = (
    ("preset", PresetOpt, None),
    ("backend", BackendOpt, DEFAULT_BACKEND),
    ("backend_option", BackendOptionOpt, None),
    ("model", ModelOpt, None),
    ("pretrained", PretrainedOpt, None),
    ("layer", LayerOpt, None),
    ("recipe", RecipeOpt, None),
    ("enhance", EnhanceOpt, None),
    ("kernel_size", KernelOpt, None),
    ("resample", ResampleOpt, None),
    ("background", BackgroundOpt, None),
    ("geometry", GeometryOpt, Geometry("stretch")),
    ("style", StyleOpt, "overlay"),
    ("style_option", StyleOptionOpt, None),
    ("device", DeviceOpt, "auto"),
    ("dtype", DtypeOpt, None),
)
#: parameters every command keeps last in its signature (and so in ``--help``)
_LAST = ("quiet", "debug")


def prompt_options(**replaced: Any) -> Callable[[Callable], Callable]:
    """Decorator: give a command the shared prompt options (:data:`PROMPT_PARAMETERS`).

    The command declares a keyword parameter ``options`` instead of the sixteen options; it
    receives them as one :class:`PromptOptions`. ``replaced`` swaps an option's declaration for a
    command that says it differently (the playground's ``--model`` default), name for name.

    >>> @prompt_options()
    ... def show(name: str, *, options: PromptOptions, quiet: bool = False) -> str:
    ...     return f"{name}: {options.backend}, {options.style}"
    >>> list(inspect.signature(show).parameters)[:4], list(inspect.signature(show).parameters)[-1]
    (['name', 'preset', 'backend', 'backend_option'], 'quiet')
    >>> show(name="x", **{name: default for name, _, default in PROMPT_PARAMETERS})
    'x: clip, overlay'
    """
    unknown = set(replaced) - {name for name, _, _ in PROMPT_PARAMETERS}
    if unknown:
        raise TypeError(f"prompt_options() has no option {', '.join(sorted(unknown))}")

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command, eval_str=True)
        own = [parameter for name, parameter in signature.parameters.items() if name != "options"]
        shared = [
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=default,
                annotation=replaced.get(name, option),
            )
            for name, option, default in PROMPT_PARAMETERS
        ]
        ordered = (
            [p for p in own if p.name not in _LAST] + shared + [p for p in own if p.name in _LAST]
        )
        parameters = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in ordered]

        @functools.wraps(command)
        def with_options(**given: Any) -> Any:
            values = {name: given.pop(name) for name, _, _ in PROMPT_PARAMETERS}
            return command(**given, options=PromptOptions.from_command(values))

        with_options.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        with_options.__annotations__ = {p.name: p.annotation for p in parameters}
        return with_options

    return decorate
