"""Any Hugging Face image-text-to-text model with a chat template as a target.

>>> from api_prompt.targets import HFTarget                                   # doctest: +SKIP
>>> target = HFTarget("Qwen/Qwen2-VL-2B-Instruct", device="cuda")           # doctest: +SKIP
>>> target(["car.jpg"], ["What color is the car?"])                          # doctest: +SKIP
['The car is red.']
>>> target = HFTarget(model, processor)        # already loaded objects        # doctest: +SKIP

The questions are formatted with the processor's chat template (one user turn holding the
image(s) and the question), batched with left padding, and answered greedily by default.
Only the newly generated text comes back, decoded without special tokens and stripped.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from .. import hub
from ..attribution.base import chunks, eval_mode, resolve_device, resolve_dtype
from ..errors import ConfigError
from .base import BaseTarget

__all__ = ["HFTarget"]

#: Generation settings used unless the constructor or the call says otherwise.
DEFAULT_GENERATION: dict[str, Any] = {"max_new_tokens": 128, "do_sample": False}


class HFTarget(BaseTarget):
    """A transformers vision-language model (``AutoModelForImageTextToText``) as a target.

    Args:
        model: a Hugging Face id, a local folder (``save_pretrained`` output), or an already
            loaded model. A loaded model is used as it is: never moved, cast or left in another
            mode.
        processor: the model's processor when ``model`` is an object (``AutoProcessor``); for an
            id or folder it is loaded from the same place unless given.
        device: where to load the model (``"auto"``: CUDA, then MPS, then CPU). Ignored with
            ``device_map``.
        dtype: ``"fp32"``, ``"fp16"``, ``"bf16"`` or a torch dtype. Default: bf16 on a GPU that
            supports it (else fp16), fp32 on CPU.
        device_map: passed to ``from_pretrained`` (e.g. ``"auto"`` to spread a large model over
            several GPUs with accelerate).
        batch_size: questions per ``generate`` call.
        system_prompt: optional system message placed before every question.
        chat_template: a Jinja template to use instead of the processor's own.
        local_files_only: only look in the local cache (no network). Default: only when
            ``HF_HUB_OFFLINE`` is set; otherwise the cache is tried first, then the Hub.
        trust_remote_code, revision: passed to ``from_pretrained``.
        **generation: defaults for ``model.generate`` (``max_new_tokens=128`` and greedy decoding
            unless given here or in the call).

    >>> target = HFTarget("path/to/llava-folder", device="cpu", max_new_tokens=32)  # doctest: +SKIP
    >>> target(["a.png", "b.png"], "What is shown?", max_new_tokens=8)           # doctest: +SKIP
    ['A dog.', 'A red car.']
    """

    def __init__(
        self,
        model: Any,
        processor: Any = None,
        *,
        device: str | torch.device | None = "auto",
        dtype: str | torch.dtype | None = None,
        device_map: Any = None,
        batch_size: int = 8,
        system_prompt: str | None = None,
        chat_template: str | None = None,
        local_files_only: bool | None = None,
        trust_remote_code: bool = False,
        revision: str | None = None,
        **generation: Any,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = int(batch_size)
        self.system_prompt = system_prompt
        self.generation = {**DEFAULT_GENERATION, **generation}
        if isinstance(model, (str, os.PathLike)):
            self.name = str(model)
            self.model, self.processor = _load(
                self.name,
                processor,
                device=device,
                dtype=dtype,
                device_map=device_map,
                local_files_only=local_files_only,
                trust_remote_code=trust_remote_code,
                revision=revision,
            )
        else:
            if processor is None:
                raise ConfigError("a loaded model needs its processor: HFTarget(model, processor)")
            if dtype is not None or device_map is not None:
                raise ConfigError(
                    "dtype and device_map apply when HFTarget loads the model; "
                    "cast or place an already loaded model yourself"
                )
            self.name = (
                getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
            )
            self.model, self.processor = model, processor
        self.chat_template = chat_template
        if chat_template is None and not getattr(self.processor, "chat_template", None):
            raise ConfigError(
                f"the processor of {self.name!r} has no chat template; pass chat_template=... "
                "(a Jinja template that places the images and the question in a user turn)"
            )

    # -- answering ---------------------------------------------------------------------------

    def answer(self, images, questions, **generation):
        options = {**self.generation, **generation}
        answers: list[str] = []
        pairs = list(zip(images, questions))
        with eval_mode(self.model), torch.inference_mode():
            for batch in chunks(pairs, self.batch_size):
                answers.extend(self._generate(batch, options))
        return answers

    def _generate(self, batch, options: dict[str, Any]) -> list[str]:
        conversations = [self._conversation(image_list, question) for image_list, question in batch]
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        padding = {"padding": True, "padding_side": "left"}  # generation continues on the right
        if _takes_argument(self.processor.apply_chat_template, "processor_kwargs"):
            padding = {"processor_kwargs": padding}  # transformers >= 5; older ones take them flat
        with _pad_with_eos_if_needed(tokenizer):
            inputs = self.processor.apply_chat_template(
                conversations,
                chat_template=self.chat_template,
                add_generation_prompt=True,
                tokenize=True,
                return_dict=True,
                return_tensors="pt",
                **padding,
            )
            pad_token_id = getattr(tokenizer, "pad_token_id", None)
        inputs = inputs.to(self._input_device())
        dtype = self._floating_dtype()
        for key, value in inputs.items():
            if torch.is_tensor(value) and value.is_floating_point():
                inputs[key] = value.to(dtype)
        if "pad_token_id" not in options and pad_token_id is not None:
            options = {**options, "pad_token_id": pad_token_id}
        output = self.model.generate(**inputs, **options)
        if not getattr(self.model.config, "is_encoder_decoder", False):
            output = output[:, inputs["input_ids"].shape[1] :]
        decode = getattr(self.processor, "batch_decode", None) or tokenizer.batch_decode
        texts = decode(output, skip_special_tokens=True)
        return [text.strip() for text in texts]

    def _conversation(self, image_list, question: str) -> list[dict[str, Any]]:
        content = [{"type": "image", "image": image} for image in image_list]
        content.append({"type": "text", "text": question})
        conversation = [{"role": "user", "content": content}]
        if self.system_prompt:
            conversation.insert(
                0, {"role": "system", "content": [{"type": "text", "text": self.system_prompt}]}
            )
        return conversation

    def _input_device(self) -> torch.device:
        device = getattr(self.model, "device", None)
        if device is not None:
            return torch.device(device)
        return next(self.model.parameters()).device

    def _floating_dtype(self) -> torch.dtype:
        dtype = getattr(self.model, "dtype", None)
        return dtype if isinstance(dtype, torch.dtype) else next(self.model.parameters()).dtype

    def describe(self) -> dict[str, Any]:
        return {
            "target": "hf",
            "target_model": self.name,
            "generation": dict(self.generation),
        }

    def __repr__(self) -> str:
        return f"HFTarget({self.name!r}, device={str(self._input_device())!r})"


# -- loading -----------------------------------------------------------------------------------


_ADVICE = (
    "Supply the weights: download them while online (hf download ID), "
    "or save model and processor with save_pretrained and pass that folder, "
    "or pass HFTarget(model, processor) with objects you loaded yourself"
)


def _load(
    name, processor, *, device, dtype, device_map, local_files_only, trust_remote_code, revision
):
    """(model, processor) from an id or folder; ModelLoadError with what to do when impossible."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    if device_map is None:
        device = resolve_device(device)
    else:
        device = None
    if dtype is None:
        on_gpu = (device is not None and device.type == "cuda") or (
            device is None and torch.cuda.is_available()
        )
        if on_gpu:
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            dtype = torch.float32
    dtype = resolve_dtype(dtype)
    common = {"trust_remote_code": trust_remote_code, "revision": revision}
    folder = hub.local_folder(name, _ADVICE)
    source = str(folder or name)

    def from_pretrained(files_only: bool):
        loaded_processor = processor
        if loaded_processor is None:
            loaded_processor = AutoProcessor.from_pretrained(
                source, local_files_only=files_only, **common
            )
        model = AutoModelForImageTextToText.from_pretrained(
            source,
            device_map=device_map,
            local_files_only=files_only,
            **hub.dtype_argument(dtype),
            **common,
        )
        return model, loaded_processor

    model, loaded_processor = hub.load_cache_first(
        from_pretrained,
        name,
        advice=_ADVICE,
        what="image-text-to-text model",
        local_files_only=local_files_only,
        revision=revision,
    )
    if device_map is None:
        model = model.to(device)
    model.eval()
    return model, loaded_processor


@contextmanager
def _pad_with_eos_if_needed(tokenizer) -> Iterator[None]:
    """Pad with EOS while inside, when the tokenizer has no padding token (usual for decoders).

    The user's processor is left as it was: the padding token is unset again on exit.
    """
    if getattr(tokenizer, "pad_token", None) is not None or not getattr(
        tokenizer, "eos_token", None
    ):
        yield
        return
    tokenizer.pad_token = tokenizer.eos_token
    try:
        yield
    finally:
        tokenizer.pad_token = None


def _takes_argument(function, name: str) -> bool:
    """Whether ``function`` has a parameter called ``name`` (to bridge transformers versions)."""
    try:
        return name in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
