"""Train a small LLaVA (stock ``LlavaForConditionalGeneration``) on synthetic shape scenes.

Usage (from the repository root)::

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.synthshapes.train_llava \
        --stage1-minutes 8 --stage2-minutes 70 --seed 0 --out assets/synthshapes-llava

What it builds
--------------
* **Vision tower**: the visual tower of the shipped synthshapes CLIP (``assets/synthshapes-clip``,
  open_clip format) converted to the transformers ``CLIPVisionModel`` format
  (:func:`convert_open_clip_visual`), frozen. The LLaVA reads its second-to-last block
  (``vision_feature_layer=-2``) and drops the CLS token (``vision_feature_select_strategy=
  "default"``), so an image is 64 tokens, an 8x8 grid.
* **Projector**: the stock LLaVA MLP (linear, GELU, linear).
* **Language model**: a small LLaMA over a word-level tokenizer whose vocabulary is exactly the
  words of the questions, answers and chat template below (:func:`vocabulary`).
* **Processor**: ``LlavaProcessor`` (``CLIPImageProcessor`` at 64 px, the tokenizer, a chat
  template ``USER: <image>\\n{question} ASSISTANT:``), with ``patch_size=8``,
  ``num_additional_image_tokens=1`` and ``vision_feature_select_strategy="default"`` so that one
  ``<image>`` expands to the 64 image tokens.

How it trains
-------------
* Stage 1 (``--stage1-*``): the projector only, on captions (``What is in the image?`` ->
  ``a red circle and a blue square .``, objects left to right); the vision tower and the language
  model stay as they are (the latter at its random initialisation).
* Stage 2 (``--stage2-*``): projector and language model on a mix of questions with short answers
  (:data:`QUESTION_TEMPLATES`, several wordings per type; one-word answers), ``Describe the
  {color} {shape}.`` answered with one sentence, and the captions of stage 1.
* The loss is the cross-entropy of the answer tokens (and the closing ``</s>``), averaged per
  sample then over the batch, so long answers do not outweigh one-word ones.
* Scenes come on the fly from a numpy generator seeded with ``--seed``; held-out evaluation uses
  :data:`EVAL_SEED`. Every ``--save-every`` steps the folder is rewritten with ``save_pretrained``
  (an interrupted run leaves a loadable model), and at the end ``TRAINING.md`` is written.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import re
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.synthshapes.mcq import SMALL as SMALL_MCQ_SCENES
from benchmarks.synthshapes.scenes import COLORS, SHAPES, Scene, _article, make_scene

REPO = Path(__file__).resolve().parents[2]
CLIP_DIR = REPO / "assets" / "synthshapes-clip"
OUT_DIR = REPO / "assets" / "synthshapes-llava"
#: Held-out scenes come from this seed; training streams start at ``--seed`` (small integers).
EVAL_SEED = 20_251_203
IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ("<unk>", "<pad>", "<s>", "</s>", IMAGE_TOKEN)

# ----------------------------------------------------------------------------- questions

#: Several wordings per question type, as people ask. ``{shape}``/``{color}``/``{a}`` (article)
#: are filled in; every word is in the tokenizer's vocabulary (see :func:`vocabulary`).
QUESTION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "color": (
        "What color is the {shape}?",
        "What is the color of the {shape}?",
        "Which color is the {shape}?",
        "What colour is the {shape}?",
        "Tell me the color of the {shape}.",
        "The {shape} is what color?",
        "What color does the {shape} have?",
    ),
    "shape": (
        "What shape is the {color} object?",
        "What is the shape of the {color} object?",
        "Which shape is {color}?",
        "What kind of shape is the {color} one?",
        "What is the {color} thing?",
        "Name the shape of the {color} object.",
        "What shape does the {color} object have?",
    ),
    "exists": (
        "Is there {a} {color} {shape}?",
        "Is there {a} {color} {shape} in the image?",
        "Do you see {a} {color} {shape}?",
        "Does the picture contain {a} {color} {shape}?",
        "Can you find {a} {color} {shape} here?",
        "Is {a} {color} {shape} in the picture?",
        "Is there {a} {color} {shape} in this image?",
    ),
    "count": (
        "How many shapes are there?",
        "How many objects are in the image?",
        "How many shapes do you see?",
        "Count the shapes.",
        "How many things are in the picture?",
        "What is the number of objects?",
        "How many objects are there in this image?",
    ),
    "describe": (
        "Describe the {color} {shape}.",
        "Describe the {color} {shape} in the image.",
    ),
    "caption": (
        "What is in the image?",
        "Describe the image.",
        "What do you see?",
    ),
    # Training-only: the binding a yes/no question needs, alone. The named colour (or shape) is
    # always in the scene, so checking it alone scores chance (see make_question).
    "verify": (
        "Is the {color} object a {shape}?",
        "Is the {color} one a {shape}?",
        "Is the {color} thing a {shape}?",
        "Is the {shape} {color}?",
    ),
}
#: Question types with a one-word answer (its first word is what is scored).
SHORT_TYPES = ("color", "shape", "exists", "count")
COUNT_WORDS = ("one", "two", "three")
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
# Chance levels of the held-out questions (uniform guessing over the possible answers).
CHANCE = {"color": 1 / len(COLORS), "shape": 1 / len(SHAPES), "exists": 0.5, "count": 1 / 3}


def position_words(scene: Scene, index: int) -> str:
    """Where object ``index`` sits, in thirds of the image: ``at the top left``, ``in the center``.

    >>> from benchmarks.synthshapes.scenes import ShapeObject, render_scene
    >>> position_words(render_scene([ShapeObject("circle", "red", (0, 0, 12, 12))]), 0)
    'at the top left'
    """
    cx, cy = scene.objects[index].center
    third = scene.size / 3
    row = ("top", "", "bottom")[min(2, int(cy // third))]
    col = ("left", "", "right")[min(2, int(cx // third))]
    if not row and not col:
        return "in the center"
    return "at the " + " ".join(w for w in (row, col) if w)


def describe_answer(scene: Scene, index: int) -> str:
    obj = scene.objects[index]
    return f"It is {_article(obj.color)} {obj.color} {obj.shape} {position_words(scene, index)}."


def caption_answer(scene: Scene) -> str:
    """All objects, left to right: ``a red circle and a blue square.``"""
    order = sorted(range(len(scene.objects)), key=lambda i: scene.objects[i].center)
    items = [f"{_article(scene.objects[i].color)} {scene.objects[i].phrase}" for i in order]
    text = items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
    return text + "."


@dataclass
class Example:
    """One question about one scene. ``answer`` is the training target; ``target`` the object the
    question names (None for count and caption questions)."""

    scene: Scene
    kind: str
    question: str
    answer: str
    target: int | None = None


def make_question(
    scene: Scene, kind: str, rng: np.random.Generator, near_miss: float = 0.7, easy: float = 0.0
) -> Example | None:
    """A question of ``kind`` about ``scene`` with its answer, or None when the scene cannot
    support one (color questions need a shape that occurs once, shape questions a colour that
    occurs once). Half the yes/no questions are ``no``; of those, a share ``easy`` names a colour
    that is not in the scene (a curriculum's easy negatives), and of the rest a share ``near_miss``
    names a near miss (a present colour with an absent shape, or the reverse) when the scene has one."""
    objs = scene.objects
    wording = QUESTION_TEMPLATES[kind][int(rng.integers(len(QUESTION_TEMPLATES[kind])))]
    if kind == "color":
        unique = [i for i, o in enumerate(objs) if sum(p.shape == o.shape for p in objs) == 1]
        if not unique:
            return None
        i = unique[int(rng.integers(len(unique)))]
        return Example(scene, kind, wording.format(shape=objs[i].shape), objs[i].color, i)
    if kind == "shape":
        unique = [i for i, o in enumerate(objs) if sum(p.color == o.color for p in objs) == 1]
        if not unique:
            return None
        i = unique[int(rng.integers(len(unique)))]
        return Example(scene, kind, wording.format(color=objs[i].color), objs[i].shape, i)
    if kind == "exists":
        present = {(o.color, o.shape) for o in objs}
        if rng.random() < 0.5:
            i = int(rng.integers(len(objs)))
            color, shape, answer, target = objs[i].color, objs[i].shape, "yes", i
        else:
            absent = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in present]
            near = [(c, s) for c, s in absent if any(c == o.color or s == o.shape for o in objs)]
            pool = near if near and rng.random() < near_miss else absent
            if easy and rng.random() < easy:
                pool = [(c, s) for c, s in absent if all(c != o.color for o in objs)]
            color, shape = pool[int(rng.integers(len(pool)))]
            answer, target = "no", None
        return Example(
            scene, kind, wording.format(a=_article(color), color=color, shape=shape), answer, target
        )
    if kind == "count":
        return Example(scene, kind, wording, COUNT_WORDS[len(objs) - 1])
    if kind == "describe":
        i = int(rng.integers(len(objs)))
        return Example(
            scene,
            kind,
            wording.format(color=objs[i].color, shape=objs[i].shape),
            describe_answer(scene, i),
            i,
        )
    if kind == "caption":
        return Example(scene, kind, wording, caption_answer(scene))
    if kind == "verify":
        by_shape = wording.index("{shape}") < wording.index("{color}")
        key = "shape" if by_shape else "color"
        unique = [
            i
            for i, o in enumerate(objs)
            if sum(getattr(p, key) == getattr(o, key) for p in objs) == 1
        ]
        if not unique:
            return None
        i = unique[int(rng.integers(len(unique)))]
        color, shape, answer, target = objs[i].color, objs[i].shape, "yes", i
        if rng.random() < 0.5:
            answer = "no"
            if by_shape:
                others = [c for c in COLORS if c != color]
                present = [c for c in others if any(o.color == c for o in objs)]
                pool = present if present and rng.random() < 0.5 else others
                color = pool[int(rng.integers(len(pool)))]
            else:
                shape = [s for s in SHAPES if s != shape][int(rng.integers(len(SHAPES) - 1))]
        return Example(scene, kind, wording.format(color=color, shape=shape), answer, target)
    raise ValueError(f"unknown question kind {kind!r}")


def sample_examples(
    rng: np.random.Generator,
    n: int,
    mix: dict[str, float],
    n_objects=(1, 3),
    size: int = 64,
    near_miss: float = 0.7,
    easy: float = 0.0,
    **scene_options,
) -> list[Example]:
    kinds = list(mix)
    weights = np.array([mix[k] for k in kinds], dtype=np.float64)
    weights /= weights.sum()
    out: list[Example] = []
    while len(out) < n:
        scene = make_scene(rng, size=size, n_objects=n_objects, **scene_options)
        example = make_question(
            scene, kinds[int(rng.choice(len(kinds), p=weights))], rng, near_miss, easy
        )
        if example is not None:
            out.append(example)
    return out


def held_out(
    kind: str, n: int, seed: int = EVAL_SEED, n_objects=(1, 3), **scene_options
) -> list[Example]:
    """``n`` held-out questions of one kind (scenes from ``seed``, disjoint from training);
    ``scene_options`` (``size``, ``min_side``, ``max_side``) go to the scene generator."""
    offset = list(QUESTION_TEMPLATES).index(kind)
    return sample_examples(
        np.random.default_rng(seed + offset), n, {kind: 1.0}, n_objects, **scene_options
    )


# ----------------------------------------------------------------------------- tokenizer

_WORD = re.compile(r"\w+|[^\w\s]+")


def words_of(text: str) -> list[str]:
    """The words the tokenizer sees (its ``Whitespace`` pre-tokenizer after lowercasing)."""
    return _WORD.findall(text.lower())


def vocabulary() -> list[str]:
    """Every word of every template, fill-in, answer and the chat template, sorted."""
    words: set[str] = set(words_of("USER: ASSISTANT: SYSTEM: yes no " + " ".join(COUNT_WORDS)))
    fills = " ".join(
        [*COLORS, *SHAPES, "a an It is at the top bottom left right in center and , ."]
    )
    words.update(words_of(fills))
    for templates in QUESTION_TEMPLATES.values():
        for template in templates:
            words.update(words_of(re.sub(r"\{\w+\}", " ", template)))
    return sorted(words)


def build_tokenizer():
    """A word-level ``PreTrainedTokenizerFast`` over :func:`vocabulary` (lower-cased)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for word in vocabulary():
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
        model_max_length=512,
        clean_up_tokenization_spaces=True,
    )


