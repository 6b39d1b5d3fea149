"""Attribution for towers pooled by attention (open_clip's SigLIP models): the pool and token parts.

open_clip builds ``ViT-B-16-SigLIP``, ``ViT-SO400M-14-SigLIP-384``, the SigLIP2 configs and
others as a ``TimmModel`` around a timm ``VisionTransformer`` whose head is timm's
``AttentionPoolLatent``: a learned probe attends over the final tokens, then an output projection,
an MLP residual and (optionally) projections give the image embedding. For every patch token
this decomposition returns (design and derivation: ``docs/design/attention_pool.md``):

- ``psi_pool`` (the analogue of Ψcls): the token's share of the probe's attention output,
  ``c_m = Σ_h a_{h,m} W_o^h (W_v^h LN(x_m) + b_v^h) + b_o / N``, pushed through the rest of the
  head linearised at the pooled point and dotted with the text, over ‖image embedding‖. Over all
  pooled tokens these sum to the embedding's linear part ``J z`` along the text.
- ``psi_token`` (the analogue of Ψcomp, MaskCLIP's construction): the token alone through the
  head's value and output projections and the rest of the head, cosine with the text.

Both come from one ordinary forward pass: hooks keep the head's key/value projection and pooled
output, and one vector-Jacobian product per image replaces the N Jacobian-vector products.

>>> import open_clip, torch
>>> from api_prompt.attribution.clip.attention_pool import AttentionPoolDecomposition
>>> model = open_clip.create_model("local-dir:assets/synthshapes-siglip").eval()
>>> decomposition = AttentionPoolDecomposition()
>>> decomposition.unsupported_reason(model.visual) is None
True
>>> pixels, text = torch.randn(2, 3, 128, 128), torch.nn.functional.normalize(torch.randn(2, 64), dim=-1)
>>> parts = decomposition.run(model.visual, pixels, text)
>>> sorted(parts), tuple(parts["psi_pool"].shape)
(['psi_pool', 'psi_token'], (2, 8, 8))
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, vjp

from ...errors import UnsupportedModelError
from ..base import temporary_hooks
from .decomposition import as_float

__all__ = [
    "RECIPE_NAME",
    "AttentionPoolDecomposition",
    "PoolCapture",
    "head_rest",
    "pool_contributions",
]

#: Name of the default recipe for attention-pooled towers (a ``maps.RECIPES`` key).
RECIPE_NAME = "siglip-soft-or"

#: How far (relative to ‖embedding‖) the head rebuilt from the captured pooled vector may be from
#: ``encode_image``'s output before the tower is declared not understood (bf16 towers need slack).
_REBUILD_TOLERANCE = 0.05
#: Tokens sent through the head at once for the token part (bounds its extra memory).
_TOKEN_CHUNK = 32


@dataclass
class PoolCapture:
    """What the hooks keep from one forward pass of the tower."""

    layer: int  # block whose output tokens feed the token part
    grid: tuple[int, int] | None = None  # (gh, gw) of the input seen by the trunk
    key_values: torch.Tensor | None = None  # (B, N, 2C): output of the head's kv projection
    pooled: torch.Tensor | None = None  # (B, 1, C): z, output of the head's proj
    tokens: torch.Tensor | None = None  # (B, N_all, C): block L' output, when not the last


class AttentionPoolDecomposition:
    """Pool part and token part for a timm ViT pooled by ``AttentionPoolLatent`` (``global_pool='map'``).

    Follows the ``Decomposition`` protocol of the CLIP package: :meth:`unsupported_reason`,
    :meth:`n_layers`, :meth:`grid_shape`, :meth:`capture` (install hooks) and :meth:`decompose`
    (the maps, once the forward pass is over). ``layer`` only chooses the tokens of the token
    part (the last block gives the tokens the probe pools); the pool part always
    explains the real pool. :meth:`default_layer` is ``n_blocks - 2``, the CLIP rule: on the
    synthetic-shapes model its mask is within 0.03 pointing game of the best layer and the last
    block is worse (README).
    """

    name = "attention-pool"
    parts: tuple[str, ...] = ("psi_pool", "psi_token")
    #: no early exit: ψ_pool is the probe's attention over the *last* block's tokens, so the mask
    #: needs the whole trunk (ψ_token alone would not: it reads block L' and only the head's weights)
    stops_early = False
    default_recipe = RECIPE_NAME
    description = (
        "open_clip timm tower (TimmModel) whose timm VisionTransformer pools with "
        "AttentionPoolLatent (global_pool='map'), as open_clip's SigLIP / SigLIP2 models"
    )

    # -- which towers --------------------------------------------------------------------------

    def unsupported_reason(self, visual: nn.Module) -> str | None:
        """None when the tower can be explained, else what it lacks, in one sentence."""
        from open_clip.timm_model import TimmModel

        if not isinstance(visual, TimmModel):
            if getattr(visual, "attn_pool", None) is not None:
                return (
                    f"the image tower is an open_clip {type(visual).__name__} with its own attention "
                    "pooler (attn_pool, CoCa style), not a timm tower with an AttentionPoolLatent head"
                )
            return f"the image tower is a {type(visual).__name__}, not an open_clip timm tower (TimmModel)"
        from timm.layers import AttentionPoolLatent
        from timm.models.vision_transformer import VisionTransformer

        trunk = visual.trunk
        if not isinstance(trunk, VisionTransformer):
            return f"the timm trunk is a {type(trunk).__name__}, not a timm VisionTransformer"
        pool = getattr(trunk, "attn_pool", None)
        if pool is None:
            return (
                f"the timm ViT pools with global_pool={trunk.global_pool!r}, not with an attention "
                "pool (global_pool='map')"
            )
        if not isinstance(pool, AttentionPoolLatent):
            return f"the timm ViT's attention pool is a {type(pool).__name__}, not an AttentionPoolLatent"
        if pool.latent_len != 1:
            return (
                f"the attention pool has {pool.latent_len} latent queries (only one is supported)"
            )
        if pool.pos_embed is not None:
            return "the attention pool adds its own position embedding (pos_embed), which is not supported"
        if pool.pool not in ("token", "avg"):
            return f"the attention pool returns its latents unpooled (pool={pool.pool!r})"
        if not isinstance(pool.kv, nn.Linear) or not isinstance(pool.proj, nn.Linear):
            return "the attention pool has no linear kv projection and output projection (proj)"
        return None

    def n_layers(self, visual: nn.Module) -> int:
        return len(visual.trunk.blocks)

    def default_layer(self, visual: nn.Module) -> int:
        """Block whose tokens feed the token part by default: ``n_blocks - 2`` (as for CLIP)."""
        return max(self.n_layers(visual) - 2, 0)

    def grid_shape(self, visual: nn.Module, pixels: torch.Tensor) -> tuple[int, int]:
        """(gh, gw) of the patch grid for a (B, 3, H, W) input (non-square inputs on dynamic-size ViTs)."""
        trunk = visual.trunk
        height, width = pixels.shape[-2:]
        if getattr(trunk, "dynamic_img_size", False):
            return tuple(trunk.patch_embed.dynamic_feat_size((height, width)))
        return tuple(trunk.patch_embed.grid_size)

    # -- hooks and maps ------------------------------------------------------------------------

    def capture(
        self, visual: nn.Module, layer: int, text: torch.Tensor, handles: list
    ) -> PoolCapture:
        """Hook the head's kv and output projections (and block ``layer`` if it is not the last)."""
        trunk = visual.trunk
        pool = trunk.attn_pool
        capture = PoolCapture(layer=layer)

        def on_trunk(module, args):
            capture.grid = self.grid_shape(visual, args[0])

        def on_key_values(module, args, output):
            capture.key_values = output

        def on_pooled(module, args, output):
            capture.pooled = output

        def on_block(module, args, output):
            capture.tokens = output

        handles.append(trunk.register_forward_pre_hook(on_trunk))
        handles.append(pool.kv.register_forward_hook(on_key_values))
        handles.append(pool.proj.register_forward_hook(on_pooled))
        if layer != len(trunk.blocks) - 1:
            handles.append(trunk.blocks[layer].register_forward_hook(on_block))
        return capture

    def decompose(
        self,
        visual: nn.Module,
        capture: PoolCapture,
        image_features: torch.Tensor,
        text: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """``psi_pool`` and ``psi_token``, each (B, gh, gw) float32, once the forward pass is over."""
        if capture.key_values is None or capture.pooled is None or capture.grid is None:
            raise RuntimeError("the visual tower's forward pass did not reach the attention pool")
        pool = visual.trunk.attn_pool
        text = text.float()
        rest = head_rest(visual)
        pooled = capture.pooled.float()[:, 0]  # z, (B, C)
        embedding, pull_back = vjp(rest, pooled)
        _check_rebuilt(embedding, image_features.float())
        rho = image_features.float().norm(dim=-1, keepdim=True)  # (B, 1)

        weights, values = _attention_and_values(pool, capture.key_values)  # (B,H,N), (B,H,N,d)
        direction = pull_back(text)[0]  # w = Jᵀ t̂, (B, C)
        out_weight = pool.proj.weight.float()  # W_o, (C, C)
        pulled = (direction @ out_weight).view(
            values.shape[0], values.shape[1], -1
        )  # W_oᵀ w by head
        n_pooled = values.shape[2]
        out_bias_dot = (as_float(pool.proj.bias, 0.0) * direction).sum(
            dim=-1, keepdim=True
        )  # (B, 1)
        dots = torch.einsum("bhn,bhnd,bhd->bn", weights, values, pulled) + out_bias_dot / n_pooled
        first = _first_grid_token(visual.trunk)
        psi_pool = dots[:, first:] / rho

        if capture.tokens is None:  # the last block: the pooled tokens' own values
            token_values = values[:, :, first:].transpose(1, 2)  # (B, P, H, d)
        else:
            token_values = capture.tokens[:, visual.trunk.num_prefix_tokens :]  # (B, P, C)
        del weights, values
        psi_token = torch.cat(
            [
                self._token_part(
                    visual,
                    rest,
                    token_values[:, start : start + _TOKEN_CHUNK],
                    text,
                    from_values=capture.tokens is None,
                )
                for start in range(0, token_values.shape[1], _TOKEN_CHUNK)
            ],
            dim=1,
        )
        grid_h, grid_w = capture.grid
        if psi_pool.shape[1] != grid_h * grid_w:
            raise RuntimeError(
                f"the attention pool saw {psi_pool.shape[1]} patch tokens, not a {grid_h}x{grid_w} grid"
            )
        return {
            "psi_pool": psi_pool.reshape(-1, grid_h, grid_w),
            "psi_token": psi_token.reshape(-1, grid_h, grid_w),
        }

    @staticmethod
    def _token_part(visual, rest, tokens, text, from_values: bool) -> torch.Tensor:
        """ψ_token for a slice of tokens (slices bound the head-MLP activations to (B, chunk, 4C))."""
        pool = visual.trunk.attn_pool
        if from_values:
            values = tokens.flatten(2)
        else:
            value_weight = pool.kv.weight.float().chunk(2)[1]
            value_bias = pool.kv.bias.float().chunk(2)[1] if pool.kv.bias is not None else 0.0
            values = visual.trunk.norm(tokens).float() @ value_weight.T + value_bias
        alone = rest(
            values @ pool.proj.weight.float().T + as_float(pool.proj.bias, 0.0)
        )  # e_m, (B, chunk, E)
        return torch.einsum("bpe,be->bp", alone, text) / alone.norm(dim=-1).clamp_min(1e-12)

    def run(
        self, visual: nn.Module, pixels: torch.Tensor, text: torch.Tensor, layer: int | None = None
    ):
        """Hook, forward and decompose one batch (what the attributor does), hooks removed after.

        ``text``: (B, E) L2-normalised text embeddings. For tests, benchmarks and inspection.
        """
        layer = self.default_layer(visual) if layer is None else layer
        with torch.no_grad(), temporary_hooks() as handles:
            capture = self.capture(visual, layer, text, handles)
            image_features = visual(pixels)
            return self.decompose(visual, capture, image_features, text)


# -- the pieces, also used by the tests to state the identities ----------------------------------


def head_rest(visual: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """R: the pooled vector z (…, C) ↦ the image embedding (…, E), in float32, on eval modules.

    Everything of the tower after the pool's output projection: the MLP residual
    ``z + mlp(norm(z))``, then ``trunk.fc_norm``, ``trunk.head`` and open_clip's ``TimmModel.head``
    (often identities for SigLIP). Token-wise, so it also maps (B, N, C) tokens to (B, N, E).
    Dropouts are skipped (eval semantics); the parameters are read, never changed.
    """
    trunk = visual.trunk
    pool = trunk.attn_pool
    stages = [trunk.fc_norm, trunk.head, visual.head]

    def rest(pooled: torch.Tensor) -> torch.Tensor:
        x = pooled
        if pool.mlp is not None:
            x = x + _float_call(pool.mlp, _float_call(pool.norm, x))
        for stage in stages:
            x = _float_call(stage, x)
        return x

    return rest


def pool_contributions(visual: nn.Module, capture: PoolCapture) -> torch.Tensor:
    """c_m for every pooled token m (prefix tokens included when the pool includes them), (B, N, C).

    ``c_m = W_o · concat_h(a_{h,m} v_{h,m}) + b_o / N``, so ``Σ_m c_m`` is exactly the pooled vector
    z. The decomposition never forms this tensor (it needs only the dot products); it is here to
    state, test and inspect the pool part.
    """
    pool = visual.trunk.attn_pool
    weights, values = _attention_and_values(pool, capture.key_values)
    batch, heads, n_tokens, head_dim = values.shape
    weighted = (
        (weights[..., None] * values).transpose(1, 2).reshape(batch, n_tokens, heads * head_dim)
    )
    return weighted @ pool.proj.weight.float().T + as_float(pool.proj.bias, 0.0) / n_tokens


def _attention_and_values(
    pool: nn.Module, key_values: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The probe's attention a (B, H, N) and the values v (B, H, N, d), float32, from the kv output."""
    batch, n_tokens, _ = key_values.shape
    heads, head_dim = pool.num_heads, pool.head_dim
    keys, values = (
        key_values.float().reshape(batch, n_tokens, 2, heads, head_dim).permute(2, 0, 3, 1, 4)
    )
    query = _float_call(pool.q, pool.latent.float()).reshape(1, heads, head_dim)  # latent_len = 1
    query, keys = _float_call(pool.q_norm, query), _float_call(pool.k_norm, keys)
    logits = torch.einsum("hd,bhnd->bhn", query[0], keys) / math.sqrt(head_dim)
    return logits.softmax(dim=-1), values


def _first_grid_token(trunk: nn.Module) -> int:
    """Index of the first patch token among the tokens the pool sees."""
    return trunk.num_prefix_tokens if trunk.pool_include_prefix else 0


def _float_call(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` with its parameters and buffers in float32 (the module itself unchanged).

    Identities, dropouts (eval semantics) and empty ``Sequential``s return ``x`` as it is.
    """
    if isinstance(module, (nn.Identity, nn.Dropout)) or (
        isinstance(module, nn.Sequential) and len(module) == 0
    ):
        return x
    state = {name: tensor.float() for name, tensor in module.state_dict(keep_vars=True).items()}
    return functional_call(module, state, (x,))


def _check_rebuilt(rebuilt: torch.Tensor, image_features: torch.Tensor) -> None:
    """Refuse, rather than return wrong maps, when R(z) is not what the tower returned."""
    error = (rebuilt - image_features).norm(dim=-1)
    scale = image_features.norm(dim=-1)
    if bool((error > _REBUILD_TOLERANCE * scale + 1e-6).any()):
        raise UnsupportedModelError(
            "the attention-pool head of this tower does not compute z + mlp(norm(z)) followed by "
            "fc_norm, head and open_clip's projection (rebuilt embedding differs from encode_image "
            f"by {float((error / scale.clamp_min(1e-12)).max()):.2%}); this timm version's head is "
            "not supported"
        )
