"""What every target shares: the :class:`Target` protocol, the base class and input handling.

Long because: the Target protocol, the shared input handling and the TARGETS specs (what each
kind accepts, read by the command line) are one contract.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from PIL import Image

from ..attribution.registry import BackendOption
from ..errors import ConfigError, TargetError
from ..images import load_image

__all__ = [
    "Target",
    "BaseTarget",
    "CallableTarget",
    "TargetError",
    "as_target",
    "create_target",
    "normalise_batch",
    "split_target_spec",
    "TARGETS",
    "TargetSpec",
    "TargetOption",
    "register_target",
    "get_target",
    "target_specs",
]

#: One option a target kind declares: name, type (parsed from command-line text), default, help.
#: The same record the backend specs use, so both are typed by one piece of code.
TargetOption = BackendOption


@dataclass(frozen=True)
class TargetSpec:
    """A target kind as a registry entry: what users type before the colon, how it loads, and
    the options it takes, so the command line derives its checks and ``--target-option`` from it.

    Attributes:
        kind: what users type: ``--target KIND:NAME``, ``create_target("KIND:NAME")``.
        loader: ``"module:Class"``, imported only when a target is built; the class is called as
            ``cls(NAME, **options)``.
        help: what NAME is and what the kind answers, for ``--target``'s help.
        options: the options it takes from the command line (typed by :meth:`check_options`).
            In Python the constructor takes these and any others it documents.
        open_clip_names: NAME is an open_clip model name, checked before anything loads.
        multiple_choice_only: it answers only questions that list options as lines ``A. text``.

    >>> spec = get_target("openai")
    >>> spec.check_options({"timeout": "30", "max_retries": "0"})
    {'timeout': 30.0, 'max_retries': 0}
    >>> spec.check_options({"timeout": "soon"})
    Traceback (most recent call last):
    ...
    api_prompt.errors.ConfigError: the openai target's option 'timeout' must be a number, got 'soon'
    """

    kind: str
    loader: str
    help: str = ""
    options: tuple[BackendOption, ...] = ()
    open_clip_names: bool = False
    multiple_choice_only: bool = False

    def option(self, name: str) -> BackendOption | None:
        """The declared option called ``name``, or None."""
        return next((option for option in self.options if option.name == name), None)

    def check_options(self, options: dict[str, Any], *, strict: bool = True) -> dict[str, Any]:
        """``options`` with each declared one converted to its type. An undeclared one is a
        ConfigError that lists the declared ones (``strict``, as the command line checks), or
        passes as it is for the constructor to check (Python callers)."""
        checked: dict[str, Any] = {}
        for key, value in options.items():
            declared = self.option(key)
            if declared is None:
                if strict:
                    taken = ", ".join(option.name for option in self.options) or "no options"
                    raise ConfigError(
                        f"the {self.kind} target takes no option {key!r}; it takes {taken}"
                    )
                checked[key] = value
                continue
            try:
                checked[key] = declared.convert(value)
            except ConfigError as exc:
                raise ConfigError(f"the {self.kind} target's {exc}") from None
        return checked

    def check_name(self, name: str) -> None:
        """Refuse, before anything loads, a NAME that cannot be loaded (an open_clip name of a
        missing local folder, ...); a ConfigError."""
        if self.open_clip_names:
            from ..hub import check_model_name

            check_model_name(name, open_clip=True)

    def check_question(self, question: str) -> None:
        """Refuse a question this kind cannot answer (a multiple-choice-only kind needs option
        lines); a ConfigError.

        >>> get_target("clip-zeroshot").check_question("Which?\\nA. a cat\\nB. a dog")
        >>> get_target("clip-zeroshot").check_question("Which animal?")
        Traceback (most recent call last):
        ...
        api_prompt.errors.ConfigError: the clip-zeroshot target answers multiple choice only: the question must list its options as lines 'A. text', 'B. text'
        """
        if self.multiple_choice_only:
            from .choices import parse_options  # the option-line reader such kinds use

            if not parse_options(question):
                raise ConfigError(
                    f"the {self.kind} target answers multiple choice only: the question must list "
                    "its options as lines 'A. text', 'B. text'"
                )

    def load(self) -> type:
        """Import and return the target class named by :attr:`loader`."""
        module_name, _, class_name = self.loader.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(
                f"the {self.kind} target cannot be loaded ({exc}); is its extra installed?"
            ) from exc
        try:
            return getattr(module, class_name)
        except AttributeError:
            raise ConfigError(
                f"the {self.kind} target's loader {self.loader!r} names no class"
            ) from None

    def create(self, name: str, **options: Any) -> BaseTarget:
        """``cls(name, **options)``, the declared options typed first."""
        return self.load()(name, **self.check_options(options, strict=False))


#: target kind -> :class:`TargetSpec`, for ``create_target("hf:...")`` / ``--target hf:...``.
#: Add entries with :func:`register_target`.
TARGETS: dict[str, TargetSpec] = {}


def register_target(spec: TargetSpec) -> TargetSpec:
    """Add ``spec`` under its kind (replacing one of the same kind); returns it."""
    if not isinstance(spec, TargetSpec):
        raise TypeError(f"register_target takes a TargetSpec, got {type(spec).__name__}")
    TARGETS[spec.kind] = spec
    return spec


def get_target(kind: str) -> TargetSpec:
    """The spec of ``kind``, or a ConfigError that lists the registered kinds. An entry that is a
    bare ``"module:Class"`` string (the table's format before specs) is a spec with that loader."""
    entry = TARGETS.get(kind) if isinstance(kind, str) else None
    if entry is None:
        raise ConfigError(f"unknown target kind {kind!r}; choose one of: {', '.join(TARGETS)}")
    return TargetSpec(kind, entry) if isinstance(entry, str) else entry


def target_specs() -> list[TargetSpec]:
    """Every registered target kind's spec, in registration order."""
    return [get_target(kind) for kind in TARGETS]


@runtime_checkable
class Target(Protocol):
    """Anything that answers a batch of questions about images.

    ``target(images, questions, **generation) -> list[str]``: one answer per question, in order.
    """

    def __call__(
        self, images: Sequence, questions: Sequence[str] | str, **generation: Any
    ) -> list[str]: ...


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
        return self(
            [image] if not _is_image_list(image) else [list(image)], [question], **generation
        )[0]

    @abstractmethod
    def answer(
        self, images: list[list[Image.Image]], questions: list[str], **generation: Any
    ) -> list[str]:
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
    return get_target(kind).create(name, **options)


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


_DEVICE = BackendOption(
    "device", str, "auto", "where the model runs: auto, cpu, cuda, cuda:N or mps"
)
_DTYPE = BackendOption(
    "dtype", str, None, "fp32, fp16 or bf16 (default: bf16/fp16 on GPU, fp32 on CPU)"
)

register_target(
    TargetSpec(
        "hf",
        "api_prompt.targets.hf:HFTarget",
        "<Hugging Face id or folder>: an image-text-to-text model with a chat template, any question",
        options=(
            _DEVICE,
            _DTYPE,
            BackendOption("batch_size", int, 8, "questions per forward pass"),
            BackendOption("system_prompt", str, None, "a system message before each question"),
            BackendOption("revision", str, None, "the model's revision on the Hub"),
            BackendOption(
                "local_files_only", bool, None, "never download (default: $HF_HUB_OFFLINE)"
            ),
        ),
    )
)
register_target(
    TargetSpec(
        "openai",
        "api_prompt.targets.openai:OpenAITarget",
        "<model>: any OpenAI-compatible chat-completions server (--base-url, key in $OPENAI_API_KEY), any question",
        options=(
            BackendOption(
                "base_url",
                str,
                None,
                "API root ending in /v1 (default: $OPENAI_BASE_URL, else OpenAI's)",
            ),
            BackendOption("timeout", float, 60.0, "seconds one attempt may take in all"),
            BackendOption(
                "max_retries",
                int,
                3,
                "extra attempts after a 429, a 5xx, a timeout or a broken connection",
            ),
            BackendOption(
                "backoff", float, 1.0, "first retry delay in seconds, doubled per attempt"
            ),
            BackendOption("max_backoff", float, 30.0, "longest retry delay in seconds"),
            BackendOption("max_concurrency", int, 4, "requests in flight at once"),
            BackendOption("system_prompt", str, None, "a system message before each question"),
            BackendOption("image_detail", str, None, "the image parts' detail: low, high or auto"),
        ),
    )
)
register_target(
    TargetSpec(
        "clip-zeroshot",
        "api_prompt.targets.clip_zeroshot:CLIPZeroShotTarget",
        "<open_clip name>: multiple choice only, by CLIP similarity; QUESTION must list its options as "
        "lines 'A. text', 'B. text' (one caption each), and the answer is a letter",
        options=(
            _DEVICE,
            _DTYPE,
            BackendOption("pretrained", str, None, "open_clip pretrained tag or checkpoint path"),
            BackendOption("batch_size", int, 64, "captions and images per forward pass"),
        ),
        open_clip_names=True,
        multiple_choice_only=True,
    )
)
