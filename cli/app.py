"""The Typer application behind the ``api-prompt`` command.

``api-prompt IMAGE QUERY`` runs the default ``prompt`` command; ``batch``, ``ask`` and the other
sub-commands are registered by their own modules, imported at the bottom of this file.
"""

from __future__ import annotations

import click
import typer
from typer.core import TyperGroup

from api_prompt import __version__

DEFAULT_COMMAND = "prompt"


class _DefaultCommandGroup(TyperGroup):
    """Route ``api-prompt IMAGE QUERY ...`` to the ``prompt`` command.

    Anything whose first word is neither a sub-command nor an option of the group itself is
    handed to the default command, so users never have to type ``prompt``.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        group_options = {name for param in self.params for name in param.opts}
        group_options.update(ctx.help_option_names)
        if args and args[0] not in self.commands and args[0] not in group_options:
            args = [DEFAULT_COMMAND, *args]
        return super().parse_args(ctx, args)

    def list_commands(self, ctx: click.Context) -> list[str]:
        # The default command first, then the rest in the order they were registered.
        return [DEFAULT_COMMAND] + [name for name in self.commands if name != DEFAULT_COMMAND]


app = typer.Typer(
    cls=_DefaultCommandGroup,
    name="api-prompt",
    help=(
        "Attention Prompting on Image: mask an image so a vision-language model looks where the "
        "question points.\n\nQuick start:  api-prompt photo.jpg \"What color is the car?\""
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"api-prompt {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """Attention Prompting on Image for vision-language models."""


def main() -> None:
    """Entry point of the installed ``api-prompt`` script."""
    app()


# Sub-commands register themselves on `app` when imported.
from . import prompt as _prompt  # noqa: E402,F401
from . import batch as _batch  # noqa: E402,F401
from . import ask as _ask  # noqa: E402,F401
from . import serve as _serve  # noqa: E402,F401
from . import eval as _eval  # noqa: E402,F401
from . import playground as _playground  # noqa: E402,F401
