"""Backends as specs: what each attribution backend is called, how it loads and what it accepts.

The CLI (``--backend`` choices, their help, option checks), :class:`~api_prompt.Prompter`, the
batch runner and the evaluation read this table; none of them names a backend in code. Adding a
backend is one module (an :class:`~api_prompt.attribution.base.Attributor` subclass) plus one
:func:`register_backend` call. Torch-free: the backend's module is imported only by
:meth:`BackendSpec.load` (so listing backends or checking options costs nothing).

>>> spec = get_backend("clip")
>>> spec.default_recipe, [option.name for option in spec.options][:2]
('clip-soft-or', ['pretrained', 'batch_size'])
>>> spec.check_options({"pretrained": "openai", "batch_size": 4})
{'pretrained': 'openai', 'batch_size': 4}
>>> get_backend("llava").check_options({"pretrained": "openai"})
Traceback (most recent call last):
...
api_prompt.errors.ConfigError: the llava backend takes no option 'pretrained'; it takes model, layer, device, dtype, max_new_tokens, batch_size, relative, generic_query, processor, enhance, kernel_size
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from ..errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover - the attributors import torch
    from .base import Attributor

__all__ = [
    "COMMON_OPTIONS",
    "BackendOption",
    "BackendSpec",
    "BACKENDS",
    "register_backend",
    "get_backend",
    "backend_specs",
    "create_attributor",
]

#: Constructor options every backend takes (``cls(model=..., layer=..., device=..., dtype=...)``).
COMMON_OPTIONS = ("model", "layer", "device", "dtype")


@dataclass(frozen=True)
class BackendOption:
    """One extra constructor option a backend accepts, beyond :data:`COMMON_OPTIONS`.

    ``type`` is ``str``, ``int``, ``float`` or ``bool``, whose values :meth:`convert` parses
    from command-line text, or ``object`` for Python-only values (a processor, a transform) that
    are passed as they are and cannot be given on the command line.
    """

    name: str
    type: type
    default: Any
    help: str

    def convert(self, value: Any, backend: str = "") -> Any:
        """``value`` as :attr:`type` (strings are parsed), or a ConfigError naming the option."""
        where = (
            f"the {backend} backend's option {self.name!r}" if backend else f"option {self.name!r}"
        )
        if (
            value is None
            or isinstance(value, self.type)
            and not (self.type is not bool and isinstance(value, bool))
        ):
            return value
        try:
            if self.type is bool:
                text = str(value).strip().lower()
                if text in {"1", "true", "yes", "on"}:
                    return True
                if text in {"0", "false", "no", "off"}:
                    return False
                raise ValueError
            if self.type is int:
                if isinstance(value, bool) or isinstance(value, float) and not value.is_integer():
                    raise ValueError
                return int(str(value).strip()) if isinstance(value, str) else int(value)
            if self.type is float:
                if isinstance(value, bool) or not isinstance(value, (str, numbers.Real)):
                    raise ValueError
                converted = float(value)
                if not math.isfinite(converted):
                    raise ValueError
                return converted
            if self.type is str:
                if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                    raise ValueError
                return str(value)
        except ValueError:
            pass
        else:
            return value  # another type: the backend's constructor checks it
        raise ConfigError(f"{where} must be {_type_words(self.type)}, got {value!r}")


@dataclass(frozen=True)
class BackendSpec:
    """A registry entry: everything the rest of the package needs to know about a backend.

    Attributes:
        name: what users type (``--backend NAME``, ``Prompter(backend=NAME)``).
        loader: ``"module:Class"`` of the :class:`~api_prompt.attribution.base.Attributor`,
            imported only when a model is built.
        help: one line for ``--backend``'s help.
        default_model: the model used when none is given.
        default_layer: the default layer's rule in words (e.g. ``"n_blocks - 2"``).
        default_recipe: the :data:`~api_prompt.maps.RECIPES` name that makes its masks.
        options: the extra constructor options it accepts (types, defaults, help).
        model_help: what ``--model`` takes for this backend, for the CLI's help.
    """

    name: str
    loader: str
    help: str
    default_model: str
    default_layer: str
    default_recipe: str
    options: tuple[BackendOption, ...] = ()
    model_help: str = ""

    def option(self, name: str) -> BackendOption | None:
        """The declared option called ``name``, or None."""
        return next((option for option in self.options if option.name == name), None)

    def check_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """``options`` with each declared one converted to its type; ConfigError for any other.

        Common options (:data:`COMMON_OPTIONS`) pass unchanged (the backend checks them).
        """
        checked: dict[str, Any] = {}
        for key, value in options.items():
            declared = self.option(key)
            if declared is not None:
                checked[key] = declared.convert(value, self.name)
            elif key in COMMON_OPTIONS:
                checked[key] = value
            else:
                accepted = [*COMMON_OPTIONS, *(option.name for option in self.options)]
                raise ConfigError(
                    f"the {self.name} backend takes no option {key!r}; it takes {', '.join(accepted)}"
                )
        return checked

    def load(self) -> type[Attributor]:
        """Import and return the attributor class named by :attr:`loader`."""
        module_name, _, class_name = self.loader.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(
                f"the {self.name} backend cannot be loaded ({exc}); is its extra installed?"
            ) from exc
        try:
            return cast("type[Attributor]", getattr(module, class_name))
        except AttributeError:
            raise ConfigError(
                f"the {self.name} backend's loader {self.loader!r} names no class"
            ) from None

    def create(self, **options: Any) -> Attributor:
        """Build the attributor: ``cls(**options)`` after :meth:`check_options`; None values dropped."""
        options = {key: value for key, value in options.items() if value is not None}
        return self.load()(**self.check_options(options))


#: backend name -> :class:`BackendSpec`. Add entries with :func:`register_backend`.
BACKENDS: dict[str, BackendSpec] = {}


def register_backend(spec: BackendSpec) -> BackendSpec:
    """Add ``spec`` under its name (replacing one of the same name); returns it."""
    if not isinstance(spec, BackendSpec):
        raise TypeError(f"register_backend takes a BackendSpec, got {type(spec).__name__}")
    BACKENDS[spec.name] = spec
    return spec


def get_backend(name: str) -> BackendSpec:
    """The spec called ``name``, or a ConfigError that lists the registered ones.

    An entry that is a bare ``"module:Class"`` string (the registry's format before specs) is
    still accepted, as a spec with that loader and no declared options.
    """
    try:
        entry = BACKENDS[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}"
        ) from None
    if isinstance(entry, str):
        base = _BUILT_IN.get(name) or BackendSpec(name, entry, "", "", "", "")
        return dataclasses.replace(base, loader=entry)
    return entry


def backend_specs() -> list[BackendSpec]:
    """Every registered backend's spec, in registration order (bare strings made specs)."""
    return [get_backend(name) for name in BACKENDS]


def create_attributor(backend: str, **options: Any) -> Attributor:
    """Build a backend by name: ``create_attributor("clip", model="ViT-B-16", pretrained=...)``.

    Options that are None are left to the backend's defaults; unknown ones are a ConfigError.
    """
    return get_backend(backend).create(**options)


def _type_words(kind: type) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "text"}.get(
        kind, kind.__name__
    )


