"""The CLIP decompositions, in the order they are tried: :data:`DECOMPOSITIONS`.

Each implementation module imports only :mod:`.decomposition` (the protocol and shared helpers);
this module imports the implementations and registers them, so nothing depends on import order. A
new decomposition (another pooling kind) is one module plus one :func:`register_decomposition`.

>>> [decomposition.name for decomposition in DECOMPOSITIONS]
['class-token', 'attention-pool']
"""

from __future__ import annotations

from torch import nn

from ...errors import UnsupportedModelError
from .attention_pool import AttentionPoolDecomposition
from .class_token import ClassTokenDecomposition
from .decomposition import Decomposition

__all__ = ["DECOMPOSITIONS", "register_decomposition", "select_decomposition"]

#: Decompositions tried in order; the first that supports the tower is used.
DECOMPOSITIONS: list[Decomposition] = []


def register_decomposition(decomposition: Decomposition, *, first: bool = False) -> Decomposition:
    """Add ``decomposition`` to :data:`DECOMPOSITIONS` (last, or ``first``), replacing one of the
    same name; returns it."""
    if not isinstance(decomposition, Decomposition):
        raise TypeError(
            f"register_decomposition takes a Decomposition, got {type(decomposition).__name__}"
        )
    DECOMPOSITIONS[:] = [known for known in DECOMPOSITIONS if known.name != decomposition.name]
    DECOMPOSITIONS.insert(0 if first else len(DECOMPOSITIONS), decomposition)
    return decomposition


def select_decomposition(visual: nn.Module) -> Decomposition:
    """The first decomposition in :data:`DECOMPOSITIONS` that explains ``visual``, else an
    UnsupportedModelError naming, for each, what is missing."""
    reasons = []
    for decomposition in DECOMPOSITIONS:
        reason = decomposition.unsupported_reason(visual)
        if reason is None:
            return decomposition
        reasons.append(f"{decomposition.name}: {reason}")
    supported = "; ".join(decomposition.description for decomposition in DECOMPOSITIONS)
    raise UnsupportedModelError(
        f"this CLIP cannot be attributed ({'; '.join(reasons)}). Supported: {supported}, e.g. the "
        f"OpenAI and LAION ViT-B-16 / ViT-L-14 / ViT-L-14-336 models. ResNet towers (RN50, ...) are "
        f"not supported."
    )


register_decomposition(ClassTokenDecomposition())
register_decomposition(AttentionPoolDecomposition())
