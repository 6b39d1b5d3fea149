"""How a CLIP image tower is explained: the Decomposition protocol and the helpers decompositions share.

One decomposition per pooling kind (the class token of a ViT; an attention-pooling head). Each
says whether it can explain a tower and why not (:meth:`Decomposition.unsupported_reason`), how
many blocks there are and which grid the tokens form, which hooks it installs for one forward
pass, and how it turns what they caught into named raw parts. The implementations (:mod:`.class_token`,
:mod:`.attention_pool`) import this module; :mod:`.registry` lists them, and the attributor
(:mod:`.attributor`) picks the first there that supports the tower, so a new decomposition is one
module in this package plus one :func:`~.registry.register_decomposition` call.

Attention blocks are recognised by what they compute, not by class: a fused input projection
(``in_proj_weight``, optional ``in_proj_bias``), ``out_proj`` and ``num_heads`` with plain scaled
dot-product attention, as in ``torch.nn.MultiheadAttention`` (open_clip 3) and open_clip's own
``Attention`` module (open_clip 4); see :func:`attention_unsupported_reason`.
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from ...attention_map import Box

__all__ = [
    "StopForward",
    "Decomposition",
    "EarlyExitDecomposition",
    "attention_unsupported_reason",
    "in_proj_biases",
    "layer_scale",
    "as_float",
    "crop_region",
]


class StopForward(Exception):
    """Raised by a hook once it holds all that is needed: the rest of the forward pass is skipped.

    Decompositions that can make the mask from block L' alone (``stops_early = True``) raise it
    from :meth:`capture_until`'s hook; the attributor catches it around ``encode_image``.
    """


@runtime_checkable
class Decomposition(Protocol):
    """One way to explain an image tower's embedding as a sum over its patch tokens."""

    #: short name, e.g. ``"class-token"``, ``"attention-pool"``
    name: str
    #: the raw part names :meth:`decompose` returns, e.g. ``("psi_cls", "psi_comp")``
    parts: tuple[str, ...]
    #: the :data:`~api_prompt.maps.RECIPES` name that makes the mask from those parts
    default_recipe: str
    #: one line for error messages: which towers it explains
    description: str

    def unsupported_reason(self, visual: nn.Module) -> str | None:
        """None when this decomposition explains ``visual``; else why not, in a few words."""

    def n_layers(self, visual: nn.Module) -> int:
        """How many blocks a ``layer`` index may name."""

    def grid_shape(self, visual: nn.Module, pixels: torch.Tensor) -> tuple[int, int]:
        """(rows, columns) of patch tokens for a batch of ``pixels`` (B, C, H, W)."""

    def capture(self, visual: nn.Module, layer: int, text: torch.Tensor, handles: list) -> Any:
        """Install forward hooks (appending their handles to ``handles``, which the caller
        removes) that keep what :meth:`decompose` needs from one forward pass."""

    def decompose(
        self, visual: nn.Module, capture: Any, image_features: torch.Tensor, text: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The raw parts, each (B, rows, columns) float32, after the forward pass."""

    # Optional early exit, for a decomposition whose mask needs nothing after block L': see
    # EarlyExitDecomposition. Without ``stops_early`` the full forward pass always runs.


class EarlyExitDecomposition(Decomposition, Protocol):
    """A decomposition whose mask needs nothing after block L' (``stops_early = True``)."""

    stops_early: bool

    def capture_until(self, visual: nn.Module, layer: int, handles: list) -> Any:
        """Hooks whose last one raises :class:`StopForward` once block L' has run. The text is
        not given: what depends on it is computed after the forward pass, so its embedding is
        not held through it (the early exit's peak memory is then the plain forward's)."""

    def decompose_until(
        self, visual: nn.Module, capture: Any, text: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The parts up to one positive affine map per image (which every recipe's min-max
        removes), each (B, rows, columns) float32."""


# -- attention blocks, by what they compute --------------------------------------------------------


def attention_unsupported_reason(attn: nn.Module) -> str | None:
    """None when ``attn`` is plain multi-head self-attention with a fused input projection.

    That is: ``in_proj_weight`` (3·D, D), optional ``in_proj_bias``, an ``out_proj`` linear layer
    and ``num_heads``, softmax(q·k / sqrt(head_dim)) with nothing else applied: no extra key/value
    biases or zero attention (``nn.MultiheadAttention``), no query/key norms, cosine attention,
    per-head scaling or inner norm (open_clip's ``Attention`` options).

    >>> attention_unsupported_reason(torch.nn.MultiheadAttention(8, 2)) is None
    True
    >>> attention_unsupported_reason(torch.nn.Linear(8, 8))
    'its attention (Linear) has no fused in_proj_weight, out_proj, num_heads'
    """
    kind = type(attn).__name__
    missing = [
        name
        for name in ("in_proj_weight", "out_proj", "num_heads")
        if getattr(attn, name, None) is None
    ]
    if missing:
        return f"its attention ({kind}) has no fused {', '.join(missing)}"
    weight, heads = attn.in_proj_weight, attn.num_heads
    width = weight.shape[-1]
    if (
        weight.dim() != 2
        or weight.shape[0] != 3 * width
        or not isinstance(attn.out_proj, nn.Linear)
    ):
        return f"its attention ({kind}) projects keys or values to another width"
    if not isinstance(heads, int) or heads < 1 or width % heads:
        return f"its attention ({kind}) has {heads!r} heads for width {width}"
    if getattr(attn, "bias_k", None) is not None or getattr(attn, "add_zero_attn", False):
        return f"its attention ({kind}) uses extra key/value biases or zero attention"
    extras = {
        "ln_q": "normalises queries (qk_norm)",
        "ln_k": "normalises keys (qk_norm)",
        "q_norm": "normalises queries (qk_norm)",
        "k_norm": "normalises keys (qk_norm)",
        "ln_inner": "normalises its heads' output (inner norm)",
    }
    for name, what in extras.items():
        module = getattr(attn, name, None)
        if module is not None and not isinstance(module, nn.Identity):
            return f"its attention ({kind}) {what}"
    if getattr(attn, "logit_scale", None) is not None:
        return f"its attention ({kind}) is scaled cosine attention"
    if getattr(attn, "head_scale", None) is not None:
        return f"its attention ({kind}) scales each head (scale_heads)"
    scale = getattr(attn, "scale", None)
    if isinstance(scale, float) and not math.isclose(scale, (width // heads) ** -0.5, rel_tol=1e-6):
        return f"its attention ({kind}) scales logits by {scale}, not 1/sqrt(head_dim)"
    return None


def in_proj_biases(attn: nn.Module, width: int) -> tuple[torch.Tensor, ...]:
    if attn.in_proj_bias is None:
        zeros = attn.in_proj_weight.new_zeros(width, dtype=torch.float32)
        return zeros, zeros, zeros
    return attn.in_proj_bias.float().chunk(3)


def layer_scale(block: nn.Module) -> torch.Tensor | float:
    """The LayerScale gamma on the attention branch (ls_1), or 1."""
    gamma = getattr(block.ls_1, "gamma", None)
    return gamma.float() if gamma is not None else 1.0


def as_float(parameter: torch.Tensor | None, default: float) -> torch.Tensor | float:
    """A parameter as float32, or ``default`` when the module has none (bias=False, no affine)."""
    return parameter.float() if parameter is not None else default


# -- preprocessing geometry ------------------------------------------------------------------------


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
