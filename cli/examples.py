"""``api-prompt examples``: the example images shipped with the package, and how to use them.

Each is a scene of the synthetic-shapes generator that the shipped small CLIP (``-m synthshapes``)
was trained on, with the question it was picked for. Any command that takes IMAGE takes one as
``example:NAME``; ``--copy DIR`` copies the files out for other tools.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated

import typer

from .common import DebugOpt, handle_errors


def examples_command(
    copy: Annotated[
        Path | None,
        typer.Option(
            "--copy",
            show_default=False,
            help="Also copy the example images into this existing folder.",
        ),
    ] = None,
    debug: DebugOpt = False,
) -> None:
    """List the example images shipped with the package, each with a command that prompts it.

    Example:  api-prompt examples --copy .
    """
    from api_prompt.errors import ConfigError
    from api_prompt.hub import EXAMPLES, example_image

    with handle_errors(debug):
        if copy is not None and not copy.is_dir():
            raise ConfigError(f"--copy {str(copy)!r}: no such folder")
        for name, question in EXAMPLES.items():
            source = example_image(name)
            where = source
            if copy is not None:
                where = Path(shutil.copyfile(source, copy / source.name))
            typer.echo(f'{name}\t{where}\tapi-prompt example:{name} "{question}" -m synthshapes')