# ----------------------------------------------------------------------------- conversion


def vision_config_from_open_clip(model_cfg: dict):
    """The transformers ``CLIPVisionConfig`` equal to an open_clip ViT ``model_cfg``."""
    from transformers import CLIPVisionConfig

    vision = model_cfg["vision_cfg"]
    width = vision["width"]
    heads = width // vision.get("head_width", 64)
    return CLIPVisionConfig(
        hidden_size=width,
        intermediate_size=int(width * vision.get("mlp_ratio", 4.0)),
        num_hidden_layers=vision["layers"],
        num_attention_heads=heads,
        image_size=vision["image_size"],
        patch_size=vision["patch_size"],
        projection_dim=model_cfg["embed_dim"],
        hidden_act="quick_gelu" if model_cfg.get("quick_gelu") else "gelu",
        layer_norm_eps=1e-5,
    )


def convert_open_clip_visual(visual: torch.nn.Module) -> dict[str, torch.Tensor]:
    """open_clip ``VisionTransformer`` weights -> ``CLIPVisionModelWithProjection`` state dict
    (``vision_model.*`` and ``visual_projection.weight``).

    open_clip keeps q, k and v in one ``in_proj`` matrix and the projection as ``x @ proj``;
    transformers splits q/k/v and stores the projection as a ``Linear`` weight (transposed).
    """
    sd = {k: v.detach().float() for k, v in visual.state_dict().items()}
    unsupported = [k for k in sd if k.startswith(("attn_pool", "ls_", "head")) or ".ls_" in k]
    if unsupported:
        raise ValueError(f"cannot convert open_clip tower with {unsupported[:3]}")
    out = {
        "vision_model.embeddings.class_embedding": sd["class_embedding"],
        "vision_model.embeddings.patch_embedding.weight": sd["conv1.weight"],
        "vision_model.embeddings.position_embedding.weight": sd["positional_embedding"],
        "vision_model.pre_layrnorm.weight": sd["ln_pre.weight"],
        "vision_model.pre_layrnorm.bias": sd["ln_pre.bias"],
        "vision_model.post_layernorm.weight": sd["ln_post.weight"],
        "vision_model.post_layernorm.bias": sd["ln_post.bias"],
        "visual_projection.weight": sd["proj"].t().contiguous(),
    }
    n_layers = len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")})
    for i in range(n_layers):
        src, dst = f"transformer.resblocks.{i}.", f"vision_model.encoder.layers.{i}."
        q, k, v = sd[src + "attn.in_proj_weight"].chunk(3)
        qb, kb, vb = sd[src + "attn.in_proj_bias"].chunk(3)
        out.update(
            {
                dst + "self_attn.q_proj.weight": q,
                dst + "self_attn.q_proj.bias": qb,
                dst + "self_attn.k_proj.weight": k,
                dst + "self_attn.k_proj.bias": kb,
                dst + "self_attn.v_proj.weight": v,
                dst + "self_attn.v_proj.bias": vb,
                dst + "self_attn.out_proj.weight": sd[src + "attn.out_proj.weight"],
                dst + "self_attn.out_proj.bias": sd[src + "attn.out_proj.bias"],
                dst + "layer_norm1.weight": sd[src + "ln_1.weight"],
                dst + "layer_norm1.bias": sd[src + "ln_1.bias"],
                dst + "layer_norm2.weight": sd[src + "ln_2.weight"],
                dst + "layer_norm2.bias": sd[src + "ln_2.bias"],
                dst + "mlp.fc1.weight": sd[src + "mlp.c_fc.weight"],
                dst + "mlp.fc1.bias": sd[src + "mlp.c_fc.bias"],
                dst + "mlp.fc2.weight": sd[src + "mlp.c_proj.weight"],
                dst + "mlp.fc2.bias": sd[src + "mlp.c_proj.bias"],
            }
        )
    return {k: v.contiguous() for k, v in out.items()}