_BATCH_SIZE_HELP = "images per forward pass"
#: the settings of the mask an attributor makes itself (a Prompter re-combines with its own)
_OWN_MASK_OPTIONS = (
    BackendOption("enhance", float, 10.0, "enhance of the attributor's own mask"),
    BackendOption("kernel_size", int, 3, "kernel size of the attributor's own mask"),
)

#: decoder backends: the processor of an already loaded model (Python), or an id/folder to load it from
_PROCESSOR_OPTION = BackendOption(
    "processor",
    object,
    None,
    "the model's processor (with an already loaded model), or a Hugging Face id or folder to load it from",
)

#: decoder backends (llava, llava-next, qwen2-vl, qwen2.5-vl): the same options
_DECODER_OPTIONS = (
    BackendOption("max_new_tokens", int, 20, "tokens generated per image"),
    BackendOption("batch_size", int, 8, _BATCH_SIZE_HELP),
    BackendOption(
        "relative",
        bool,
        False,
        "ViCrop's relative attention: the question's map divided by a generic "
        "instruction's map on the same image (with max_new_tokens=1 as ViCrop)",
    ),
    BackendOption(
        "generic_query",
        str,
        "Write a general description of the image.",
        "the generic instruction of relative attention",
    ),
    _PROCESSOR_OPTION,
    *_OWN_MASK_OPTIONS,
)

