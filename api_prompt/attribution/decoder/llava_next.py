"""LLaVA-NeXT adapter (``LlavaNextForConditionalGeneration``, "anyres").

What differs from the shared attributor (:mod:`.attributor`), read off transformers' own LLaVA-NeXT code:

- **Prompt**: the processor's chat template (Mistral, Vicuna and Yi checkpoints differ).
- **Image**: no preparation; the processor makes a base view (the whole image resized to one
  tile) plus the tiles of the best grid resolution (``image_grid_pinpoints``), the image resized
  into it keeping its aspect ratio and centred on padding.
- **Image tokens** (one run per image, in this order): the base view's side×side tokens, then
  the tiles stitched into one high-resolution feature grid, *unpadded* (the rows or columns that
  only saw padding are dropped, ``unpad_image``), read row by row with one ``image_newline``
  token closing every row.
- **Map**: the softmax runs over every image key of the base view and the stitched grid (the
  newline separators carry no place in the image and are left out); ``parts["attention"]`` is the
  stitched, unpadded grid (rectangular, tiles where they belong), and the base view's grid is
  returned in ``extra["base_attention"]`` (its region, the whole image, in ``extra["base_region"]``).
  Both together sum to 1.
- **Region**: the box of the original image the unpadded grid covers, from the processor's resize
  and padding arithmetic (close to the whole image; off by the rounding of unpadding to whole
  feature rows).
- **Positions**: LLaMA/Mistral 1-D rotary positions, as the model hands them to the layer.

Default layer: ``n_layers * 20 // 32`` (20 for the 32-layer 7B checkpoints): the paper's LLaVA-1.5
layer at the same relative depth. No measurement of localisation quality on LLaVA-NeXT backs it.

>>> from api_prompt.attribution.decoder import LLaVANextAttributor                 # doctest: +SKIP
>>> attributor = LLaVANextAttributor("llava-hf/llava-v1.6-mistral-7b-hf")          # doctest: +SKIP
>>> amap = attributor(["wide.jpg"], ["Where is the dog?"])[0]                      # doctest: +SKIP
>>> amap.parts["attention"].shape, amap.extra["base_attention"].shape            # doctest: +SKIP
((24, 48), (24, 24))
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ...errors import UnsupportedModelError
from .attributor import DecoderAttributor
from .capture import ImageKeys, image_positions, pack_positions

DEFAULT_MODEL = "llava-hf/llava-v1.6-mistral-7b-hf"


@dataclass(frozen=True)
class AnyresLayout:
    """Where one image's tokens sit: the base view's side×side grid, then ``rows`` rows of
    ``cols`` stitched tokens each followed by a newline token."""

    side: int
    rows: int
    cols: int
    region: tuple[float, float, float, float]  # of the stitched grid, in original-image pixels
    image_size: tuple[int, int]  # (W, H)

    @property
    def n_tokens(self) -> int:
        return self.side * self.side + self.rows * (self.cols + 1)

    def is_newline(self) -> torch.Tensor:
        """(n_tokens,) bool: which of the image's tokens are row separators."""
        flags = torch.zeros(self.n_tokens, dtype=torch.bool)
        flags[self.side * self.side :] = (
            torch.arange(self.rows * (self.cols + 1)) % (self.cols + 1)
        ) == self.cols
        return flags


def patch_output_size(height: int, width: int, target: tuple[int, int]) -> tuple[int, int]:
    """(height, width) of an image resized into ``target`` (height, width) keeping its aspect
    ratio, as LLaVA-NeXT's image processor does before padding.

    >>> patch_output_size(30, 60, (48, 48))
    (24, 48)
    """
    target_height, target_width = target
    scale_w, scale_h = target_width / width, target_height / height
    if scale_w < scale_h:
        return min(math.ceil(height * scale_w), target_height), target_width
    return target_height, min(math.ceil(width * scale_h), target_width)


