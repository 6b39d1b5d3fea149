"""``overlay``: the paper's style, the default: the image fades to gray where the map is low.

Exactly :class:`api_prompt.Overlay` (bit-identical to the reference with ``geometry="stretch"``).
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from ..attention_map import AttentionMap
from ..overlay import Overlay
from .base import Style

__all__ = ["OverlayStyle"]


class OverlayStyle(Style):
    """The prompted image of the paper: one image, faded to gray ``background`` where ignored.

    Args:
        resample: filter that resizes the 8-bit map (``lanczos`` as the reference).
        background: gray level 0..255 of the ignored area.
        geometry: ``stretch`` (the reference) or ``fit``; see :class:`api_prompt.Overlay`.

    >>> import numpy as np
    >>> from api_prompt import AttentionMap
    >>> amap = AttentionMap(np.eye(2, dtype=np.float32), {}, (4, 4), (0.0, 0.0, 4.0, 4.0))
    >>> [image.size for image in OverlayStyle().apply(Image.new("RGB", (4, 4), "white"), amap)]
    [(4, 4)]
    """

    name = "overlay"

    def __init__(
        self, *, resample: str = "lanczos", background: int = 0, geometry: str = "stretch"
    ) -> None:
        self.overlay = Overlay(resample=resample, background=background, geometry=geometry)
        self.resample = self.overlay.resample.name.lower()
        self.background = self.overlay.background
        self.geometry = self.overlay.geometry

    def apply(self, image: Any, attention_map: AttentionMap) -> list[Image.Image]:
        return [self.overlay.apply(image, attention_map)]
