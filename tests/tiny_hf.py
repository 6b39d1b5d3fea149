"""Tiny random Hugging Face models and tokenizers, built offline, for fast tests.

Nothing here touches the network: the tokenizer is trained in memory with the ``tokenizers``
library and the models are random-weight configurations of the real architectures. Everything is
deterministic for a given seed.

>>> from tiny_hf import tiny_llava     # tests/ is on sys.path under pytest
>>> model, processor = tiny_llava()                                 # doctest: +SKIP
>>> inputs = processor(images=image, text="USER: <image>\\nHi ASSISTANT:", return_tensors="pt")  # doctest: +SKIP
>>> model.generate(**inputs, max_new_tokens=5)                      # doctest: +SKIP

Public API (other test modules rely on it; keep it stable):

- :func:`tiny_tokenizer` -> ``PreTrainedTokenizerFast`` with ``<s> </s> <unk> <pad> <image>``.
- :func:`tiny_llava` -> ``(LlavaForConditionalGeneration, LlavaProcessor)``, fp32, eval mode.
- :data:`SPECIAL_TOKENS`, :data:`CHAT_TEMPLATE`.
"""

from __future__ import annotations

from pathlib import Path

import torch

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]

# Words of typical prompts (the llava_v1 system sentence, common questions), so that a prompt is
# a few dozen tokens rather than one per byte. Anything else falls back to byte-level pieces.
_CORPUS = [
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions.",
    "USER: ASSISTANT: SYSTEM:",
    "What color is the car? What is in the image? Where is the dog? How many people are there?",
    "Describe the image in detail. Is there a cat on the table? Which object is red?",
    "What is the man holding? What does the sign say? Count the apples. Answer the question.",
    "yes no one two three four five six seven eight nine ten left right top bottom",
    "the a an of in on at to is are was were this that it with for from by and or not",
    "red green blue yellow black white gray orange purple brown pink",
    "cat dog car person man woman people tree house sky road table chair sign apple ball",
    "0 1 2 3 4 5 6 7 8 9 . , ? ! : ; ' \" ( ) - _ / \n",
]

#: A minimal chat template: ``USER: <image>\n{text} ASSISTANT:`` (images first, as LLaVA-1.5).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] if message['content'] is string "
    "else message['content'][0]['text'] }} "
    "{% elif message['role'] == 'user' %}USER: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n"
    "{% endif %}{% endfor %}{% for item in message['content'] %}{% if item['type'] == 'text' %}"
    "{{ item['text'] }}{% endif %}{% endfor %}{% endif %} "
    "{% elif message['role'] == 'assistant' %}ASSISTANT: "
    "{{ message['content'] if message['content'] is string else message['content'][0]['text'] }}"
    "</s>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def tiny_tokenizer(save_dir: str | Path | None = None, vocab_size: int = 400):
    """A small byte-level BPE tokenizer: every string tokenizes, decoding round-trips.

    Special tokens ``<unk>``=0, ``<s>``=1, ``</s>``=2, ``<pad>``=3, ``<image>``=4; a BOS token is
    prepended like LLaMA's. ``save_dir`` also writes it with ``save_pretrained``.

    >>> tok = tiny_tokenizer()
    >>> tok.decode(tok("What color is the car?").input_ids, skip_special_tokens=True)
    'What color is the car?'
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_CORPUS, trainer=trainer)
    bos = backend.token_to_id("<s>")
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
        model_max_length=4096,
    )
    if save_dir is not None:
        tokenizer.save_pretrained(save_dir)
    return tokenizer


def tiny_llava(
    seed: int = 0,
    image_size: int = 24,
    save_dir: str | Path | None = None,
    *,
    patch_size: int = 6,
    hidden_size: int = 64,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    vision_hidden_size: int = 32,
    vision_layers: int = 2,
    vision_heads: int = 4,
    attn_implementation: str = "sdpa",
    **cfg,
):
    """A random-weight LLaVA-1.5-shaped model and its processor (fp32, eval mode, CPU).

    The vision tower is a CLIP ViT on ``image_size`` px with ``patch_size`` px patches, so the map
    is a (image_size / patch_size)² grid (4×4 by default). The language model is a LLaMA with
    ``num_layers`` decoder layers and grouped-query attention (``num_kv_heads`` < ``num_heads``).
    Extra keyword arguments override fields of the LLaMA text config (e.g. ``rope_theta``).
    ``save_dir`` writes model and processor with ``save_pretrained`` so that
    ``from_pretrained(save_dir)`` and ``AutoProcessor.from_pretrained(save_dir)`` work offline.

    >>> model, processor = tiny_llava(image_size=36)   # 6×6 grid     # doctest: +SKIP
    """
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    tokenizer = tiny_tokenizer()
    text_options = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    text_options.update(cfg)
    text_config = LlamaConfig(**text_options)
    vision_config = CLIPVisionConfig(
        hidden_size=vision_hidden_size,
        intermediate_size=4 * vision_hidden_size,
        num_hidden_layers=vision_layers,
        num_attention_heads=vision_heads,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=vision_hidden_size,
    )
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=image_token_id,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.eval()
    if attn_implementation is not None:
        model.set_attn_implementation(attn_implementation)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id

    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_center_crop=True,
        do_resize=True,
        do_normalize=True,
        do_convert_rgb=True,
    )
    processor = LlavaProcessor(
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
