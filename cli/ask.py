"""``api-prompt ask IMAGE QUESTION --target ...``: answer with a target model on the prompted image.

The command builds the same objects as the Python API: a :class:`~api_prompt.Prompter` for the
auxiliary model, a target from ``--target`` (:func:`api_prompt.targets.create_target`), and
:func:`api_prompt.targets.wrap` to join them. ``--no-api`` skips prompting (and never loads the
auxiliary model), which gives the baseline answer on the original image.

Example::

    api-prompt ask photo.jpg "What color is the car?" --target hf:Qwen/Qwen2-VL-2B-Instruct
    api-prompt ask photo.jpg "What color is the car?" --target openai:gpt-4o-mini --no-api
"""

from __future__ import annotations

import warnings
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from api_prompt.errors import ConfigError

from .common import (
    DebugOpt,
    QuietOpt,
    handle_errors,
    image_argument,
    parse_key_value,
    registry_help,
    status,
)
from .options import PromptOptions, prompt_options

_TARGET = "Target model"


class Mode(str, Enum):
    prompted = "prompted"
    both = "both"


def _targets_help() -> str:
    from api_prompt.targets import target_specs

    described = " ".join(f"{spec.kind}:{spec.help}." for spec in target_specs())
    return f"The model that answers, KIND:NAME. {described}"


def _target_options_help() -> str:
    from api_prompt.targets import target_specs

    declared = "; ".join(
        f"{spec.kind}: {', '.join(names)}"
        for spec in target_specs()
        if (names := [option.name for option in spec.options if option.name not in TARGET_FLAGS])
    )
    return (
        f"An option of the target's kind, typed and checked by its spec (repeatable). {declared}."
    )


#: target options that have a flag of their own (the kinds that declare them get them)
TARGET_FLAGS = {
    "base_url": "--base-url",
    "timeout": "--timeout",
    "max_retries": "--max-retries",
    "backoff": "--backoff",
    "device": "--target-device",
    "dtype": "--target-dtype",
}

