"""Train a small open_clip CLIP on synthetic shape scenes and save it as a ``local-dir:`` model.

Usage (from the repository root)::

    .venv/bin/python -m benchmarks.synthshapes.train --steps 5000 --time-budget 40 --batch-size 64 \
        --vision-layers 4 --seed 0 --threads 1 --out assets/synthshapes-clip

What it does
------------
* Scenes come from :mod:`benchmarks.synthshapes.scenes`, generated on the fly from a
  seeded ``numpy`` generator (64 px, 1-3 objects, 3 shapes x 6 colours).
* Captions name one object most of the time (``--p-single``), otherwise several.
* Hard negatives: a fraction (``--hard-frac``) of each batch comes in pairs of scenes with the
  same layout and background where one object was recoloured / reshaped, or two objects
  swapped colours; each scene of a pair is captioned with the changed object, so the
  model has to bind colour to shape at the right place.
* Loss: symmetric contrastive loss (CLIP) with *multi-positive* soft targets: caption j is
  a positive for image i whenever every object it names is present in scene i (we know the
  ground truth, so the usual false negatives of in-batch contrast are removed).  Targets
  are uniform over positives; with one positive per row/column this is exactly
  ``open_clip.loss.ClipLoss``.  The plain ClipLoss value is logged too.
* AdamW, linear warmup + cosine decay, weight decay on matrices only.
* Writes ``open_clip_config.json`` (``model_cfg`` + ``preprocess_cfg``),
  ``open_clip_model.safetensors`` (fp16 by default) and ``TRAINING.md`` into ``--out``;
  a checkpoint is also written every ``--save-every`` steps, so an interrupted run still
  leaves a loadable model.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.synthshapes.scenes import (
    COLORS,
    SHAPES,
    ShapeObject,
    make_scene,
    phrase_caption,
    render_scene,
)

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def model_config(args) -> dict:
    if args.timm_model:
        return siglip_model_config(args)
    return {
        "embed_dim": args.embed_dim,
        "quick_gelu": True,
        "vision_cfg": {
            "image_size": args.image_size,
            "layers": args.vision_layers,
            "width": args.vision_width,
            "head_width": args.vision_head_width,
            "patch_size": args.patch_size,
        },
        "text_cfg": {
            "context_length": args.context_length,
            "vocab_size": 49408,
            "width": args.text_width,
            "heads": args.text_heads,
            "layers": args.text_layers,
        },
    }


def siglip_model_config(args) -> dict:
    """An attention-pooled image tower as open_clip builds SigLIP: a timm ViT whose head is timm's
    ``AttentionPoolLatent`` (``timm_pool="map"``), with no extra projection (``timm_proj="none"``),
    so the embedding is the pool's output; a learnable logit bias for the sigmoid loss."""
    return {
        "embed_dim": args.embed_dim,
        "init_logit_scale": math.log(10.0),
        "init_logit_bias": args.init_logit_bias,
        "vision_cfg": {
            "image_size": args.image_size,
            "timm_model_name": args.timm_model,
            "timm_model_pretrained": False,
            "timm_pool": args.timm_pool,
            "timm_proj": args.timm_proj,
        },
        "text_cfg": {
            "context_length": args.context_length,
            "vocab_size": 49408,
            "width": args.text_width,
            "heads": args.text_heads,
            "layers": args.text_layers,
        },
    }


def preprocess_config(image_size: int) -> dict:
    return {
        "size": image_size,
        "mode": "RGB",
        "mean": list(MEAN),
        "std": list(STD),
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    }


# ----------------------------------------------------------------------------- data


def _named_indices(n: int, rng: np.random.Generator, p_single: float, must: int | None = None):
    """Indices of the objects a caption names (random order); includes ``must`` if given."""
    if n == 1 or rng.random() < p_single:
        k = 1
    else:
        k = int(rng.integers(2, n + 1))
    order = [int(i) for i in rng.permutation(n)]
    if must is not None:
        order.remove(must)
        order.insert(0, must)
        chosen = order[:k]
        rng.shuffle(chosen)
        return chosen
    return order[:k]


