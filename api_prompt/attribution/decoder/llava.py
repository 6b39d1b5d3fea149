"""LLaVA-1.5 adapter: the paper's second auxiliary model (docs/ALGORITHM.md §2).

What differs from the shared attributor (:mod:`.attributor`): the question goes in a llava_v1 prompt
with its system sentence, the image is padded to a square of CLIP's mean colour (as the reference
does), the image tokens sit in one run and map row-major onto a square P×P grid (24×24 for
LLaVA-1.5's 336 px tower), and LLaMA's 1-D rotary positions are applied as the model hands them to
the layer. The grid covers the padded square, so the region extends beyond the image on the padded
sides.

The prompt: with a processor that has a chat template, one user turn (the image, then the
question) in that template, preceded by the llava_v1 system sentence as a system turn when the
tokenizer can spell it (with the llava-hf template this is the reference's llava_v1 prompt; a
small word-level vocabulary gets no system turn rather than a run of ``<unk>``). Without a chat
template, :data:`PROMPT_TEMPLATE`. A question word the tokenizer turns into its unknown token is
warned about (:class:`UnknownWordsWarning`): the model never sees it.

Default layer: ``n_layers * 20 // 32``, the paper's layer 20 of LLaVA-1.5-7B's 32 at the same
relative depth (2 of a 4-layer model; ``--layer`` overrides it).

Processor settings a LLaVA checkpoint needs (``LlavaProcessor``): one ``<image>`` in the prompt
must expand to one token per image feature, which the processor computes as
``(image_size // patch_size) ** 2 + num_additional_image_tokens``, minus one when
``vision_feature_select_strategy == "default"`` (the CLS feature dropped). For a CLIP tower that
is ``patch_size`` = the tower's patch size, ``num_additional_image_tokens=1`` (the CLS token) and
``vision_feature_select_strategy="default"`` (as in the model's config); with other values the
prompt and the image features disagree in length and the backend refuses the model. The shipped
``assets/synthshapes-llava`` is an example (64 px, patch 8: 64 image tokens, an 8×8 map).

>>> from api_prompt.attribution.llava import LLaVAAttributor          # doctest: +SKIP
>>> attributor = LLaVAAttributor("llava-hf/llava-1.5-7b-hf")          # doctest: +SKIP
>>> amap = attributor(["cat.jpg"], ["What is on the table?"])[0]      # doctest: +SKIP
>>> amap.parts["attention"].shape, amap.answer                        # doctest: +SKIP
((24, 24), 'A cat is sitting on the table.')
"""

from __future__ import annotations

import math
import re
import warnings
from typing import Any

import torch
from PIL import Image

from ...errors import UnsupportedModelError
from .attributor import DecoderAttributor
from .capture import ImageKeys, image_positions

DEFAULT_MODEL = "llava-hf/llava-1.5-7b-hf"

#: The paper's layer L' for LLaVA-1.5-7B (32 layers); other depths scale it (``n * 20 // 32``).
DEFAULT_LAYER = 20

#: The llava_v1 system sentence.
SYSTEM_SENTENCE = (
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the human's questions."
)

#: The llava_v1 conversation template with its system sentence (``{question}`` is filled in);
#: used when the processor has no chat template.
PROMPT_TEMPLATE = SYSTEM_SENTENCE + " USER: <image>\n{question} ASSISTANT:"


class UnknownWordsWarning(UserWarning):
    """Words of a question that the model's tokenizer turns into its unknown token."""


def unknown_words(tokenizer: Any, text: str) -> list[str]:
    """The words of ``text`` (as the tokenizer's pre-tokenizer splits it, else at whitespace)
    that ``tokenizer`` maps to its unknown token (always none for byte-level tokenizers, which
    spell everything).

    >>> from tokenizers import Tokenizer, models, pre_tokenizers
    >>> from transformers import PreTrainedTokenizerFast
    >>> backend = Tokenizer(models.WordLevel({"<unk>": 0, "red": 1, "?": 2}, unk_token="<unk>"))
    >>> backend.pre_tokenizer = pre_tokenizers.Whitespace()
    >>> unknown_words(PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>"), "red car?")
    ['car']
    """
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None:
        return []
    pre_tokenizer = getattr(getattr(tokenizer, "backend_tokenizer", None), "pre_tokenizer", None)
    if pre_tokenizer is not None:
        words = [text[start:end] for _, (start, end) in pre_tokenizer.pre_tokenize_str(text)]
    else:
        words = re.findall(r"\S+", text)
    return list(
        dict.fromkeys(
            word for word in words if unk in tokenizer(word, add_special_tokens=False)["input_ids"]
        )
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

    Takes the options of :class:`~api_prompt.attribution.decoder.attributor.DecoderAttributor`;
    ``model`` is a LLaVA-1.5 checkpoint in the transformers format (``llava-hf/llava-1.5-7b-hf``,
    ``-13b-hf``) or a loaded ``LlavaForConditionalGeneration``; ``layer`` defaults to
    ``n_layers * 20 // 32`` (20 for LLaVA-1.5-7B).

    >>> attributor = LLaVAAttributor("/models/llava-1.5-7b-hf", layer=20)    # doctest: +SKIP
    >>> [amap] = attributor(["street.jpg"], ["Which sign is red?"])           # doctest: +SKIP
    >>> amap.mask.shape, amap.region                                          # doctest: +SKIP
    ((24, 24), (0.0, -80.0, 640.0, 560.0))
    """

    name = "llava"
    family = "LLaVA-1.5"
    default_model = DEFAULT_MODEL
    model_classes = {"llava": "LlavaForConditionalGeneration"}

    def _prepare(self, images: list, queries: list[str]) -> tuple[dict, list[Any]]:
        squares, regions = zip(*(pad_to_square(image) for image in images))
        return self._processor_call(images=list(squares), text=self._prompts(queries)), list(
            regions
        )

    def _prompts(self, queries: list[str]) -> list[str]:
        tokenizer = self.processor.tokenizer
        for query in dict.fromkeys(queries):
            unknown = unknown_words(tokenizer, query)
            if unknown:
                warnings.warn(
                    f"{', '.join(map(repr, unknown))} in {query!r} become {tokenizer.unk_token} with "
                    f"the vocabulary of {self.model_name}: the model does not see these words",
                    UnknownWordsWarning,
                    stacklevel=4,
                )
        if not getattr(self.processor, "chat_template", None):
            return [PROMPT_TEMPLATE.format(question=query) for query in queries]
        system = (
            []
            if unknown_words(tokenizer, SYSTEM_SENTENCE)
            else [{"role": "system", "content": [{"type": "text", "text": SYSTEM_SENTENCE}]}]
        )
        return [
            self.processor.apply_chat_template(
                [
                    *system,
                    {
                        "role": "user",
                        "content": [{"type": "image"}, {"type": "text", "text": query}],
                    },
                ],
                add_generation_prompt=True,
                tokenize=False,
            )
            for query in queries
        ]

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
