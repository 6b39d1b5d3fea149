"""CLIP backend: the class-token decomposition of ALGORITHM.md §1, on upstream open_clip.

For each (image, query) the attributor scores every patch token of a CLIP ViT against the
L2-normalised text embedding in two ways:

- ``psi_cls``: how much each token's contribution to the class token's attention output at block
  L' (heads summed) points towards the text;
- ``psi_comp``: the same for each token's residual stream after block L' (high on low-information
  "register-like" patches, so it is used inverted).

Both are read off one ordinary forward pass of the visual tower: hooks capture block L''s input
and output and the final class-token residual, and only the class token's attention row of
that block is recomputed (O(N·D) per image, never the N×N×D tensor the reference builds).

>>> from api_prompt import CLIPAttributor                                   # doctest: +SKIP
>>> attributor = CLIPAttributor("local-dir:tests/fixtures/clip_reference/model", layer=4,
...                             device="cpu")                                 # doctest: +SKIP
>>> amap = attributor("car.jpg", "What color is the car?")[0]               # doctest: +SKIP
>>> amap.mask.shape, sorted(amap.parts)                                     # doctest: +SKIP
((8, 8), ['psi_cls', 'psi_comp'])
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
import types
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.parse import urlparse

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, ModelLoadError, UnsupportedModelError
from ..maps import check_kernel_size, combine_clip
from .base import (
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

logger = logging.getLogger(__name__)

__all__ = ["CLIPAttributor", "DEFAULT_MODEL", "DEFAULT_PRETRAINED"]

#: The paper's auxiliary model: OpenAI CLIP ViT-L/14 at 336 px (QuickGELU, as trained).
DEFAULT_MODEL = "ViT-L-14-336-quickgelu"
DEFAULT_PRETRAINED = "openai"

_TEXT_CACHE_SIZE = 1024
_PROBE_TIMEOUT_S = 3.0
_HOW_TO_SUPPLY_WEIGHTS = (
    "Supply the weights locally instead: model='local-dir:/path/to/folder' (a folder with "
    "open_clip_config.json and the weights file); or model='hf-hub:org/repo' with the repository "
    "already in the Hugging Face cache (HF_HOME) and HF_HUB_OFFLINE=1; or an architecture name "
    "with a checkpoint file, e.g. model='ViT-B-16', pretrained='/path/to/checkpoint.safetensors'."
)


class CLIPAttributor(Attributor):
    """Where a CLIP ViT looks for a text query, by class-token decomposition (the paper's method).

    Args:
        model: an open_clip model name (with ``pretrained``), an ``hf-hub:org/repo`` or
            ``local-dir:/folder`` name, or an open_clip ``CLIP`` instance (then ``preprocess`` and
            ``tokenizer`` are required and the model is used where and as it is).
        pretrained: open_clip pretrained tag (``"openai"``, ``"laion2b_s34b_b88k"``, ...) or a
            checkpoint file path, for built-in names only. None: ``"openai"`` for the default
            model, random weights (with a warning) for any other built-in name.
        preprocess, tokenizer: the eval transform and tokenizer of a model instance.
        layer: 0-based block L' (negative counts from the end); default ``n_blocks - 2``.
        enhance: contrast coefficient of the enhance step (published package: 10).
        kernel_size: odd box-filter size on the P×P maps (published package: 3).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
        dtype: ``"fp32"`` (default), or ``"bf16"``/``"fp16"`` on a GPU. The decomposition itself
            always runs in float32.
        batch_size: images per forward pass.
        cache_dir: open_clip download/cache folder.

    Example:
        >>> attributor = CLIPAttributor("ViT-B-16", pretrained="openai", device="cpu")  # doctest: +SKIP
        >>> maps = attributor([image_a, image_b], ["is there a dog?", "read the sign"])  # doctest: +SKIP
        >>> maps[0].mask.shape                                                         # doctest: +SKIP
        (14, 14)
    """

    name = "clip"
    default_recipe = "clip-soft-or"

    def __init__(
        self,
        model: str | nn.Module = DEFAULT_MODEL,
        pretrained: str | None = None,
        *,
        preprocess: Callable | None = None,
        tokenizer: Callable | None = None,
        layer: int | None = None,
        enhance: float = 10.0,
        kernel_size: int = 3,
        device: str | torch.device | None = "auto",
        dtype: str | torch.dtype | None = None,
        batch_size: int = 16,
        cache_dir: str | None = None,
    ) -> None:
        self.enhance = _check_enhance(enhance)
        self.kernel_size = check_kernel_size(kernel_size)
        self.batch_size = _check_batch_size(batch_size)

        if isinstance(model, nn.Module):
            self.model, self.preprocess, self.tokenizer = _adopt_instance(
                model, preprocess, tokenizer, device, dtype
            )
            self.model_name = f"<{type(model).__name__} instance>"
            self.pretrained = pretrained
        else:
            if preprocess is not None or tokenizer is not None:
                raise ConfigError("preprocess and tokenizer are only used with a model instance")
            target_device = resolve_device(device)
            target_dtype = _check_dtype(resolve_dtype(dtype), target_device)
            name, self.pretrained = _resolve_name(model, pretrained)
            self.model, self.preprocess, self.tokenizer, self.model_name = _load_open_clip(
                name, self.pretrained, target_device, target_dtype, cache_dir
            )
        self.device = _module_device(self.model)
        self.dtype = _module_dtype(self.model.visual)

        visual = self.model.visual
        self.strategy = select_strategy(visual)
        n_blocks = len(visual.transformer.resblocks)
        self.layer = check_layer(n_blocks - 2 if layer is None else layer, n_blocks)
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._weights_sha256: str | None = None

    # -- the verb ------------------------------------------------------------------------------

    def attribute(self, images: list, queries: list[str]) -> list[AttentionMap]:
        """One :class:`AttentionMap` per (RGB PIL image, query) pair, batched through the model."""
        if len(images) != len(queries):
            raise ConfigError(f"got {len(images)} images but {len(queries)} queries")
        maps: list[AttentionMap] = []
        for batch in chunks(list(zip(images, queries)), self.batch_size):
            batch_images = [image for image, _ in batch]
            batch_queries = [query for _, query in batch]
            psi_cls, psi_comp = self.raw_maps(batch_images, batch_queries)
            masks = combine_clip(psi_cls, psi_comp, coe=self.enhance, kernel_size=self.kernel_size)
            for i, (image, query) in enumerate(batch):
                maps.append(
                    AttentionMap(
                        mask=masks[i].numpy(),
                        parts={"psi_cls": psi_cls[i].numpy(), "psi_comp": psi_comp[i].numpy()},
                        image_size=image.size,
                        region=crop_region(self.preprocess, image.size),
                        query=query,
                        recipe=self.default_recipe,
                    )
                )
        return maps

    def raw_maps(self, images: Sequence, queries: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Ψcls and Ψcomp for one batch: two float32 CPU tensors of shape (B, grid_h, grid_w)."""
        pixels = torch.stack([self.preprocess(image) for image in images])
        pixels = pixels.to(self.device, dtype=self.dtype)
        text = self.text_embeddings(queries)
        with torch.no_grad(), eval_mode(self.model), temporary_hooks() as handles:
            capture = self.strategy.capture(self.model.visual, self.layer, text, handles)
            image_features = self.model.encode_image(pixels)
            psi_cls, psi_comp = self.strategy.decompose(self.model.visual, capture, image_features, text)
        return psi_cls.cpu(), psi_comp.cpu()

    def text_embeddings(self, queries: Sequence[str]) -> torch.Tensor:
        """L2-normalised ``encode_text`` of each raw query (float32, cached per query string)."""
        missing = list(dict.fromkeys(q for q in queries if q not in self._text_cache))
        if missing:
            tokens = self.tokenizer(missing).to(self.device)
            with torch.no_grad(), eval_mode(self.model):
                embeddings = self.model.encode_text(tokens).float()
            embeddings = embeddings / embeddings.norm(dim=-1, keepdim=True)
            for query, embedding in zip(missing, embeddings):
                self._text_cache[query] = embedding
        for query in queries:
            self._text_cache.move_to_end(query)
        result = torch.stack([self._text_cache[query] for query in queries])
        while len(self._text_cache) > _TEXT_CACHE_SIZE:
            self._text_cache.popitem(last=False)
        return result

    def describe(self) -> dict[str, Any]:
        """Model identity and settings, for run manifests (the weights hash is computed once)."""
        if self._weights_sha256 is None:
            self._weights_sha256 = weights_sha256(self.model)
        return {
            **super().describe(),
            "model": self.model_name,
            "pretrained": self.pretrained,
            "layer": self.layer,
            "enhance": self.enhance,
            "kernel_size": self.kernel_size,
            "dtype": str(self.dtype).replace("torch.", ""),
            "weights_sha256": self._weights_sha256,
        }

    def __repr__(self) -> str:
        return (
            f"CLIPAttributor(model={self.model_name!r}, pretrained={self.pretrained!r}, "
            f"layer={self.layer}, enhance={self.enhance}, kernel_size={self.kernel_size}, "
            f"device='{self.device}', dtype={str(self.dtype).replace('torch.', '')})"
        )


# -- pooling strategies ------------------------------------------------------------------------


@dataclass
class _Capture:
    """What the hooks keep from one forward pass: per-token scalars, never (B, N, D) tensors."""

    direction: torch.Tensor                         # (B, D): w = γ ⊙ (Pj t̂)
    contribution_dots: torch.Tensor | None = None   # (B, N): c_m · w
    residual_dots: torch.Tensor | None = None       # (B, N): z_m · w
    final_cls: torch.Tensor | None = None           # (B, D): class-token residual before ln_post


class ClassTokenDecomposition:
    """ALGORITHM.md §1 for ViTs whose image embedding is ``ln_post(class token) @ proj``.

    A strategy answers three questions: can it explain this tower (:meth:`unsupported_reason`),
    which quantities does it take from the forward pass (:meth:`capture`) and how are the maps
    made from them (:meth:`decompose`). A decomposition for attention-pooled towers (SigLIP,
    CoCa) would be a second class with the same three methods, added to :data:`STRATEGIES`.

    Everything in Â_m and Ẑ_m is linear in the token vector except the class token's final
    LayerNorm statistics (μ, σ) and ρ, which are per-image scalars. So at block L' each token is
    reduced at once to one dot product with the readout direction ``w = γ ⊙ (Pj t̂)``, and μ, σ,
    ρ are applied when the forward pass is over:

        Â_m · t̂ = [(c_m · w − μ·Σw / (K·N)) / σ + β·(Pj t̂) / (K·N)] / ρ

    (Ẑ_m likewise with z_m and K). The result is the formula of §1, rearranged, not approximated.
    """

    description = "open_clip VisionTransformer pooled by its class token (pool_type='tok')"

    @staticmethod
    def unsupported_reason(visual: nn.Module) -> str | None:
        from open_clip.transformer import LayerScale, ResidualAttentionBlock, VisionTransformer

        if not isinstance(visual, VisionTransformer):
            return f"the image tower is a {type(visual).__name__}, not an open_clip VisionTransformer"
        if getattr(visual, "attn_pool", None) is not None:
            return "the image tower is attention-pooled (attn_pool), it has no class-token readout"
        if getattr(visual, "pool_type", "tok") != "tok":
            return f"the image tower pools with pool_type={visual.pool_type!r}, not its class token"
        if not isinstance(visual.ln_post, nn.LayerNorm):
            return "the image tower has no final LayerNorm (ln_post)"
        for index, block in enumerate(visual.transformer.resblocks):
            if not isinstance(block, ResidualAttentionBlock):
                return f"block {index} is a {type(block).__name__} (custom attention is not supported)"
            attn = block.attn
            if not isinstance(attn, nn.MultiheadAttention) or attn.in_proj_weight is None:
                return f"block {index} does not use a fused nn.MultiheadAttention"
            if attn.bias_k is not None or attn.add_zero_attn:
                return f"block {index} uses extra key/value biases or zero attention"
            if not isinstance(block.ls_1, (nn.Identity, LayerScale)):
                return f"block {index} scales its attention branch with a {type(block.ls_1).__name__}"
        return None

    @staticmethod
    def capture(visual: nn.Module, layer: int, text: torch.Tensor, handles: list) -> _Capture:
        """Hook block L' (reduce its tokens to dot products) and ``ln_post`` (the final CLS residual)."""
        capture = _Capture(direction=readout_direction(visual, text))
        batch_first = getattr(visual.transformer, "batch_first", True)

        def to_batch_first(x: torch.Tensor) -> torch.Tensor:
            return x if batch_first else x.transpose(0, 1)

        def on_block(module, args, output):
            w = capture.direction
            capture.contribution_dots = cls_contribution_dots(module, to_batch_first(args[0]), w)
            capture.residual_dots = torch.einsum("bnd,bd->bn", to_batch_first(output).float(), w)

        def on_ln_post(module, args):
            residual = args[0]
            # final_ln_after_pool models normalise the pooled token only, others all tokens
            capture.final_cls = (residual[:, 0] if residual.dim() == 3 else residual).float()

        handles.append(visual.transformer.resblocks[layer].register_forward_hook(on_block))
        handles.append(visual.ln_post.register_forward_pre_hook(on_ln_post))
        return capture

    @staticmethod
    def decompose(
        visual: nn.Module, capture: _Capture, image_features: torch.Tensor, text: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Ψcls and Ψcomp, each (B, gh, gw) float32, once the forward pass is over."""
        if capture.contribution_dots is None or capture.final_cls is None:
            raise RuntimeError("the visual tower's forward pass did not reach the hooked modules")
        ln_post = visual.ln_post
        final_cls = capture.final_cls
        mu = final_cls.mean(dim=-1, keepdim=True)
        sigma = torch.sqrt(final_cls.var(dim=-1, unbiased=False, keepdim=True) + ln_post.eps)
        rho = image_features.float().norm(dim=-1, keepdim=True)
        direction_sum = capture.direction.sum(dim=-1, keepdim=True)
        beta_dot = (_text_in_width(visual, text) * _as_float(ln_post.bias, 0.0)).sum(dim=-1, keepdim=True)

        k = 2 * len(visual.transformer.resblocks) - 1
        n_tokens = capture.contribution_dots.shape[1]

        def score(dots: torch.Tensor, share: float) -> torch.Tensor:
            return ((dots - mu * direction_sum / share) / sigma + beta_dot / share) / rho

        psi_cls = score(capture.contribution_dots, k * n_tokens)
        psi_comp = score(capture.residual_dots, k)
        grid_h, grid_w = visual.grid_size
        patches = slice(1, None)  # drop the class token as a source
        return (
            psi_cls[:, patches].reshape(-1, grid_h, grid_w),
            psi_comp[:, patches].reshape(-1, grid_h, grid_w),
        )


def _text_in_width(visual: nn.Module, text: torch.Tensor) -> torch.Tensor:
    """Pj t̂: the text embedding pulled back into the tower's width, (B, D) float32."""
    return text @ visual.proj.float().T if visual.proj is not None else text


def readout_direction(visual: nn.Module, text: torch.Tensor) -> torch.Tensor:
    """w = γ ⊙ (Pj t̂), (B, D): how a token vector reaches the text score through ln_post and proj."""
    return _as_float(visual.ln_post.weight, 1.0) * _text_in_width(visual, text)


def cls_contribution_dots(block: nn.Module, block_input: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """``c_m · w`` for every source token m, (B, N) float32, without forming any c_m.

    Equal to ``cls_attention_contributions(block, block_input) @ w`` (per image), but each term of
    ``c_m = W_o · concat_h(a_{h,m} v_{h,m}) + b_o / N`` is moved onto the side of the small vectors:
    ``v_{h,m} · y_h = x_m · (W_{v,h}ᵀ y_h) + b_{v,h} · y_h`` with ``y = W_oᵀ w``, and the attention
    logits ``q_{h,0} · k_{h,m} = x_m · (W_{k,h}ᵀ q_{h,0}) + b_{k,h} · q_{h,0}``. Only (B, N, 2H)
    numbers are made beyond ``x = ln_1(input)``, which the block computes anyway.
    """
    attn: nn.MultiheadAttention = block.attn
    x = block.ln_1(block_input).float()                                            # (B, N, D)
    batch, n_tokens, width = x.shape
    heads = attn.num_heads
    head_dim = width // heads

    direction = direction * _layer_scale(block)                                   # (B, D)
    w_q, w_k, w_v = attn.in_proj_weight.float().chunk(3)
    b_q, b_k, b_v = _in_proj_biases(attn, width)
    query = (x[:, 0] @ w_q.T + b_q).view(batch, heads, head_dim)                 # class token only
    pulled = (direction @ attn.out_proj.weight.float()).view(batch, heads, head_dim)  # y = W_oᵀ w

    key_side = torch.einsum("hed,bhe->bdh", w_k.view(heads, head_dim, width), query)    # (B, D, H)
    value_side = torch.einsum("hed,bhe->bdh", w_v.view(heads, head_dim, width), pulled)  # (B, D, H)
    both = torch.bmm(x, torch.cat([key_side, value_side], dim=-1))                # (B, N, 2H)
    logits = both[..., :heads] + torch.einsum("he,bhe->bh", b_k.view(heads, head_dim), query)[:, None]
    values = both[..., heads:] + torch.einsum("he,bhe->bh", b_v.view(heads, head_dim), pulled)[:, None]

    weights = (logits / math.sqrt(head_dim)).softmax(dim=1)                       # over sources m
    out_bias = (_as_float(attn.out_proj.bias, 0.0) * direction).sum(dim=-1, keepdim=True)
    return (weights * values).sum(dim=-1) + out_bias / n_tokens


def cls_attention_contributions(block: nn.Module, block_input: torch.Tensor) -> torch.Tensor:
    """c_m for every source token m: its share of the class token's attention output, heads summed.

    ``c_m = W_o · concat_h(a_{h,m} v_{h,m}) + b_o / N``, times the LayerScale gamma when the block
    has one, so Σ_m c_m is exactly what the attention branch adds to the class token's residual.
    Returns (B, N, D) float32. The attributor never forms this tensor (it needs only
    :func:`cls_contribution_dots`); it is here to state, test and inspect the decomposition.

    >>> import torch, open_clip
    >>> block = open_clip.transformer.ResidualAttentionBlock(64, 4).eval()
    >>> x = torch.randn(2, 17, 64)
    >>> with torch.no_grad():
    ...     c = cls_attention_contributions(block, x)
    ...     at_cls = block.attention(block.ln_1(x))[:, 0]
    >>> torch.allclose(c.sum(dim=1), at_cls, atol=1e-5)
    True
    """
    attn: nn.MultiheadAttention = block.attn
    x = block.ln_1(block_input).float()
    batch, n_tokens, width = x.shape
    heads = attn.num_heads
    head_dim = width // heads

    w_q, w_k, w_v = attn.in_proj_weight.float().chunk(3)
    b_q, b_k, b_v = _in_proj_biases(attn, width)
    query = (x[:, 0] @ w_q.T + b_q).view(batch, heads, head_dim)
    keys = (x @ w_k.T + b_k).view(batch, n_tokens, heads, head_dim)
    values = (x @ w_v.T + b_v).view(batch, n_tokens, heads, head_dim)

    logits = torch.einsum("bhd,bnhd->bnh", query, keys) / math.sqrt(head_dim)
    weights = logits.softmax(dim=1)                                                # over sources
    weighted_values = (weights[..., None] * values).reshape(batch, n_tokens, width)
    out_bias = _as_float(attn.out_proj.bias, 0.0)
    contributions = weighted_values @ attn.out_proj.weight.float().T + out_bias / n_tokens
    return contributions * _layer_scale(block)


def _in_proj_biases(attn: nn.MultiheadAttention, width: int) -> tuple[torch.Tensor, ...]:
    if attn.in_proj_bias is None:
        zeros = attn.in_proj_weight.new_zeros(width, dtype=torch.float32)
        return zeros, zeros, zeros
    return attn.in_proj_bias.float().chunk(3)


def _layer_scale(block: nn.Module) -> torch.Tensor | float:
    """The LayerScale gamma on the attention branch (ls_1), or 1."""
    gamma = getattr(block.ls_1, "gamma", None)
    return gamma.float() if gamma is not None else 1.0


def _as_float(parameter: torch.Tensor | None, default: float) -> torch.Tensor | float:
    """A parameter as float32, or ``default`` when the module has none (bias=False, no affine)."""
    return parameter.float() if parameter is not None else default


#: Decompositions tried in order; the first that supports the tower is used.
STRATEGIES = [ClassTokenDecomposition]


def select_strategy(visual: nn.Module):
    """The first strategy in :data:`STRATEGIES` that can explain ``visual``, else UnsupportedModelError."""
    reasons = []
    for strategy in STRATEGIES:
        reason = strategy.unsupported_reason(visual)
        if reason is None:
            return strategy
        reasons.append(reason)
    supported = "; ".join(strategy.description for strategy in STRATEGIES)
    raise UnsupportedModelError(
        f"this CLIP cannot be attributed: {'; '.join(reasons)}. Supported: {supported}, e.g. the OpenAI "
        f"and LAION ViT-B-16 / ViT-L-14 / ViT-L-14-336 models. ResNet (RN50, ...), timm towers "
        f"and attention-pooled models (SigLIP, CoCa) are not supported."
    )


# -- preprocessing geometry --------------------------------------------------------------------


def crop_region(preprocess: Callable, image_size: tuple[int, int]) -> Box:
    """The box (left, top, right, bottom), in original-image pixels, that ``preprocess`` keeps.

    Follows the resize and centre-crop steps of an open_clip/torchvision eval transform; a crop
    larger than the resized image (padding) gives a box reaching outside the image.

    >>> from torchvision import transforms as T
    >>> crop_region(T.Compose([T.Resize(112), T.CenterCrop(112)]), (224, 112))
    (56.0, 0.0, 168.0, 112.0)
    """
    from open_clip.transform import CenterCropOrPad, ResizeKeepRatio
    from torchvision import transforms as T
    from torchvision.transforms.functional import _compute_resized_output_size

    width, height = image_size
    left, top, right, bottom = 0.0, 0.0, float(width), float(height)
    for step in getattr(preprocess, "transforms", [preprocess]):
        if isinstance(step, T.Resize):
            size = [step.size] if isinstance(step.size, int) else list(step.size)
            height, width = _compute_resized_output_size((height, width), size, step.max_size)
        elif isinstance(step, ResizeKeepRatio):
            height, width = ResizeKeepRatio.get_params(
                types.SimpleNamespace(size=(width, height)), step.size, step.longest
            )
        elif isinstance(step, (T.CenterCrop, CenterCropOrPad)):
            crop_h, crop_w = step.size
            x0, y0 = _centre_crop_origin(width, crop_w), _centre_crop_origin(height, crop_h)
            scale_x, scale_y = (right - left) / width, (bottom - top) / height
            left, right = left + x0 * scale_x, left + (x0 + crop_w) * scale_x
            top, bottom = top + y0 * scale_y, top + (y0 + crop_h) * scale_y
            width, height = crop_w, crop_h
    return (left, top, right, bottom)


def _centre_crop_origin(size: int, crop: int) -> int:
    """Offset of torchvision's centre crop, negative when it pads (pad first, then crop)."""
    if crop > size:
        pad_before = (crop - size) // 2
        return -pad_before
    return int(round((size - crop) / 2.0))


# -- loading -----------------------------------------------------------------------------------


def _resolve_name(model: Any, pretrained: str | None) -> tuple[str, str | None]:
    """Check a model name and fill in the default pretrained tag; no loading yet."""
    if not isinstance(model, (str, os.PathLike)) or not str(model).strip():
        raise ConfigError(
            f"model must be an open_clip name or an open_clip model instance, got {model!r}"
        )
    name = str(model).strip()
    schema = _schema(name)
    if schema is not None:
        if pretrained is not None:
            raise ConfigError(
                f"pretrained={pretrained!r} cannot be combined with a {schema}: model; "
                f"the weights come from the {schema} source"
            )
        if schema == "local-dir":  # absolute, so run manifests compare equal from any folder
            name = "local-dir:" + str(Path(name.split(":", 1)[1]).expanduser().resolve())
        return name, None
    if Path(name).is_file():
        raise ConfigError(
            f"{name!r} is a checkpoint file: name its architecture and pass the file as "
            f"pretrained, e.g. model='ViT-B-16', pretrained={name!r}"
        )
    if Path(name).is_dir():
        raise ConfigError(f"{name!r} is a folder: load it with model='local-dir:{name}'")
    if pretrained is None and name == DEFAULT_MODEL:
        pretrained = DEFAULT_PRETRAINED
    return name, pretrained


def _schema(name: str) -> str | None:
    for schema in ("hf-hub", "local-dir"):
        if name.startswith(schema + ":"):
            return schema
    return None


def _load_open_clip(
    name: str, pretrained: str | None, device: torch.device, dtype: torch.dtype, cache_dir: str | None
):
    """open_clip's model, eval transform, tokenizer and the architecture name actually built.

    Weights must be on disk or their download host must answer at once (see :func:`_require_online`).
    """
    import open_clip

    options: dict[str, Any] = {}
    source = architecture = name
    schema = _schema(name)
    if schema == "hf-hub":
        source = _cached_hf_hub_folder(name[len("hf-hub:"):], cache_dir)
        if source is None:
            _require_online(name, "https://huggingface.co")
            source = name
    elif schema is None:
        _check_builtin_name(name)
        if pretrained is None:
            logger.warning(
                "no pretrained weights for %s: the model is randomly initialised "
                "(pass pretrained=TAG or a checkpoint path)", name
            )
        elif not os.path.isfile(pretrained):
            source, options = _builtin_with_tag(name, pretrained, cache_dir)
            architecture = source
            pretrained = options.pop("pretrained")

    precision = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            source,
            pretrained=pretrained if _schema(source) is None else None,
            device=device,
            precision=precision,
            cache_dir=cache_dir,
            **options,
        )
        tokenizer = open_clip.get_tokenizer(source, cache_dir=cache_dir)
    except Exception as exc:  # open_clip raises RuntimeError/ValueError/FileNotFoundError/...
        reason = " ".join(str(exc).split())  # one line: open_clip/hub messages span several
        raise ModelLoadError(f"could not load open_clip model {name!r}: {reason}") from exc
    model.eval()
    return model, preprocess, tokenizer, architecture


def _check_builtin_name(name: str) -> None:
    import open_clip

    if open_clip.get_model_config(name.replace("/", "-")) is None:
        raise ModelLoadError(
            f"unknown open_clip model {name!r}: use a built-in name (open_clip.list_models(), "
            f"e.g. {DEFAULT_MODEL!r}), or 'hf-hub:org/repo', or 'local-dir:/path/to/folder'"
        )


def _builtin_with_tag(name: str, tag: str, cache_dir: str | None) -> tuple[str, dict[str, Any]]:
    """Resolve a (built-in name, pretrained tag) pair to something open_clip loads offline if it can.

    Returns the model name to build (possibly its ``-quickgelu`` twin) and options for
    ``create_model_and_transforms``, among them the ``pretrained`` value to pass: the cached
    checkpoint file when the weights are already local (so no network request is made at all),
    else the tag itself (open_clip downloads it) once the download host has answered a quick probe.
    """
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg
    from open_clip.transform import PreprocessCfg

    tag_cfg = get_pretrained_cfg(name, tag)
    if not tag_cfg:
        raise ModelLoadError(
            f"pretrained={tag!r} is neither a known tag for {name!r} nor an existing file; "
            f"known tags: {', '.join(open_clip.list_pretrained_tags_by_model(name)) or 'none'}"
        )
    name = _with_matching_activation(name, tag, tag_cfg)
    local_file = _cached_pretrained_file(tag_cfg, cache_dir)
    if local_file is None:
        _require_online(f"{name} pretrained={tag!r}", _download_url(tag_cfg))
        return name, {"pretrained": tag}
    preprocess_keys = set(PreprocessCfg.__dataclass_fields__)
    return name, {
        "pretrained": local_file,
        # what open_clip would take from the tag: mean/std/interpolation/resize_mode
        "force_preprocess_cfg": {k: v for k, v in tag_cfg.items() if k in preprocess_keys},
    }


def _with_matching_activation(name: str, tag: str, tag_cfg: dict) -> str:
    """Switch to the ``-quickgelu`` config when the weights were trained with QuickGELU."""
    import open_clip

    model_quick_gelu = bool(open_clip.get_model_config(name).get("quick_gelu", False))
    if not tag_cfg.get("quick_gelu", False) or model_quick_gelu:
        return name
    twin = f"{name}-quickgelu"
    if open_clip.get_model_config(twin) is None:
        raise ModelLoadError(
            f"pretrained={tag!r} was trained with QuickGELU but {name!r} uses GELU and open_clip "
            f"has no {twin!r} config; load a -quickgelu model name"
        )
    logger.warning(
        "%s weights %r were trained with QuickGELU: loading %r instead of %r", name, tag, twin, name
    )
    return twin


def _cached_pretrained_file(tag_cfg: dict, cache_dir: str | None) -> str | None:
    """Path of the tag's checkpoint if it is already on disk (HF cache or open_clip's URL cache)."""
    if tag_cfg.get("file"):
        return tag_cfg["file"] if os.path.isfile(tag_cfg["file"]) else None
    hub = tag_cfg.get("hf_hub", "")
    if hub:
        from open_clip.pretrained import _get_safe_alternatives

        repo_id, filename = os.path.split(hub)
        filename = filename or "open_clip_pytorch_model.bin"
        for candidate in [*_get_safe_alternatives(filename), filename]:
            found = _hf_cached_file(repo_id, candidate, cache_dir)
            if found:
                return found
    url = tag_cfg.get("url", "")
    if url:
        folder = cache_dir or os.path.expanduser("~/.cache/clip")
        path = os.path.join(folder, os.path.basename(url))
        if os.path.isfile(path):
            return path
    return None


def _hf_cached_file(repo_id: str, filename: str, cache_dir: str | None) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency of open_clip
        return None
    found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir)
    return found if isinstance(found, str) else None


def _cached_hf_hub_folder(repo_id: str, cache_dir: str | None) -> str | None:
    """``local-dir:`` name of the cached snapshot of an ``hf-hub:`` model, if config and weights are cached."""
    config = _hf_cached_file(repo_id, "open_clip_config.json", cache_dir)
    if config is None:
        return None
    for weights in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        if _hf_cached_file(repo_id, weights, cache_dir):
            return "local-dir:" + os.path.dirname(config)
    return None


def _download_url(tag_cfg: dict) -> str:
    if tag_cfg.get("hf_hub"):
        return "https://huggingface.co"
    return tag_cfg.get("url", "") or "https://huggingface.co"


def _require_online(what: str, url: str) -> None:
    """Return if the download host of ``what`` answers quickly, else raise ModelLoadError at once.

    Without this, open_clip spends about a minute in retries before failing offline.
    """
    from huggingface_hub import constants

    if "huggingface.co" in url:
        url = os.environ.get("HF_ENDPOINT", url)
        if constants.HF_HUB_OFFLINE:
            raise ModelLoadError(
                f"the weights of {what} are not in the local cache and HF_HUB_OFFLINE is set. "
                + _HOW_TO_SUPPLY_WEIGHTS
            )
    if not _reachable(url):
        raise ModelLoadError(
            f"the weights of {what} are not in the local cache and {urlparse(url).hostname} "
            f"cannot be reached (offline?). " + _HOW_TO_SUPPLY_WEIGHTS
        )


def _reachable(url: str, timeout: float = _PROBE_TIMEOUT_S) -> bool:
    """Whether the URL's host answers an HTTP HEAD request (any status) within ``timeout`` seconds.

    A plain TCP connect is not enough: sandboxes and captive proxies accept connections and then
    never answer, which is exactly where open_clip would hang in retries. Proxies from the
    environment are honoured (urllib reads them).
    """
    import urllib.error
    import urllib.request

    parsed = urlparse(url)
    if not parsed.scheme or not parsed.hostname:
        return False
    answered: list[bool] = []

    def probe() -> None:
        request = urllib.request.Request(f"{parsed.scheme}://{parsed.netloc}/", method="HEAD")
        try:
            urllib.request.urlopen(request, timeout=timeout).close()
            answered.append(True)
        except urllib.error.HTTPError:  # the server answered, with an error status: reachable
            answered.append(True)
        except (OSError, ValueError):  # URLError, timeouts, TLS errors, refused connections
            answered.append(False)

    # a thread bounds the DNS lookup too, which socket timeouts do not cover
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(answered and answered[0])


def _adopt_instance(model: nn.Module, preprocess, tokenizer, device, dtype):
    """Use a caller's model where and as it is: never moved, cast or otherwise changed."""
    if preprocess is None or tokenizer is None:
        raise ConfigError(
            "a model instance needs its eval transform and tokenizer: CLIPAttributor(model, "
            "preprocess=preprocess, tokenizer=open_clip.get_tokenizer(name))"
        )
    if not hasattr(model, "visual") or not hasattr(model, "encode_image"):
        raise UnsupportedModelError(
            f"{type(model).__name__} is not an open_clip CLIP model (no .visual / .encode_image)"
        )
    model_device = _module_device(model)
    if device is not None and str(device) != "auto":
        requested = resolve_device(device)
        same_index = requested.index is None or requested.index == model_device.index
        if requested.type != model_device.type or not same_index:
            raise ConfigError(
                f"the model is on {model_device} but device={device!r} was requested; "
                f"move the model first or pass device='auto'"
            )
    if dtype is not None and resolve_dtype(dtype) != _module_dtype(model.visual):
        raise ConfigError(
            f"the model's weights are {_module_dtype(model.visual)} but dtype={dtype!r} was "
            f"requested; cast the model first or leave dtype unset"
        )
    return model, preprocess, tokenizer


def _module_device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def _module_dtype(visual: nn.Module) -> torch.dtype:
    conv = getattr(visual, "conv1", None)
    if conv is not None:
        return conv.weight.dtype
    return next(visual.parameters()).dtype


def _check_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    if dtype == torch.float16 and device.type == "cpu":
        raise ConfigError("fp16 is not supported on CPU: use fp32 (default) or bf16")
    return dtype


def _check_enhance(enhance: Any) -> float:
    if isinstance(enhance, bool) or not isinstance(enhance, (int, float, np.floating, np.integer)):
        raise ConfigError(f"enhance must be a number, got {enhance!r}")
    if not math.isfinite(enhance) or enhance <= 0:
        raise ConfigError(f"enhance must be a positive number, got {enhance}")
    return float(enhance)


def _check_batch_size(batch_size: Any) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


def weights_sha256(model: nn.Module, length: int = 16) -> str:
    """Short sha256 of every state_dict tensor (names, dtypes, shapes and bytes), in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:length]