def _perturb(objs: list[ShapeObject], rng: np.random.Generator):
    """Return (new_objects, changed_index) where one object's phrase changed (recolour,
    reshape, or a colour swap between two objects); phrases stay distinct."""
    n = len(objs)
    phrases = {(o.color, o.shape) for o in objs}
    r = rng.random()
    if n >= 2 and r < 0.4:
        for _ in range(10):
            i, j = (int(v) for v in rng.permutation(n)[:2])
            a, b = objs[i], objs[j]
            if a.color == b.color or a.shape == b.shape:
                continue
            na = ShapeObject(a.shape, b.color, a.box)
            nb = ShapeObject(b.shape, a.color, b.box)
            rest = {(o.color, o.shape) for k, o in enumerate(objs) if k not in (i, j)}
            if (na.color, na.shape) in rest or (nb.color, nb.shape) in rest:
                continue
            new = list(objs)
            new[i], new[j] = na, nb
            return new, i
    k = int(rng.integers(n))
    o = objs[k]
    if r < 0.8:  # recolour
        cands = [c for c in COLORS if c != o.color and (c, o.shape) not in phrases]
        if cands:
            new = list(objs)
            new[k] = ShapeObject(o.shape, cands[int(rng.integers(len(cands)))], o.box)
            return new, k
    cands = [s for s in SHAPES if s != o.shape and (o.color, s) not in phrases]
    if not cands:  # fall back to recolour
        cands_c = [c for c in COLORS if c != o.color and (c, o.shape) not in phrases]
        new = list(objs)
        new[k] = ShapeObject(o.shape, cands_c[int(rng.integers(len(cands_c)))], o.box)
        return new, k
    new = list(objs)
    new[k] = ShapeObject(cands[int(rng.integers(len(cands)))], o.color, o.box)
    return new, k


def sample_batch(
    rng: np.random.Generator,
    batch_size: int,
    size: int,
    n_objects,
    p_single: float,
    hard_frac: float,
):
    """Returns (uint8 images [B,H,W,3], captions, named sets, present sets)."""
    images, captions, named, present = [], [], [], []

    def add(scene, idx):
        images.append(np.asarray(scene.image, dtype=np.uint8))
        phr = [scene.objects[i].phrase for i in idx]
        captions.append(phrase_caption(phr))
        named.append(frozenset(phr))
        present.append(frozenset(scene.phrases()))

    while len(images) < batch_size:
        scene = make_scene(rng, size=size, n_objects=n_objects)
        if len(images) <= batch_size - 2 and rng.random() < hard_frac:
            objs_b, k = _perturb(scene.objects, rng)
            bg_seed = int(rng.integers(2**31))
            sa = render_scene(scene.objects, size, np.random.default_rng(bg_seed), scene.background)
            sb = render_scene(objs_b, size, np.random.default_rng(bg_seed), scene.background)
            idx = _named_indices(len(scene.objects), rng, p_single, must=k)
            add(sa, idx)
            add(sb, idx)
        else:
            add(scene, _named_indices(len(scene.objects), rng, p_single))
    return np.stack(images), captions, named, present


def resize_batch(images_u8: np.ndarray, size: int) -> np.ndarray:
    """Resize square uint8 scenes to the model size as the eval transform does (PIL bicubic)."""
    if images_u8.shape[1] == size:
        return images_u8
    from PIL import Image

    return np.stack(
        [np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC)) for im in images_u8]
    )


def to_tensor(images_u8: np.ndarray) -> torch.Tensor:
    """uint8 [B,H,W,3] -> normalised float [B,3,H,W] (same as the open_clip preprocess for
    images already at model size)."""
    x = (
        torch.from_numpy(np.array(images_u8, dtype=np.uint8))
        .permute(0, 3, 1, 2)
        .float()
        .div_(255.0)
    )
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


# ----------------------------------------------------------------------------- loss


