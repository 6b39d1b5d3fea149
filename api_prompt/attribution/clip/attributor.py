"""CLIPAttributor: an open_clip model, a decomposition of its image tower, batching and a text cache.

The attributor loads (or adopts) the model (:mod:`.loading`), picks the first decomposition in
:data:`~.registry.DECOMPOSITIONS` that explains the tower (the paper's class-token one,
:mod:`.class_token`), runs one forward pass per batch with that decomposition's hooks, and
returns the raw parts (:meth:`CLIPAttributor.attribute_parts`); used alone, it adds the mask its
recipe makes (:meth:`~api_prompt.attribution.base.Attributor.attribute`).

>>> from api_prompt import CLIPAttributor                                   # doctest: +SKIP
>>> attributor = CLIPAttributor("local-dir:tests/fixtures/clip_reference/model", layer=4,
...                             device="cpu")                                 # doctest: +SKIP
>>> amap = attributor("car.jpg", "What color is the car?")[0]               # doctest: +SKIP
>>> amap.mask.shape, sorted(amap.parts)                                     # doctest: +SKIP
((8, 8), ['psi_cls', 'psi_comp'])
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from ...attention_map import AttentionMap
from ...errors import ConfigError
from ...settings import DEFAULT_ENHANCE, DEFAULT_KERNEL_SIZE, check_enhance, check_kernel_size
from ..base import (
    Attributor,
    check_layer,
    chunks,
    eval_mode,
    resolve_device,
    resolve_dtype,
    temporary_hooks,
)
from .decomposition import EarlyExitDecomposition, StopForward, crop_region
from .loading import (
    DEFAULT_MODEL,
    SIGLIP_DEFAULT_MODEL,
    adopt_instance,
    check_dtype,
    load_open_clip,
    module_device,
    module_dtype,
    resolve_name,
    weights_sha256,
)
from .registry import select_decomposition
from .text import encode_text

__all__ = ["CLIPAttributor", "SigLIPAttributor"]

_TEXT_CACHE_SIZE = 1024


class CLIPAttributor(Attributor):
    """Where a CLIP ViT looks for a text query, by decomposing its image embedding over patches.

    The decomposition is the first of :data:`~.registry.DECOMPOSITIONS` that explains the
    tower: for class-token ViTs the paper's (:class:`~.class_token.ClassTokenDecomposition`).

    Args:
        model: an open_clip model name (with ``pretrained``), an ``hf-hub:org/repo`` or
            ``local-dir:/folder`` name, or an open_clip ``CLIP`` instance (then ``preprocess`` and
            ``tokenizer`` are required and the model is used where and as it is). None: the
            class's ``default_model`` (the paper's ViT-L-14-336-quickgelu).
        pretrained: open_clip pretrained tag (``"openai"``, ``"laion2b_s34b_b88k"``, ...) or a
            checkpoint file path, for built-in names only. None: ``"openai"`` for the default
            model (``"webli"`` for SigLIP's), random weights (with a warning) for any other name.
        preprocess, tokenizer: the eval transform and tokenizer of a model instance.
        layer: 0-based block L' (negative counts from the end); default ``n_blocks - 2``.
        enhance, kernel_size: the settings of the mask :meth:`attribute` makes when the
            attributor is used alone (published package: 10 and 3); a
            :class:`~api_prompt.Prompter` combines the parts with its own settings.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
        dtype: ``"fp32"`` (default), or ``"bf16"``/``"fp16"`` on a GPU. The decomposition itself
            always runs in float32.
        batch_size: images per forward pass.
        cache_dir: open_clip download/cache folder.

    Example:
        >>> attributor = CLIPAttributor("ViT-B-16", pretrained="openai", device="cpu")  # doctest: +SKIP
        >>> maps = attributor([image_a, image_b], ["is there a dog?", "read the sign"])  # doctest: +SKIP
        >>> maps[0].mask.shape                                                         # doctest: +SKIP
        (14, 14)
    """

    name = "clip"
    #: the model loaded when none is given (its default weights: ``loading.DEFAULT_TAGS``)
    default_model = DEFAULT_MODEL
    #: the chosen decomposition's recipe (set per instance); the paper's for the class token
    default_recipe = "clip-soft-or"

    def __init__(
        self,
        model: str | nn.Module | None = None,
        pretrained: str | None = None,
        *,
        preprocess: Callable | None = None,
        tokenizer: Callable | None = None,
        layer: int | None = None,
        enhance: float = DEFAULT_ENHANCE,
        kernel_size: int = DEFAULT_KERNEL_SIZE,
        device: str | torch.device | None = "auto",
        dtype: str | torch.dtype | None = None,
        batch_size: int = 16,
        cache_dir: str | None = None,
    ) -> None:
        model = self.default_model if model is None else model
        self.enhance = check_enhance(enhance)
        self.kernel_size = check_kernel_size(kernel_size)
        self.batch_size = _check_batch_size(batch_size)

        if isinstance(model, nn.Module):
            self.model, self.preprocess, self.tokenizer = adopt_instance(
                model, preprocess, tokenizer, device, dtype
            )
            self.model_name = f"<{type(model).__name__} instance>"
            self.pretrained = pretrained
        else:
            if preprocess is not None or tokenizer is not None:
                raise ConfigError("preprocess and tokenizer are only used with a model instance")
            target_device = resolve_device(device)
            target_dtype = check_dtype(resolve_dtype(dtype), target_device)
            name, self.pretrained = resolve_name(model, pretrained)
            self.model, self.preprocess, self.tokenizer, self.model_name = load_open_clip(
                name, self.pretrained, target_device, target_dtype, cache_dir
            )
        self.device = module_device(self.model)
        self.dtype = module_dtype(self.model.visual)

        visual = self.model.visual
        self.decomposition = select_decomposition(visual)
        self.default_recipe = self.decomposition.default_recipe
        self.n_layers = n_blocks = self.decomposition.n_layers(visual)
        self.layer = check_layer(n_blocks - 2 if layer is None else layer, n_blocks)
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._weights_sha256: str | None = None

    # -- the verb ------------------------------------------------------------------------------

    def attribute_parts(
        self, images: list, queries: list[str], *, exact_parts: bool = True
    ) -> list[AttentionMap]:
        """One :class:`AttentionMap` of raw parts per (RGB PIL image, query) pair, batched
        through the model (:meth:`attribute` adds the mask of this attributor's recipe).

        ``exact_parts=True`` (the default): the parts are in the reference's scale (the full
        forward pass runs). ``exact_parts=False``, for a caller that needs only the mask: where
        the decomposition allows it (the class token: ``decomposition.stops_early``) the tower
        stops after block L', the mask is the same, and the parts are the reference's up to one
        positive affine map per image (any recipe that min-max normalises each part, as every
        built-in one does, gives the same mask from them); ``extra["exact_parts"]`` says which.
        """
        if len(images) != len(queries):
            raise ConfigError(f"got {len(images)} images but {len(queries)} queries")
        early = not exact_parts and self.stops_early
        maps: list[AttentionMap] = []
        for batch in chunks(list(zip(images, queries)), self.batch_size):
            batch_images = [image for image, _ in batch]
            parts = self.raw_maps(
                batch_images, [query for _, query in batch], exact_parts=not early
            )
            for i, (image, query) in enumerate(batch):
                maps.append(
                    AttentionMap(
                        mask=None,
                        parts={name: part[i].numpy() for name, part in parts.items()},
                        image_size=image.size,
                        region=crop_region(self.preprocess, image.size),
                        query=query,
                        extra={"exact_parts": not early},
                    )
                )
        return maps

    @property
    def stops_early(self) -> bool:
        """Whether ``attribute(..., exact_parts=False)`` ends the forward pass after block L'."""
        return bool(getattr(self.decomposition, "stops_early", False))

    def raw_maps(
        self, images: Sequence, queries: Sequence[str], *, exact_parts: bool = True
    ) -> dict[str, torch.Tensor]:
        """The decomposition's raw parts for one batch (Ψcls and Ψcomp for the class token):
        float32 CPU tensors of shape (B, grid_h, grid_w), by part name.

        ``exact_parts=False`` (only for a decomposition that ``stops_early``): the forward pass
        ends after block L' and the parts are exact up to a positive affine map per image.
        """
        pixels = torch.stack([self.preprocess(image) for image in images])
        return {
            name: part.cpu()
            for name, part in self.parts_from_pixels(
                pixels, queries, exact_parts=exact_parts
            ).items()
        }

    def parts_from_pixels(
        self, pixels: torch.Tensor, queries: Sequence[str], *, exact_parts: bool = True
    ) -> dict[str, torch.Tensor]:
        """:meth:`raw_maps` after preprocessing: ``pixels`` (B, 3, H, W) as ``preprocess`` makes
        them; the parts stay on the model's device (for benchmarks of the model side alone)."""
        if not exact_parts and not self.stops_early:
            raise ConfigError(
                f"the {self.decomposition.name} decomposition needs the whole tower for its parts"
            )
        pixels = pixels.to(self.device, dtype=self.dtype)
        visual = self.model.visual
        if not exact_parts:
            # the image first, the text after: nothing text-sized is held through the forward pass
            stopping = cast(EarlyExitDecomposition, self.decomposition)
            with torch.no_grad(), eval_mode(self.model), temporary_hooks() as handles:
                capture = stopping.capture_until(visual, self.layer, handles)
                try:
                    self.model.encode_image(pixels)
                except StopForward:
                    pass
            text = self.text_embeddings(queries)
            with torch.no_grad():
                parts = stopping.decompose_until(visual, capture, text)
            return parts
        text = self.text_embeddings(queries)
        with torch.no_grad(), eval_mode(self.model), temporary_hooks() as handles:
            capture = self.decomposition.capture(visual, self.layer, text, handles)
            image_features = self.model.encode_image(pixels)
            parts = self.decomposition.decompose(visual, capture, image_features, text)
        return parts

    def text_embeddings(self, queries: Sequence[str]) -> torch.Tensor:
        """L2-normalised ``encode_text`` of each raw query (float32, cached per query string)."""
        missing = list(dict.fromkeys(q for q in queries if q not in self._text_cache))
        if missing:
            tokens = self.tokenizer(missing).to(self.device)
            with torch.no_grad(), eval_mode(self.model):
                embeddings = encode_text(self.model, tokens).float()
            embeddings = embeddings / embeddings.norm(dim=-1, keepdim=True)
            for query, embedding in zip(missing, embeddings):
                self._text_cache[query] = embedding
        for query in queries:
            self._text_cache.move_to_end(query)
        result = torch.stack([self._text_cache[query] for query in queries])
        while len(self._text_cache) > _TEXT_CACHE_SIZE:
            self._text_cache.popitem(last=False)
        return result

    def query_overflow(self, query: str) -> tuple[int, int] | None:
        """``(tokens, context_length)`` when open_clip's tokenizer truncates ``query``, else None.

        Counts the start and end tokens the tokenizer adds; a tokenizer without ``encode`` and
        ``context_length`` (an unusual one) gives None rather than a failure.
        """
        context = getattr(self.tokenizer, "context_length", None)
        encode = getattr(self.tokenizer, "encode", None)
        if not isinstance(context, int) or not callable(encode):
            return None
        try:
            count = len(encode(query)) + 2  # start and end of text
        except Exception:  # an unusual tokenizer: better no warning than a failure
            return None
        return (count, context) if count > context else None

    def describe(self) -> dict[str, Any]:
        """Model identity and settings, for run manifests (the weights hash is computed once)."""
        if self._weights_sha256 is None:
            self._weights_sha256 = weights_sha256(self.model)
        return {
            **super().describe(),
            "model": self.model_name,
            "pretrained": self.pretrained,
            "layer": self.layer,
            "enhance": self.enhance,
            "kernel_size": self.kernel_size,
            "dtype": str(self.dtype).replace("torch.", ""),
            "weights_sha256": self._weights_sha256,
        }

    def __repr__(self) -> str:
        return (
            f"CLIPAttributor(model={self.model_name!r}, pretrained={self.pretrained!r}, "
            f"layer={self.layer}, enhance={self.enhance}, kernel_size={self.kernel_size}, "
            f"device='{self.device}', dtype={str(self.dtype).replace('torch.', '')})"
        )


def _check_batch_size(batch_size: Any) -> int:
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, (int, np.integer))
        or batch_size < 1
    ):
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


class SigLIPAttributor(CLIPAttributor):
    """:class:`CLIPAttributor` with SigLIP's default model: ``ViT-B-16-SigLIP`` (WebLI weights).

    Any attention-pooled open_clip tower works (SigLIP, SigLIP2: the attention-pool decomposition
    of :mod:`.attention_pool` explains it). Takes the same arguments as :class:`CLIPAttributor`.

    >>> attributor = SigLIPAttributor(device="cpu")                        # doctest: +SKIP
    >>> attributor.decomposition.name, attributor.default_recipe            # doctest: +SKIP
    ('attention-pool', 'siglip-soft-or')
    """

    name = "siglip"
    default_model = SIGLIP_DEFAULT_MODEL
    default_recipe = "siglip-soft-or"
