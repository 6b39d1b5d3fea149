"""Qwen2-VL and Qwen2.5-VL adapter (``Qwen2VLForConditionalGeneration``,
``Qwen2_5_VLForConditionalGeneration``).

What differs from the shared attributor (:mod:`.attributor`), read off transformers' own Qwen2-VL code:

- **Prompt**: the processor's chat template, one user turn with the image then the question.
- **Image**: no preparation; the processor resizes the whole image to multiples of
  ``patch_size × merge_size`` (28 px for the released checkpoints' merge of 2) keeping its aspect ratio within its pixel budget, so
  nothing is cropped or padded: the region is the whole image.
- **Image tokens**: one run of (h / m) × (w / m) merged tokens per image, row-major, where
  ``image_grid_thw`` = (1, h, w) counts 14 px patches and m is the vision config's
  ``spatial_merge_size`` (2 in the released checkpoints; read from the config, never assumed) (Qwen2.5-VL's windowed vision attention
  restores this order before the merger).
- **Map**: that h/m × w/m grid, rectangular for a non-square image.
- **Positions**: 3-D M-RoPE (temporal, height, width ids for image tokens, 1-D for text, from
  ``get_rope_index``). The hook rotates queries and keys with the per-position cosines and sines
  the model hands the layer (already merged over the M-RoPE sections), so they are the model's own.

Default layer: ``n_layers * 20 // 32`` (17 for the 28-layer 2B/7B checkpoints): the paper's
LLaVA-1.5 layer at the same relative depth. No measurement of localisation quality on Qwen2-VL
backs it.

>>> from api_prompt.attribution.decoder import Qwen2VLAttributor                  # doctest: +SKIP
>>> attributor = Qwen2VLAttributor("Qwen/Qwen2-VL-7B-Instruct")                    # doctest: +SKIP
>>> amap = attributor(["wide.jpg"], ["Where is the dog?"])[0]                      # doctest: +SKIP
>>> amap.parts["attention"].shape, amap.region                                   # doctest: +SKIP
((23, 41), (0.0, 0.0, 1280.0, 720.0))
"""

from __future__ import annotations

from typing import Any

import torch

from ...errors import UnsupportedModelError
from .attributor import DecoderAttributor
from .capture import ImageKeys, image_positions

DEFAULT_MODEL = "Qwen/Qwen2-VL-7B-Instruct"
DEFAULT_MODEL_25 = "Qwen/Qwen2.5-VL-7B-Instruct"


class Qwen2VLAttributor(DecoderAttributor):
    """Attention maps from Qwen2-VL's (or Qwen2.5-VL's) decoder over its merged-token grid.

    Takes the options of :class:`~api_prompt.attribution.decoder.attributor.DecoderAttributor`;
    ``model`` is a Qwen2-VL or Qwen2.5-VL checkpoint in the transformers format or a loaded
    model of either class (the class is read from the checkpoint's ``model_type``).
    """

    name = "qwen2-vl"
    family = "Qwen2-VL / Qwen2.5-VL"
    default_model = DEFAULT_MODEL
    model_classes = {
        "qwen2_vl": "Qwen2VLForConditionalGeneration",
        "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    }

    def _prepare(self, images: list, queries: list[str]) -> tuple[dict, list[Any]]:
        inputs = self._processor_call(images=images, text=self._chat_prompts(queries))
        return inputs, [(0.0, 0.0, float(image.width), float(image.height)) for image in images]

    def _image_keys(self, inputs: dict, geometry: list[Any]) -> ImageKeys:
        positions, valid, rows = image_positions(inputs["input_ids"], self.image_token_id)
        merge = self.model.config.vision_config.spatial_merge_size
        layouts = []
        for row, (t, h, w) in zip(rows, inputs["image_grid_thw"].tolist()):
            if t != 1 or len(row) != h * w // (merge * merge):
                raise UnsupportedModelError(
                    f"expected one image of {h // merge}×{w // merge} merged tokens per prompt, "
                    f"found {len(row)} image tokens (grid {t}×{h}×{w})"
                )
            layouts.append((h // merge, w // merge))
        return ImageKeys(positions, valid, layouts)

    def _to_map(self, attention: torch.Tensor, layout: Any, geometry: Any):
        return {"attention": attention.reshape(layout).numpy()}, geometry, {}

    def _rotary(self, cos: torch.Tensor, sin: torch.Tensor):
        if cos.dim() != 3:
            raise UnsupportedModelError(
                "this transformers version hands Qwen2-VL's layers un-merged M-RoPE tables "
                f"(shape {tuple(cos.shape)}): the qwen2-vl backend needs a transformers that merges "
                "them before the attention (tested with 5.x)"
            )
        return cos, sin


class Qwen25VLAttributor(Qwen2VLAttributor):
    """The same backend under the name ``qwen2.5-vl``, with Qwen2.5-VL-7B as its default model."""

    name = "qwen2.5-vl"
    default_model = DEFAULT_MODEL_25
