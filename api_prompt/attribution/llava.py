"""LLaVA-1.5 backend; the code lives in :mod:`api_prompt.attribution.decoder.llava`.

Kept so that ``from api_prompt.attribution.llava import LLaVAAttributor`` keeps working.
"""

from .decoder.llava import DEFAULT_LAYER, DEFAULT_MODEL, PAD_COLOUR, PROMPT_TEMPLATE, LLaVAAttributor, pad_to_square

__all__ = ["DEFAULT_LAYER", "DEFAULT_MODEL", "PAD_COLOUR", "PROMPT_TEMPLATE", "LLaVAAttributor", "pad_to_square"]
