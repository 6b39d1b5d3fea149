"""Loading a decoder backend's model and processor: from a local folder, the Hugging Face cache
(offline), or the Hub, with the advice a user needs when the weights are missing; and finding the
parts of a loaded model the hook needs (its decoder layers, its image token).
"""

from __future__ import annotations

from typing import Any

import torch

from ... import hub
from ...errors import ConfigError, UnsupportedModelError

__all__ = [
    "check_model_type",
    "load_advice",
    "load_model",
    "load_processor",
    "decoder_layers",
    "image_token_id",
]


def check_model_type(config: Any, model_classes: dict[str, str], backend: str, family: str) -> str:
    """``config.model_type`` when it is one of ``model_classes``, else UnsupportedModelError."""
    model_type = getattr(config, "model_type", None)
    if model_type not in model_classes:
        raise UnsupportedModelError(
            f"the {backend} backend attributes {family} "
            f"({', '.join(model_classes.values())}), not a {model_type or type(config).__name__} model"
        )
    return model_type


def load_advice(name: str, default_model: str) -> str:
    """What to do when the weights of ``name`` cannot be found."""
    shown = default_model if hub.looks_like_path(name) else name
    return (
        "Supply the weights one of two ways: download once with network access "
        f"(`hf download {shown}`) and run with HF_HUB_OFFLINE=1 to use the Hugging Face cache, or "
        "pass the path of a local folder holding the transformers-format checkpoint (config.json, "
        "*.safetensors, tokenizer and preprocessor files) as the model."
    )


def load_model(
    name: str,
    processor: Any,
    *,
    model_classes: dict[str, str],
    backend: str,
    family: str,
    default_model: str,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[Any, Any]:
    """(model, processor) from a folder or the HF cache, else the Hub; the model in eval mode on
    ``device``. ``processor`` None loads the checkpoint's own."""
    import transformers

    advice = load_advice(name, default_model)
    source = str(hub.local_folder(name, advice) or name)

    def load(files_only: bool) -> tuple[Any, Any]:
        config = transformers.AutoConfig.from_pretrained(source, local_files_only=files_only)
        cls = getattr(
            transformers, model_classes[check_model_type(config, model_classes, backend, family)]
        )
        model = cls.from_pretrained(
            source, local_files_only=files_only, **hub.dtype_argument(dtype)
        )
        return model, processor or transformers.AutoProcessor.from_pretrained(
            source, local_files_only=files_only
        )

    model, processor = hub.load_cache_first(load, name, advice=advice, what=f"{family} model")
    return model.to(device).eval(), processor


def load_processor(name: str, *, family: str, default_model: str) -> Any:
    """The processor in a folder or Hub id (for a loaded model, its ``config._name_or_path``)."""
    from transformers import AutoProcessor

    if not name:
        raise ConfigError(f"pass processor= with an already loaded {family} model")
    advice = load_advice(name, default_model)
    source = str(hub.local_folder(name, advice) or name)
    return hub.load_cache_first(
        lambda files_only: AutoProcessor.from_pretrained(source, local_files_only=files_only),
        name,
        advice=advice,
        what="the processor of",
    )


def decoder_layers(model: torch.nn.Module, backend: str = "decoder") -> torch.nn.ModuleList:
    """The decoder's layer list, wherever this transformers version keeps it."""
    for path in (
        "model.language_model.layers",
        "language_model.model.layers",
        "model.layers",
        "language_model.layers",
    ):
        module: Any = model
        for part in path.split("."):
            module = getattr(module, part, None)
            if module is None:
                break
        if isinstance(module, torch.nn.ModuleList) and len(module) > 0:
            return module
    raise UnsupportedModelError(
        f"cannot find the decoder layers of {type(model).__name__} for the {backend} backend"
    )


def image_token_id(model: torch.nn.Module, processor: Any) -> int:
    """The placeholder token id that the processor repeats once per image feature."""
    token_id = getattr(model.config, "image_token_id", None)
    if token_id is None:
        token_id = getattr(model.config, "image_token_index", None)
    if token_id is None:
        token_id = getattr(processor, "image_token_id", None)
    if token_id is None:
        raise UnsupportedModelError("the model config names no image token id (image_token_id)")
    return int(token_id)
