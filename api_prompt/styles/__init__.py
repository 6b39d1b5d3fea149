"""Prompt styles: one attention map, several training-free ways to show it to the target.

| style     | the target sees                                                      |
|-----------|----------------------------------------------------------------------|
| `overlay` | the paper's prompted image (gray where ignored); the default         |
| `crop`    | the original, then a zoomed crop of the attended region (ViCrop)     |
| `blur`    | the image blurred where ignored, sharp where attended                |
| `box`     | the original with a box (or ellipse) around the attended region      |

A new style is one module: a :class:`Style` subclass with ``name`` and ``apply``, registered
with :func:`register_style` (usable as a class decorator).

>>> import numpy as np
>>> from PIL import Image
>>> from api_prompt import AttentionMap
>>> from api_prompt.styles import create_style
>>> amap = AttentionMap(np.eye(4, dtype=np.float32), {}, (64, 64), (0.0, 0.0, 64.0, 64.0))
>>> [len(create_style(name).apply(Image.new("RGB", (64, 64)), amap)) for name in ("overlay", "crop")]
[1, 2]
"""

from .base import STYLES, Style, create_style, register_style, style_options
from .blur import BlurStyle
from .box import BoxStyle
from .crop import CropStyle, attention_box
from .overlay import OverlayStyle

# registered here, in this order (the default first: the order help texts list them in), so no
# module depends on the order of the imports above
for _style in (OverlayStyle, CropStyle, BlurStyle, BoxStyle):
    register_style(_style)

__all__ = [
    "STYLES",
    "Style",
    "create_style",
    "register_style",
    "style_options",
    "OverlayStyle",
    "CropStyle",
    "BlurStyle",
    "BoxStyle",
    "attention_box",
]