TargetOpt = Annotated[
    str,
    typer.Option(
        "--target",
        "-t",
        rich_help_panel=_TARGET,
        show_default=False,
        help=registry_help("--target", _targets_help),
    ),
]
TargetOptionOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--target-option",
        "-T",
        metavar="KEY=VALUE",
        rich_help_panel=_TARGET,
        show_default=False,
        help=registry_help("--target-option", _target_options_help),
    ),
]
BaseUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--base-url",
        rich_help_panel=_TARGET,
        show_default=False,
        help="openai: API root ending in /v1 (default: $OPENAI_BASE_URL, else "
        "https://api.openai.com/v1). The key is read from $OPENAI_API_KEY.",
    ),
]
NoApiOpt = Annotated[
    bool,
    typer.Option(
        "--no-api",
        rich_help_panel=_TARGET,
        help="Send the original image (no attention prompting, no auxiliary model): the baseline.",
    ),
]
ModeOpt = Annotated[
    Mode,
    typer.Option(
        "--mode",
        rich_help_panel=_TARGET,
        help="prompted: only the prompted image (the paper); both: the original, then the prompted image.",
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
TargetDeviceOpt = Annotated[
    str | None,
    typer.Option(
        "--target-device",
        rich_help_panel=_TARGET,
        show_default="same as --device",
        help="hf, clip-zeroshot: where the target model runs (auto, cpu, cuda, cuda:N or mps).",
    ),
]
TargetDtypeOpt = Annotated[
    str | None,
    typer.Option(
        "--target-dtype",
        rich_help_panel=_TARGET,
        show_default=False,
        help="hf, clip-zeroshot: fp32, fp16 or bf16 (default: bf16/fp16 on GPU, fp32 on CPU).",
    ),
]
TimeoutOpt = Annotated[
    float,
    typer.Option(
        "--timeout",
        rich_help_panel=_TARGET,
        min=0.001,
        help="openai: seconds one attempt may take in all (connect, send, the whole answer).",
    ),
]
MaxRetriesOpt = Annotated[
    int | None,
    typer.Option(
        "--max-retries",
        rich_help_panel=_TARGET,
        min=0,
        show_default="3",
        help="openai: extra attempts after a 429, a 5xx, a timeout or a broken connection; 0 = none.",
    ),
]
BackoffOpt = Annotated[
    float | None,
    typer.Option(
        "--backoff",
        rich_help_panel=_TARGET,
        min=0.0,
        show_default="1.0",
        help="openai: first retry delay in seconds, doubled per attempt (a server's Retry-After wins).",
    ),
]
SavePromptedOpt = Annotated[
    Path | None,
    typer.Option(
        "--save-prompted",
        rich_help_panel=_TARGET,
        show_default=False,
        help="Also write the image the target saw (PNG or any format Pillow writes).",
    ),
]


def target_options(
    target: str, texts: list[str] | None = None, *, defaults: dict | None = None, **flags
) -> dict:
    """The constructor options of ``--target``'s kind, from its spec (shared by ``ask``, ``eval``
    and ``playground``).

    ``flags`` are the values of the flags in :data:`TARGET_FLAGS` (None: not given): one the kind
    does not declare is refused, naming the kinds that take it. ``defaults`` (a fallback device,
    the default timeout) go only to kinds that declare them. ``texts`` are ``--target-option``'s
    ``KEY=VALUE`` texts. Every value is typed by the spec.

    >>> target_options("openai:m", ["max_concurrency=2"], base_url="http://127.0.0.1:9/v1",
    ...                defaults={"timeout": 60.0, "device": "cpu"})
    {'timeout': 60.0, 'base_url': 'http://127.0.0.1:9/v1', 'max_concurrency': 2}
    >>> target_options("hf:m", base_url="http://127.0.0.1:9/v1")
    Traceback (most recent call last):
    ...
    api_prompt.errors.ConfigError: --base-url only applies to --target openai:<model>
    """
    from api_prompt.targets import get_target, split_target_spec, target_specs

    spec = get_target(split_target_spec(target)[0])
    options = {
        key: value
        for key, value in (defaults or {}).items()
        if value is not None and spec.option(key)
    }
    for key, value in flags.items():
        if value is None:
            continue
        if spec.option(key) is None:
            kinds = " or ".join(
                f"--target {other.kind}:<model>" for other in target_specs() if other.option(key)
            )
            raise ConfigError(f"{TARGET_FLAGS[key]} only applies to {kinds or 'no target kind'}")
        options[key] = value
    for key, value in (parse_key_value(text, "--target-option") for text in texts or ()):
        if key in TARGET_FLAGS:
            raise ConfigError(f"give {key} as {TARGET_FLAGS[key]}, not as --target-option")
        options[key] = value
    return spec.check_options(options)


@prompt_options()
def ask_command(
    image: Annotated[
        str,
        typer.Argument(
            metavar="IMAGE",
            show_default=False,
            help="The image to ask about: a local file, or a shipped example as example:NAME.",
        ),
    ],
    question: Annotated[
        str,
        typer.Argument(
            metavar="QUESTION", help="The question for the target model.", show_default=False
        ),
    ],
    target: TargetOpt,
    base_url: BaseUrlOpt = None,
    no_api: NoApiOpt = False,
    mode: ModeOpt = Mode.prompted,
    max_new_tokens: MaxNewTokensOpt = 128,
    target_device: TargetDeviceOpt = None,
    target_dtype: TargetDtypeOpt = None,
    timeout: TimeoutOpt = 60.0,
    max_retries: MaxRetriesOpt = None,
    backoff: BackoffOpt = None,
    save_prompted: SavePromptedOpt = None,
    target_option: TargetOptionOpt = None,
    *,
    options: PromptOptions,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Answer QUESTION about IMAGE with a target model, shown the attention-prompted image.

    Examples (the first runs offline; clip-zeroshot needs option lines, written here with bash's $'...'):

      api-prompt ask example:synthshapes-23 $'Which?\\nA. a red square\\nB. a blue circle' \\
          --target clip-zeroshot:synthshapes -m synthshapes
      api-prompt ask photo.jpg "What color is the car?" --target openai:gpt-4o-mini
    """
    from api_prompt.images import load_image
    from api_prompt.targets import create_target, get_target, split_target_spec, wrap

    with handle_errors(debug):
        # 1. Everything cheap first, so a typo never costs a model load.
        if not question.strip():
            raise ConfigError("the question is empty: pass what the target should answer")
        answerer_options = target_options(
            target,
            target_option,
            defaults={"timeout": timeout, "device": options.device},
            base_url=base_url,
            max_retries=max_retries,
            backoff=backoff,
            device=target_device,
            dtype=target_dtype,
        )
        if no_api and mode is Mode.both:
            raise ConfigError(
                "--mode both shows the prompted image too; it cannot go with --no-api"
            )
        kind, target_model = split_target_spec(target)
        spec = get_target(kind)
        try:
            spec.check_question(question)
        except ConfigError as exc:
            raise ConfigError(
                f"{exc} (e.g. $'Which shape?\\nA. a red square\\nB. a blue circle' in bash)"
            ) from None
        spec.check_name(target_model)
        if not no_api:
            options.check()
        picture = load_image(image_argument(image))
        if not no_api:
            options.check_device()

        # 2. The models.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with status(f"Loading target {target}", quiet=quiet):
                answerer = create_target(target, **answerer_options)
            if no_api:
                shown = picture
                with status("Asking the target", quiet=quiet):
                    answer = answerer([picture], [question], max_new_tokens=max_new_tokens)[0]
            else:
                prompter = options.build(quiet=quiet)
                asker = wrap(answerer, prompter, mode=mode.value, max_new_tokens=max_new_tokens)
                with status("Asking the target", quiet=quiet):
                    answer = asker(picture, question)
                shown = asker.last_prompted[0]
        if save_prompted is not None:
            shown.save(save_prompted)

    typer.echo(answer)
