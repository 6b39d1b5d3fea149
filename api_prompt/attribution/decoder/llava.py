"""LLaVA-1.5 adapter: the paper's second auxiliary model (docs/ALGORITHM.md §2).

What differs from the shared capture (:mod:`.capture`): the question goes in the llava_v1 prompt
with its system sentence, the image is padded to a square of CLIP's mean colour (as the reference
does), the 576 image tokens sit in one run and map row-major onto a square P×P grid (24×24), and
LLaMA's 1-D rotary positions are applied as the model hands them to the layer. The grid covers the
padded square, so the region extends beyond the image on the padded sides.

Default layer: 20, the paper's choice for LLaVA-1.5 (``--layer`` overrides it).

>>> from api_prompt.attribution.llava import LLaVAAttributor          # doctest: +SKIP
>>> attributor = LLaVAAttributor("llava-hf/llava-1.5-7b-hf")          # doctest: +SKIP
>>> amap = attributor(["cat.jpg"], ["What is on the table?"])[0]      # doctest: +SKIP
>>> amap.parts["attention"].shape, amap.answer                        # doctest: +SKIP
((24, 24), 'A cat is sitting on the table.')
"""

from __future__ import annotations

import math
from typing import Any

import torch
from PIL import Image

from ...errors import UnsupportedModelError
from .capture import DecoderAttributor, ImageKeys, image_positions

DEFAULT_MODEL = "llava-hf/llava-1.5-7b-hf"

#: The paper's layer L' for LLaVA-1.5.
DEFAULT_LAYER = 20

#: The llava_v1 conversation template with its system sentence (``{question}`` is filled in).
PROMPT_TEMPLATE = (
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the human's questions. USER: <image>\n{question} "
    "ASSISTANT:"
)

#: Colour of the square padding: CLIP's pixel mean in 8 bits, as the reference pads.
PAD_COLOUR = (122, 116, 104)


def pad_to_square(image: Image.Image, colour: tuple[int, int, int] = PAD_COLOUR):
    """Paste ``image`` centred on a square of side max(W, H) filled with ``colour``.

    Returns the square and the box it covers in the original image's pixel coordinates (it
    extends beyond the image on the padded sides).

    >>> square, region = pad_to_square(Image.new("RGB", (40, 20)))
    >>> square.size, region
    ((40, 40), (0.0, -10.0, 40.0, 30.0))
    """
    width, height = image.size
    side = max(width, height)
    left, top = (side - width) // 2, (side - height) // 2
    if width == height:
        square = image.copy()
    else:
        square = Image.new(image.mode, (side, side), colour)
        square.paste(image, (left, top))
    return square, (float(-left), float(-top), float(side - left), float(side - top))


class LLaVAAttributor(DecoderAttributor):
    """Attention maps from LLaVA-1.5's decoder while it answers the question (docs/ALGORITHM.md §2).

    Takes the options of :class:`~api_prompt.attribution.decoder.capture.DecoderAttributor`;
    ``model`` is a LLaVA-1.5 checkpoint in the transformers format (``llava-hf/llava-1.5-7b-hf``,
    ``-13b-hf``) or a loaded ``LlavaForConditionalGeneration``; ``layer`` defaults to 20.

    >>> attributor = LLaVAAttributor("/models/llava-1.5-7b-hf", layer=20)    # doctest: +SKIP
    >>> [amap] = attributor(["street.jpg"], ["Which sign is red?"])           # doctest: +SKIP
    >>> amap.mask.shape, amap.region                                          # doctest: +SKIP
    ((24, 24), (0.0, -80.0, 640.0, 560.0))
    """

    name = "llava"
    family = "LLaVA-1.5"
    default_model = DEFAULT_MODEL
    model_classes = {"llava": "LlavaForConditionalGeneration"}

    def default_layer(self, n_layers: int) -> int:
        return DEFAULT_LAYER

    def _prepare(self, images: list, queries: list[str]) -> tuple[dict, list[Any]]:
        squares, regions = zip(*(pad_to_square(image) for image in images))
        prompts = [PROMPT_TEMPLATE.format(question=query) for query in queries]
        return self._processor_call(images=list(squares), text=prompts), list(regions)

    def _image_keys(self, inputs: dict, geometry: list[Any]) -> ImageKeys:
        positions, valid, rows = image_positions(inputs["input_ids"], self.image_token_id)
        layouts = []
        for row in rows:
            side = math.isqrt(len(row))
            if side * side != len(row):
                raise UnsupportedModelError(f"{len(row)} image tokens do not form a square grid")
            layouts.append((side, side))
        return ImageKeys(positions, valid, layouts)

    def _to_map(self, attention: torch.Tensor, layout: Any, geometry: Any):
        return {"attention": attention.reshape(layout).numpy()}, geometry, {}
