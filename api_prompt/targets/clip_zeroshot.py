"""``clip-zeroshot:MODEL``: a target that answers multiple choice by CLIP similarity.

The question must list its options as lines ``X. text`` (VLMEvalKit's multiple-choice prompt,
as :func:`api_prompt.evaluation.data.target_prompt` builds it). Each option's text is one
caption; the answer is the letter of the caption whose CLIP text embedding is closest (cosine)
to the image's. With no options in the question the target cannot answer and says so.

>>> from api_prompt.targets import create_target                                          # doctest: +SKIP
>>> target = create_target("clip-zeroshot:local-dir:assets/synthshapes-clip", device="cpu")  # doctest: +SKIP
>>> target(["scene.png"], ["Question: What colour is the triangle?\\nOptions:\\nA. a red triangle\\nB. a blue triangle"])  # doctest: +SKIP
['B']
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from ..errors import ConfigError, TargetError
from .base import BaseTarget
from .choices import parse_options

__all__ = ["CLIPZeroShotTarget", "parse_options"]


class CLIPZeroShotTarget(BaseTarget):
    """Answers multiple-choice questions with the option caption closest to the image in CLIP.

    Args:
        model: an open_clip name (``local-dir:``, ``hf-hub:`` or built-in with ``pretrained``),
            or an open_clip model instance (then pass ``preprocess`` and ``tokenizer``).
        pretrained, device, dtype, preprocess, tokenizer, cache_dir: as for
            :class:`~api_prompt.CLIPAttributor`, which loads the model.
        batch_size: images per forward pass.
    """

    def __init__(
        self,
        model: Any,
        pretrained: str | None = None,
        *,
        device: str | None = "auto",
        dtype: str | None = None,
        batch_size: int = 64,
        **options: Any,
    ) -> None:
        from ..attribution.clip import CLIPAttributor

        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        # CLIPAttributor does the loading (names, offline rules, one-line errors) and embeds the
        # option captions (its cached, L2-normalised text_embeddings).
        self.attributor = CLIPAttributor(model, pretrained, device=device, dtype=dtype, **options)
        self.model, self.preprocess = self.attributor.model, self.attributor.preprocess
        self.tokenizer = self.attributor.tokenizer
        self.model_name = self.attributor.model_name
        self.device, self.dtype = self.attributor.device, self.attributor.dtype
        self.batch_size = batch_size

    def answer(
        self, images: list[list[Image.Image]], questions: list[str], **generation: Any
    ) -> list[str]:
        """The letter of the closest option for each question (generation options are ignored)."""
        import torch

        option_sets = []
        for question in questions:
            options = parse_options(question)
            if not options:
                raise TargetError(
                    "clip-zeroshot answers multiple choice only: the question lists no options "
                    "as lines 'A. text'"
                )
            option_sets.append(options)
        answers = []
        with torch.inference_mode():
            for start in range(0, len(questions), self.batch_size):
                stop = start + self.batch_size
                pixels = torch.stack(
                    [self.preprocess(image_list[-1]) for image_list in images[start:stop]]
                )
                pixels = pixels.to(self.device, self.dtype)
                features = self.model.encode_image(pixels).float()
                features = features / features.norm(dim=-1, keepdim=True)
                for feature, options in zip(features, option_sets[start:stop]):
                    captions = self.attributor.text_embeddings(list(options.values()))
                    best = int(torch.argmax(captions @ feature))
                    answers.append(list(options)[best])
        return answers

    def describe(self) -> dict[str, Any]:
        return {"target": "clip-zeroshot", "model": self.model_name}

    def __repr__(self) -> str:
        return f"CLIPZeroShotTarget(model={self.model_name!r})"
