"""The Typer application behind the ``api-prompt`` command.

``api-prompt IMAGE QUERY`` runs the default ``prompt`` command; ``batch``, ``ask`` and the other
sub-commands are plain functions in their own modules, registered at the bottom of this file.
"""

from __future__ import annotations

import typer
from typer.core import TyperGroup

from api_prompt import __version__

from .ask import ask_command
from .batch import batch_command, merge_command
from .common import DOCS_HINT, ClickContext, OneLineErrorCommand, _without_type_labels
from .eval import eval_command
from .examples import examples_command
from .playground import playground_command
from .prompt import prompt_command
from .serve import serve_command

DEFAULT_COMMAND = "prompt"

#: One line per command in ``api-prompt --help`` (each command's own help says more).
SUMMARIES = {
    "prompt": "IMAGE QUERY: write the prompted image (the default command).",
    "batch": "Prompt every sample of a dataset into a folder (resumable).",
    "merge": "Combine the output folders of sharded batch runs.",
    "ask": "Answer a question with a target model shown the prompted image.",
    "eval": "Score a target on a benchmark with and without prompting.",
    "serve": "An OpenAI-compatible proxy that prompts each request's images.",
    "playground": "A page in the browser: upload, ask, see where the model looks.",
    "examples": "List the example images shipped with the package.",
}


class _DefaultCommandGroup(TyperGroup):
    """Route ``api-prompt IMAGE QUERY ...`` to the ``prompt`` command.

    Anything whose first word is neither a sub-command nor an option of the group itself is
    handed to the default command, so users never have to type ``prompt``.
    """

    def parse_args(self, ctx: ClickContext, args: list[str]) -> list[str]:
        group_options = {name for param in self.params for name in param.opts}
        group_options.update(ctx.help_option_names)
        if args and args[0] not in self.commands and args[0] not in group_options:
            args = [DEFAULT_COMMAND, *args]
        return super().parse_args(ctx, args)

    def get_params(self, ctx: ClickContext) -> list:
        return _without_type_labels(super().get_params(ctx))

    def list_commands(self, ctx: ClickContext) -> list[str]:
        # The default command first, then the rest in the order they were registered.
        return [DEFAULT_COMMAND] + [name for name in self.commands if name != DEFAULT_COMMAND]


def _root_help() -> str:
    """``api-prompt --help``: the one-image usage, the backends and presets, where to read more."""
    from api_prompt.attribution.registry import backend_specs
    from api_prompt.presets import PRESETS

    backends = ", ".join(spec.name for spec in backend_specs())
    return "\n\n".join(
        [
            "Attention Prompting on Image: mask an image so a vision-language model looks where the "
            "question points.",
            "Usage for one image (all options: api-prompt prompt --help):",
            "  api-prompt IMAGE QUERY \\[-o OUT.png] \\[-m MODEL] \\[--backend NAME]\n"
            "             \\[--preset NAME] \\[--layer L] \\[--heatmap PATH] \\[--device D]",
            "Examples:\n"
            "  # offline, with the model and the image shipped in the package:\n"
            '  api-prompt example:synthshapes-23 "a red square" -m synthshapes\n'
            "  # the paper's CLIP ViT-L/14-336 (downloads about 1.7 GB once):\n"
            '  api-prompt photo.jpg "What color is the car?"',
            f"Backends (--backend): {backends}. Presets (--preset): {', '.join(PRESETS)}. "
            "Built-in model (-m): synthshapes, the small CLIP shipped with the package.",
            f"Read more: api-prompt COMMAND --help; {DOCS_HINT}.",
        ]
    )


app = typer.Typer(
    cls=_DefaultCommandGroup,
    name="api-prompt",
    help=_root_help(),
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
        False,
        "--version",
        callback=_print_version,
        is_eager=True,
        help="Show the version and exit.",
    ),
) -> None:
    """Attention Prompting on Image for vision-language models."""


def main() -> None:
    """Entry point of the installed ``api-prompt`` script."""
    app()


# Each command is a plain function in its own module, registered here (so no command module
# imports this one): the order is the order of ``--help``.
COMMANDS = (
    ("prompt", prompt_command),
    ("batch", batch_command),
    ("merge", merge_command),
    ("ask", ask_command),
    ("serve", serve_command),
    ("eval", eval_command),
    ("playground", playground_command),
    ("examples", examples_command),
)
for _name, _command in COMMANDS:
    app.command(_name, cls=OneLineErrorCommand, short_help=SUMMARIES[_name])(_command)
