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
from typing import Annotated, Optional

import typer

from api_prompt.errors import ConfigError

from .app import app
from .common import (
    DEFAULT_BACKEND,
    BackendOpt,
    BackendOptionOpt,
    BackgroundOpt,
    DebugOpt,
    DeviceOpt,
    DtypeOpt,
    EnhanceOpt,
    Geometry,
    GeometryOpt,
    KernelOpt,
    LayerOpt,
    ModelOpt,
    OneLineErrorCommand,
    PresetOpt,
    PretrainedOpt,
    PromptOptions,
    QuietOpt,
    ResampleOpt,
    handle_errors,
    image_argument,
    status,
)

_TARGET = "Target model"


class Mode(str, Enum):
    prompted = "prompted"
    both = "both"


TargetOpt = Annotated[str, typer.Option(
    "--target", "-t", rich_help_panel=_TARGET, show_default=False,
    help="The model that answers, KIND:NAME. hf:<Hugging Face id or folder>: an image-text-to-text "
    "model with a chat template, any question. openai:<model>: any OpenAI-compatible "
    "chat-completions server (--base-url, key in $OPENAI_API_KEY), any question. "
    "clip-zeroshot:<open_clip name>: multiple choice only, by CLIP similarity; QUESTION must list "
    "its options as lines 'A. text', 'B. text' (one caption each), and the answer is a letter.",
)]
BaseUrlOpt = Annotated[Optional[str], typer.Option(
    "--base-url", rich_help_panel=_TARGET, show_default=False,
    help="openai: API root ending in /v1 (default: $OPENAI_BASE_URL, else "
    "https://api.openai.com/v1). The key is read from $OPENAI_API_KEY.",
)]
NoApiOpt = Annotated[bool, typer.Option(
    "--no-api", rich_help_panel=_TARGET,
    help="Send the original image (no attention prompting, no auxiliary model): the baseline.",
)]
ModeOpt = Annotated[Mode, typer.Option(
    "--mode", rich_help_panel=_TARGET,
    help="prompted: only the prompted image (the paper); both: the original, then the prompted image.",
)]
MaxNewTokensOpt = Annotated[int, typer.Option(
    "--max-new-tokens", rich_help_panel=_TARGET, min=1, help="Longest answer, in tokens.",
)]
TargetDeviceOpt = Annotated[Optional[str], typer.Option(
    "--target-device", rich_help_panel=_TARGET, show_default="same as --device",
    help="hf: where the target model runs (auto, cpu, cuda, cuda:N or mps).",
)]
TargetDtypeOpt = Annotated[Optional[str], typer.Option(
    "--target-dtype", rich_help_panel=_TARGET, show_default=False,
    help="hf: fp32, fp16 or bf16 (default: bf16/fp16 on GPU, fp32 on CPU).",
)]
TimeoutOpt = Annotated[float, typer.Option(
    "--timeout", rich_help_panel=_TARGET, min=0.001,
    help="openai: seconds one attempt may take in all (connect, send, the whole answer).",
)]
MaxRetriesOpt = Annotated[Optional[int], typer.Option(
    "--max-retries", rich_help_panel=_TARGET, min=0, show_default="3",
    help="openai: extra attempts after a 429, a 5xx, a timeout or a broken connection; 0 = none.",
)]
BackoffOpt = Annotated[Optional[float], typer.Option(
    "--backoff", rich_help_panel=_TARGET, min=0.0, show_default="1.0",
    help="openai: first retry delay in seconds, doubled per attempt (a server's Retry-After wins).",
)]
SavePromptedOpt = Annotated[Optional[Path], typer.Option(
    "--save-prompted", rich_help_panel=_TARGET, show_default=False,
    help="Also write the image the target saw (PNG or any format Pillow writes).",
)]


def target_options(target: str, *, base_url: Optional[str], timeout: float, device: str,
                   dtype: Optional[str], max_retries: Optional[int] = None,
                   backoff: Optional[float] = None) -> dict:
    """The constructor options ``--target``'s kind takes (shared by ``ask`` and ``eval``)."""
    kind = target.partition(":")[0]
    options: dict = {}
    if kind == "openai":
        options.update(base_url=base_url, timeout=timeout)
        options.update({name: value for name, value in
                        (("max_retries", max_retries), ("backoff", backoff)) if value is not None})
    elif base_url is not None or max_retries is not None or backoff is not None:
        raise ConfigError("--base-url, --max-retries and --backoff only apply to --target openai:<model>")
    if kind == "hf":
        options.update(device=device, dtype=dtype)
    elif kind == "clip-zeroshot":
        options.update(device=device)
    return options


@app.command("ask", cls=OneLineErrorCommand)
def ask_command(
    image: Annotated[str, typer.Argument(
        metavar="IMAGE", show_default=False,
        help="The image to ask about: a local file, or a shipped example as example:NAME.")],
    question: Annotated[str, typer.Argument(
        metavar="QUESTION", help="The question for the target model.", show_default=False)],
    target: TargetOpt = ...,
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
    preset: PresetOpt = None,
    backend: BackendOpt = DEFAULT_BACKEND,
    backend_option: BackendOptionOpt = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    layer: LayerOpt = None,
    enhance: EnhanceOpt = None,
    kernel_size: KernelOpt = None,
    resample: ResampleOpt = None,
    background: BackgroundOpt = None,
    geometry: GeometryOpt = Geometry.stretch,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = None,
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
    from api_prompt.targets import create_target, split_target_spec, wrap

    with handle_errors(debug):
        # 1. Everything cheap first, so a typo never costs a model load.
        if not question.strip():
            raise ConfigError("the question is empty: pass what the target should answer")
        options = target_options(target, base_url=base_url, timeout=timeout,
                                 device=target_device or device, dtype=target_dtype,
                                 max_retries=max_retries, backoff=backoff)
        if no_api and mode is Mode.both:
            raise ConfigError("--mode both shows the prompted image too; it cannot go with --no-api")
        kind, target_model = split_target_spec(target)
        if kind == "clip-zeroshot":
            from api_prompt.hub import check_model_name
            from api_prompt.targets.clip_zeroshot import parse_options

            if not parse_options(question):
                raise ConfigError(
                    "--target clip-zeroshot answers multiple choice only: QUESTION must list its "
                    "options as lines 'A. text', 'B. text' (e.g. $'Which shape?\\nA. a red square\\n"
                    "B. a blue circle' in bash)"
                )
            check_model_name(target_model, open_clip=True)
        prompt_options = PromptOptions.from_command(locals())
        if not no_api:
            prompt_options.check()
        picture = load_image(image_argument(image))
        if not no_api:
            prompt_options.check_device()

        # 2. The models.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with status(f"Loading target {target}", quiet=quiet):
                answerer = create_target(target, **options)
            if no_api:
                shown = picture
                with status("Asking the target", quiet=quiet):
                    answer = answerer([picture], [question], max_new_tokens=max_new_tokens)[0]
            else:
                prompter = prompt_options.build(quiet=quiet)
                asker = wrap(answerer, prompter, mode=mode.value, max_new_tokens=max_new_tokens)
                with status("Asking the target", quiet=quiet):
                    answer = asker(picture, question)
                shown = asker.last_prompted[0]
        if save_prompted is not None:
            shown.save(save_prompted)

    typer.echo(answer)
