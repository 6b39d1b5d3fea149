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
from pathlib import Path
from typing import Any

import torch

from ..attribution.base import chunks, eval_mode, resolve_device, resolve_dtype
from ..errors import ConfigError, ModelLoadError
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
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.system_prompt = system_prompt
        self.generation = {**DEFAULT_GENERATION, **generation}
        if isinstance(model, (str, os.PathLike)):
            self.name = str(model)
            self.model, self.processor = _load(
                self.name, processor, device=device, dtype=dtype, device_map=device_map,
                local_files_only=local_files_only, trust_remote_code=trust_remote_code,
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
            self.name = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
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
        if getattr(tokenizer, "pad_token", None) is None and getattr(tokenizer, "eos_token", None):
            tokenizer.pad_token = tokenizer.eos_token  # padding needs a token; EOS is the usual one
        padding = {"padding": True, "padding_side": "left"}  # generation continues on the right
        if _takes_argument(self.processor.apply_chat_template, "processor_kwargs"):
            padding = {"processor_kwargs": padding}  # transformers >= 5; older ones take them flat
        inputs = self.processor.apply_chat_template(
            conversations,
            chat_template=self.chat_template,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            **padding,
        )
        inputs = inputs.to(self._input_device())
        dtype = self._floating_dtype()
        for key, value in inputs.items():
            if torch.is_tensor(value) and value.is_floating_point():
                inputs[key] = value.to(dtype)
        if "pad_token_id" not in options and getattr(tokenizer, "pad_token_id", None) is not None:
            options = {**options, "pad_token_id": tokenizer.pad_token_id}
        output = self.model.generate(**inputs, **options)
        if not getattr(self.model.config, "is_encoder_decoder", False):
            output = output[:, inputs["input_ids"].shape[1]:]
        decode = getattr(self.processor, "batch_decode", None) or tokenizer.batch_decode
        texts = decode(output, skip_special_tokens=True)
        return [text.strip() for text in texts]

    def _conversation(self, image_list, question: str) -> list[dict[str, Any]]:
        content = [{"type": "image", "image": image} for image in image_list]
        content.append({"type": "text", "text": question})
        conversation = [{"role": "user", "content": content}]
        if self.system_prompt:
            conversation.insert(0, {"role": "system", "content": [{"type": "text", "text": self.system_prompt}]})
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
            "target": "hf", "target_model": self.name,
            "generation": dict(self.generation),
        }

    def __repr__(self) -> str:
        return f"HFTarget({self.name!r}, device={str(self._input_device())!r})"


# -- loading -----------------------------------------------------------------------------------


def _load(name, processor, *, device, dtype, device_map, local_files_only, trust_remote_code, revision):
    """(model, processor) from an id or folder; ModelLoadError with what to do when impossible."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = Path(name).expanduser()
    # A Hub id is "name" or "org/name"; anything else that looks like a path must be a folder.
    looks_local = path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name
    if looks_local and not path.is_dir():
        raise ModelLoadError(
            f"model folder {name!r} does not exist; pass a folder written by save_pretrained "
            "or a Hugging Face id such as 'Qwen/Qwen2-VL-2B-Instruct'"
        )
    source = str(path) if path.is_dir() else name
    if device_map is None:
        device = resolve_device(device)
    else:
        device = None
    if dtype is None:
        on_gpu = (device is not None and device.type == "cuda") or (device is None and torch.cuda.is_available())
        if on_gpu:
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            dtype = torch.float32
    dtype = resolve_dtype(dtype)
    offline = local_files_only
    if offline is None:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}
    common = {"trust_remote_code": trust_remote_code, "revision": revision}

    def from_pretrained(files_only: bool):
        loaded_processor = processor
        if loaded_processor is None:
            loaded_processor = AutoProcessor.from_pretrained(source, local_files_only=files_only, **common)
        dtype_argument = "dtype" if _version_at_least("4.56") else "torch_dtype"  # renamed in 4.56
        model = AutoModelForImageTextToText.from_pretrained(
            source, device_map=device_map, local_files_only=files_only, **{dtype_argument: dtype}, **common
        )
        return model, loaded_processor

    try:
        try:
            model, loaded_processor = from_pretrained(True)  # the cache or folder first: no network
        except (OSError, ValueError):
            if offline or path.is_dir():
                raise
            _check_hub(name, revision)  # one quick request, so a typo or no network fails fast
            model, loaded_processor = from_pretrained(False)
    except ModelLoadError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        reason = " ".join(str(exc).split())[:300]
        where = "the folder" if path.is_dir() else "the local cache" + ("" if offline else " or the Hub")
        raise ModelLoadError(
            f"could not load {name!r} as an image-text-to-text model from {where}: {reason}. "
            "Supply the weights: download them while online (huggingface-cli download ID), "
            "or save model and processor with save_pretrained and pass that folder, "
            "or pass HFTarget(model, processor) with objects you loaded yourself"
        ) from exc
    if device_map is None:
        model = model.to(device)
    model.eval()
    return model, loaded_processor


def _check_hub(name: str, revision: str | None) -> None:
    """ModelLoadError at once when the Hub cannot be reached or has no such model.

    ``from_pretrained`` retries each file with growing pauses (minutes without a network); one
    metadata request without retries tells the same in about a second.
    """
    from huggingface_hub import model_info
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    advice = (
        "Supply the weights: download them while online (huggingface-cli download ID), "
        "or save model and processor with save_pretrained and pass that folder, "
        "or pass HFTarget(model, processor) with objects you loaded yourself"
    )
    try:
        model_info(name, revision=revision, timeout=10)
    except GatedRepoError:
        return  # from_pretrained explains access to gated models itself
    except RevisionNotFoundError:
        raise ModelLoadError(f"model {name!r} has no revision {revision!r} on the Hugging Face Hub") from None
    except RepositoryNotFoundError:
        raise ModelLoadError(
            f"{name!r} is neither a local folder nor a model on the Hugging Face Hub (a private "
            f"model needs `hf auth login`). {advice}"
        ) from None
    except Exception as exc:  # noqa: BLE001 - any network failure means the same to the user
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise ModelLoadError(
            f"{name!r} is not in the local cache and the Hugging Face Hub cannot be reached "
            f"({reason}). {advice}"
        ) from None


def _takes_argument(function, name: str) -> bool:
    """Whether ``function`` has a parameter called ``name`` (to bridge transformers versions)."""
    try:
        return name in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


def _version_at_least(minimum: str) -> bool:
    """Whether the installed transformers is at least ``minimum`` (major.minor)."""
    import transformers

    def parts(text: str) -> tuple[int, ...]:
        return tuple(int(piece) for piece in text.split(".")[:2] if piece.isdigit())

    return parts(transformers.__version__) >= parts(minimum)
