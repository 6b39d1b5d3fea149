"""What every target shares: the :class:`Target` protocol, the base class and input handling.

A *target* is the vision-language model that finally answers the question. Every target is
called the same way, on a batch::

    answers = target(images, questions, **generation)     # -> list[str], one per question

``images[i]`` is the image for ``questions[i]``, or a list of images when the question is about
several (e.g. the original and the prompted image). One question may serve every image.

Any plain callable ``(image, question) -> str`` is a target too, through :func:`as_target`:

>>> from api_prompt.targets import as_target
>>> echo = as_target(lambda image, question: f"{image.size[0]} px wide; you asked {question!r}")
>>> from PIL import Image
>>> echo([Image.new("RGB", (4, 2))], ["why?"])
["4 px wide; you asked 'why?'"]
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

from PIL import Image

from ..errors import ConfigError, TargetError
from ..images import load_image

__all__ = [
    "Target", "BaseTarget", "CallableTarget", "TargetError", "as_target", "create_target",
    "normalise_batch", "split_target_spec", "TARGETS",
]

#: target kind -> "module:Class", for ``create_target("hf:...")`` / ``--target hf:...``.
TARGETS: dict[str, str] = {
    "hf": "api_prompt.targets.hf:HFTarget",
    "openai": "api_prompt.targets.openai:OpenAITarget",
    "clip-zeroshot": "api_prompt.targets.clip_zeroshot:CLIPZeroShotTarget",
}


@runtime_checkable
class Target(Protocol):
    """Anything that answers a batch of questions about images.

    ``target(images, questions, **generation) -> list[str]``: one answer per question, in order.
    """

    def __call__(self, images: Sequence, questions: Sequence[str] | str, **generation: Any) -> list[str]:
        ...


class BaseTarget(ABC):
    """Base class of the built-in targets: input checking in ``__call__``, work in :meth:`answer`.

    Subclasses implement :meth:`answer` on clean inputs: a list of image lists (RGB PIL images,
    at least one per question) and a list of non-empty questions.
    """

    def __call__(self, images, questions, **generation: Any) -> list[str]:
        """Answer each question about its image(s). See the module docstring for the inputs."""
        image_lists, questions = normalise_batch(images, questions)
        if not questions:
            return []
        return self.answer(image_lists, questions, **generation)

    def ask(self, image, question: str, **generation: Any) -> str:
        """Answer one question about one image (or about a list of images)."""
        return self([image] if not _is_image_list(image) else [list(image)], [question], **generation)[0]

    @abstractmethod
    def answer(self, images: list[list[Image.Image]], questions: list[str], **generation: Any) -> list[str]:
        """One answer per question; ``images[i]`` are the images of ``questions[i]``."""

    def describe(self) -> dict[str, Any]:
        """Settings and model identity, for run manifests. Subclasses extend it."""
        return {"target": type(self).__name__}


class CallableTarget(BaseTarget):
    """Adapts a plain function ``fn(image, question) -> str`` to the :class:`Target` protocol.

    The function gets one RGB PIL image (or the list, when a question has several images) and
    the question; generation options given to the target are passed on as keyword arguments.
    Answers are turned into stripped strings, as the built-in targets return them.

    >>> target = CallableTarget(lambda image, question: question.upper())
    >>> from PIL import Image
    >>> target([Image.new("RGB", (2, 2))] * 2, "same question")
    ['SAME QUESTION', 'SAME QUESTION']
    """

    def __init__(self, fn: Callable[..., Any]) -> None:
        if not callable(fn):
            raise ConfigError(f"a target must be callable, got {type(fn).__name__}")
        self.fn = fn

    def answer(self, images, questions, **generation):
        answers = []
        for image_list, question in zip(images, questions):
            image = image_list[0] if len(image_list) == 1 else image_list
            answer = self.fn(image, question, **generation)
            answers.append("" if answer is None else str(answer).strip())
        return answers

    def describe(self) -> dict[str, Any]:
        return {"target": getattr(self.fn, "__qualname__", type(self.fn).__name__)}

    def __repr__(self) -> str:
        return f"CallableTarget({self.fn!r})"


def as_target(obj: Any, **options: Any) -> BaseTarget | Target:
    """Turn what the user has into a target.

    - a built-in target (:class:`BaseTarget`) comes back as it is;
    - a string ``"hf:<id-or-folder>"`` or ``"openai:<model>"`` builds one (``options`` go to
      its constructor), see :func:`create_target`;
    - any other callable is taken as ``fn(image, question) -> str`` (:class:`CallableTarget`).
      Objects that already follow the batch protocol can say so with a class attribute
      ``batched_target = True`` and are used as they are.
    """
    if isinstance(obj, BaseTarget) or getattr(obj, "batched_target", False):
        if options:
            raise ConfigError("options can only be given when the target is built from a string")
        return obj
    if isinstance(obj, str):
        return create_target(obj, **options)
    if callable(obj):
        if options:
            raise ConfigError("options can only be given when the target is built from a string")
        return CallableTarget(obj)
    raise ConfigError(
        f"cannot use a {type(obj).__name__} as a target: pass an HFTarget, an OpenAITarget, "
        "'hf:<model>', 'openai:<model>' or a function (image, question) -> str"
    )


def create_target(spec: str, **options: Any) -> BaseTarget:
    """Build a target from ``"kind:name"``: ``hf:<Hugging Face id or folder>``, ``openai:<model>``,
    ``clip-zeroshot:<open_clip model>`` (any kind of :data:`TARGETS`).

    >>> create_target("openai:gpt-4o-mini", base_url="http://127.0.0.1:8000/v1")  # doctest: +SKIP
    OpenAITarget(model='gpt-4o-mini', base_url='http://127.0.0.1:8000/v1', api_key=None)
    """
    kind, name = split_target_spec(spec)
    module_name, class_name = TARGETS[kind].split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(name, **options)


def split_target_spec(spec: str) -> tuple[str, str]:
    """``"kind:name"`` -> ``(kind, name)`` (name stripped), checked against :data:`TARGETS`.

    Loads nothing, so a typo is caught before any model load.

    >>> split_target_spec("openai: gpt-4o-mini")
    ('openai', 'gpt-4o-mini')
    """
    kind, sep, name = str(spec).partition(":")
    if not sep or kind not in TARGETS or not name.strip():
        raise ConfigError(
            f"unknown target {spec!r}: use one of " + ", ".join(f"'{k}:<model>'" for k in TARGETS)
        )
    return kind, name.strip()


def normalise_batch(images, questions) -> tuple[list[list[Image.Image]], list[str]]:
    """Turn (image | images, question | questions) into a list of image lists and a list of str.

    ``images`` is one image, or a list with one entry per question; an entry is an image or a
    list of images. One question (a str) is used for every entry. Every image is loaded with
    :func:`api_prompt.images.load_image`, so paths, bytes, arrays and PIL images all work.

    >>> from PIL import Image
    >>> a, b = Image.new("RGB", (2, 2)), Image.new("RGB", (3, 3))
    >>> lists, qs = normalise_batch([a, [a, b]], "q")
    >>> [len(x) for x in lists], qs
    ([1, 2], ['q', 'q'])
    """
    if not isinstance(images, (list, tuple)):
        images = [images]
    if isinstance(questions, str):
        questions = [questions] * len(images)
    questions = list(questions)
    if len(questions) != len(images):
        raise ConfigError(f"got {len(images)} images but {len(questions)} questions")
    for question in questions:
        if not isinstance(question, str) or not question.strip():
            raise ConfigError("the question is empty: pass the question the model should answer")
    image_lists = []
    for entry in images:
        entry = list(entry) if _is_image_list(entry) else [entry]
        if not entry:
            raise ConfigError("every question needs at least one image")
        image_lists.append([load_image(image) for image in entry])
    return image_lists, questions


def _is_image_list(obj: Any) -> bool:
    """A list/tuple of images (not an array, bytes or a single image)."""
    return isinstance(obj, (list, tuple))
