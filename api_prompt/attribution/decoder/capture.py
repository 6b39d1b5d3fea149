"""The decoder hook (docs/ALGORITHM.md §2): the last query position's attention over the image keys.

While the model answers greedily, one decoder layer L' is watched at every forward pass (the
prefill and each generated token except the last): the attention logits of the last query
position over the image-token keys are soft-maxed over those keys only and averaged over heads.

Only that one row is computed, in a forward pre-hook on layer L''s attention module
(:class:`LastRowCapture`): the query of the last position and the keys of the image positions are
re-projected from the layer's input with the layer's own weights (biases and per-head q/k norms
included) and rotated with the rotary cosines and sines the model hands to that layer, so the
positions are exactly the model's own (LLaMA's 1-D positions, Qwen2-VL's 3-D M-RoPE). Every layer
keeps the model's attention implementation (SDPA, flash) and no attention matrix is ever
materialised. The attributor that installs the hook around ``generate`` is
:class:`~api_prompt.attribution.decoder.attributor.DecoderAttributor`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from ...errors import UnsupportedModelError

__all__ = [
    "ImageKeys",
    "LastRowCapture",
    "apply_rotary",
    "rotate_half",
    "GENERATION_STATE",
    "generation_state",
    "answer_length",
    "image_positions",
    "pack_positions",
]


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

    def __init__(
        self, attention: torch.nn.Module, keys: ImageKeys, prompt_length: int, rotary=None
    ):
        self.attention = attention
        self.image_positions = keys.positions  # (B, N) indices into the prompt
        self.valid = keys.valid  # (B, N)
        self.prompt_length = prompt_length
        self.rotary = rotary or (lambda cos, sin: (cos, sin))
        # 1/sqrt(d); transformers before 4.48 has no ``scaling`` attribute
        self.scaling = getattr(attention, "scaling", attention.head_dim**-0.5)
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
            trig = [
                t.expand(hidden.shape[0], -1, -1).gather(
                    1, index[..., None].expand(-1, -1, t.shape[-1])
                )
                for t in (cos, sin)
            ]
            # one key per key-value head (grouped-query attention shares it among query heads)
            self.keys = apply_rotary(
                self._project(attn.k_proj, "k_norm", image_hidden), *trig
            ).float()
        query = self._project(attn.q_proj, "q_norm", hidden[:, -1:])
        query = apply_rotary(query, cos[:, -1:], sin[:, -1:]).float()  # (B, heads, 1, d)
        batch, heads, _, dim = query.shape
        kv_heads = self.keys.shape[1]  # query head h reads key-value head h // (heads / kv_heads)
        grouped = query.view(batch, kv_heads, heads // kv_heads, dim)
        logits = (
            torch.einsum("bkgd,bknd->bkgn", grouped, self.keys).reshape(batch, heads, -1)
            * self.scaling
        )
        logits = logits.masked_fill(~self.valid[:, None, :], float("-inf"))
        self.passes.append(logits.softmax(dim=-1).mean(dim=1))
        return None


#: Attributes that ``generate`` leaves behind on a model's modules (Qwen2-VL caches its M-RoPE
#: offsets in ``rope_deltas``); restored afterwards so the model is exactly as it was.
GENERATION_STATE = ("rope_deltas",)


@contextmanager
def generation_state(model: torch.nn.Module) -> Iterator[None]:
    """Restore the :data:`GENERATION_STATE` attributes of every module on exit."""
    saved = [
        (module, name, getattr(module, name))
        for module in model.modules()
        for name in GENERATION_STATE
        if hasattr(module, name)
    ]
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


def image_positions(
    input_ids: torch.Tensor, token_id: int
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Per row, the sequence positions holding ``token_id``, packed into (B, N) with a validity
    mask, plus the list of each row's own positions.

    >>> ids = torch.tensor([[0, 9, 9, 1], [9, 9, 9, 1]])
    >>> positions, valid, rows = image_positions(ids, 9)
    >>> positions.tolist(), valid.tolist()
    ([[1, 2, 0], [0, 1, 2]], [[True, True, False], [True, True, True]])
    """
    rows = [(row == token_id).nonzero()[:, 0] for row in input_ids]
    return pack_positions(rows)


def pack_positions(
    rows: list[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Stack rows of positions of different lengths into (B, N) plus a (B, N) validity mask."""
    if any(len(row) == 0 for row in rows):
        raise UnsupportedModelError(
            "a prompt holds no image tokens: the processor did not insert the image"
        )
    width = max(len(row) for row in rows)
    positions = torch.zeros(len(rows), width, dtype=torch.long, device=rows[0].device)
    valid = torch.zeros(len(rows), width, dtype=torch.bool, device=rows[0].device)
    for index, row in enumerate(rows):
        positions[index, : len(row)] = row
        valid[index, : len(row)] = True
    return positions, valid, rows
