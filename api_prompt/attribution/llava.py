"""LLaVA backend: where the decoder looks while it answers (ALGORITHM.md §2).

The question goes to LLaVA-1.5 in its llava_v1 prompt with the image padded to a square. While
LLaVA answers greedily, one decoder layer L' is watched at every forward pass (the prefill and
each generated token except the last): the attention logits of the last query position over the
image-token keys are soft-maxed over those keys only and averaged over heads; the passes are then
averaged into a P×P map (24×24 for LLaVA-1.5).

Only that one row is computed, in a hook on layer L': the query of the last position and the keys
of the image positions are re-projected from the layer's input with the layer's own weights and
rotary embedding. Every layer keeps the model's attention implementation (SDPA, flash), and no
attention matrix is ever materialised, so capturing costs a few small matrix products per token.

>>> from api_prompt.attribution.llava import LLaVAAttributor          # doctest: +SKIP
>>> attributor = LLaVAAttributor("llava-hf/llava-1.5-7b-hf")          # doctest: +SKIP
>>> amap = attributor(["cat.jpg"], ["What is on the table?"])[0]      # doctest: +SKIP
>>> amap.parts["attention"].shape, amap.answer                        # doctest: +SKIP
((24, 24), 'A cat is sitting on the table.')
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from PIL import Image

from .. import hub
from ..errors import ConfigError, UnsupportedModelError
from ..maps import check_kernel_size, combine_llava
from .base import (
    AttentionMap,
    Attributor,
    chunks,
    check_layer,
    eval_mode,
    resolve_device,
    resolve_dtype,
    temporary_hooks,
)

DEFAULT_MODEL = "llava-hf/llava-1.5-7b-hf"

#: The llava_v1 conversation template with its system sentence (``{question}`` is filled in).
PROMPT_TEMPLATE = (
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the human's questions. USER: <image>\n{question} "
    "ASSISTANT:"
)

#: Colour of the square padding: CLIP's pixel mean in 8 bits, as the reference pads.
PAD_COLOUR = (122, 116, 104)


def pad_to_square(image: Image.Image, colour: tuple[int, int, int] = PAD_COLOUR):
    """Paste ``image`` centred on a square of side max(W, H) filled with ``colour``.

    Returns the square and the box it covers in the original image's pixel coordinates (it
    extends beyond the image on the padded sides).

    >>> square, region = pad_to_square(Image.new("RGB", (40, 20)))
    >>> square.size, region
    ((40, 40), (0.0, -10.0, 40.0, 30.0))
    """
    width, height = image.size
    side = max(width, height)
    left, top = (side - width) // 2, (side - height) // 2
    if width == height:
        square = image.copy()
    else:
        square = Image.new(image.mode, (side, side), colour)
        square.paste(image, (left, top))
    return square, (float(-left), float(-top), float(side - left), float(side - top))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """LLaMA's rotary embedding; ``x`` is (B, heads, n, d), ``cos``/``sin`` are (B or 1, n, d)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + _rotate_half(x) * sin


class _LastRowCapture:
    """Forward pre-hook on one self-attention module that records, per forward pass, the
    head-averaged attention of the last query position over the image keys, soft-maxed over the
    image keys only.

    The image keys are projected once, at the prefill; each pass then costs one query projection
    of one position and a (heads × image tokens) product.
    """

    def __init__(self, attention: torch.nn.Module, image_positions: torch.Tensor, prompt_length: int):
        self.attention = attention
        self.image_positions = image_positions  # (B, N) indices into the prompt
        self.prompt_length = prompt_length
        # LLaMA's 1/sqrt(d); transformers before 4.48 has no ``scaling`` attribute
        self.scaling = getattr(attention, "scaling", attention.head_dim ** -0.5)
        self.keys: torch.Tensor | None = None  # (B, heads, N, d), float32, after RoPE
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
                f"{type(module).__name__} is not given its rotary position embeddings: the llava "
                "backend supports LLaMA-style decoders (LLaVA-1.5)"
            )
        cos, sin = kwargs["position_embeddings"]
        attn = self.attention
        if self.keys is None:
            if hidden.shape[1] != self.prompt_length:
                raise UnsupportedModelError(
                    f"the decoder's first pass saw {hidden.shape[1]} positions, the prompt has "
                    f"{self.prompt_length}: the processor must expand <image> into one token per "
                    "patch (a recent transformers) and the prompt must run in one prefill pass"
                )
            index = self.image_positions
            gather = index[..., None].expand(-1, -1, hidden.shape[-1])
            image_hidden = hidden.gather(1, gather)
            trig = [t.expand(hidden.shape[0], -1, -1).gather(1, index[..., None].expand(-1, -1, t.shape[-1]))
                    for t in (cos, sin)]
            keys = _apply_rope(self._project(attn.k_proj, "k_norm", image_hidden), *trig)
            groups = attn.num_key_value_groups if hasattr(attn, "num_key_value_groups") else 1
            self.keys = keys.float().repeat_interleave(groups, dim=1)
        query = self._project(attn.q_proj, "q_norm", hidden[:, -1:])
        query = _apply_rope(query, cos[:, -1:], sin[:, -1:]).float()  # (B, heads, 1, d)
        logits = (query @ self.keys.transpose(-1, -2)).squeeze(2) * self.scaling  # (B, heads, N)
        self.passes.append(logits.softmax(dim=-1).mean(dim=1))
        return None


