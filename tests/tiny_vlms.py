"""Tiny, randomly initialised vision-language models built offline, for testing targets.

Each builder returns ``(model, processor)`` with a real chat template, a byte-level tokenizer
(every string round-trips) and a model small enough to generate in milliseconds on a CPU.
The answers are gibberish, but deterministic for a seed, which is all the tests need.

>>> model, processor = tiny_qwen2_vl()
>>> model.config.model_type
'qwen2_vl'
"""

from __future__ import annotations

from pathlib import Path

QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def byte_level_tokenizer(
    special_tokens: list[str],
    *,
    pad_token: str,
    eos_token: str,
    bos_token: str | None = None,
    extra: dict | None = None,
):
    """A fast tokenizer over the 256 byte symbols (no merges) plus ``special_tokens``.

    Any text encodes and decodes back exactly, so chat templates and answers survive intact.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: index for index, symbol in enumerate(sorted(alphabet))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=pad_token,
        eos_token=eos_token,
        bos_token=bos_token,
        **(extra or {}),
    )
    tokenizer.add_special_tokens(
        {
            "additional_special_tokens": [
                token for token in special_tokens if token not in (pad_token, eos_token, bos_token)
            ]
        }
    )
    return tokenizer


def tiny_qwen2_vl(seed: int = 0, save_dir: str | Path | None = None):
    """A Qwen2-VL with one vision block and one decoder layer; 4 image tokens per image.

    Images are resized to 56×56 pixels (2×2 merged patches of 14 px), whatever their size.
    With ``save_dir`` the model and processor are also saved there (loadable by id = folder).
    """
    from tiny_decoders import tiny_qwen_vl  # it builds on this module's tokenizer and template

    return tiny_qwen_vl(
        seed,
        save_dir,
        version="2",
        num_layers=1,
        hidden_size=32,
        min_pixels=56 * 56,
        max_pixels=56 * 56,
        vision_depth=1,
        vision_hidden_size=32,
        vision_heads=2,
        vision_mlp_ratio=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
    )