def multi_positive_clip_loss(
    img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor, pos: torch.Tensor
):
    """Symmetric contrastive loss with uniform soft targets over positives.

    ``pos[i, j]`` is True when caption j is true of image i (diagonal always True).
    Returns (loss, plain ClipLoss value, image->text top-1 accuracy on the diagonal-or-positive).
    """
    logits = logit_scale * img @ txt.t()
    posf = pos.float()
    t_i2t = posf / posf.sum(1, keepdim=True)
    t_t2i = posf.t() / posf.t().sum(1, keepdim=True)
    loss = 0.5 * (
        -(t_i2t * F.log_softmax(logits, 1)).sum(1).mean()
        - (t_t2i * F.log_softmax(logits.t(), 1)).sum(1).mean()
    )
    with torch.no_grad():
        labels = torch.arange(len(img))
        plain = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))
        acc = pos[torch.arange(len(img)), logits.argmax(1)].float().mean()
    return loss, plain.item(), acc.item()


def multi_positive_sigmoid_loss(
    img: torch.Tensor,
    txt: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
    pos: torch.Tensor,
):
    """The SigLIP pairwise sigmoid loss with the known ground truth as labels.

    Every (image i, caption j) pair is a binary problem with label +1 when ``pos[i, j]`` (caption j
    is true of image i), else -1; the sum over pairs is divided by the batch size, as
    ``open_clip.loss.SigLipLoss`` does. With diagonal labels only this is exactly ``SigLipLoss``,
    whose value is returned too. Returns (loss, plain SigLipLoss value, image->text top-1 accuracy).
    """
    logits = logit_scale * img @ txt.t() + logit_bias
    labels = 2.0 * pos.float() - 1.0
    loss = -F.logsigmoid(labels * logits).sum() / len(img)
    with torch.no_grad():
        diagonal = 2.0 * torch.eye(len(img)) - 1.0
        plain = -F.logsigmoid(diagonal * logits).sum() / len(img)
        acc = pos[torch.arange(len(img)), logits.argmax(1)].float().mean()
    return loss, plain.item(), acc.item()


# ----------------------------------------------------------------------------- saving


def save_model(model, args, out: Path, fp16: bool = True) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    cfg = {"model_cfg": model_config(args), "preprocess_cfg": preprocess_config(args.image_size)}
    (out / "open_clip_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    sd = {
        k: (v.detach().half() if fp16 and v.is_floating_point() else v.detach()).contiguous()
        for k, v in model.state_dict().items()
    }
    tmp = out / "open_clip_model.safetensors.tmp"
    save_file(sd, str(tmp), metadata={"format": "pt"})
    os.chmod(tmp, 0o644)
    os.replace(tmp, out / "open_clip_model.safetensors")


