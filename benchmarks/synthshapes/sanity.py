"""Quick sanity checks of a synthshapes CLIP (loaded through open_clip, e.g. ``local-dir:``).

* zero-shot retrieval: for held-out 1-object scenes, pick the right caption among all 18
  ``"a <color> <shape>"`` captions (top-1 accuracy);
* multi-object retrieval: for held-out 3-object scenes, fraction of the 3 present phrases
  that are among the top-3 of the 18 captions;
* a quick Ψcls pointing game on held-out 3-object scenes: for each present object, query
  its caption and check whether the arg-max patch of the CLS-attention decomposition
  (docs/ALGORITHM.md §1, at block ``n_blocks - 2``) has its centre inside the object's box.
  This is a self-contained, minimal re-derivation for model selection only; the real
  localization benchmark lives elsewhere and uses the project's attributor.

Usage::

    .venv/bin/python -m benchmarks.synthshapes.sanity local-dir:assets/synthshapes-clip
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from benchmarks.synthshapes.scenes import PHRASES, make_scene, phrase_caption


def _load(model_name: str):
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(model_name)
    tokenizer = open_clip.get_tokenizer(model_name)
    model.eval()
    return model, preprocess, tokenizer


@torch.no_grad()
def _text_features(model, tokenizer, captions):
    t = model.encode_text(tokenizer(captions))
    return t / t.norm(dim=-1, keepdim=True)


@torch.no_grad()
def psi_cls(model, images: torch.Tensor, text_feats: torch.Tensor, layer: int | None = None):
    """Ψcls maps (up to a positive affine map per image), shape [B, P, P].

    ``text_feats`` is [B, D] (one normalised query per image).
    """
    visual = model.visual
    blocks = visual.transformer.resblocks
    layer = len(blocks) - 2 if layer is None else layer
    captured = {}

    def hook(mod, inputs):
        captured["x"] = inputs[0]

    h = blocks[layer].register_forward_pre_hook(hook)
    try:
        model.encode_image(images)
    finally:
        h.remove()
    x = captured["x"]  # [B, N, D] (batch_first)
    blk = blocks[layer]
    attn = blk.attn
    xn = blk.ln_1(x)
    B, N, D = xn.shape
    H = attn.num_heads
    d = D // H
    qkv = xn @ attn.in_proj_weight.t() + attn.in_proj_bias
    q, k, v = qkv.split(D, dim=-1)
    q = q.view(B, N, H, d).transpose(1, 2)
    k = k.view(B, N, H, d).transpose(1, 2)
    v = v.view(B, N, H, d).transpose(1, 2)
    a = torch.softmax((q[:, :, :1] @ k.transpose(-1, -2)) / d**0.5, dim=-1)  # [B,H,1,N]
    contrib = a.squeeze(2).unsqueeze(-1) * v  # [B,H,N,d]
    contrib = contrib.transpose(1, 2).reshape(B, N, D) @ attn.out_proj.weight.t()  # [B,N,D]
    # ls_1 is identity for these models; constant offsets and positive scales drop out.
    z = (visual.ln_post.weight * contrib) @ visual.proj  # [B,N,E]
    psi = (z * text_feats[:, None, :]).sum(-1)[:, 1:]
    P = int(round((N - 1) ** 0.5))
    return psi.view(B, P, P)


def _to_batch(preprocess, images):
    return torch.stack([preprocess(im) for im in images])


def run_all(
    model_name: str,
    seed: int = 12345,
    n_single: int = 200,
    n_multi: int = 200,
    scene_size: int | None = None,
) -> dict:
    """Retrieval checks, and for open_clip ViTs the raw Ψcls pointing game. Scenes are drawn at
    ``scene_size`` (default: the model's input size) and resized by the model's preprocess."""
    model, preprocess, tokenizer = _load(model_name)
    size = (
        model.visual.image_size[0]
        if isinstance(model.visual.image_size, tuple)
        else model.visual.image_size
    )
    size = scene_size or size
    captions = [phrase_caption([p]) for p in PHRASES]
    tf = _text_features(model, tokenizer, captions)

    rng = np.random.default_rng(seed)
    # 1-object retrieval among the 18 captions
    singles = [make_scene(rng, size=size, n_objects=1) for _ in range(n_single)]
    with torch.no_grad():
        imf = model.encode_image(_to_batch(preprocess, [s.image for s in singles]))
        imf = imf / imf.norm(dim=-1, keepdim=True)
    pred = (imf @ tf.t()).argmax(1).numpy()
    truth = np.array([PHRASES.index(s.objects[0].phrase) for s in singles])
    acc1 = float((pred == truth).mean())
    col_ok = float(
        np.mean([PHRASES[p].split()[0] == PHRASES[t].split()[0] for p, t in zip(pred, truth)])
    )
    shp_ok = float(
        np.mean([PHRASES[p].split()[1] == PHRASES[t].split()[1] for p, t in zip(pred, truth)])
    )

    # 3-object scenes: top-3 recall and Ψcls pointing game
    multis = [make_scene(rng, size=size, n_objects=3) for _ in range(n_multi)]
    x = _to_batch(preprocess, [s.image for s in multis])
    with torch.no_grad():
        imf = model.encode_image(x)
        imf = imf / imf.norm(dim=-1, keepdim=True)
    top3 = (imf @ tf.t()).topk(3, dim=1).indices.numpy()
    rec3 = float(
        np.mean(
            [
                len({PHRASES[i] for i in t} & set(s.phrases())) / len(s.objects)
                for t, s in zip(top3, multis)
            ]
        )
    )
    hits, hits_overlap, total = 0, 0, 0
    P = None
    has_class_token = hasattr(model.visual, "transformer")  # timm towers: see localize.py instead
    for oi in range(3 if has_class_token else 0):
        sel = [s for s in multis if len(s.objects) > oi]
        if not sel:
            continue
        xb = _to_batch(preprocess, [s.image for s in sel])
        q = tf[[PHRASES.index(s.objects[oi].phrase) for s in sel]]
        psi = psi_cls(model, xb, q).numpy()
        P = psi.shape[-1]
        cell = size / P
        for s, m in zip(sel, psi):
            r, c = np.unravel_index(int(m.argmax()), m.shape)
            cx, cy = (c + 0.5) * cell, (r + 0.5) * cell
            x0, y0, x1, y1 = s.objects[oi].box
            hits += int(x0 <= cx < x1 and y0 <= cy < y1)
            hits_overlap += int(
                c * cell < x1 and (c + 1) * cell > x0 and r * cell < y1 and (r + 1) * cell > y0
            )
            total += 1
    pg = hits / total if total else None
    pg_overlap = hits_overlap / total if total else None
    n_blocks = (
        len(model.visual.transformer.resblocks)
        if has_class_token
        else len(model.visual.trunk.blocks)
    )
    res = {
        "seed": seed,
        "retrieval_1obj_top1": acc1,
        "retrieval_1obj_color_correct": col_ok,
        "retrieval_1obj_shape_correct": shp_ok,
        "n_1obj": n_single,
        "recall_3obj_top3": rec3,
        "n_3obj": n_multi,
        "pointing_game_psi_cls_3obj": pg,
        "pointing_game_psi_cls_3obj_overlap": pg_overlap,
        "pointing_game_queries": total,
        "psi_layer": n_blocks - 2,
    }
    res["markdown"] = [
        f"Evaluation seed {seed} (training used a different seed; scenes drawn with "
        "`make_scene(np.random.default_rng(seed), ...)`), run by "
        f"`python -m benchmarks.synthshapes.sanity {model_name}"
        + (f" --scene-size {scene_size}`." if scene_size else "`."),
        "",
        "| check | result |",
        "|---|---|",
        f"| zero-shot retrieval, {n_single} 1-object scenes, top-1 among the 18 `a <color> <shape>` "
        f"captions | **{acc1:.3f}** (colour right {col_ok:.3f}, shape right {shp_ok:.3f}) |",
        f"| {n_multi} 3-object scenes: share of present phrases in the top-3 of the 18 captions | "
        f"{rec3:.3f} |",
    ]
    if not has_class_token:
        res["markdown"] += ["", "Chance level: retrieval 1/18 = 0.056."]
        return res
    res["markdown"] += [
        f"| Ψcls pointing game (block {n_blocks - 2}), same 3-object scenes, each object queried "
        f"with its caption ({total} queries); hit = arg-max patch centre inside the box | {pg:.3f} |",
        f"| same, lenient hit = arg-max patch overlaps the box | {pg_overlap:.3f} |",
        "",
        "Chance levels: retrieval 1/18 = 0.056; pointing game about the mean box area / image "
        "area (roughly 0.1 for one object at these sizes). The pointing game here is the raw "
        "single-layer Ψcls arg-max, without the enhance / mean-filter / Ψcomp steps of the full "
        "method.",
    ]
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description="synthshapes CLIP sanity checks")
    p.add_argument("model", nargs="?", default="local-dir:assets/synthshapes-clip")
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--scene-size", type=int, default=None, help="default: the model's input size")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    res = run_all(args.model, seed=args.seed, scene_size=args.scene_size)
    print(json.dumps({k: v for k, v in res.items() if k != "markdown"}, indent=2))


if __name__ == "__main__":
    main()
