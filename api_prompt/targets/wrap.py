"""``wrap(target, prompter)``: a target that answers on the attention-prompted image.

>>> from api_prompt import Prompter, wrap                                          # doctest: +SKIP
>>> from api_prompt.targets import HFTarget                                         # doctest: +SKIP
>>> ask = wrap(HFTarget("Qwen/Qwen2-VL-2B-Instruct"), Prompter(device="cuda"))     # doctest: +SKIP
>>> ask("car.jpg", "What color is the car?")                                        # doctest: +SKIP
'Red.'
>>> ask.batch(["a.jpg", "b.jpg"], ["Is there a dog?", "How many cars?"])           # doctest: +SKIP
['Yes.', 'Two.']

Modes:

- ``"prompted"`` (the paper): the target sees only the prompted image (or, for a style that
  makes several, such as ``crop``, all of them in one turn: the original and the zoomed crop).
- ``"both"``: the target sees the original image and then the prompted one, in one turn, for
  models that take several images.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PIL import Image

from ..errors import ConfigError
from ..protocols import PrompterOrFunction
from .base import as_target, normalise_batch

__all__ = ["wrap", "PromptedTarget", "MODES", "prompt_images", "prompt_image_lists", "as_image"]

MODES = ("prompted", "both")


class PromptedTarget:
    """A target that first prompts each image for its question, then asks the target.

    Built by :func:`wrap`. Call it on one image and question to get one answer, or use
    :meth:`batch` (prompting and answering both batched). ``last_prompted`` holds the prompted
    images of the latest call, to show or save what the target saw.
    """

    def __init__(
        self, target: Any, prompter: PrompterOrFunction, mode: str = "prompted", **generation: Any
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"unknown mode {mode!r}; choose one of: {', '.join(MODES)}")
        if not callable(prompter):
            raise ConfigError(
                "prompter must be a Prompter or a function (image, question) -> image"
            )
        self.target = as_target(target)
        self.prompter = prompter
        self.mode = mode
        self.generation = generation
        self.last_prompted: list[Image.Image] = []

    def __call__(self, image, question: str, **generation: Any) -> str:
        """Answer one question about one image, shown to the target through the prompt."""
        return self.batch([image], [question], **generation)[0]

    def batch(
        self, images: Sequence, questions: Sequence[str] | str, **generation: Any
    ) -> list[str]:
        """Answer many questions, one image each (one question may serve every image)."""
        image_lists, questions = normalise_batch(images, questions)
        if any(len(image_list) != 1 for image_list in image_lists):
            raise ConfigError("wrap() takes one image per question")
        originals = [image_list[0] for image_list in image_lists]
        shown = prompt_image_lists(self.prompter, originals, questions)
        self.last_prompted = [images[-1] for images in shown]
        inputs: list[Image.Image | list[Image.Image]]
        if self.mode == "both":
            inputs = [[original, images[-1]] for original, images in zip(originals, shown)]
        else:
            inputs = [images[0] if len(images) == 1 else images for images in shown]
        return self.target(inputs, questions, **{**self.generation, **generation})

    def __repr__(self) -> str:
        return f"PromptedTarget({self.target!r}, mode={self.mode!r})"


def wrap(
    target: Any, prompter: PrompterOrFunction, mode: str = "prompted", **generation: Any
) -> PromptedTarget:
    """Make ``target`` answer on attention-prompted images.

    Args:
        target: an :class:`~api_prompt.targets.HFTarget`, an
            :class:`~api_prompt.targets.OpenAITarget`, a ``"hf:..."`` / ``"openai:..."`` string,
            or any function ``(image, question) -> str``.
        prompter: a :class:`~api_prompt.Prompter` (or any function ``(image, question)`` returning
            a prompted PIL image or a :class:`~api_prompt.PromptResult`).
        mode: ``"prompted"`` (only the prompted image, as in the paper) or ``"both"`` (the
            original image, then the prompted one).
        **generation: generation options for every call (e.g. ``max_new_tokens=32``).

    Returns:
        a callable ``(image, question) -> str``, with ``.batch(images, questions)`` too.

    >>> from PIL import Image
    >>> darken = lambda image, question: Image.new("RGB", image.size)           # a fake prompter
    >>> seen = lambda image, question: f"{image.getpixel((0, 0))} {question}"   # a fake target
    >>> wrap(seen, darken)(Image.new("RGB", (2, 2), "white"), "what?")
    '(0, 0, 0) what?'
    """
    return PromptedTarget(target, prompter, mode=mode, **generation)


def prompt_images(
    prompter: PrompterOrFunction, images: Sequence[Image.Image], queries: Sequence[str]
) -> list[Image.Image]:
    """The prompted images: one ``prompter.batch(images, queries)`` call when the prompter has
    ``batch``, else one ``prompter(image, query)`` call per image; see :func:`as_image`."""
    return [as_image(result) for result in _prompt_results(prompter, images, queries)]


def prompt_image_lists(
    prompter: PrompterOrFunction, images: Sequence[Image.Image], queries: Sequence[str]
) -> list[list[Image.Image]]:
    """What the target is shown for each image: a :class:`~api_prompt.PromptResult`'s
    ``images`` (several for a style such as ``crop``), or the one prompted image."""
    return [
        list(getattr(result, "images", None) or [as_image(result)])
        for result in _prompt_results(prompter, images, queries)
    ]


def _prompt_results(
    prompter: PrompterOrFunction, images: Sequence[Image.Image], queries: Sequence[str]
) -> list[Any]:
    """One ``prompter.batch`` call when the prompter has ``batch``, else one call per image."""
    batch = getattr(prompter, "batch", None)
    return (
        batch(images, queries)
        if callable(batch)
        else [prompter(image, query) for image, query in zip(images, queries)]
    )


def as_image(result: Any) -> Image.Image:
    """A prompter's output as a PIL image (PromptResult.image, or the image itself)."""
    image = getattr(result, "image", result)
    if not isinstance(image, Image.Image):
        raise ConfigError(f"the prompter returned a {type(image).__name__}, not an image")
    return image
