"""Attribution backends: score image patches against a text query.

The backends are listed in :mod:`api_prompt.attribution.registry` (torch-free); the names here are
imported lazily, so listing or checking backends never imports torch.
"""

from __future__ import annotations

import importlib

_PUBLIC = {
    "BACKENDS": "api_prompt.attribution.registry",
    "BackendSpec": "api_prompt.attribution.registry",
    "BackendOption": "api_prompt.attribution.registry",
    "register_backend": "api_prompt.attribution.registry",
    "get_backend": "api_prompt.attribution.registry",
    "create_attributor": "api_prompt.attribution.registry",
    "AttentionMap": "api_prompt.attention_map",
    "Attributor": "api_prompt.attribution.base",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'api_prompt.attribution' has no attribute {name!r}")
