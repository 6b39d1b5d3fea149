"""``api-prompt IMAGE QUERY``: write the prompted image (and, on request, the map and a heat map).

The command is thin: it checks everything cheap first (query, options, the image, the output
paths), then builds the same :class:`~api_prompt.Prompter` the Python API exposes, runs it once
and writes every output atomically (a temporary file in the target folder, renamed at the end),
so a failure at any step leaves nothing behind.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Annotated

import typer
from PIL import Image

from api_prompt.errors import ConfigError, ImageLoadError
from api_prompt.images import DEFAULT_MAX_PIXELS, ImageTooLargeError

from .common import (
    DebugOpt,
    MaxPixelsOpt,
    QuietOpt,
    handle_errors,
    image_argument,
)
from .options import PromptOptions, prompt_options

#: JPEG quality of ``-o *.jpg`` (stated in --help). PNG and WebP are written lossless.
JPEG_QUALITY = 95
#: Suffix of the default output name: ``photo.jpg`` -> ``photo_api.png`` in the same folder.
DEFAULT_SUFFIX = "_api.png"

_OUTPUT = "Output"

OutputOpt = Annotated[
    Path | None,
    typer.Option(
        "--output",
        "-o",
        rich_help_panel=_OUTPUT,
        show_default="<stem>_api.png next to IMAGE",
        help=f"Where to write the prompted image. The format follows the extension: .png (lossless), "
        f".jpg/.jpeg (quality {JPEG_QUALITY}), .webp (lossless), .bmp, .tif, ...",
    ),
]
SaveMapOpt = Annotated[
    Path | None,
    typer.Option(
        "--save-map",
        rich_help_panel=_OUTPUT,
        show_default=False,
        help="Also write the map to PATH.npz: 'mask' (P×P float32) and the raw parts "
        "(psi_cls, psi_comp for CLIP; attention for LLaVA).",
    ),
]
HeatmapOpt = Annotated[
    Path | None,
    typer.Option(
        "--heatmap",
        rich_help_panel=_OUTPUT,
        show_default=False,
        help="Also write a colour heat map of the map over the image, with a colour bar.",
    ),
]


@prompt_options()
def prompt_command(
    image: Annotated[
        str,
        typer.Argument(
            metavar="IMAGE",
            show_default=False,
            help="The image to prompt: a local file in any format Pillow reads, or a shipped example "
            "as example:NAME ('api-prompt examples' lists them). URLs are refused: download first.",
        ),
    ],
    query: Annotated[
        str,
        typer.Argument(
            metavar="QUERY",
            help="The question or instruction the image should answer.",
            show_default=False,
        ),
    ],
    output: OutputOpt = None,
    save_map: SaveMapOpt = None,
    heatmap: HeatmapOpt = None,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    *,
    options: PromptOptions,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Mask IMAGE so a vision-language model looks where QUERY points (the default command).

    Examples (the first offline, with the model and image shipped in the package; the second
    with the paper's CLIP ViT-L/14-336, downloaded once, about 1.7 GB):

      api-prompt example:synthshapes-23 "a red square" -m synthshapes
      api-prompt photo.jpg "What color is the car?" -o photo_api.png
    """
    from api_prompt.images import load_image

    with handle_errors(debug):
        # 1. Everything cheap, so a typo never costs a model load and never leaves a file.
        if not query.strip():
            raise ConfigError("the query is empty: pass the question the image should answer")
        options.check()
        shipped = image.startswith("example:")
        image_path = image_argument(image)
        try:
            picture = load_image(image_path, max_pixels=max_pixels)
        except ImageTooLargeError as exc:
            raise ImageLoadError(too_many_pixels(image_path, exc)) from None
        if output is None:  # beside the image; a shipped example's output goes to this folder
            output = (Path() if shipped else image_path.parent) / (image_path.stem + DEFAULT_SUFFIX)
        targets = {"output": output, "--save-map": save_map, "--heatmap": heatmap}
        check_outputs({name: path for name, path in targets.items() if path is not None})

        # 2. The model and the method.
        options.check_device()
        with warnings.catch_warnings(record=True) as caught, _quiet_logging(quiet):
            prompter = options.build(quiet=quiet)
            result = prompter(
                picture, query, exact_parts=save_map is not None
            )  # saved parts: reference scale
            heat = (
                prompter.heatmap(picture, result.map, colorbar=True)
                if heatmap is not None
                else None
            )
        if not quiet:
            report_warnings(caught)  # one line each

        # 3. Write everything, or nothing.
        jobs: list[tuple[Path, Callable[[IO[bytes]], None]]] = [
            (output, lambda f: save_image(result.image, f, output))
        ]
        if save_map is not None:
            jobs.append((save_map, result.map.save))
        if heat is not None and heatmap is not None:  # heat is drawn only for --heatmap
            jobs.append((heatmap, lambda f: save_image(heat, f, heatmap)))
        write_atomically(jobs)

    if not quiet:
        extras = [f"map: {save_map}" if save_map else "", f"heat map: {heatmap}" if heatmap else ""]
        extras = [text for text in extras if text]
        typer.echo(f"Wrote {output}" + (f" ({', '.join(extras)})" if extras else ""))