# ----------------------------------------------------------------------------- main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=96)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument("--out", type=Path, default=Path("assets/synthshapes-clip"))
    p.add_argument(
        "--log",
        type=Path,
        default=None,
        help="loss log file (default /tmp/synthshapes_train.log); copied to "
        "OUT/train_log.tsv at the end",
    )
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-lr", type=float, default=1e-5)
    p.add_argument("--warmup", type=int, default=150)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--p-single", type=float, default=0.75, help="P(caption names one object)")
    p.add_argument("--hard-frac", type=float, default=0.5, help="fraction of batch in hard pairs")
    p.add_argument("--min-objects", type=int, default=1)
    p.add_argument("--max-objects", type=int, default=3)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--patch-size", type=int, default=8)
    p.add_argument("--vision-layers", type=int, default=4)
    p.add_argument("--vision-width", type=int, default=128)
    p.add_argument("--vision-head-width", type=int, default=32)
    p.add_argument("--text-layers", type=int, default=2)
    p.add_argument("--text-width", type=int, default=64)
    p.add_argument("--text-heads", type=int, default=4)
    p.add_argument("--context-length", type=int, default=32)
    p.add_argument("--embed-dim", type=int, default=64)
    p.add_argument("--save-every", type=int, default=500)
    p.add_argument(
        "--loss",
        choices=("contrastive", "sigmoid"),
        default="contrastive",
        help="contrastive: CLIP softmax loss; sigmoid: SigLIP pairwise sigmoid loss",
    )
    p.add_argument(
        "--timm-model",
        default=None,
        help="build the image tower as this timm model (open_clip timm_model_name) "
        "instead of open_clip's ViT; --vision-* then do not apply",
    )
    p.add_argument("--timm-pool", default="map", help="open_clip timm_pool (map = attention pool)")
    p.add_argument("--timm-proj", default="none", help="open_clip timm_proj")
    p.add_argument(
        "--scene-size",
        type=int,
        default=None,
        help="render scenes at this size and resize them (bicubic) to --image-size, "
        "as the eval transform does (default: --image-size)",
    )
    p.add_argument("--init-logit-bias", type=float, default=-10.0, help="sigmoid loss only")
    p.add_argument("--fp32", action="store_true", help="save fp32 weights (default fp16)")
    p.add_argument("--eval-seed", type=int, default=12345)
    p.add_argument("--no-eval", action="store_true")
    p.add_argument(
        "--time-budget",
        type=float,
        default=0.0,
        help="wall-clock budget in minutes (0 = off). The schedule's progress is then "
        "max(step/steps, elapsed/budget) and training stops when it reaches 1, so the "
        "warmup+cosine schedule always completes within the budget; the steps actually "
        "run depend on machine speed and are recorded",
    )
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    log_path = args.log or Path("/tmp/synthshapes_train.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    logf = open(log_path, "w")

    def log(msg):
        print(msg, flush=True)
        logf.write(msg + "\n")
        logf.flush()

    import open_clip

    model = open_clip.CLIP(**model_config(args))
    scene_size = args.scene_size or args.image_size
    model.train()
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=args.context_length)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"# params {n_params} ({n_params / 1e6:.2f} M); args {vars(args)}")

    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (
            no_decay
            if p.ndim < 2
            or "logit_scale" in n
            or "ln" in n
            or "bias" in n
            or "embedding" in n
            or any(k in n for k in ("norm", "pos_embed", "cls_token", "latent"))
            else decay
        ).append(p)
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": args.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=args.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )

    def lr_at(step, progress=None):
        """Linear warmup over ``warmup`` steps, then cosine decay over the remaining progress."""
        if progress is None:
            progress = step / max(1, args.steps)
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        w = args.warmup / max(1, args.steps)
        t = min(1.0, max(0.0, (progress - w) / max(1e-9, 1.0 - w)))
        return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1 + math.cos(math.pi * t))

    tok_cache: dict[str, torch.Tensor] = {}

    def tokenize(caps):
        missing = [c for c in caps if c not in tok_cache]
        if missing:
            for c, t in zip(missing, tokenizer(missing)):
                tok_cache[c] = t
        return torch.stack([tok_cache[c] for c in caps])

    log("step\tlr\tloss\tclip_loss\tacc\tlogit_scale\tdata_s\tstep_s\telapsed_s")
    t0 = time.time()
    history = []
    ema = None
    steps_done = 0
    progress = 0.0
    for step in range(args.steps):
        ts = time.time()
        progress = step / args.steps
        if args.time_budget:
            progress = max(progress, (ts - t0) / (args.time_budget * 60))
            if progress >= 1.0:
                log(f"# time budget reached after {step} steps")
                break
        imgs, caps, named, present = sample_batch(
            rng,
            args.batch_size,
            scene_size,
            (args.min_objects, args.max_objects),
            args.p_single,
            args.hard_frac,
        )
        x = to_tensor(resize_batch(imgs, args.image_size))
        toks = tokenize(caps)
        pos = torch.tensor(
            [[named[j] <= present[i] for j in range(len(caps))] for i in range(len(caps))]
        )
        td = time.time()
        for g in opt.param_groups:
            g["lr"] = cur_lr = lr_at(step, progress)
        if args.loss == "sigmoid":
            img_f, txt_f, scale, bias = model(x, toks)
            loss, plain, acc = multi_positive_sigmoid_loss(img_f, txt_f, scale, bias, pos)
        else:
            img_f, txt_f, scale = model(x, toks)
            loss, plain, acc = multi_positive_clip_loss(img_f, txt_f, scale, pos)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        te = time.time()
        steps_done = step + 1
        lv = loss.item()
        ema = lv if ema is None else 0.98 * ema + 0.02 * lv
        history.append((step, lv, plain, acc, cur_lr))
        if step % 10 == 0 or step == args.steps - 1:
            log(
                f"{step}\t{cur_lr:.2e}\t{lv:.4f}\t{plain:.4f}\t{acc:.3f}\t{scale.item():.2f}"
                f"\t{td - ts:.3f}\t{te - td:.3f}\t{te - t0:.1f}"
            )
        if args.save_every and steps_done % args.save_every == 0:
            save_model(model, args, args.out, fp16=not args.fp32)
            log(f"# checkpoint saved at step {steps_done}")
    wall = time.time() - t0
    model.eval()
    save_model(model, args, args.out, fp16=not args.fp32)
    log(f"# done: {steps_done} steps, wall {wall:.1f} s, final loss ema {ema:.4f}")

    summary = {
        "command": "python -m benchmarks.synthshapes.train "
        + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "steps_done": steps_done,
        "wall_s": wall,
        "n_params": n_params,
        "history": history,
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
    }
    (log_path.parent / (log_path.stem + "_summary.json")).write_text(json.dumps(summary))
    evals = None
    if not args.no_eval:
        from benchmarks.synthshapes.sanity import run_all

        evals = run_all(f"local-dir:{args.out}", seed=args.eval_seed, scene_size=scene_size)
        log(f"# eval {json.dumps(evals)}")
    write_training_md(args.out, summary, evals)
    log("# wrote TRAINING.md")
    logf.close()
    if log_path.resolve() != (args.out / "train_log.tsv").resolve():
        import shutil

        shutil.copyfile(log_path, args.out / "train_log.tsv")


