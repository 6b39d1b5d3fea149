"""What the sub-commands share: the prompt options, building a Prompter, and error handling."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from typing import Annotated, Iterator, Optional

import click
import typer
from typer.core import TyperCommand

from api_prompt.errors import APIPromptError
from api_prompt.presets import PRESETS

try:  # recent typer releases vendor click, with their own exception classes
    from typer._click.exceptions import UsageError as _VendoredUsageError
except ImportError:  # pragma: no cover - typer on top of the click package
    _VendoredUsageError = click.UsageError
_USAGE_ERRORS = (click.UsageError, _VendoredUsageError)


class Backend(str, Enum):
    clip = "clip"
    llava = "llava"
    llava_next = "llava-next"
    qwen2_vl = "qwen2-vl"
    qwen2_5_vl = "qwen2.5-vl"


class Resample(str, Enum):
    lanczos = "lanczos"
    bicubic = "bicubic"
    bilinear = "bilinear"
    nearest = "nearest"


class Geometry(str, Enum):
    stretch = "stretch"
    fit = "fit"


_MODEL = "Model"
_MAP = "Map and overlay (a preset fills what you leave unset)"

BackendOpt = Annotated[Backend, typer.Option("--backend", help="Auxiliary model family.", rich_help_panel=_MODEL)]
ModelOpt = Annotated[Optional[str], typer.Option(
    "--model", "-m", rich_help_panel=_MODEL, show_default=False,
    help="CLIP: an open_clip name (default ViT-L-14-336-quickgelu), 'hf-hub:ORG/REPO', "
    "'local-dir:PATH' or a checkpoint file. LLaVA, LLaVA-NeXT, Qwen2-VL: a Hugging Face id or local "
    "folder (default llava-hf/llava-1.5-7b-hf, llava-hf/llava-v1.6-mistral-7b-hf, "
    "Qwen/Qwen2-VL-7B-Instruct, Qwen/Qwen2.5-VL-7B-Instruct).",
)]
PretrainedOpt = Annotated[Optional[str], typer.Option(
    "--pretrained", rich_help_panel=_MODEL, show_default=False,
    help="open_clip pretrained tag or checkpoint path (default 'openai' for the default model).",
)]
LayerOpt = Annotated[Optional[int], typer.Option(
    "--layer", rich_help_panel=_MODEL, show_default=False,
    help="0-based block to read (negative counts from the end). Default: CLIP n_blocks-2, LLaVA 20, "
    "LLaVA-NeXT and Qwen n_layers*20//32.",
)]
DeviceOpt = Annotated[str, typer.Option("--device", rich_help_panel=_MODEL, help="auto, cpu, cuda, cuda:N or mps.")]
DtypeOpt = Annotated[Optional[str], typer.Option(
    "--dtype", rich_help_panel=_MODEL, show_default=False,
    help="fp32, fp16 or bf16 (default: fp32 for CLIP, fp16 for decoder backends on GPU).",
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


@dataclass(frozen=True)
class PromptOptions:
    """The prompt options shared by ``prompt``, ``batch`` and ``ask``, as the user gave them.

    Built once per command: :meth:`check` refuses bad values without loading a model, and
    :meth:`build` loads the :class:`~api_prompt.Prompter` they describe.
    """

    backend: Backend
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

    def _settings(self) -> dict:
        return dict(
            preset=self.preset, enhance=self.enhance, kernel_size=self.kernel_size,
            resample=self.resample.value if self.resample else None, background=self.background,
            geometry=self.geometry.value,
        )

    def check(self) -> None:
        """Refuse bad map, overlay, device and dtype options without loading a model."""
        from api_prompt.attribution.base import resolve_device, resolve_dtype
        from api_prompt.prompter import check_settings

        settings = self._settings()
        check_settings(settings.pop("preset"), **settings)
        resolve_device(self.device)
        resolve_dtype(self.dtype)

    def build(self, *, quiet: bool, **backend_options):
        """The Prompter the options describe, with a status line while the model loads.

        ``backend_options`` go to the backend's constructor (e.g. ``batch_size``).
        """
        from api_prompt.prompter import Prompter

        with status(f"Loading {self.backend.value} model {self.model or '(default)'}", quiet=quiet):
            return Prompter(
                self.backend.value, self.model, pretrained=self.pretrained, layer=self.layer,
                device=self.device, dtype=self.dtype, **self._settings(), **backend_options,
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
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(2)


class OneLineErrorCommand(TyperCommand):
    """A command whose usage errors (bad option value, missing argument) are one line on stderr.

    Click would print a usage block and a boxed message; scripts and people reading logs get
    ``error: <what was wrong> (see 'api-prompt --help')`` and exit code 2 instead. Use it with
    ``@app.command("name", cls=OneLineErrorCommand)``.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except _USAGE_ERRORS as exc:
            message = " ".join(exc.format_message().replace("Value error, ", "").split())
            program = ctx.find_root().info_name or "api-prompt"
            typer.echo(f"error: {message} (see '{program} --help')", err=True)
            raise typer.Exit(2) from None