# --------------------------------------------------------------------------------------------
# Outputs


def image_format(path: Path) -> str:
    """The Pillow format that writes ``path``, from its extension; a ConfigError if there is none.

    >>> image_format(Path("out.JPG"))
    'JPEG'
    """
    Image.init()
    suffix = path.suffix.lower()
    fmt = Image.registered_extensions().get(suffix)
    if fmt is None or fmt not in Image.SAVE:
        what = f"unknown image extension {suffix!r}" if suffix else "no extension"
        raise ConfigError(
            f"cannot write {str(path)!r}: {what}; use .png (lossless), .jpg or .jpeg "
            f"(quality {JPEG_QUALITY}), .webp, .bmp or .tif"
        )
    return fmt


def save_image(image: Image.Image, file: IO[bytes], path: Path) -> None:
    """Write ``image`` to ``file`` in the format ``path``'s extension names (JPEG at quality 95)."""
    fmt = image_format(path)
    options: dict[str, dict[str, object]] = {
        "JPEG": {"quality": JPEG_QUALITY},
        "WEBP": {"lossless": True},
    }
    image.save(file, format=fmt, **options.get(fmt, {}))


def check_outputs(targets: dict[str, Path]) -> None:
    """Refuse, before any work, output paths that could not be written.

    Checks the extension (an image format Pillow writes, or ``.npz`` for ``--save-map``), that
    the folder exists and is writable, that the path is not a folder, and that two outputs do not
    share one path.
    """
    seen: dict[Path, str] = {}
    for name, path in targets.items():
        label = f"{name} {str(path)!r}" if name != "output" else f"output {str(path)!r}"
        if name == "--save-map":
            if path.suffix.lower() != ".npz":
                raise ConfigError(f"{label} must end in .npz")
        else:
            image_format(path)
        folder = path.parent
        if not folder.exists():
            raise ConfigError(f"cannot write {label}: the folder {str(folder)!r} does not exist")
        if not folder.is_dir():
            raise ConfigError(f"cannot write {label}: {str(folder)!r} is not a folder")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ConfigError(f"cannot write {label}: the folder {str(folder)!r} is not writable")
        if path.is_dir():
            raise ConfigError(f"cannot write {label}: it is a folder")
        key = path.resolve()
        if key in seen:
            raise ConfigError(f"{seen[key]} and {name} are the same file {str(path)!r}")
        seen[key] = name


def write_atomically(jobs: list[tuple[Path, Callable[[IO[bytes]], None]]]) -> None:
    """Write every ``(path, writer)`` to a temporary file beside ``path``, then rename them all.

    If any writer fails, every temporary file is removed and no output appears.
    """
    temporaries: list[str] = []
    try:
        for path, writer in jobs:
            handle, temporary = tempfile.mkstemp(
                dir=path.parent, prefix=f".{path.name}.", suffix=".part"
            )
            temporaries.append(temporary)
            with os.fdopen(handle, "wb") as file:
                writer(file)
            os.chmod(temporary, 0o666 & ~_umask())  # mkstemp creates 0600 files
        for (path, _), temporary in zip(jobs, temporaries):
            os.replace(temporary, path)
    except BaseException:
        for temporary in temporaries:
            with suppress(OSError):
                os.unlink(temporary)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# --------------------------------------------------------------------------------------------
# Warnings


#: Warnings meant for developers, not for someone running the command.
_NOT_FOR_USERS = (DeprecationWarning, PendingDeprecationWarning, ResourceWarning, ImportWarning)


def report_warnings(caught: list[warnings.WarningMessage]) -> None:
    """Each distinct warning meant for users (a truncated query, ...) as one line on stderr."""
    lines: dict[str, None] = {}
    for record in caught:
        message = " ".join(str(record.message).split())
        if message and not issubclass(record.category, _NOT_FOR_USERS):
            lines[f"warning: {message}"] = None
    for line in lines:
        typer.echo(line, err=True)


def too_many_pixels(image: Path, exc: ImageTooLargeError) -> str:
    """The one-line error for an image over ``--max-pixels``, saying what to change."""
    size = (
        f"{exc.size[0]}x{exc.size[1]} = {exc.size[0] * exc.size[1]:,} pixels, " if exc.size else ""
    )
    limit = exc.max_pixels or DEFAULT_MAX_PIXELS
    advice = (
        f"pass a higher --max-pixels (at most {DEFAULT_MAX_PIXELS:,}) or resize the image"
        if limit < DEFAULT_MAX_PIXELS
        else "resize the image (--max-pixels cannot go higher)"
    )
    return f"cannot load image {str(image)!r}: too large, {size}more than --max-pixels {limit:,} pixels; {advice}"


@contextmanager
def _quiet_logging(quiet: bool) -> Iterator[None]:
    """With --quiet, silence library log warnings (open_clip, transformers) as well."""
    if not quiet:
        yield
        return
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)