def _architecture(a: dict, summary: dict) -> str:
    """One paragraph on a timm-tower model (the --vision-* options do not apply to it)."""
    return (
        f"Architecture: image tower timm `{a['timm_model']}` built by open_clip with "
        f"`timm_pool={a['timm_pool']!r}` (timm's attention-pool head `AttentionPoolLatent`: a learned "
        f"probe attends over the final tokens, then output projection and an MLP residual) and "
        f"`timm_proj={a['timm_proj']!r}`, input {a['image_size']} px (scenes rendered at "
        f"{a.get('scene_size') or a['image_size']} px and resized bicubic, as the eval transform "
        f"does); text tower {a['text_layers']} blocks of width {a['text_width']} ({a['text_heads']} "
        f"heads), context length {a['context_length']} (open_clip SimpleTokenizer), embed dim "
        f"{a['embed_dim']}; {summary['n_params'] / 1e6:.2f} M parameters (3.2 M of them the "
        f"49408-row token embedding), stored as {'fp32' if a['fp32'] else 'fp16'} safetensors."
    )


def _curve_table(history, n_rows=12, plain_name="plain ClipLoss"):
    """Mean loss over equal windows of the run."""
    h = np.array([x[:4] for x in history], dtype=np.float64)
    if len(h) == 0:
        return ""
    edges = np.linspace(0, len(h), n_rows + 1).astype(int)
    rows = [
        f"| steps | loss (multi-positive) | {plain_name} | in-batch top-1 |",
        "|---|---|---|---|",
    ]
    for a, b in zip(edges[:-1], edges[1:]):
        if b <= a:
            continue
        w = h[a:b]
        rows.append(
            f"| {int(w[0, 0])}-{int(w[-1, 0])} | {w[:, 1].mean():.3f} | {w[:, 2].mean():.3f}"
            f" | {w[:, 3].mean():.3f} |"
        )
    return "\n".join(rows)


