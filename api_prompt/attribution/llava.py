"""LLaVA-1.5 backend; the code lives in :mod:`api_prompt.attribution.decoder.llava`.

Kept so that ``from api_prompt.attribution.llava import LLaVAAttributor`` keeps working.

>>> from PIL import Image
>>> from api_prompt.attribution.llava import pad_to_square
>>> pad_to_square(Image.new("RGB", (40, 20)))[1]
(0.0, -10.0, 40.0, 30.0)
"""

from .decoder.llava import (
    DEFAULT_LAYER,
    DEFAULT_MODEL,
    PAD_COLOUR,
    PROMPT_TEMPLATE,
    LLaVAAttributor,
    pad_to_square,
)

__all__ = [
    "DEFAULT_LAYER",
    "DEFAULT_MODEL",
    "PAD_COLOUR",
    "PROMPT_TEMPLATE",
    "LLaVAAttributor",
    "pad_to_square",
]
