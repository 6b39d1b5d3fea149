"""Tiny random LLaVA-NeXT, Qwen2-VL and Qwen2.5-VL models built offline, for the decoder backends.

Unlike :func:`tiny_vlms.tiny_qwen2_vl` (a fixed 56×56, one-layer configuration of
:func:`tiny_qwen_vl`), these keep by default the image's size and aspect ratio within small pixel
budgets, so grids are rectangular and differ from image to image, and they have several decoder
layers with grouped-query attention. Everything is
deterministic for a seed; weights are random.

>>> model, processor = tiny_llava_next()                                  # doctest: +SKIP
>>> model, processor = tiny_qwen_vl(version="2.5")                        # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import torch

from tiny_hf import CHAT_TEMPLATE, tiny_tokenizer
from tiny_vlms import QWEN_CHAT_TEMPLATE, QWEN_SPECIAL_TOKENS, byte_level_tokenizer

#: anyres resolutions (height, width) of the tiny LLaVA-NeXT: tiles of 24 px, up to 3 per side.
TINY_PINPOINTS = [[24, 48], [48, 24], [48, 48], [72, 24], [24, 72]]


def tiny_llava_next(
    seed: int = 0,
    save_dir: str | Path | None = None,
    *,
    num_layers: int = 4,
    attn_implementation: str = "sdpa",
    initializer_range: float = 0.02,
    hidden_size: int = 64,
    vision_hidden_size: int = 32,
    vision_layers: int = 2,
    vision_heads: int = 4,
    image_size: int = 24,
    patch_size: int = 6,
    pinpoints: list | None = None,
    **text_options,
):
    """A random LLaVA-NeXT (CLIP tower on 24 px tiles of 6 px patches, LLaMA decoder, anyres).

    Every image becomes a 4×4 base view plus the tiles of the best of :data:`TINY_PINPOINTS`,
    stitched, unpadded and closed by one newline token per row, as the real model does.
    """
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
    )

    tokenizer = tiny_tokenizer()
    pinpoints = pinpoints or TINY_PINPOINTS
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        initializer_range=initializer_range,
    )
    text.update(text_options)
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=vision_hidden_size,
            intermediate_size=4 * vision_hidden_size,
            num_hidden_layers=vision_layers,
            num_attention_heads=vision_heads,
            image_size=image_size,
            patch_size=patch_size,
            projection_dim=vision_hidden_size,
        ),
        text_config=LlamaConfig(**text),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=pinpoints,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config).eval()
    model.set_attn_implementation(attn_implementation)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_grid_pinpoints=pinpoints,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )
    if save_dir is not None:
        model.save_pretrained(save_dir)
        processor.save_pretrained(save_dir)
    return model, processor


def tiny_qwen_vl(
    seed: int = 0,
    save_dir: str | Path | None = None,
    *,
    version: str = "2",
    num_layers: int = 4,
    attn_implementation: str = "sdpa",
    initializer_range: float = 0.02,
    hidden_size: int = 64,
    merge_size: int = 2,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    vision_depth: int = 2,
    vision_hidden_size: int = 32,
    vision_heads: int = 2,
    vision_mlp_ratio: int = 2,
    **text_options,
):
    """A random Qwen2-VL (``version="2"``) or Qwen2.5-VL (``"2.5"``) keeping aspect ratios.

    Images are resized by the model's own rule (multiples of ``14 × merge_size`` px: 28 px for the
    real checkpoints' ``spatial_merge_size`` 2, 42 px for 3; between ``min_pixels`` and
    ``max_pixels``, by default 4 and 24 merged tokens), so a 60×30 image gives a different,
    rectangular grid of merged tokens than a 30×70 one. The text model has ``num_layers`` layers
    and M-RoPE sections [2, 3, 3].
    """
    import transformers

    prefix = {"2": "Qwen2VL", "2.5": "Qwen2_5_VL"}[version]
    tokenizer = byte_level_tokenizer(
        QWEN_SPECIAL_TOKENS, pad_token="<|endoftext|>", eos_token="<|im_end|>"
    )
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN_SPECIAL_TOKENS}
    token_side = 14 * merge_size  # pixels per merged token, per side
    min_pixels = 4 * token_side**2 if min_pixels is None else min_pixels
    max_pixels = 24 * token_side**2 if max_pixels is None else max_pixels
    sizes = dict(
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        patch_size=14,
        merge_size=merge_size,
        temporal_patch_size=2,
    )
    processor = getattr(transformers, f"{prefix}Processor")(
        image_processor=transformers.Qwen2VLImageProcessor(**sizes),
        video_processor=transformers.Qwen2VLVideoProcessor(**sizes),
        tokenizer=tokenizer,
        chat_template=QWEN_CHAT_TEMPLATE,
    )
    vision = dict(
        depth=vision_depth,
        hidden_size=vision_hidden_size,
        num_heads=vision_heads,
        patch_size=14,
        spatial_merge_size=merge_size,
        temporal_patch_size=2,
        in_channels=3,
    )
    if version == "2":  # hidden_size is the merger's output there, embed_dim the tower's width
        vision.update(
            embed_dim=vision_hidden_size, hidden_size=hidden_size, mlp_ratio=vision_mlp_ratio
        )
    else:
        vision.update(
            intermediate_size=vision_mlp_ratio * vision_hidden_size,
            out_hidden_size=hidden_size,
            window_size=2 * token_side,
            fullatt_block_indexes=[vision_depth - 1],
        )
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        initializer_range=initializer_range,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    text.update(text_options)
    # M-RoPE splits each head's frequency pairs 1/4 temporal, 3/8 height, 3/8 width, as the real
    # checkpoints do ([16, 24, 24] for 128-wide heads; [2, 3, 3] for the default 16-wide ones).
    half = text["hidden_size"] // text["num_attention_heads"] // 2
    text.setdefault(
        "rope_parameters",
        {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": [half // 4, 3 * half // 8, 3 * half // 8],
        },
    )
    config = getattr(transformers, f"{prefix}Config")(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model = getattr(transformers, f"{prefix}ForConditionalGeneration")(config).eval()
    model.set_attn_implementation(attn_implementation)
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    if save_dir is not None:
        model.save_pretrained(save_dir)
        processor.save_pretrained(save_dir)
    return model, processor
