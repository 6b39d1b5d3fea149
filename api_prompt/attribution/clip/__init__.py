"""CLIP backend: open_clip models explained by decomposing their image embedding over patches.

- :mod:`.attributor`: :class:`CLIPAttributor` (loading, batching, text cache; picks a decomposition)
- :mod:`.decomposition`: the :class:`Decomposition` protocol and the helpers decompositions share
- :mod:`.class_token`: :class:`ClassTokenDecomposition`, the paper's (docs/ALGORITHM.md §1)
- :mod:`.attention_pool`: the decomposition of attention-pooled towers (SigLIP)
- :mod:`.registry`: :data:`DECOMPOSITIONS` (ordered), :func:`register_decomposition`
- :mod:`.loading`: open_clip loading by name, offline when the weights are local

A new decomposition (another pooling kind) is one module here plus one
:func:`register_decomposition` call.

>>> from api_prompt.attribution.clip import DECOMPOSITIONS
>>> DECOMPOSITIONS[0].name, DECOMPOSITIONS[0].parts, DECOMPOSITIONS[0].default_recipe
('class-token', ('psi_cls', 'psi_comp'), 'clip-soft-or')
"""

from .attention_pool import AttentionPoolDecomposition
from .attributor import CLIPAttributor, SigLIPAttributor
from .class_token import (
    ClassTokenDecomposition,
    cls_attention_contributions,
    cls_contribution_dots,
    readout_direction,
)
from .decomposition import Decomposition, attention_unsupported_reason, crop_region
from .loading import (
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED,
    SIGLIP_DEFAULT_MODEL,
    SIGLIP_DEFAULT_PRETRAINED,
    weights_sha256,
)
from .registry import DECOMPOSITIONS, register_decomposition, select_decomposition

__all__ = [
    "AttentionPoolDecomposition",
    "CLIPAttributor",
    "SigLIPAttributor",
    "SIGLIP_DEFAULT_MODEL",
    "SIGLIP_DEFAULT_PRETRAINED",
    "register_decomposition",
    "DEFAULT_MODEL",
    "DEFAULT_PRETRAINED",
    "DECOMPOSITIONS",
    "Decomposition",
    "ClassTokenDecomposition",
    "attention_unsupported_reason",
    "cls_attention_contributions",
    "cls_contribution_dots",
    "crop_region",
    "readout_direction",
    "select_decomposition",
    "weights_sha256",
]