#: open_clip backends (clip, siglip): the same loader options
_CLIP_OPTIONS = (
    BackendOption(
        "pretrained",
        str,
        None,
        "open_clip pretrained tag or checkpoint path (default: the default model's "
        "weights, 'openai' for clip, 'webli' for siglip)",
    ),
    BackendOption("batch_size", int, 16, _BATCH_SIZE_HELP),
    BackendOption("cache_dir", str, None, "open_clip download/cache folder"),
    BackendOption(
        "preprocess", object, None, "the eval transform of a model instance (Python only)"
    ),
    BackendOption("tokenizer", object, None, "the tokenizer of a model instance (Python only)"),
    *_OWN_MASK_OPTIONS,
)

_BUILT_IN = {
    spec.name: spec
    for spec in (
        BackendSpec(
            name="clip",
            loader="api_prompt.attribution.clip:CLIPAttributor",
            help="CLIP ViT on open_clip, class-token decomposition (the paper's default)",
            default_model="ViT-L-14-336-quickgelu",
            default_layer="n_blocks - 2",
            default_recipe="clip-soft-or",
            options=_CLIP_OPTIONS,
            model_help="an open_clip name (default ViT-L-14-336-quickgelu), 'hf-hub:ORG/REPO' or "
            "'local-dir:PATH'",
        ),
        BackendSpec(
            name="siglip",
            loader="api_prompt.attribution.clip:SigLIPAttributor",
            help="SigLIP / SigLIP2 (attention-pooled open_clip towers), attention-pool decomposition",
            default_model="ViT-B-16-SigLIP",
            default_layer="n_blocks - 2",
            default_recipe="siglip-soft-or",
            options=_CLIP_OPTIONS,
            model_help="an attention-pooled open_clip name (default ViT-B-16-SigLIP, pretrained "
            "'webli'), 'hf-hub:ORG/REPO' or 'local-dir:PATH'",
        ),
        BackendSpec(
            name="llava",
            loader="api_prompt.attribution.llava:LLaVAAttributor",
            help="LLaVA-1.5 on transformers, attention of the generated tokens",
            default_model="llava-hf/llava-1.5-7b-hf",
            default_layer="n_layers * 20 // 32",  # 20 for LLaVA-1.5-7B, the paper's layer
            default_recipe="llava",
            options=_DECODER_OPTIONS,
            model_help="a Hugging Face id or local folder (default llava-hf/llava-1.5-7b-hf)",
        ),
        *(
            BackendSpec(
                name=name,
                loader=f"api_prompt.attribution.decoder.{module}",
                help=help,
                default_model=model,
                default_layer="n_layers * 20 // 32",  # the paper's LLaVA-1.5 depth (20 of 32)
                default_recipe="llava",
                options=_DECODER_OPTIONS,
                model_help=f"a Hugging Face id or local folder (default {model})",
            )
            for name, module, help, model in (
                (
                    "llava-next",
                    "llava_next:LLaVANextAttributor",
                    "LLaVA-NeXT (anyres) on transformers, attention over the stitched tiles",
                    "llava-hf/llava-v1.6-mistral-7b-hf",
                ),
                (
                    "qwen2-vl",
                    "qwen2_vl:Qwen2VLAttributor",
                    "Qwen2-VL or Qwen2.5-VL on transformers, attention over the merged-token grid",
                    "Qwen/Qwen2-VL-7B-Instruct",
                ),
                (
                    "qwen2.5-vl",
                    "qwen2_vl:Qwen25VLAttributor",
                    "as qwen2-vl, with Qwen2.5-VL-7B as the default model",
                    "Qwen/Qwen2.5-VL-7B-Instruct",
                ),
            )
        ),
    )
}

for _spec in _BUILT_IN.values():
    register_backend(_spec)
