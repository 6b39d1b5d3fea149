"""Decoder-attention backends: where a vision-language decoder looks while it answers.

:mod:`.capture` holds the hook, :mod:`.attributor` the attributor every family shares and
:mod:`.loading` its loading; one small adapter module per family says what differs (prompt, image
preparation, image-token layout, grid and region).

Families are imported lazily, so importing one does not import the others.
"""

from __future__ import annotations

import importlib

_PUBLIC = {
    "DecoderAttributor": ".attributor",
    "LLaVAAttributor": ".llava",
    "LLaVANextAttributor": ".llava_next",
    "Qwen2VLAttributor": ".qwen2_vl",
    "Qwen25VLAttributor": ".qwen2_vl",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
