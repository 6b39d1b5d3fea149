"""Decoder-attention maps: what every vision-language decoder shares (docs/ALGORITHM.md §2).

While the model answers greedily (at most ``max_new_tokens`` new tokens), one decoder layer L' is
watched at every forward pass (the prefill and each generated token except the last): the
attention logits of the last query position over the image-token keys are soft-maxed over those
keys only and averaged over heads. Each sequence averages its own passes, up to and including its
own end-of-sequence token, so a row that stops early in a batch is not diluted by padding steps.

Only that one row is computed, in a forward pre-hook on layer L''s attention module: the query of
the last position and the keys of the image positions are re-projected from the layer's input with
the layer's own weights (biases and per-head q/k norms included) and rotated with the rotary
cosines and sines the model hands to that layer, so the positions are exactly the model's own
(LLaMA's 1-D positions, Qwen2-VL's 3-D M-RoPE). Every layer keeps the model's attention
implementation (SDPA, flash), no attention matrix is ever materialised, and the hook is removed and
every module's training flag restored on exit, also on errors.

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
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from ... import hub
from ...errors import ConfigError, UnsupportedModelError
from ...maps import check_kernel_size, get_recipe
from ...images import load_image
from ..base import (
    AttentionMap,
    Attributor,
    Box,
    chunks,
    check_layer,
    eval_mode,
    resolve_device,
    resolve_dtype,
    temporary_hooks,
)


@dataclass
class ImageKeys:
    """Which sequence positions of a padded batch are the image keys of the softmax.

    ``positions`` is (B, N) indices into the prompt, ``valid`` (B, N) marks real entries (rows may
    have fewer image keys than the longest row; the rest is filler that never enters a softmax).
    ``layouts`` holds one adapter-specific object per row, handed back to :meth:`_to_map`.
    """

    positions: torch.Tensor
    valid: torch.Tensor
    layouts: list[Any] = field(default_factory=list)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The rotary embedding every supported decoder uses; ``x`` is (B, heads, n, d) and
    ``cos``/``sin`` are (B or 1, n, d), one row per position as the model computed them."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + rotate_half(x) * sin


class LastRowCapture:
    """Forward pre-hook on one self-attention module that records, per forward pass, the
    head-averaged attention of the last query position over the image keys, soft-maxed over the
    image keys only.

    The image keys are projected once, at the prefill; each later pass costs one query projection
    of one position and a (heads × image keys) product.
    """

    def __init__(self, attention: torch.nn.Module, keys: ImageKeys, prompt_length: int, rotary=None):
        self.attention = attention
        self.image_positions = keys.positions  # (B, N) indices into the prompt
        self.valid = keys.valid  # (B, N)
        self.prompt_length = prompt_length
        self.rotary = rotary or (lambda cos, sin: (cos, sin))
        # 1/sqrt(d); transformers before 4.48 has no ``scaling`` attribute
        self.scaling = getattr(attention, "scaling", attention.head_dim ** -0.5)
        self.keys: torch.Tensor | None = None  # (B, key-value heads, N, d), float32, rotated
        self.passes: list[torch.Tensor] = []  # each (B, N), float32

    def _project(self, proj: torch.nn.Module, norm_name: str, hidden: torch.Tensor) -> torch.Tensor:
        attn = self.attention
        states = proj(hidden).view(*hidden.shape[:-1], -1, attn.head_dim)
        norm = getattr(attn, norm_name, None)  # some backbones normalise q/k per head
        if norm is not None:
            states = norm(states)
        return states.transpose(1, 2)

    @torch.no_grad()
    def __call__(self, module, args, kwargs):
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        if kwargs.get("position_embeddings") is None:
            raise UnsupportedModelError(
                f"{type(module).__name__} is not given its rotary position embeddings: decoder "
                "backends support rotary decoders (LLaMA, Mistral, Qwen2) from transformers >= 4.48"
            )
        cos, sin = self.rotary(*kwargs["position_embeddings"])
        attn = self.attention
        if self.keys is None:
            if hidden.shape[1] != self.prompt_length:
                raise UnsupportedModelError(
                    f"the decoder's first pass saw {hidden.shape[1]} positions, the prompt has "
                    f"{self.prompt_length}: the processor must expand the image placeholder into one "
                    "token per image feature and the prompt must run in one prefill pass"
                )
            index = self.image_positions
            image_hidden = hidden.gather(1, index[..., None].expand(-1, -1, hidden.shape[-1]))
            trig = [t.expand(hidden.shape[0], -1, -1).gather(1, index[..., None].expand(-1, -1, t.shape[-1]))
                    for t in (cos, sin)]
            # one key per key-value head (grouped-query attention shares it among query heads)
            self.keys = apply_rotary(self._project(attn.k_proj, "k_norm", image_hidden), *trig).float()
        query = self._project(attn.q_proj, "q_norm", hidden[:, -1:])
        query = apply_rotary(query, cos[:, -1:], sin[:, -1:]).float()  # (B, heads, 1, d)
        batch, heads, _, dim = query.shape
        kv_heads = self.keys.shape[1]  # query head h reads key-value head h // (heads / kv_heads)
        grouped = query.view(batch, kv_heads, heads // kv_heads, dim)
        logits = torch.einsum("bkgd,bknd->bkgn", grouped, self.keys).reshape(batch, heads, -1) * self.scaling
        logits = logits.masked_fill(~self.valid[:, None, :], float("-inf"))
        self.passes.append(logits.softmax(dim=-1).mean(dim=1))
        return None


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
        enhance: contrast coefficient of the mask (``maps.enhance``).
        kernel_size: odd box-filter size of the mask.
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
        enhance: float = 10.0,
        kernel_size: int = 3,
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
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if layer is not None and (isinstance(layer, bool) or not isinstance(layer, (int, np.integer))):
            raise ConfigError(f"layer must be an integer, got {layer!r}")
        if not isinstance(relative, bool):
            raise ConfigError(f"relative must be true or false, got {relative!r}")
        if not isinstance(generic_query, str) or not generic_query.strip():
            raise ConfigError("generic_query must be a non-empty instruction")
        self.relative, self.generic_query = relative, generic_query
        self._generic_cache: dict[tuple, tuple[np.ndarray, Any]] = {}
        self.kernel_size = check_kernel_size(kernel_size)
        self.enhance = float(enhance)
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

    def _to_map(self, attention: torch.Tensor, layout: Any, geometry: Any) -> tuple[dict, Box, dict]:
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

    def attribute(self, images: list, queries: list[str]) -> list[AttentionMap]:
        """One map per (RGB image, query) pair; see the module docstring for what is computed."""
        if len(images) != len(queries):
            raise ConfigError(f"got {len(images)} images but {len(queries)} queries")
        if self.relative:
            return self._attribute_relative(images, queries)
        maps: list[AttentionMap] = []
        for image_batch, query_batch in zip(chunks(images, self.batch_size), chunks(queries, self.batch_size)):
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
        for image_batch, query_batch in zip(chunks(rows_images, self.batch_size), chunks(rows_queries, self.batch_size)):
            computed.extend(self._attribute_batch(list(image_batch), list(query_batch)))
        for key, amap in zip(missing, computed[len(images):]):
            self._generic_cache[key] = (amap.parts["attention"], amap.region)
            while len(self._generic_cache) > 64:
                self._generic_cache.pop(next(iter(self._generic_cache)))
        maps = []
        for key, amap in zip(keys, computed[: len(images)]):
            generic, _ = self._generic_cache[key]
            question = amap.parts["attention"]
            parts = {"attention": relative_attention(question, generic).astype(np.float32),
                     "attention_question": question, "attention_generic": generic}
            mask = get_recipe(self.default_recipe)(parts, enhance=self.enhance, kernel_size=self.kernel_size)
            maps.append(dataclasses.replace(amap, parts=parts, mask=np.asarray(mask, np.float32),
                                            extra={**amap.extra, "relative": True}))
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
                add_generation_prompt=True, tokenize=False,
            )
            for query in queries
        ]

    def _attribute_batch(self, images: list, queries: list[str]) -> list[AttentionMap]:
        inputs, geometry = self._prepare([image.convert("RGB") for image in images], queries)
        keys = self._image_keys(inputs, geometry)
        attention = self.decoder_layers[self.layer].self_attn
        capture = LastRowCapture(attention, keys, inputs["input_ids"].shape[1], self._rotary)
        eos_ids = self._eos_ids()
        with torch.inference_mode(), eval_mode(self.model), generation_state(self.model), \
                temporary_hooks() as handles:
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
        generated = sequences[:, inputs["input_ids"].shape[1]:].cpu()
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
            mask = get_recipe(self.default_recipe)(parts, enhance=self.enhance, kernel_size=self.kernel_size)
            answer = tokenizer.decode(tokens[:length], skip_special_tokens=True).strip()
            maps.append(
                AttentionMap(
                    mask=mask.astype(np.float32),
                    parts=parts,
                    image_size=image.size,
                    region=region,
                    query=query,
                    answer=answer,
                    extra={"passes": length, **extra},
                    recipe=self.default_recipe,
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

    # ------------------------------------------------------------------ loading
    def _check_model_type(self, config: Any) -> str:
        model_type = getattr(config, "model_type", None)
        if model_type not in self.model_classes:
            raise UnsupportedModelError(
                f"the {self.name} backend attributes {self.family} "
                f"({', '.join(self.model_classes.values())}), not a {model_type or type(config).__name__} model"
            )
        return model_type

    def _advice(self, name: str) -> str:
        shown = self.default_model if hub.looks_like_path(name) else name
        return (
            "Supply the weights one of two ways: download once with network access "
            f"(`hf download {shown}`) and run with HF_HUB_OFFLINE=1 to use the Hugging Face cache, or "
            "pass the path of a local folder holding the transformers-format checkpoint (config.json, "
            "*.safetensors, tokenizer and preprocessor files) as the model."
        )

    def _load(self, name: str, processor: Any) -> tuple[Any, Any]:
        """(model, processor) from a folder or the HF cache, else the Hub."""
        import transformers

        source = str(hub.local_folder(name, self._advice(name)) or name)

        def load(files_only: bool):
            config = transformers.AutoConfig.from_pretrained(source, local_files_only=files_only)
            cls = getattr(transformers, self.model_classes[self._check_model_type(config)])
            model = cls.from_pretrained(source, local_files_only=files_only, **hub.dtype_argument(self.dtype))
            return model, processor or transformers.AutoProcessor.from_pretrained(source, local_files_only=files_only)

        model, processor = hub.load_cache_first(load, name, advice=self._advice(name), what=f"{self.family} model")
        return model.to(self.device).eval(), processor

    def _load_processor(self, name: str) -> Any:
        """The processor in a folder or Hub id (for a loaded model, its ``config._name_or_path``)."""
        from transformers import AutoProcessor

        if not name:
            raise ConfigError(f"pass processor= with an already loaded {self.family} model")
        source = str(hub.local_folder(name, self._advice(name)) or name)
        return hub.load_cache_first(
            lambda files_only: AutoProcessor.from_pretrained(source, local_files_only=files_only),
            name, advice=self._advice(name), what="the processor of",
        )


#: Attributes that ``generate`` leaves behind on a model's modules (Qwen2-VL caches its M-RoPE
#: offsets in ``rope_deltas``); restored afterwards so the model is exactly as it was.
GENERATION_STATE = ("rope_deltas",)


@contextmanager
def generation_state(model: torch.nn.Module) -> Iterator[None]:
    """Restore the :data:`GENERATION_STATE` attributes of every module on exit."""
    saved = [(module, name, getattr(module, name)) for module in model.modules()
             for name in GENERATION_STATE if hasattr(module, name)]
    try:
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


def answer_length(tokens: torch.Tensor, eos_ids: list[int], limit: int) -> int:
    """Tokens the reference (batch 1, stopping at EOS) would have generated for this row.

    That is also its number of forward passes: the prefill makes the first token and each
    generated token but the last is fed back once. The EOS token itself counts.

    >>> answer_length(torch.tensor([5, 7, 2, 0, 0]), [2], limit=5)
    3
    """
    if eos_ids:
        hits = torch.isin(tokens, torch.tensor(eos_ids)).nonzero()
        if len(hits):
            return min(int(hits[0]) + 1, limit)
    return min(len(tokens), limit)


def decoder_layers(model: torch.nn.Module, backend: str = "decoder") -> torch.nn.ModuleList:
    """The decoder's layer list, wherever this transformers version keeps it."""
    for path in ("model.language_model.layers", "language_model.model.layers", "model.layers",
                 "language_model.layers"):
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