def write_training_md(out: Path, summary: dict, evals: dict | None) -> None:
    h = summary["history"]
    last = h[-100:] if len(h) >= 100 else h
    final_loss = float(np.mean([x[1] for x in last]))
    final_plain = float(np.mean([x[2] for x in last]))
    final_acc = float(np.mean([x[3] for x in last]))
    a = summary["args"]
    sigmoid = a.get("loss") == "sigmoid"
    kind = (
        "open_clip model with an attention-pooled timm ViT tower (as open_clip's SigLIP models)"
        if a.get("timm_model")
        else "open_clip CLIP (ViT with CLS pooling, QuickGELU)"
    )
    lines = [
        f"# {out.name}: training record",
        "",
        f"A tiny {kind} trained from scratch{' with the SigLIP sigmoid loss' if sigmoid else ''} on the",
        "synthetic shape scenes of `benchmarks/synthshapes/scenes.py` (3 shapes x 6 colours,",
        f"1-3 objects, {a.get('scene_size') or a['image_size']} px). Load it with",
        "",
        "```python",
        "import open_clip",
        f'model, _, preprocess = open_clip.create_model_and_transforms("local-dir:assets/{out.name}")',
        f'tokenizer = open_clip.get_tokenizer("local-dir:assets/{out.name}")',
        "```",
        "",
        _architecture(a, summary)
        if a.get("timm_model")
        else f"Architecture: image {a['image_size']} px, patch {a['patch_size']} "
        f"({a['image_size'] // a['patch_size']}x{a['image_size'] // a['patch_size']} grid + CLS), "
        f"{a['vision_layers']} vision blocks of width {a['vision_width']} "
        f"(head width {a['vision_head_width']}), text tower {a['text_layers']} blocks of width "
        f"{a['text_width']} ({a['text_heads']} heads), context length {a['context_length']} "
        f"(open_clip SimpleTokenizer), embed dim {a['embed_dim']}; "
        f"{summary['n_params'] / 1e6:.2f} M parameters (3.2 M of them the 49408-row token "
        f"embedding), stored as {'fp32' if a['fp32'] else 'fp16'} safetensors.",
        "",
        "## Command",
        "",
        "```",
        summary["command"],
        "```",
        "",
        f"- seed: {a['seed']} (torch and the numpy scene generator)",
        f"- steps: {summary['steps_done']} (cap {a['steps']}), batch size {a['batch_size']}, "
        f"threads {a['threads']}"
        + (
            f"; time-budgeted schedule ({a['time_budget']:g} min): schedule progress = "
            "max(step/cap, elapsed/budget), so the number of steps depends on machine speed "
            "(learning rate logged every 10 steps in `train_log.tsv`)"
            if a.get("time_budget")
            else ""
        ),
        f"- optimiser: AdamW lr {a['lr']} (betas 0.9/0.98, eps 1e-6, weight decay {a['weight_decay']} "
        f"on matrices), linear warmup {a['warmup']} steps, cosine decay to {a['min_lr']}",
        f"- data: scenes generated on the fly; captions name one object with probability "
        f"{a['p_single']}; {a['hard_frac']:.0%} of each batch in hard-negative pairs (same layout "
        "and background, one object recoloured/reshaped or two objects' colours swapped, each "
        "captioned with the changed object)",
        (
            "- loss: SigLIP pairwise sigmoid loss with the ground truth as labels (a caption is a "
            "positive for every scene in the batch that contains all the objects it names, every "
            "other pair a negative; summed over pairs / batch size); the plain SigLIP loss "
            "(diagonal positives only, as `open_clip.loss.SigLipLoss`) is logged alongside; "
            f"logit scale initialised at 10, logit bias at {a.get('init_logit_bias')}"
            if sigmoid
            else "- loss: symmetric contrastive loss with multi-positive soft targets (a caption is a "
            "positive for every scene in the batch that contains all the objects it names); the "
            "plain CLIP loss (diagonal targets only, as `open_clip.loss.ClipLoss`) is logged alongside"
        ),
        f"- wall time: {summary['wall_s']:.0f} s ({summary['wall_s'] / 60:.1f} min) of training on "
        f"{a['threads']} CPU thread(s) ({summary['cpu']}); torch {summary['torch']}, "
        f"open_clip {summary['open_clip']}, Python {summary['python']}",
        f"- final loss (mean of the last {len(last)} steps): multi-positive {final_loss:.3f}, "
        f"plain {'SigLipLoss' if sigmoid else 'ClipLoss'} {final_plain:.3f}, in-batch image->text "
        f"top-1 {final_acc:.3f}",
        "",
        "## Loss curve (means over equal windows)",
        "",
        _curve_table(h, plain_name="plain SigLipLoss" if sigmoid else "plain ClipLoss"),
        "",
    ]
    if evals:
        lines += ["## Sanity checks (held-out scenes, model loaded back through `local-dir:`)", ""]
        lines += evals.get("markdown", [])
        lines.append("")
    (out / "TRAINING.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