def load_converted_clip(clip_dir: Path = CLIP_DIR):
    """(``CLIPVisionModelWithProjection`` with the converted weights, open_clip config dict)."""
    import open_clip
    from transformers import CLIPVisionModelWithProjection

    cfg = json.loads((clip_dir / "open_clip_config.json").read_text())
    model = open_clip.create_model(f"local-dir:{clip_dir}")
    hf = CLIPVisionModelWithProjection(vision_config_from_open_clip(cfg["model_cfg"]))
    missing, unexpected = hf.load_state_dict(convert_open_clip_visual(model.visual), strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise RuntimeError(f"conversion mismatch: missing {missing}, unexpected {unexpected}")
    return hf.eval(), cfg


# ----------------------------------------------------------------------------- model


def build_model_and_processor(args, clip_dir: Path = CLIP_DIR):
    from transformers import (
        CLIPImageProcessor,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer = build_tokenizer()
    clip, cfg = load_converted_clip(clip_dir)
    vision_config = clip.config
    text_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    grid = vision_config.image_size // vision_config.patch_size
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_layer=args.vision_feature_layer,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        image_seq_length=grid * grid,
    )
    torch.manual_seed(args.seed)
    model = LlavaForConditionalGeneration(config)
    tower = model.model.vision_tower
    # a CLIPVisionModel (keys under vision_model.) or, in some transformers versions, its inner
    # CLIPVisionTransformer
    source = clip if hasattr(tower, "vision_model") else clip.vision_model
    tower_state = {
        k: v for k, v in source.state_dict().items() if not k.startswith("visual_projection")
    }
    missing, unexpected = tower.load_state_dict(tower_state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise RuntimeError(f"vision tower mismatch: missing {missing}, unexpected {unexpected}")
    for p in model.model.vision_tower.parameters():
        p.requires_grad_(False)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.max_new_tokens = 20
    model.generation_config.do_sample = False

    pre = cfg["preprocess_cfg"]
    size = vision_config.image_size
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        do_resize=True,
        do_center_crop=True,
        resample=3,  # bicubic, as the CLIP's open_clip transform
        do_rescale=True,
        do_normalize=True,
        image_mean=list(pre["mean"]),
        image_std=list(pre["std"]),
        do_convert_rgb=True,
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=vision_config.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        image_token=IMAGE_TOKEN,
        chat_template=CHAT_TEMPLATE,
    )
    return model, processor


# ----------------------------------------------------------------------------- batches


def prompt_text(question: str) -> str:
    """What the chat template makes of one user turn with an image and ``question``."""
    return f"USER: {IMAGE_TOKEN}\n{question} ASSISTANT:"


class Encoder:
    """Examples -> right-padded training tensors (input ids with the image run expanded, pixels,
    attention mask, and labels that are -100 outside the answer)."""

    def __init__(self, processor, n_image_tokens: int):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.n_image_tokens = n_image_tokens
        self.image_id = self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.eos_id = self.tokenizer.eos_token_id
        self.pad_id = self.tokenizer.pad_token_id
        self._cache: dict[str, list[int]] = {}

    def ids(self, text: str) -> list[int]:
        if text not in self._cache:
            ids = self.tokenizer(text, add_special_tokens=False).input_ids
            if self.tokenizer.unk_token_id in ids:
                raise ValueError(f"word outside the vocabulary in {text!r}")
            self._cache[text] = ids
        return self._cache[text]

    def __call__(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        rows, labels = [], []
        for ex in examples:
            prompt = []
            for token in self.ids(prompt_text(ex.question)):
                prompt.extend([token] * self.n_image_tokens if token == self.image_id else [token])
            answer = self.ids(ex.answer) + [self.eos_id]
            rows.append(prompt + answer)
            labels.append([-100] * len(prompt) + answer)
        length = max(map(len, rows))
        ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        lab = torch.full((len(rows), length), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for r, (row, label) in enumerate(zip(rows, labels)):
            ids[r, : len(row)] = torch.tensor(row)
            lab[r, : len(row)] = torch.tensor(label)
            mask[r, : len(row)] = 1
        pixels = self.processor.image_processor(
            [ex.scene.image for ex in examples], return_tensors="pt"
        )["pixel_values"]
        return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels, "labels": lab}


def answer_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the answer tokens, mean per sample, then mean over the batch."""
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    per_token = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]),
        shift_labels.reshape(-1),
        ignore_index=-100,
        reduction="none",
    )
    per_token = per_token.view(shift_labels.shape)
    valid = (shift_labels != -100).float()
    return ((per_token * valid).sum(1) / valid.sum(1).clamp(min=1)).mean()


@torch.no_grad()
def first_token_accuracy(model, batch: dict[str, torch.Tensor]) -> float:
    """Teacher-forced: share of rows whose first answer token is the argmax (a cheap probe)."""
    logits = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        pixel_values=batch["pixel_values"],
    ).logits
    labels = batch["labels"]
    first = (labels != -100).float().argmax(1)
    rows = torch.arange(len(labels))
    predicted = logits[rows, first - 1].argmax(-1)
    return float((predicted == labels[rows, first]).float().mean())


# ----------------------------------------------------------------------------- evaluation


def generate_answers(
    model, processor, examples: Sequence[Example], batch_size: int = 32, max_new_tokens: int = 20
) -> list[str]:
    """Greedy answers through the processor's chat template, left padding, batched ``generate``."""
    answers: list[str] = []
    tokenizer = processor.tokenizer
    model.eval()
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        prompts = [
            processor.apply_chat_template(
                [
                    {
                        "role": "user",
                        "content": [{"type": "image"}, {"type": "text", "text": ex.question}],
                    }
                ],
                add_generation_prompt=True,
                tokenize=False,
            )
            for ex in chunk
        ]
        side = tokenizer.padding_side
        tokenizer.padding_side = "left"
        inputs = processor(
            images=[ex.scene.image for ex in chunk], text=prompts, return_tensors="pt", padding=True
        )
        tokenizer.padding_side = side
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        answers.extend(
            t.strip()
            for t in processor.batch_decode(
                out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True
            )
        )
    return answers


def score_answer(example: Example, answer: str) -> dict[str, float]:
    """Scores of one answer: ``correct`` (first word for short answers; the whole sentence for
    describe and caption), plus for describe whether the colour and shape named are right."""
    got = words_of(answer)
    want = words_of(example.answer)
    if example.kind in SHORT_TYPES:
        return {"correct": float(bool(got) and got[0] == want[0])}
    scores = {"correct": float(got == want)}
    if example.kind == "describe":
        obj = example.scene.objects[example.target]
        scores["names_object"] = float(
            obj.color in got
            and obj.shape in got
            and all(c not in got for c in COLORS if c != obj.color)
            and all(s not in got for s in SHAPES if s != obj.shape)
        )
    return scores


def evaluate(
    model,
    processor,
    n_per_kind: int = 200,
    seed: int = EVAL_SEED,
    kinds: Sequence[str] = (*SHORT_TYPES, "describe"),
) -> dict:
    results = {}
    for kind in kinds:
        examples = held_out(kind, n_per_kind, seed)
        answers = generate_answers(
            model, processor, examples, max_new_tokens=3 if kind in SHORT_TYPES else 20
        )
        scores = [score_answer(ex, a) for ex, a in zip(examples, answers)]
        entry = {
            "n": len(examples),
            **{k: float(np.mean([s[k] for s in scores])) for k in scores[0]},
        }
        if kind in CHANCE:
            entry["chance"] = CHANCE[kind]
        entry["examples"] = [
            [ex.question, ex.answer, a] for ex, a in list(zip(examples, answers))[:3]
        ]
        results[kind] = entry
    return results


#: The small-object, cluttered variant of :func:`write_vqa` (``--variant small``): the scenes of
#: synthshapes-mcq's small variant (160 px, 4-6 objects of 12-20 px), colour, shape and yes/no
#: questions (no count: its answers would be four to six, words this model never learned).
SMALL_VQA = {
    "scene": SMALL_MCQ_SCENES,
    "kinds": ("color", "shape", "exists"),
    "seed": EVAL_SEED + 700,
}


def write_vqa(
    out: Path, n_per_kind: int = 100, seed: int = EVAL_SEED + 500, variant: str = "default"
) -> Path:
    """Held-out short-answer questions for ``api-prompt eval --benchmark gqa`` (exact match):
    ``out/synthshapes_vqa.jsonl`` (question_id, image, question, answer, category) and the scenes
    as ``out/images/*.png``; ``n_per_kind`` questions of each short type, scenes from ``seed``
    (disjoint from training and from the TRAINING.md evaluation). ``variant="small"``: the
    :data:`SMALL_VQA` questions, as ``out/synthshapes_vqa_small.jsonl`` (its own seed)."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    kinds, scene_options, name_prefix = SHORT_TYPES, {}, ""
    if variant == "small":
        kinds, scene_options, name_prefix = SMALL_VQA["kinds"], dict(SMALL_VQA["scene"]), "small-"
        seed = SMALL_VQA["seed"]
    elif variant != "default":
        raise ValueError(f"unknown variant {variant!r}: default or small")
    n_objects = scene_options.pop("n_objects", (1, 3))
    rows = []
    for kind in kinds:
        for i, ex in enumerate(held_out(kind, n_per_kind, seed, n_objects, **scene_options)):
            name = f"{kind}-{name_prefix}{i:04d}"
            ex.scene.image.save(out / "images" / f"{name}.png")
            rows.append(
                {
                    "question_id": name,
                    "image": f"images/{name}.png",
                    "question": ex.question,
                    "answer": ex.answer,
                    "category": kind,
                }
            )
    path = out / ("synthshapes_vqa_small.jsonl" if variant == "small" else "synthshapes_vqa.jsonl")
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def eval_breakdown(
    run_dir: Path, baseline: str = "original", n_resamples: int = 10_000, seed: int = 0
) -> list[dict]:
    """Per question type of a :func:`write_vqa` run of ``api-prompt eval`` (``RUN_DIR/predictions.jsonl``;
    the type is the question id's prefix): each condition's accuracy and, for each other condition,
    the paired difference from ``baseline`` with its 95% bootstrap interval. The latest record of
    each (id, condition) counts; samples with an error in any condition are left out."""
    from api_prompt.evaluation.stats import paired_bootstrap

    latest: dict[tuple[str, str], dict] = {}
    for line in (Path(run_dir) / "predictions.jsonl").read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            latest[(record["id"], record["condition"])] = record
    conditions = sorted({c for _, c in latest}, key=lambda c: (c != baseline, c))
    ids = sorted({i for i, _ in latest})
    ids = [
        i
        for i in ids
        if all((i, c) in latest and latest[(i, c)]["error"] is None for c in conditions)
    ]
    rows = []
    for kind in [*SHORT_TYPES, "all"]:
        chosen = [i for i in ids if kind == "all" or i.split("-")[0] == kind]
        if not chosen:
            continue
        scores = {
            c: np.array([[float(latest[(i, c)]["score"])] for i in chosen]) for c in conditions
        }
        row = {"type": kind, "n": len(chosen), **{c: float(scores[c].mean()) for c in conditions}}
        for c in conditions[1:]:
            delta, (low, high) = paired_bootstrap(
                scores[baseline],
                scores[c],
                lambda sums: sums[..., 0] / len(chosen),
                n_resamples=n_resamples,
                seed=seed,
            )
            row[f"{c} - {baseline}"] = [float(delta), float(low), float(high)]
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- saving


def weights_sha256(folder: Path) -> str:
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


def save(model, processor, out: Path) -> None:
    """``save_pretrained`` into a temporary sibling, then swap it in (a crash never leaves a
    half-written folder); TRAINING.md and train_log.tsv in ``out`` are kept."""
    import shutil

    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    out.mkdir(parents=True, exist_ok=True)
    for item in tmp.iterdir():
        os.chmod(item, 0o644)
        os.replace(item, out / item.name)
    tmp.rmdir()


# ----------------------------------------------------------------------------- record


def _curve_rows(history: list, n_rows: int = 12) -> list[str]:
    rows = ["| stage | steps | mean answer loss | learning rate at start |", "|---|---|---|---|"]
    for stage in ("stage1", "stage2"):
        h = [x for x in history if x[0] == stage]
        if not h:
            continue
        rows_here = max(1, n_rows // 3) if stage == "stage1" else n_rows
        edges = np.linspace(0, len(h), min(rows_here, len(h)) + 1).astype(int)
        for a, b in zip(edges[:-1], edges[1:]):
            window = h[a:b]
            rows.append(
                f"| {stage} | {window[0][1]}-{window[-1][1]} | "
                f"{np.mean([x[2] for x in window]):.3f} | {window[0][3]:.2e} |"
            )
    return rows


def _probe_rows(log_text: str) -> list[str]:
    probes = [
        line.split()[2:] for line in log_text.splitlines() if line.startswith("# probe stage2")
    ]
    if not probes:
        return []
    kinds = [item.split("=")[0] for item in probes[0][2:]]
    rows = ["| stage 2 step | " + " | ".join(kinds) + " |", "|---" * (len(kinds) + 1) + "|"]
    keep = (
        probes
        if len(probes) <= 12
        else [probes[i] for i in np.linspace(0, len(probes) - 1, 12).astype(int)]
    )
    for probe in keep:
        rows.append(
            f"| {probe[1]} | " + " | ".join(item.split("=")[1] for item in probe[2:]) + " |"
        )
    return rows


def write_training_md(out: Path, summary: dict) -> None:
    """``out/TRAINING.md`` from a run's summary (and the probes in ``out/train_log.tsv``)."""
    a = summary["args"]
    log_file = Path(out) / "train_log.tsv"
    log_text = log_file.read_text() if log_file.exists() else ""
    size = sum(p.stat().st_size for p in Path(out).iterdir() if p.is_file())
    lines = [
        f"# {Path(out).name}: training record",
        "",
        "A small LLaVA (stock transformers `LlavaForConditionalGeneration` + `LlavaProcessor`, no "
        "remote code) trained here, on one CPU thread, on the synthetic shape scenes of "
        "`benchmarks/synthshapes/scenes.py` (64 px, 1-3 objects, 3 shapes x 6 colours). Load it with",
        "",
        "```python",
        "from transformers import AutoProcessor, LlavaForConditionalGeneration",
        f'model = LlavaForConditionalGeneration.from_pretrained("assets/{Path(out).name}")',
        f'processor = AutoProcessor.from_pretrained("assets/{Path(out).name}")',
        "```",
        "",
        "## Architecture",
        "",
        "- vision tower: the visual tower of `assets/synthshapes-clip` (open_clip ViT, 64 px, patch 8, "
        "4 blocks of width 128, QuickGELU) converted to transformers `CLIPVisionModel` "
        "(`train_llava.convert_open_clip_visual`; `tests/test_synthshapes_llava.py` checks the image "
        "embeddings and every block's tokens against open_clip within 1e-5), frozen; "
        f"`vision_feature_layer={a['vision_feature_layer']}`, CLS dropped "
        '(`vision_feature_select_strategy="default"`): 64 image tokens, an 8x8 grid',
        f"- projector: the stock LLaVA MLP (128 -> GELU -> {a['hidden']})",
        f"- language model: LLaMA, {a['layers']} layers, hidden {a['hidden']}, {a['heads']} heads, "
        f"MLP {a['intermediate']}, vocabulary {summary['vocab']} (word-level, lower-cased: the words "
        "of the questions, answers and chat template, plus `<unk> <pad> <s> </s> <image>`)",
        f"- {summary['n_params'] / 1e6:.2f} M parameters ({summary['n_trained'] / 1e6:.2f} M trained), "
        f"fp32 safetensors; folder {size / 2**20:.1f} MiB",
        "- processor: `CLIPImageProcessor` (64 px, bicubic, CLIP mean/std: the same pixels as the "
        "CLIP's open_clip transform), chat template `USER: <image>\\n{question} ASSISTANT:`, "
        '`patch_size=8`, `num_additional_image_tokens=1`, `vision_feature_select_strategy="default"`',
        "",
        "## Command",
        "",
        "```",
        "OMP_NUM_THREADS=1 nice -n 5 " + summary["command"],
        "```",
        "",
        f"- seed: {a['seed']} (torch initialisation and the numpy scene/question stream)",
        *_stage_lines(summary),
        f"- batch size {a['batch_size']}, AdamW (betas 0.9/0.98, weight decay {a['weight_decay']} on "
        f"matrices), warmup {a['warmup']} steps then cosine decay to {a['min_lr']}; time-budgeted "
        "schedule (progress = max(step/cap, elapsed/budget)), so the step count depends on machine "
        "speed; gradient norm clipped at 1",
        "- loss: cross-entropy of the answer tokens and the closing `</s>`, mean per sample, then "
        "over the batch",
        f"- data: scenes drawn on the fly (never repeated); held-out evaluation from seed {EVAL_SEED}",
        f"- wall time {(summary['stage1']['wall_s'] + summary['stage2']['wall_s']) / 60:.1f} min on 1 "
        f"CPU thread ({summary['cpu']}, 2 cores shared with other jobs); torch {summary['torch']}, "
        f"transformers {summary['transformers']}, Python {summary['python']}",
        f"- weights: `model.safetensors` sha256 `{summary['sha256']}`",
        "",
        "Question wordings (one drawn at random per question; `{a}` is the article):",
        "",
    ]
    for kind, templates in QUESTION_TEMPLATES.items():
        lines.append(f"- {kind}: " + " / ".join(f"`{t}`" for t in templates))
    lines += [
        "",
        "## Loss curve (means over equal windows)",
        "",
        *_curve_rows(summary["history"]),
        "",
    ]
    probe = _probe_rows(log_text)
    if probe:
        lines += [
            "## Teacher-forced first-token accuracy during stage 2 (64 fixed held-out questions "
            "per type; describe's first word is always `it`)",
            "",
            *probe,
            "",
        ]
    if summary.get("eval"):
        lines += [
            "## Held-out accuracy (greedy `generate` through the chat template, left padding)",
            "",
            f"`python -m benchmarks.synthshapes.train_llava` evaluates at the end: "
            f"{next(iter(summary['eval'].values()))['n']} questions per type from seed {EVAL_SEED}, "
            "scenes with 1-3 objects. Short answers: the first word is scored. Describe: "
            "`correct` = the whole sentence (`it is a red circle at the top left.`), "
            "`names object` = it names the queried colour and shape and no other.",
            "",
            "| question type | accuracy | chance |",
            "|---|---|---|",
        ]
        for kind, entry in summary["eval"].items():
            chance = f"{entry['chance']:.3f}" if "chance" in entry else "-"
            lines.append(f"| {kind} | {entry['correct']:.3f} | {chance} |")
            if "names_object" in entry:
                lines.append(f"| {kind}: names object | {entry['names_object']:.3f} | - |")
        lines += ["", "Examples (question / expected / answer):", ""]
        for entry in summary["eval"].values():
            for q, want, got in entry["examples"][:2]:
                lines.append(f"- {q} / {want} / {got}")
        lines.append("")
    init = summary.get("init")
    if init and init.get("training_md"):
        lines += [
            "## The run it continues",
            "",
            f"The folder it started from (`model.safetensors` sha256 `{init['sha256']}`) was made by "
            "this run (its own record, headings moved one level down):",
            "",
        ]
        for line in init["training_md"].splitlines()[1:]:
            lines.append("#" + line if line.startswith("#") else line)
        lines.append("")
    (Path(out) / "TRAINING.md").write_text("\n".join(lines))


def _stage_lines(summary: dict) -> list[str]:
    a = summary["args"]
    mix = ", ".join(f"{k} {v:.0%}" for k, v in summary.get("mix", STAGE2_MIX).items())
    stage2 = (
        f"{summary['stage2']['steps']} steps in {summary['stage2']['wall_s'] / 60:.1f} min, "
        f"lr {a['stage2_lr']}; mix {mix}"
    )
    init = summary.get("init")
    if not init:
        return [
            f"- stage 1 (projector only, captions `What is in the image?` -> `a red circle and a blue "
            f"square.`, objects left to right): {summary['stage1']['steps']} steps in "
            f"{summary['stage1']['wall_s'] / 60:.1f} min, lr {a['stage1_lr']}",
            f"- stage 2 (projector + language model): {stage2}",
        ]
    lines = [
        f"- continues from `{a['init']}` (`model.safetensors` sha256 `{init['sha256']}`; its "
        "record is at the end of this file): no stage 1; the `stage2` rows below are this run's "
        f"one stage, projector + language model: {stage2}"
    ]
    if init.get("reinit_rows"):
        rows = init["reinit_rows"]
        lines.append(
            f"- first, the output rows of {' / '.join(f'`{w}`' for w in rows['words'])} re-initialised "
            f"(`reinit_output_rows`, seed {a['seed']}; their difference's norm "
            f"{rows['difference_norm_after']:.2f} after)"
        )
    if a.get("easy_negatives"):
        lines.append(
            f"- curriculum: the share of `no` questions that name a colour absent from the scene "
            f"falls from 1 to 0 over the first {a['easy_negatives']} steps; after that, as in "
            "the held-out questions, 70% of the `no` questions name a near miss"
        )
    if a.get("near_miss_ramp"):
        lines.append(
            f"- the near-miss share of `no` questions grows from 0 to 0.7 over the first "
            f"{a['near_miss_ramp']} steps"
        )
    return lines


# ----------------------------------------------------------------------------- main

STAGE2_MIX = {
    "color": 0.2,
    "shape": 0.2,
    "exists": 0.2,
    "count": 0.12,
    "describe": 0.16,
    "caption": 0.12,
}


def parse_mix(text: str) -> dict[str, float]:
    """``"exists=0.5,color=0.1"`` -> ``{"exists": 0.5, "color": 0.1}`` (kinds of QUESTION_TEMPLATES).

    >>> parse_mix("exists=0.5,color=0.5")
    {'exists': 0.5, 'color': 0.5}
    """
    mix = {}
    for item in text.split(","):
        kind, _, weight = item.partition("=")
        if kind.strip() not in QUESTION_TEMPLATES or not weight:
            raise argparse.ArgumentTypeError(
                f"bad mix item {item!r}: use KIND=WEIGHT with KIND in {list(QUESTION_TEMPLATES)}"
            )
        mix[kind.strip()] = float(weight)
    return mix


def load_trained(folder: Path):
    """(model, processor) from a trained folder, vision tower frozen, ready to train on."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(folder, local_files_only=True)
    processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
    for p in model.model.vision_tower.parameters():
        p.requires_grad_(False)
    return model, processor


def reinit_output_rows(model, tokenizer, words: Sequence[str], seed: int) -> float:
    """Give the output rows (``lm_head``) of ``words`` their mean plus independent random offsets
    as large as a typical row's spread; returns the norm of the first two rows' difference after.

    Why: when a question type sits on its answer prior long enough, weight decay shrinks the
    difference of its answers' output rows towards zero (``yes`` minus ``no`` had norm 0.065 in
    the first shipped model, ``red`` minus ``blue`` 1.1). The gradient reaching the rest of the
    network is proportional to that difference, and the difference's own gradient to what the
    network already computes about the answer: both stay near zero, a saddle that more training
    does not leave. New offsets break the symmetry without touching any other answer.
    """
    head = model.get_output_embeddings().weight
    ids = [tokenizer.convert_tokens_to_ids(w) for w in words]
    if tokenizer.unk_token_id in ids:
        raise ValueError(f"not all of {list(words)} are in the vocabulary")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        spread = float((head - head.mean(0)).std())
        mean = head[ids].mean(0)
        for i in ids:
            head[i] = mean + spread * torch.randn(head.shape[1], generator=generator)
    return float((head[ids[0]] - head[ids[1]]).norm()) if len(ids) > 1 else 0.0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=OUT_DIR)
    p.add_argument("--clip", type=Path, default=CLIP_DIR, help="open_clip local-dir CLIP folder")
    p.add_argument("--log", type=Path, default=None, help="log file (default OUT/train_log.tsv)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--intermediate", type=int, default=512)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vision-feature-layer", type=int, default=-2)
    p.add_argument("--stage1-steps", type=int, default=1000, help="step cap of stage 1")
    p.add_argument(
        "--stage1-minutes", type=float, default=0.0, help="time budget of stage 1 (0: off)"
    )
    p.add_argument("--stage1-lr", type=float, default=2e-3)
    p.add_argument("--stage2-steps", type=int, default=20000, help="step cap of stage 2")
    p.add_argument(
        "--stage2-minutes", type=float, default=0.0, help="time budget of stage 2 (0: off)"
    )
    p.add_argument("--stage2-lr", type=float, default=1e-3)
    p.add_argument("--min-lr", type=float, default=2e-5)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--save-every", type=int, default=500)
    p.add_argument("--probe-every", type=int, default=100, help="teacher-forced probe interval")
    p.add_argument(
        "--summary",
        type=Path,
        default=Path("/tmp/synthshapes_llava_summary.json"),
        help="JSON summary (losses, evaluation) read by --write-training-md",
    )
    p.add_argument(
        "--write-training-md",
        action="store_true",
        help="only write OUT/TRAINING.md from --summary (a finished run) and exit",
    )
    p.add_argument(
        "--write-vqa",
        type=Path,
        default=None,
        metavar="DIR",
        help="only write held-out short-answer questions for api-prompt eval to DIR and exit",
    )
    p.add_argument(
        "--variant",
        choices=("default", "small"),
        default="default",
        help="with --write-vqa: small = small objects in cluttered 160 px scenes (SMALL_VQA)",
    )
    p.add_argument(
        "--breakdown",
        type=Path,
        default=None,
        metavar="RUN_DIR",
        help="only print per-type accuracy and deltas of an api-prompt eval run on --write-vqa data, and exit",
    )
    p.add_argument(
        "--eval-n", type=int, default=200, help="held-out questions per type at the end (0: none)"
    )
    p.add_argument(
        "--init",
        type=Path,
        default=None,
        metavar="DIR",
        help="continue from a trained folder (model and processor) instead of building one",
    )
    p.add_argument(
        "--stage2-mix",
        type=parse_mix,
        default=None,
        metavar="KIND=W,...",
        help="question mix of stage 2 (default: "
        + ",".join(f"{k}={v}" for k, v in STAGE2_MIX.items())
        + ")",
    )
    p.add_argument(
        "--near-miss-ramp",
        type=int,
        default=0,
        metavar="STEPS",
        help="stage 2: near-miss share of 'no' questions grows from 0 to 0.7 over STEPS (0: 0.7 throughout)",
    )
    p.add_argument(
        "--reinit-rows",
        default="",
        metavar="WORD,WORD",
        help="with --init: re-initialise these answers' output rows first (see reinit_output_rows)",
    )
    p.add_argument(
        "--easy-negatives",
        type=int,
        default=0,
        metavar="STEPS",
        help="stage 2: share of 'no' questions naming an absent colour falls from 1 to 0 over STEPS (0: off)",
    )
    return p.parse_args(argv)


def run_stage(
    name,
    model,
    params,
    encoder,
    rng,
    args,
    steps,
    minutes,
    lr,
    mix,
    log,
    history,
    probes,
    out,
    processor,
    near_miss_ramp: int = 0,
    easy_steps: int = 0,
):
    """One training stage with a linear-warmup cosine schedule; progress is max(step/steps,
    elapsed/budget) when a time budget is set, so the schedule completes within it. With
    ``near_miss_ramp`` the share of near-miss ``no`` questions grows linearly from 0 to 0.7 over
    that many steps; with ``easy_steps`` the share of negatives that name a colour absent from the
    scene falls linearly from 1 to 0 over that many steps (a curriculum: easy negatives first)."""
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": args.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=lr,
        betas=(0.9, 0.98),
    )
    t0 = time.time()
    done = 0
    for step in range(steps):
        progress = step / steps
        if minutes:
            progress = max(progress, (time.time() - t0) / (minutes * 60))
            if progress >= 1.0:
                log(f"# {name}: time budget reached after {step} steps")
                break
        warm = min(args.warmup, steps // 10)
        if step < warm:
            cur = lr * (step + 1) / warm
        else:
            w = warm / steps
            t = min(1.0, max(0.0, (progress - w) / max(1e-9, 1 - w)))
            cur = args.min_lr + 0.5 * (lr - args.min_lr) * (1 + math.cos(math.pi * t))
        for g in opt.param_groups:
            g["lr"] = cur
        ts = time.time()
        near_miss = 0.7 * min(1.0, step / near_miss_ramp) if near_miss_ramp else 0.7
        easy = max(0.0, 1.0 - step / easy_steps) if easy_steps else 0.0
        batch = encoder(sample_examples(rng, args.batch_size, mix, near_miss=near_miss, easy=easy))
        logits = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"],
        ).logits
        loss = answer_loss(logits, batch["labels"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        done = step + 1
        history.append((name, step, float(loss), cur))
        if step % 10 == 0:
            log(
                f"{name}\t{step}\t{cur:.2e}\t{float(loss):.4f}\t{time.time() - ts:.2f}\t{time.time() - t0:.0f}"
            )
        if args.probe_every and (step + 1) % args.probe_every == 0:
            model.eval()
            accs = {k: first_token_accuracy(model, b) for k, b in probes.items()}
            model.train()
            log(f"# probe {name} {step + 1} " + " ".join(f"{k}={v:.3f}" for k, v in accs.items()))
        if args.save_every and done % args.save_every == 0:
            save(model, processor, out)
            log(f"# {name}: checkpoint saved at step {done}")
    return done, time.time() - t0


def main(argv=None):
    # a library imported earlier in the process may have turned autograd off globally
    # (torch.set_grad_enabled(False)); training needs it on, whatever ran before
    with torch.enable_grad():
        return _main(argv)


def _main(argv=None):
    args = parse_args(argv)
    if args.write_vqa:
        print(write_vqa(args.write_vqa, variant=args.variant))
        return None
    if args.breakdown:
        rows = eval_breakdown(args.breakdown)
        print(json.dumps(rows, indent=1))
        return rows
    if args.write_training_md:
        write_training_md(args.out, json.loads(args.summary.read_text()))
        return None
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    log_path = args.log or args.out / "train_log.tsv"
    logf = open(log_path, "w")

    def log(msg):
        print(msg, flush=True)
        logf.write(msg + "\n")
        logf.flush()

    previous = None
    if args.init:
        model, processor = load_trained(args.init)
        record = args.init / "TRAINING.md"
        previous = {
            "sha256": weights_sha256(args.init),
            "training_md": record.read_text() if record.exists() else "",
        }
        if args.reinit_rows:
            words = [w.strip() for w in args.reinit_rows.split(",") if w.strip()]
            previous["reinit_rows"] = {
                "words": words,
                "difference_norm_after": reinit_output_rows(
                    model, processor.tokenizer, words, args.seed
                ),
            }
    else:
        model, processor = build_model_and_processor(args, args.clip)
    mix = args.stage2_mix or STAGE2_MIX
    n_image_tokens = model.config.image_seq_length
    encoder = Encoder(processor, n_image_tokens)
    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for n, p in model.named_parameters() if "vision_tower" not in n)
    log(
        f"# params {n_params} ({n_train} outside the frozen vision tower); vocabulary {len(processor.tokenizer)}; "
        f"args {json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()})}"
    )
    probe_rng = np.random.default_rng(EVAL_SEED + 99)
    probes = {
        k: encoder(sample_examples(probe_rng, 64, {k: 1.0})) for k in (*SHORT_TYPES, "describe")
    }
    log("stage\tstep\tlr\tloss\tstep_s\telapsed_s")

    history: list = []
    model.train()
    projector = list(model.model.multi_modal_projector.parameters())
    language = list(model.model.language_model.parameters()) + list(model.lm_head.parameters())
    for p in language:
        p.requires_grad_(False)
    s1, t1 = run_stage(
        "stage1",
        model,
        projector,
        encoder,
        rng,
        args,
        args.stage1_steps,
        args.stage1_minutes,
        args.stage1_lr,
        {"caption": 1.0},
        log,
        history,
        probes,
        args.out,
        processor,
    )
    for p in language:
        p.requires_grad_(True)
    s2, t2 = run_stage(
        "stage2",
        model,
        projector + language,
        encoder,
        rng,
        args,
        args.stage2_steps,
        args.stage2_minutes,
        args.stage2_lr,
        mix,
        log,
        history,
        probes,
        args.out,
        processor,
        args.near_miss_ramp,
        args.easy_negatives,
    )
    model.eval()
    save(model, processor, args.out)
    log(f"# done: stage1 {s1} steps {t1:.0f} s, stage2 {s2} steps {t2:.0f} s")
    summary = {
        "command": "python -m benchmarks.synthshapes.train_llava "
        + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "stage1": {"steps": s1, "wall_s": t1},
        "stage2": {"steps": s2, "wall_s": t2},
        "n_params": n_params,
        "n_trained": n_train,
        "vocab": len(processor.tokenizer),
        "history": history,
        "sha256": weights_sha256(args.out),
        "mix": mix,
        "init": previous,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
    }
    import transformers

    summary["transformers"] = transformers.__version__
    if args.eval_n:
        summary["eval"] = evaluate(model, processor, args.eval_n)
        log(
            f"# eval {json.dumps({k: {m: v for m, v in e.items() if m != 'examples'} for k, e in summary['eval'].items()})}"
        )
    args.summary.write_text(json.dumps(summary))
    logf.close()
    write_training_md(args.out, summary)
    return summary


if __name__ == "__main__":
    main()
