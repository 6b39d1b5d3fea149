"""``api-prompt playground``: the method in a browser page (Gradio), served on this machine.

With no ``--model`` the CLIP backend uses the small CLIP shipped with api-prompt, and the page
offers synthetic example scenes, so it works offline. The options set what the page opens with;
every map and overlay setting (and the layer) can be changed in the page.

Example::

    api-prompt playground                                     # http://127.0.0.1:7860
    api-prompt playground -m ViT-B-16 --pretrained openai --target openai:gpt-4o-mini
"""

from __future__ import annotations

from typing import Annotated

import typer

from api_prompt.errors import ConfigError
from api_prompt.images import DEFAULT_MAX_PIXELS
from api_prompt.styles import STYLES

from .ask import target_options
from .common import DebugOpt, MaxPixelsOpt, QuietOpt, handle_errors, status
from .options import PromptOptions, prompt_options

_SERVER = "Server"

ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        rich_help_panel="Model",
        show_default=False,
        help="What the backend's library loads, as for 'api-prompt IMAGE QUERY'. Default for clip: "
        "the small CLIP shipped with api-prompt (trained on synthetic shapes, works offline); other "
        "backends: their usual default.",
    ),
]
_TARGET = "Target model (optional)"

HostOpt = Annotated[
    str,
    typer.Option(
        "--host",
        rich_help_panel=_SERVER,
        help="Address to listen on; 0.0.0.0 makes the page reachable from other machines.",
    ),
]
PortOpt = Annotated[
    int,
    typer.Option("--port", rich_help_panel=_SERVER, min=1, max=65535, help="Port to listen on."),
]
ShareOpt = Annotated[
    bool,
    typer.Option(
        "--share/--no-share",
        rich_help_panel=_SERVER,
        help="Also publish a temporary public link through Gradio's share servers (needs internet).",
    ),
]
TargetOpt = Annotated[
    str | None,
    typer.Option(
        "--target",
        "-t",
        rich_help_panel=_TARGET,
        show_default=False,
        help="Also ask a model about the original and the prompted image: 'openai:<model>' or "
        "'hf:<Hugging Face id or folder>'.",
    ),
]
BaseUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--base-url",
        rich_help_panel=_TARGET,
        show_default=False,
        help="openai: API root ending in /v1 (default: $OPENAI_BASE_URL). The key is read from $OPENAI_API_KEY.",
    ),
]
MaxNewTokensOpt = Annotated[
    int,
    typer.Option(
        "--max-new-tokens",
        rich_help_panel=_TARGET,
        min=1,
        help="Longest answer, in tokens.",
    ),
]


@prompt_options(model=ModelOpt)
def playground_command(
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    target: TargetOpt = None,
    base_url: BaseUrlOpt = None,
    max_new_tokens: MaxNewTokensOpt = 64,
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 7860,
    share: ShareOpt = False,
    *,
    options: PromptOptions,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Open a page in the browser: upload an image, ask, see where the model looks.

    With no --model, the small CLIP shipped with api-prompt and its example scenes (offline).

    Example:  api-prompt playground --port 7860
    """
    with handle_errors(debug):
        # 1. Everything cheap, so a typo never costs a model load.
        try:
            import gradio  # noqa: F401

            from api_prompt.playground import Playground, build_app
        except ImportError:
            raise ConfigError(
                "the playground needs Gradio: pip install 'api-prompt[playground]'"
            ) from None
        if options.recipe is not None:  # the page combines with the backend's recipe
            raise ConfigError("the playground does not take --recipe; leave it out")
        options.check(also_styles=tuple(STYLES))  # the page shows every style: -S may set any
        answerer_options: dict = {}
        if target is not None:
            answerer_options = target_options(
                target, defaults={"device": options.device}, base_url=base_url
            )
        elif base_url is not None:
            raise ConfigError("--base-url needs --target openai:<model>")
        playground = Playground(
            backend=options.backend,
            model=options.model,
            backend_options=options.checked_backend_options(),
            layer=options.layer,
            device=options.device,
            dtype=options.dtype,
            **options.settings(),
            max_pixels=max_pixels,
            target=target,
            target_options=answerer_options,
            max_new_tokens=max_new_tokens,
            style=options.style,
            style_options=options.checked_style_options(also=tuple(STYLES)) or None,
        )

        # 2. The model, once. A model that cannot load does not stop the page: it says why, and
        #    the next request tries again.
        with status(f"Loading {options.backend} model {playground.model}", quiet=quiet):
            try:
                playground.prompter()
            except Exception as exc:  # shown in the page as well
                typer.echo(
                    f"warning: the model could not be loaded: {' '.join(str(exc).split())}",
                    err=True,
                )

        # 3. Serve until interrupted.
        page = build_app(playground)
        if not quiet:
            typer.echo(f"Playground at http://{host}:{port} (Ctrl+C stops it)")
        try:
            page.launch(server_name=host, server_port=port, share=share, quiet=True)
        except KeyboardInterrupt:
            page.close()