class LLaVANextAttributor(DecoderAttributor):
    """Attention maps from LLaVA-NeXT's decoder over its stitched high-resolution grid.

    Takes the options of :class:`~api_prompt.attribution.decoder.attributor.DecoderAttributor`;
    ``model`` is a LLaVA-NeXT checkpoint in the transformers format
    (``llava-hf/llava-v1.6-mistral-7b-hf``, ``-vicuna-7b-hf``, ...) or a loaded
    ``LlavaNextForConditionalGeneration``.
    """

    name = "llava-next"
    family = "LLaVA-NeXT"
    default_model = DEFAULT_MODEL
    model_classes = {"llava_next": "LlavaNextForConditionalGeneration"}

    def _prepare(self, images: list, queries: list[str]) -> tuple[dict, list[Any]]:
        config = self.model.config
        if config.vision_feature_select_strategy != "default":
            raise UnsupportedModelError(
                "the llava-next backend supports vision_feature_select_strategy 'default' "
                f"(got {config.vision_feature_select_strategy!r})"
            )
        inputs = self._processor_call(images=images, text=self._chat_prompts(queries))
        sizes = inputs["image_sizes"].tolist()  # (height, width) as the model reads them
        return inputs, [self._layout(int(h), int(w)) for h, w in sizes]

    def _layout(self, height: int, width: int) -> AnyresLayout:
        from transformers.image_processing_utils import select_best_resolution
        from transformers.models.llava_next.modeling_llava_next import (
            get_anyres_image_grid_shape,
            unpad_image,
        )

        config = self.model.config
        tile = config.vision_config.image_size
        side = tile // config.vision_config.patch_size
        pinpoints = config.image_grid_pinpoints
        tiles_high, tiles_wide = get_anyres_image_grid_shape((height, width), pinpoints, tile)
        full_rows, full_cols = tiles_high * side, tiles_wide * side
        rows, cols = unpad_image(torch.empty(0, full_rows, full_cols), (height, width)).shape[1:]
        cut_rows, cut_cols = (full_rows - rows) // 2, (full_cols - cols) // 2

        # The canvas the tiles were cut from, and where the resized image sits on it.
        canvas_h, canvas_w = select_best_resolution((height, width), pinpoints)
        new_h, new_w = patch_output_size(height, width, (canvas_h, canvas_w))
        paste_y, paste_x = (canvas_h - new_h) // 2, (canvas_w - new_w) // 2
        cell_y, cell_x = canvas_h / full_rows, canvas_w / full_cols
        sy, sx = height / new_h, width / new_w
        region = (
            (cut_cols * cell_x - paste_x) * sx,
            (cut_rows * cell_y - paste_y) * sy,
            ((full_cols - cut_cols) * cell_x - paste_x) * sx,
            ((full_rows - cut_rows) * cell_y - paste_y) * sy,
        )
        left, top, right, bottom = (float(v) for v in region)
        return AnyresLayout(side, int(rows), int(cols), (left, top, right, bottom), (width, height))

    def _image_keys(self, inputs: dict, geometry: list[Any]) -> ImageKeys:
        _, _, rows = image_positions(inputs["input_ids"], self.image_token_id)
        keys = []
        for positions, layout in zip(rows, geometry):
            if len(positions) != layout.n_tokens:
                raise UnsupportedModelError(
                    f"the prompt holds {len(positions)} image tokens, the anyres layout of the image "
                    f"needs {layout.n_tokens}: the processor and the model disagree about the image"
                )
            keys.append(positions[~layout.is_newline().to(positions.device)])
        positions, valid, _ = pack_positions(keys)
        return ImageKeys(positions, valid, geometry)

    def _to_map(self, attention: torch.Tensor, layout: AnyresLayout, geometry: Any):
        base = layout.side * layout.side
        stitched = attention[base:].reshape(layout.rows, layout.cols).numpy()
        extra = {
            "base_attention": attention[:base].reshape(layout.side, layout.side).numpy(),
            "base_region": (0.0, 0.0, float(layout.image_size[0]), float(layout.image_size[1])),
        }
        return {"attention": stitched}, layout.region, extra