def image_positions(input_ids: torch.Tensor, token_id: int) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Per row, the sequence positions holding ``token_id``, packed into (B, N) with a validity
    mask, plus the list of each row's own positions.

    >>> ids = torch.tensor([[0, 9, 9, 1], [9, 9, 9, 1]])
    >>> positions, valid, rows = image_positions(ids, 9)
    >>> positions.tolist(), valid.tolist()
    ([[1, 2, 0], [0, 1, 2]], [[True, True, False], [True, True, True]])
    """
    rows = [(row == token_id).nonzero()[:, 0] for row in input_ids]
    return pack_positions(rows)


def pack_positions(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Stack rows of positions of different lengths into (B, N) plus a (B, N) validity mask."""
    if any(len(row) == 0 for row in rows):
        raise UnsupportedModelError("a prompt holds no image tokens: the processor did not insert the image")
    width = max(len(row) for row in rows)
    positions = torch.zeros(len(rows), width, dtype=torch.long, device=rows[0].device)
    valid = torch.zeros(len(rows), width, dtype=torch.bool, device=rows[0].device)
    for index, row in enumerate(rows):
        positions[index, : len(row)] = row
        valid[index, : len(row)] = True
    return positions, valid, rows


def _image_key(image: Any) -> tuple:
    """What identifies an image (a PIL image, as :meth:`attribute` gets them) for the generic-map
    cache: its size, mode and pixels' digest."""
    return image.size, image.mode, hashlib.blake2b(image.tobytes(), digest_size=16).hexdigest()
