"""The decoder attributor (docs/ALGORITHM.md §2): what every vision-language decoder family shares.

Long because: the greedy answer loop, the layer and token choices and relative attention are one
procedure (docs/ALGORITHM.md §2) that every decoder family runs; the hook and the loading live
in capture.py and loading.py.

While the model answers greedily (at most ``max_new_tokens`` new tokens), the hook of
:mod:`.capture` watches one decoder layer L' at every forward pass; each sequence averages its own
passes, up to and including its own end-of-sequence token, so a row that stops early in a batch is
not diluted by padding steps. The hook is removed and every module's training flag restored on
exit, also on errors. Loading lives in :mod:`.loading`.

A model family is a small subclass of :class:`DecoderAttributor` (an *adapter*) that says only what
differs: the prompt, image preparation, which sequence positions are the image keys, and how a row
of attention over those keys becomes a grid and the box of the image it covers.

>>> from api_prompt.attribution.decoder import Qwen2VLAttributor          # doctest: +SKIP
>>> attributor = Qwen2VLAttributor("Qwen/Qwen2-VL-7B-Instruct")            # doctest: +SKIP
>>> amap = attributor(["street.jpg"], ["Which sign is red?"])[0]          # doctest: +SKIP
>>> amap.parts["attention"].shape, amap.region                            # doctest: +SKIP
((23, 41), (0.0, 0.0, 1280.0, 720.0))
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...errors import ConfigError, UnsupportedModelError
from ...images import load_image
from ...settings import DEFAULT_ENHANCE, DEFAULT_KERNEL_SIZE, check_enhance, check_kernel_size
from ..base import (
    AttentionMap,
    Attributor,
    Box,
    check_layer,
    chunks,
    eval_mode,
    resolve_device,
    resolve_dtype,
    temporary_hooks,
)
from .capture import ImageKeys, LastRowCapture, answer_length, generation_state
from .loading import check_model_type, decoder_layers, image_token_id, load_model, load_processor

__all__ = [
    "DecoderAttributor",
    "GENERIC_QUERY",
    "RELATIVE_EPSILON",
    "relative_attention",
    "relative_default_layer",
]


#: The generic instruction of relative attention (ViCrop's wording).
GENERIC_QUERY = "Write a general description of the image."

#: Added to the generic map before dividing, so a key the generic pass ignores (attention 0 in
#: float32) gives a large finite ratio rather than infinity. Each map sums to 1 over N image keys,
#: so 1e-8 is far below any attention that matters (1/N ≥ 1e-5 for N ≤ 100,000 keys).
RELATIVE_EPSILON = 1e-8


def relative_attention(question: np.ndarray, generic: np.ndarray) -> np.ndarray:
    """ViCrop's relative attention: the question's map divided by the generic instruction's map
    (same image, same layer), which cancels what draws attention whatever is asked (the "sinks").

    >>> relative_attention(np.array([[0.2, 0.6]]), np.array([[0.1, 0.6]])).round(6).tolist()
    [[2.0, 1.0]]
    """
    return np.asarray(question, np.float64) / (np.asarray(generic, np.float64) + RELATIVE_EPSILON)


def relative_default_layer(n_layers: int) -> int:
    """The paper's LLaVA-1.5 choice (layer 20 of 32) at the same relative depth: ``n * 20 // 32``.

    >>> relative_default_layer(32), relative_default_layer(28), relative_default_layer(80)
    (20, 17, 50)
    """
    return n_layers * 20 // 32


class DecoderAttributor(Attributor):
    """Attention maps from a vision-language decoder while it answers the question.

    Subclasses (one per model family) set the class attributes and implement :meth:`_prepare`,
    :meth:`_image_keys` and :meth:`_to_map`; everything else (loading, validation, batching,
    greedy generation with the capture hook, per-row averaging, leaving the model as it was) lives
    here.

    Args:
        model: a Hugging Face id or local folder of a checkpoint in the transformers format, or an
            already loaded model (then pass its ``processor`` too; it is used where it is, in its
            dtype, and left unchanged), so that a target can share it.
        processor: the model's processor, or a Hugging Face id / folder to load it from; by default
            loaded from ``model`` (its name, or a loaded model's ``config._name_or_path``).
        layer: decoder layer L' (0-based; negative counts from the end). None: the family's
            default (:meth:`default_layer`).
        max_new_tokens: greedy generation length limit (the reference's 20).
        enhance, kernel_size: the settings of the mask :meth:`attribute` makes when the
            attributor is used alone; a :class:`~api_prompt.Prompter` combines the raw parts
            with its own.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ... (ignored for a loaded model, which stays put).
        dtype: fp16 on a GPU and fp32 on the CPU unless given.
        batch_size: images per generation call (rows are left-padded).
        relative: ViCrop's relative attention: the map for the question divided by the map for
            ``generic_query`` on the same image (:func:`relative_attention`), both computed in
            the same batched passes; the generic map depends only on the image, so it is cached
            per image (the 64 most recent). ViCrop reads the prefill alone: ``max_new_tokens=1``.
            The raw maps are kept as parts ``attention_question`` and ``attention_generic``.
        generic_query: the instruction of the generic map.
    """

    name = ""
    #: Words for messages, e.g. "LLaVA-1.5".
    family = ""
    default_model = ""
    #: ``config.model_type`` -> transformers class name this backend loads and accepts.
    model_classes: dict[str, str] = {}
    #: The recipe (:data:`api_prompt.maps.RECIPES`) that makes the attributor's own masks.
    default_recipe = "llava"

    def __init__(
        self,
        model: Any = None,
        processor: Any = None,
        *,
        layer: int | None = None,
        max_new_tokens: int = 20,
        enhance: float = DEFAULT_ENHANCE,
        kernel_size: int = DEFAULT_KERNEL_SIZE,
        device: str | torch.device | None = "auto",
        dtype: str | torch.dtype | None = None,
        batch_size: int = 8,
        pretrained: str | None = None,
        relative: bool = False,
        generic_query: str = GENERIC_QUERY,
    ) -> None:
        if pretrained is not None:
            raise ConfigError(
                f"the {self.name} backend takes no pretrained tag (that is for CLIP): pass the "
                "checkpoint as model, a Hugging Face id or a local folder"
            )
        if (
            isinstance(max_new_tokens, bool)
            or not isinstance(max_new_tokens, int)
            or max_new_tokens < 1
        ):
            raise ConfigError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if layer is not None and (
            isinstance(layer, bool) or not isinstance(layer, (int, np.integer))
        ):
            raise ConfigError(f"layer must be an integer, got {layer!r}")
        if not isinstance(relative, bool):
            raise ConfigError(f"relative must be true or false, got {relative!r}")
        if not isinstance(generic_query, str) or not generic_query.strip():
            raise ConfigError("generic_query must be a non-empty instruction")
        self.relative, self.generic_query = relative, generic_query
        self._generic_cache: dict[tuple, tuple[np.ndarray, Any]] = {}
        self.kernel_size = check_kernel_size(kernel_size)
        self.enhance = check_enhance(enhance)
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        model = self.default_model if model is None else model

        if isinstance(processor, (str, Path)):
            processor = self._load_processor(str(processor))
        if isinstance(model, torch.nn.Module):
            self._check_model_type(model.config)
            if processor is None:
                processor = self._load_processor(getattr(model.config, "_name_or_path", ""))
            self.model, self.processor = model, processor
            self.model_name = getattr(model.config, "_name_or_path", "") or type(model).__name__
            parameter = next(model.parameters())
            self.device, self.dtype = parameter.device, parameter.dtype
        else:
            self.device = resolve_device(device)
            gpu = self.device.type in ("cuda", "mps")
            self.dtype = resolve_dtype(dtype, torch.float16 if gpu else torch.float32)
            self.model_name = str(model)
            self.model, self.processor = self._load(self.model_name, processor)
        self.decoder_layers = decoder_layers(self.model, self.name)
        self.n_layers = n_layers = len(self.decoder_layers)
        self.layer = check_layer(self.default_layer(n_layers) if layer is None else layer, n_layers)
        self.image_token_id = image_token_id(self.model, self.processor)
        attention = self.decoder_layers[self.layer].self_attn
        for needed in ("q_proj", "k_proj", "head_dim"):
            if not hasattr(attention, needed):
                raise UnsupportedModelError(
                    f"{type(attention).__name__} has no {needed}: the {self.name} backend supports "
                    f"{self.family} with a rotary multi-head-attention decoder"
                )

    # ------------------------------------------------------------------ what a family says
    def default_layer(self, n_layers: int) -> int:
        """The layer used when none is given (see the family's module for why)."""
        return relative_default_layer(n_layers)

    def _prepare(self, images: list, queries: list[str]) -> tuple[dict, list[Any]]:
        """Processor inputs for a left-padded batch, and one geometry object per row."""
        raise NotImplementedError

    def _image_keys(self, inputs: dict, geometry: list[Any]) -> ImageKeys:
        """The image positions that enter the softmax, per row."""
        raise NotImplementedError

    def _to_map(
        self, attention: torch.Tensor, layout: Any, geometry: Any
    ) -> tuple[dict, Box, dict]:
        """One row's averaged attention over its image keys -> (parts, region, extra)."""
        raise NotImplementedError

    def _rotary(self, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The (B, L, d) cosines and sines the layer applies, from what the model passes it."""
        return cos, sin

    # ------------------------------------------------------------------ shared machinery
    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "model": self.model_name,
            "layer": self.layer,
            "max_new_tokens": self.max_new_tokens,
            "enhance": self.enhance,
            "kernel_size": self.kernel_size,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            # only when on, so manifests written before relative attention existed still match
            **({"relative": True, "generic_query": self.generic_query} if self.relative else {}),
        }

    def attribute_parts(
        self, images: list, queries: list[str], *, exact_parts: bool = True
    ) -> list[AttentionMap]:
        """One map of raw parts per (RGB image, query) pair; see the module docstring for what
        is computed (:meth:`attribute` adds the mask of :attr:`default_recipe`); the parts are
        always exact, so ``exact_parts`` changes nothing."""
        if len(images) != len(queries):
            raise ConfigError(f"got {len(images)} images but {len(queries)} queries")
        if self.relative:
            return self._attribute_relative(images, queries)
        maps: list[AttentionMap] = []
        for image_batch, query_batch in zip(
            chunks(images, self.batch_size), chunks(queries, self.batch_size)
        ):
            maps.extend(self._attribute_batch(list(image_batch), list(query_batch)))
        return maps

    def _attribute_relative(self, images: list, queries: list[str]) -> list[AttentionMap]:
        """Question maps and the generic maps not yet cached, in the same batched passes, then
        their ratio (:func:`relative_attention`) as the ``attention`` part."""
        keys = [_image_key(image) for image in images]
        missing = list(dict.fromkeys(key for key in keys if key not in self._generic_cache))
        first_image = {key: image for key, image in zip(keys, images)}
        rows_images = list(images) + [first_image[key] for key in missing]
        rows_queries = list(queries) + [self.generic_query] * len(missing)
        computed: list[AttentionMap] = []
        for image_batch, query_batch in zip(
            chunks(rows_images, self.batch_size), chunks(rows_queries, self.batch_size)
        ):
            computed.extend(self._attribute_batch(list(image_batch), list(query_batch)))
        for key, amap in zip(missing, computed[len(images) :]):
            self._generic_cache[key] = (amap.parts["attention"], amap.region)
            while len(self._generic_cache) > 64:
                self._generic_cache.pop(next(iter(self._generic_cache)))
        maps = []
        for key, amap in zip(keys, computed[: len(images)]):
            generic, _ = self._generic_cache[key]
            question = amap.parts["attention"]
            parts = {
                "attention": relative_attention(question, generic).astype(np.float32),
                "attention_question": question,
                "attention_generic": generic,
            }
            maps.append(
                dataclasses.replace(amap, parts=parts, extra={**amap.extra, "relative": True})
            )
        return maps

    def model_inputs(self, images: list, queries: list[str]) -> dict:
        """The exact ``generate`` inputs the attributor builds for these images and queries (the
        family's prompt and image preparation, left-padded): plain ``model.generate(**inputs)``
        on them gives the same answers as the attributor.

        >>> inputs = attributor.model_inputs([image], ["What is this?"])   # doctest: +SKIP
        >>> model.generate(**inputs, max_new_tokens=20, do_sample=False)    # doctest: +SKIP
        """
        return self._prepare([load_image(image) for image in images], list(queries))[0]

    def _processor_call(self, **kwargs) -> dict:
        """The processor on a left-padded batch (every row's last position is its last real
        token), with the tokenizer's padding side restored, on the model's device and dtype."""
        tokenizer = self.processor.tokenizer
        side = tokenizer.padding_side
        tokenizer.padding_side = "left"
        try:
            inputs = self.processor(**kwargs, return_tensors="pt", padding=True)
        finally:
            tokenizer.padding_side = side
        inputs = {key: value.to(self.device) for key, value in inputs.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        return inputs

    def _chat_prompts(self, queries: list[str]) -> list[str]:
        """One user turn holding the image and the question, in the processor's chat template."""
        if not getattr(self.processor, "chat_template", None):
            raise UnsupportedModelError(
                f"the processor of {self.model_name} has no chat template: the {self.name} backend "
                "writes its prompt with it"
            )
        return [
            self.processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": query}]}],
                add_generation_prompt=True,
                tokenize=False,
            )
            for query in queries
        ]

    def _attribute_batch(self, images: list, queries: list[str]) -> list[AttentionMap]:
        inputs, geometry = self._prepare([image.convert("RGB") for image in images], queries)
        keys = self._image_keys(inputs, geometry)
        attention = self.decoder_layers[self.layer].self_attn
        capture = LastRowCapture(attention, keys, inputs["input_ids"].shape[1], self._rotary)
        eos_ids = self._eos_ids()
        with (
            torch.inference_mode(),
            eval_mode(self.model),
            generation_state(self.model),
            temporary_hooks() as handles,
        ):
            handles.append(attention.register_forward_pre_hook(capture, with_kwargs=True))
            sequences = self.model.generate(
                **inputs,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                num_beams=1,
                use_cache=True,
                eos_token_id=eos_ids,
                pad_token_id=self._pad_id(eos_ids),
            )
        generated = sequences[:, inputs["input_ids"].shape[1] :].cpu()
        passes = torch.stack(capture.passes).float().cpu()  # (passes, B, N)
        valid = keys.valid.cpu()

        maps = []
        tokenizer = self.processor.tokenizer
        for row, (image, query) in enumerate(zip(images, queries)):
            tokens = generated[row]
            length = answer_length(tokens, eos_ids, limit=len(passes))
            row_attention = passes[:length, row][:, valid[row]].mean(dim=0)
            parts, region, extra = self._to_map(row_attention, keys.layouts[row], geometry[row])
            parts = {name: np.asarray(part, dtype=np.float32) for name, part in parts.items()}
            answer = tokenizer.decode(tokens[:length], skip_special_tokens=True).strip()
            maps.append(
                AttentionMap(
                    mask=None,
                    parts=parts,
                    image_size=image.size,
                    region=region,
                    query=query,
                    answer=answer,
                    extra={"passes": length, **extra},
                )
            )
        return maps

    def _eos_ids(self) -> list[int]:
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.processor.tokenizer.eos_token_id
        if eos is None:
            return []
        return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]

    def _pad_id(self, eos_ids: list[int]) -> int | None:
        pad = self.model.generation_config.pad_token_id
        if pad is None:
            pad = self.processor.tokenizer.pad_token_id
        if pad is None and eos_ids:
            pad = eos_ids[0]
        return pad

    # ------------------------------------------------------------------ loading (:mod:`.loading`)
    def _check_model_type(self, config: Any) -> str:
        return check_model_type(config, self.model_classes, self.name, self.family)

    def _load(self, name: str, processor: Any) -> tuple[Any, Any]:
        return load_model(
            name,
            processor,
            model_classes=self.model_classes,
            backend=self.name,
            family=self.family,
            default_model=self.default_model,
            device=self.device,
            dtype=self.dtype,
        )

    def _load_processor(self, name: str) -> Any:
        return load_processor(name, family=self.family, default_model=self.default_model)


def _image_key(image: Any) -> tuple:
    """What identifies an image (a PIL image, as :meth:`attribute` gets them) for the generic-map
    cache: its size, mode and pixels' digest."""
    return image.size, image.mode, hashlib.blake2b(image.tobytes(), digest_size=16).hexdigest()