class LLaVAAttributor(Attributor):
    """Attention maps from LLaVA-1.5's decoder while it answers the question (ALGORITHM.md §2).

    Args:
        model: a Hugging Face id or local folder of a LLaVA checkpoint in the transformers format
            (``llava-hf/llava-1.5-7b-hf``, ``-13b-hf``), or an already loaded
            ``LlavaForConditionalGeneration`` (then pass its ``processor`` too; it is used where
            it is, in its dtype, and left unchanged), so that a LLaVA target can share it.
        processor: the model's ``LlavaProcessor``; loaded from ``model`` when it is a name.
        layer: decoder layer L' (0-based; negative counts from the end). The paper uses 20.
        max_new_tokens: greedy generation length limit (the reference's 20).
        enhance: contrast coefficient of the mask (``maps.enhance``).
        kernel_size: odd box-filter size of the mask.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ... (ignored for a loaded model, which stays put).
        dtype: fp16 on a GPU and fp32 on the CPU unless given.
        batch_size: images per generation call (rows are left-padded).

    >>> attributor = LLaVAAttributor("/models/llava-1.5-7b-hf", layer=20)    # doctest: +SKIP
    >>> [amap] = attributor(["street.jpg"], ["Which sign is red?"])           # doctest: +SKIP
    >>> amap.mask.shape, amap.region                                          # doctest: +SKIP
    ((24, 24), (0.0, -80.0, 640.0, 560.0))
    """

    name = "llava"
    default_recipe = "llava"

    def __init__(
        self,
        model: Any = DEFAULT_MODEL,
        processor: Any = None,
        *,
        layer: int = 20,
        max_new_tokens: int = 20,
        enhance: float = 10.0,
        kernel_size: int = 3,
        device: str | torch.device | None = "auto",
        dtype: str | torch.dtype | None = None,
        batch_size: int = 8,
        pretrained: str | None = None,
    ) -> None:
        if pretrained is not None:
            raise ConfigError(
                "the llava backend takes no pretrained tag (that is for CLIP): pass the "
                "checkpoint as model, a Hugging Face id or a local folder"
            )
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        self.kernel_size = check_kernel_size(kernel_size)
        self.enhance = float(enhance)
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size

        if isinstance(model, torch.nn.Module):
            self.model, self.processor = model, processor or _load_processor(model)
            self.model_name = getattr(model.config, "_name_or_path", "") or type(model).__name__
            parameter = next(model.parameters())
            self.device, self.dtype = parameter.device, parameter.dtype
        else:
            self.device = resolve_device(device)
            gpu = self.device.type in ("cuda", "mps")
            self.dtype = resolve_dtype(dtype, torch.float16 if gpu else torch.float32)
            self.model_name = str(model)
            self.model, self.processor = _load(self.model_name, processor, self.dtype, self.device)
        self.decoder_layers = _decoder_layers(self.model)
        self.layer = check_layer(layer, len(self.decoder_layers))
        self.image_token_id = _image_token_id(self.model, self.processor)
        attention = self.decoder_layers[self.layer].self_attn
        for needed in ("q_proj", "k_proj", "head_dim"):
            if not hasattr(attention, needed):
                raise UnsupportedModelError(
                    f"{type(attention).__name__} has no {needed}: the llava backend supports "
                    "LLaMA-style decoders (LLaVA-1.5)"
                )

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
        }

    def attribute(self, images: list, queries: list[str]) -> list[AttentionMap]:
        """One map per (RGB image, query) pair; see the module docstring for what is computed."""
        if len(images) != len(queries):
            raise ConfigError(f"got {len(images)} images but {len(queries)} queries")
        maps: list[AttentionMap] = []
        for image_batch, query_batch in zip(chunks(images, self.batch_size), chunks(queries, self.batch_size)):
            maps.extend(self._attribute_batch(list(image_batch), list(query_batch)))
        return maps

    def _attribute_batch(self, images: list, queries: list[str]) -> list[AttentionMap]:
        squares, regions = zip(*(pad_to_square(image.convert("RGB")) for image in images))
        prompts = [PROMPT_TEMPLATE.format(question=query) for query in queries]
        tokenizer = self.processor.tokenizer
        side = tokenizer.padding_side
        tokenizer.padding_side = "left"  # every row's last position must be its last real token
        try:
            inputs = self.processor(images=list(squares), text=prompts, return_tensors="pt", padding=True)
        finally:
            tokenizer.padding_side = side
        inputs = {key: value.to(self.device) for key, value in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)

        is_image = inputs["input_ids"] == self.image_token_id
        counts = is_image.sum(dim=1)
        if int(counts.min()) != int(counts.max()) or int(counts[0]) == 0:
            raise UnsupportedModelError("every prompt must hold the same, non-zero number of image tokens")
        n_image = int(counts[0])
        grid = math.isqrt(n_image)
        if grid * grid != n_image:
            raise UnsupportedModelError(f"{n_image} image tokens do not form a square grid")
        positions = is_image.nonzero()[:, 1].view(len(prompts), n_image)

        capture = _LastRowCapture(self.decoder_layers[self.layer].self_attn, positions, is_image.shape[1])
        eos_ids = self._eos_ids()
        with torch.inference_mode(), eval_mode(self.model), temporary_hooks() as handles:
            handles.append(capture.attention.register_forward_pre_hook(capture, with_kwargs=True))
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

        maps = []
        for row, (image, query, region) in enumerate(zip(images, queries, regions)):
            tokens = generated[row]
            length = _answer_length(tokens, eos_ids, limit=len(passes))
            attention = passes[:length, row].mean(dim=0).reshape(grid, grid).numpy()
            mask = combine_llava(attention, coe=self.enhance, kernel_size=self.kernel_size)
            answer = tokenizer.decode(tokens[:length], skip_special_tokens=True).strip()
            maps.append(
                AttentionMap(
                    mask=mask.astype(np.float32),
                    parts={"attention": attention.astype(np.float32)},
                    image_size=image.size,
                    region=region,
                    query=query,
                    answer=answer,
                    extra={"passes": length},
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


def _answer_length(tokens: torch.Tensor, eos_ids: list[int], limit: int) -> int:
    """Tokens the reference (batch 1, stopping at EOS) would have generated for this row.

    That is also its number of forward passes: the prefill makes the first token and each
    generated token but the last is fed back once. The EOS token itself counts.
    """
    if eos_ids:
        hits = torch.isin(tokens, torch.tensor(eos_ids)).nonzero()
        if len(hits):
            return min(int(hits[0]) + 1, limit)
    return min(len(tokens), limit)


def _decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    for path in ("model.language_model.layers", "language_model.model.layers", "model.layers"):
        module: Any = model
        for part in path.split("."):
            module = getattr(module, part, None)
            if module is None:
                break
        if isinstance(module, torch.nn.ModuleList) and len(module) > 0:
            return module
    raise UnsupportedModelError(
        f"cannot find the decoder layers of {type(model).__name__}: the llava backend expects a "
        "transformers LlavaForConditionalGeneration"
    )


def _image_token_id(model: torch.nn.Module, processor: Any) -> int:
    token_id = getattr(model.config, "image_token_id", None)
    if token_id is None:
        token_id = getattr(model.config, "image_token_index", None)
    if token_id is None:
        token_id = getattr(processor, "image_token_id", None)
    if token_id is None:
        raise UnsupportedModelError("the model config names no image token id (image_token_id)")
    return int(token_id)


_WEIGHTS_HELP = (
    "Supply the weights one of two ways: download once with network access "
    "(`hf download {name}`) and run with HF_HUB_OFFLINE=1 to use the Hugging Face cache, or pass "
    "the path of a local folder holding the transformers-format checkpoint (config.json, "
    "*.safetensors, tokenizer and preprocessor files) as the model."
)


def _advice(name: str) -> str:
    return _WEIGHTS_HELP.format(name=DEFAULT_MODEL if hub.looks_like_path(name) else name)


def _load(name: str, processor: Any, dtype: torch.dtype, device: torch.device) -> tuple[Any, Any]:
    """(``LlavaForConditionalGeneration``, processor) from a folder or the HF cache, else the Hub."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    source = str(hub.local_folder(name, _advice(name)) or name)

    def load(files_only: bool):
        model = LlavaForConditionalGeneration.from_pretrained(
            source, local_files_only=files_only, **hub.dtype_argument(dtype)
        )
        return model, processor or AutoProcessor.from_pretrained(source, local_files_only=files_only)

    model, processor = hub.load_cache_first(load, name, advice=_advice(name), what="LLaVA model")
    return model.to(device).eval(), processor


def _load_processor(model: torch.nn.Module) -> Any:
    """The processor saved with an already loaded model (its ``config._name_or_path``)."""
    from transformers import AutoProcessor

    name = getattr(model.config, "_name_or_path", "")
    if not name:
        raise ConfigError("pass processor= with an already loaded LLaVA model")
    source = str(hub.local_folder(name, _advice(name)) or name)
    return hub.load_cache_first(
        lambda files_only: AutoProcessor.from_pretrained(source, local_files_only=files_only),
        name, advice=_advice(name), what="the processor of",
    )
