"""The paper's decomposition (docs/ALGORITHM.md §1): a ViT's class token, split over its patch tokens.

For each (image, query) every patch token of the tower is scored against the L2-normalised text
embedding in two ways:

- ``psi_cls``: how much each token's contribution to the class token's attention output at block
  L' (heads summed) points towards the text;
- ``psi_comp``: the same for each token's residual stream after block L' (high on low-information
  "register-like" patches, so the paper's recipe uses it inverted).

Both are read off one ordinary forward pass: hooks capture block L''s input and output and the
final class-token residual, and only the class token's attention row of that block is
recomputed (O(N·D) per image, never the N×N×D tensor the reference builds).

Early exit: everything after block L' (the later blocks, ``ln_post``'s statistics μ, σ and the
embedding norm ρ) enters both parts as one positive affine map per image, which the recipe's
min-max removes. So when only the mask is wanted (:meth:`ClassTokenDecomposition.capture_until`,
:meth:`~ClassTokenDecomposition.decompose_until`) the forward pass stops after block L', and the
parts are the dot products themselves: the same mask for less than a plain forward's work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .decomposition import (
    StopForward,
    as_float,
    attention_unsupported_reason,
    in_proj_biases,
    layer_scale,
)

__all__ = [
    "ClassTokenDecomposition",
    "cls_attention_contributions",
    "cls_contribution_dots",
    "readout_direction",
]


@dataclass
class _Capture:
    """What the hooks keep from one forward pass: per-token scalars, never (B, N, D) tensors."""

    direction: torch.Tensor  # (B, D): w = γ ⊙ (Pj t̂)
    contribution_dots: torch.Tensor | None = None  # (B, N): c_m · w
    residual_dots: torch.Tensor | None = None  # (B, N): z_m · w
    final_cls: torch.Tensor | None = None  # (B, D): class-token residual before ln_post


@dataclass
class _BlockTokens:
    """What the early exit keeps: block L' itself, its input and output tokens (B, N, D), which
    the forward pass holds when the hook runs, so keeping them costs no memory at that moment."""

    block: nn.Module | None = None
    block_input: torch.Tensor | None = None
    block_output: torch.Tensor | None = None


class ClassTokenDecomposition:
    """docs/ALGORITHM.md §1 for ViTs whose image embedding is ``ln_post(class token) @ proj``.

    It implements :class:`~.decomposition.Decomposition`: whether it can explain a tower
    (:meth:`unsupported_reason`), which quantities it takes from the forward pass
    (:meth:`capture`) and how the parts are made from them (:meth:`decompose`). It reads the
    tower only through ``transformer.resblocks`` (each ``ln_1``, ``attn``, ``ls_1``), ``ln_post``,
    ``proj`` and ``grid_size``.

    Everything in Â_m and Ẑ_m is linear in the token vector except the class token's final
    LayerNorm statistics (μ, σ) and ρ, which are per-image scalars. So at block L' each token is
    reduced at once to one dot product with the readout direction ``w = γ ⊙ (Pj t̂)``, and μ, σ,
    ρ are applied when the forward pass is over:

        Â_m · t̂ = [(c_m · w − μ·Σw / (K·N)) / σ + β·(Pj t̂) / (K·N)] / ρ

    (Ẑ_m likewise with z_m and K). The result is the formula of §1, rearranged, not approximated.
    """

    name = "class-token"
    parts: tuple[str, ...] = ("psi_cls", "psi_comp")
    #: the mask needs nothing after block L' (:meth:`capture_until`, :meth:`decompose_until`)
    stops_early = True
    default_recipe = "clip-soft-or"
    description = "ViTs pooled by their class token (open_clip VisionTransformer, pool_type='tok')"

    def unsupported_reason(self, visual: nn.Module) -> str | None:
        if not hasattr(visual, "transformer") or not hasattr(visual.transformer, "resblocks"):
            return f"the image tower is a {type(visual).__name__}, not a ViT with transformer.resblocks"
        if getattr(visual, "attn_pool", None) is not None:
            return "the image tower is attention-pooled (attn_pool), it has no class-token readout"
        if getattr(visual, "pool_type", "tok") != "tok":
            return f"the image tower pools with pool_type={visual.pool_type!r}, not its class token"
        if getattr(visual, "class_embedding", None) is None:
            return "the image tower has no class token (class_embedding)"
        if not isinstance(getattr(visual, "ln_post", None), nn.LayerNorm):
            return "the image tower has no final LayerNorm (ln_post)"
        if getattr(visual, "grid_size", None) is None:
            return "the image tower does not state its patch grid (grid_size)"
        for index, block in enumerate(visual.transformer.resblocks):
            if not all(hasattr(block, name) for name in ("ln_1", "attn", "ls_1")):
                return (
                    f"block {index} ({type(block).__name__}) is not a pre-norm ln_1/attn/ls_1 block"
                )
            if not isinstance(block.ln_1, nn.LayerNorm):
                return (
                    f"block {index} normalises with a {type(block.ln_1).__name__}, not a LayerNorm"
                )
            reason = attention_unsupported_reason(block.attn)
            if reason is not None:
                return f"block {index}: {reason}"
            ln_attn = getattr(block, "ln_attn", None)
            if ln_attn is not None and not isinstance(ln_attn, nn.Identity):
                return f"block {index} normalises its attention output (scale_attn)"
            if not isinstance(block.ls_1, nn.Identity) and not isinstance(
                getattr(block.ls_1, "gamma", None), torch.Tensor
            ):
                return (
                    f"block {index} scales its attention branch with a {type(block.ls_1).__name__}"
                )
        return None

    def n_layers(self, visual: nn.Module) -> int:
        return len(visual.transformer.resblocks)

    def grid_shape(self, visual: nn.Module, pixels: torch.Tensor) -> tuple[int, int]:
        rows, columns = visual.grid_size
        return int(rows), int(columns)

    def capture(self, visual: nn.Module, layer: int, text: torch.Tensor, handles: list) -> _Capture:
        """Hook block L' (reduce its tokens to dot products) and ``ln_post`` (the final CLS residual)."""
        capture = self._hook_block(visual, layer, text, handles)

        def on_ln_post(module, args):
            residual = args[0]
            # final_ln_after_pool models normalise the pooled token only, others all tokens
            capture.final_cls = (residual[:, 0] if residual.dim() == 3 else residual).float()

        handles.append(visual.ln_post.register_forward_pre_hook(on_ln_post))
        return capture

    def capture_until(self, visual: nn.Module, layer: int, handles: list) -> _BlockTokens:
        """Hook block L' only, and end the forward pass there (its hook raises
        :class:`~.decomposition.StopForward`, which the caller catches): blocks after L',
        ``ln_post`` and the projection never run. The hook keeps block L''s input and output,
        which the forward pass holds at that moment anyway; the text is needed only afterwards
        (:meth:`decompose_until`), so its embedding need not be held through the forward pass."""
        tokens = _BlockTokens()
        batch_first = getattr(visual.transformer, "batch_first", True)

        def on_block(module, args, output):
            tokens.block = module
            tokens.block_input = args[0] if batch_first else args[0].transpose(0, 1)
            tokens.block_output = output if batch_first else output.transpose(0, 1)
            raise StopForward

        handles.append(visual.transformer.resblocks[layer].register_forward_hook(on_block))
        return tokens

    def _hook_block(
        self, visual: nn.Module, layer: int, text: torch.Tensor, handles: list
    ) -> _Capture:
        capture = _Capture(direction=readout_direction(visual, text))
        batch_first = getattr(visual.transformer, "batch_first", True)

        def to_batch_first(x: torch.Tensor) -> torch.Tensor:
            return x if batch_first else x.transpose(0, 1)

        def on_block(module, args, output):
            w = capture.direction
            capture.contribution_dots = cls_contribution_dots(module, to_batch_first(args[0]), w)
            capture.residual_dots = torch.einsum("bnd,bd->bn", to_batch_first(output).float(), w)

        handles.append(visual.transformer.resblocks[layer].register_forward_hook(on_block))
        return capture

    def decompose(
        self, visual: nn.Module, capture: _Capture, image_features: torch.Tensor, text: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Ψcls and Ψcomp, each (B, gh, gw) float32, once the forward pass is over."""
        if capture.contribution_dots is None or capture.final_cls is None:
            raise RuntimeError("the visual tower's forward pass did not reach the hooked modules")
        ln_post = visual.ln_post
        final_cls = capture.final_cls
        mu = final_cls.mean(dim=-1, keepdim=True)
        sigma = torch.sqrt(final_cls.var(dim=-1, unbiased=False, keepdim=True) + ln_post.eps)
        rho = image_features.float().norm(dim=-1, keepdim=True)
        direction_sum = capture.direction.sum(dim=-1, keepdim=True)
        beta_dot = (_text_in_width(visual, text) * as_float(ln_post.bias, 0.0)).sum(
            dim=-1, keepdim=True
        )

        k = 2 * self.n_layers(visual) - 1
        n_tokens = capture.contribution_dots.shape[1]

        def score(dots: torch.Tensor, share: float) -> torch.Tensor:
            return ((dots - mu * direction_sum / share) / sigma + beta_dot / share) / rho

        return _patch_grids(
            visual, score(capture.contribution_dots, k * n_tokens), score(capture.residual_dots, k)
        )

    def decompose_until(
        self, visual: nn.Module, tokens: _BlockTokens, text: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Ψcls and Ψcomp up to one positive affine map per image (the dot products ``c_m · w``
        and ``z_m · w``), each (B, gh, gw) float32, from :meth:`capture_until`'s forward pass.

        :meth:`decompose` is ``((dots − μ·Σw/share)/σ + β·(Pj t̂)/share)/ρ`` of these, with
        σ, ρ > 0, so min-max normalising either gives the same map.
        """
        if tokens.block is None or tokens.block_input is None or tokens.block_output is None:
            raise RuntimeError("the visual tower's forward pass did not reach block L'")
        direction = readout_direction(visual, text)
        contribution_dots = cls_contribution_dots(tokens.block, tokens.block_input, direction)
        residual_dots = torch.einsum("bnd,bd->bn", tokens.block_output.float(), direction)
        return _patch_grids(visual, contribution_dots, residual_dots)


def _patch_grids(
    visual: nn.Module, psi_cls: torch.Tensor, psi_comp: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per-token scores (B, N) to the parts (B, gh, gw), the class token dropped as a source."""
    grid_h, grid_w = visual.grid_size
    patches = slice(1, None)
    return {
        "psi_cls": psi_cls[:, patches].reshape(-1, grid_h, grid_w),
        "psi_comp": psi_comp[:, patches].reshape(-1, grid_h, grid_w),
    }


def _text_in_width(visual: nn.Module, text: torch.Tensor) -> torch.Tensor:
    """Pj t̂: the text embedding pulled back into the tower's width, (B, D) float32."""
    return text @ visual.proj.float().T if visual.proj is not None else text


def readout_direction(visual: nn.Module, text: torch.Tensor) -> torch.Tensor:
    """w = γ ⊙ (Pj t̂), (B, D): how a token vector reaches the text score through ln_post and proj."""
    return as_float(visual.ln_post.weight, 1.0) * _text_in_width(visual, text)


def cls_contribution_dots(
    block: nn.Module, block_input: torch.Tensor, direction: torch.Tensor
) -> torch.Tensor:
    """``c_m · w`` for every source token m, (B, N) float32, without forming any c_m.

    Equal to ``cls_attention_contributions(block, block_input) @ w`` (per image), but each term of
    ``c_m = W_o · concat_h(a_{h,m} v_{h,m}) + b_o / N`` is moved onto the side of the small vectors:
    ``v_{h,m} · y_h = x_m · (W_{v,h}ᵀ y_h) + b_{v,h} · y_h`` with ``y = W_oᵀ w``, and the attention
    logits ``q_{h,0} · k_{h,m} = x_m · (W_{k,h}ᵀ q_{h,0}) + b_{k,h} · q_{h,0}``. Only (B, N, 2H)
    numbers are made beyond ``x = ln_1(input)``, which the block computes anyway.
    """
    attn = block.attn
    x = block.ln_1(block_input).float()  # (B, N, D)
    batch, n_tokens, width = x.shape
    heads = attn.num_heads
    head_dim = width // heads

    direction = direction * layer_scale(block)  # (B, D)
    w_q, w_k, w_v = attn.in_proj_weight.float().chunk(3)
    b_q, b_k, b_v = in_proj_biases(attn, width)
    query = (x[:, 0] @ w_q.T + b_q).view(batch, heads, head_dim)  # class token only
    pulled = (direction @ attn.out_proj.weight.float()).view(batch, heads, head_dim)  # y = W_oᵀ w

    key_side = torch.einsum("hed,bhe->bdh", w_k.view(heads, head_dim, width), query)  # (B, D, H)
    value_side = torch.einsum("hed,bhe->bdh", w_v.view(heads, head_dim, width), pulled)  # (B, D, H)
    both = torch.bmm(x, torch.cat([key_side, value_side], dim=-1))  # (B, N, 2H)
    logits = (
        both[..., :heads] + torch.einsum("he,bhe->bh", b_k.view(heads, head_dim), query)[:, None]
    )
    values = (
        both[..., heads:] + torch.einsum("he,bhe->bh", b_v.view(heads, head_dim), pulled)[:, None]
    )

    weights = (logits / math.sqrt(head_dim)).softmax(dim=1)  # over sources m
    out_bias = (as_float(attn.out_proj.bias, 0.0) * direction).sum(dim=-1, keepdim=True)
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
    attn = block.attn
    x = block.ln_1(block_input).float()
    batch, n_tokens, width = x.shape
    heads = attn.num_heads
    head_dim = width // heads

    w_q, w_k, w_v = attn.in_proj_weight.float().chunk(3)
    b_q, b_k, b_v = in_proj_biases(attn, width)
    query = (x[:, 0] @ w_q.T + b_q).view(batch, heads, head_dim)
    keys = (x @ w_k.T + b_k).view(batch, n_tokens, heads, head_dim)
    values = (x @ w_v.T + b_v).view(batch, n_tokens, heads, head_dim)

    logits = torch.einsum("bhd,bnhd->bnh", query, keys) / math.sqrt(head_dim)
    weights = logits.softmax(dim=1)  # over sources
    weighted_values = (weights[..., None] * values).reshape(batch, n_tokens, width)
    out_bias = as_float(attn.out_proj.bias, 0.0)
    contributions = weighted_values @ attn.out_proj.weight.float().T + out_bias / n_tokens
    return contributions * layer_scale(block)
