"""Localization benchmark: do the API maps point at the object the query names?

For held-out synthetic scenes (a seed range disjoint from training) each query names one object
that is present, e.g. "a red circle". For every layer L' of the shipped CLIP, and for

- ``psi_cls``      Ψcls alone (the cls-token decomposition),
- ``psi_comp_inv`` the inverted Ψcomp alone (high where the patch is *not* register-like),
- ``psi_comp``     Ψcomp not inverted (for analysis: which sign of Ψcomp points at the object),
- ``mask``         the soft-OR mask the method uses (enhance + box filter, docs/ALGORITHM.md §1),
- ``random``       a uniform random map (the chance level),

it reports

- **pointing game**: the map's argmax cell centre falls inside the object's box enlarged by half a
  patch on every side;
- **mass in box**: the share of the min-max normalised map's mass (upsampled to pixels, nearest)
  that falls inside the object's box.

One command reproduces the table and the plot::

    python -m benchmarks.synthshapes.localize --scenes 300 --out benchmarks/synthshapes/results

For an attention-pooled model (``--model assets/synthshapes-siglip``, the SigLIP-style tower) the
maps are the attention-pool decomposition's parts (docs/design/attention_pool.md), each sign, and
candidate masks (``ATTENTION_POOL_METHODS``); the layer L' then only moves the token part::

    python -m benchmarks.synthshapes.localize --model assets/synthshapes-siglip --scenes 300 \
        --out benchmarks/synthshapes/results/siglip

For a decoder (``--backend llava``, the trained ``assets/synthshapes-llava``) each query is the
question ``Describe the <color> <shape>.`` and the map is the backend's own decoder attention
(:class:`~api_prompt.attribution.llava.LLaVAAttributor`, its public API) at every layer, averaged
over the first 1, 2, 5, 10 and 20 generated tokens (1 = the prefill pass alone; a row stops at its
end-of-sequence token, so 20 means "the whole answer"). Beside it: a random map, a *random present
object* (the map points at the centre of one of the scene's objects drawn at random: attention
that lands on some object says little), how often the map's arg-max lands on any object, and the
CLIP's Ψcls and mask on the same scenes::

    python -m benchmarks.synthshapes.localize --backend llava --scenes 300 \
        --out benchmarks/synthshapes/results/llava
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import open_clip
import torch

from api_prompt.attribution.clip import CLIPAttributor
from api_prompt.attribution.clip.attention_pool import AttentionPoolDecomposition
from api_prompt.maps import box_filter, enhance, minmax, soft_or

from .scenes import make_scene, phrase_caption

MODEL_DIR = Path(__file__).resolve().parents[2] / "assets" / "synthshapes-clip"
LLAVA_DIR = Path(__file__).resolve().parents[2] / "assets" / "synthshapes-llava"
#: Generated-token counts compared for decoder maps (1 = the prefill pass alone).
DECODER_TOKENS = (1, 2, 5, 10, 20)
EVAL_SEED = (
    20_241_000  # training uses seeds far below this; see assets/synthshapes-clip/TRAINING.md
)
METHODS = ("psi_cls", "psi_comp_inv", "psi_comp", "mask", "random")
#: Maps compared for an attention-pooled model: each part with each sign, then masks (enhance +
#: box filter as the CLIP recipe): the pool part alone, and its soft OR with the token part.
ATTENTION_POOL_METHODS = (
    "psi_pool",
    "psi_pool_neg",
    "psi_token",
    "psi_token_neg",
    "pool_mask",
    "token_mask",
    "pool_or_token",
    "pool_or_token_inv",
    "pool_or_token_enhanced",
    "random",
)


def held_out_queries(n_scenes: int, n_objects: int, seed: int = EVAL_SEED):
    """(scene, object) pairs: one query per scene, naming one of its objects chosen at random."""
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n_scenes):
        scene = make_scene(rng, size=64, n_objects=n_objects)
        target = scene.objects[int(rng.integers(len(scene.objects)))]
        pairs.append((scene, target))
    return pairs


def candidate_maps(amap, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The maps compared, each P×P and non-negative."""
    return {
        "psi_cls": minmax(amap.parts["psi_cls"]),
        "psi_comp_inv": minmax(amap.parts["psi_comp"], invert=True),
        "psi_comp": minmax(amap.parts["psi_comp"]),
        "mask": amap.mask,
        "random": rng.random(amap.mask.shape).astype(np.float32),
    }


def attention_pool_candidates(
    parts: dict, enhance_coe: float, kernel_size: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """The maps compared for one image of an attention-pooled model, each gh×gw and non-negative."""
    pool, token = parts["psi_pool"], parts["psi_token"]
    pool_enhanced = box_filter(enhance(minmax(pool), enhance_coe), kernel_size)
    token_enhanced = box_filter(enhance(minmax(token), enhance_coe), kernel_size)
    return {
        "psi_pool": minmax(pool),
        "psi_pool_neg": minmax(pool, invert=True),
        "psi_token": minmax(token),
        "psi_token_neg": minmax(token, invert=True),
        "pool_mask": minmax(pool_enhanced),
        "token_mask": minmax(token_enhanced),
        "pool_or_token": minmax(soft_or(pool_enhanced, box_filter(minmax(token), kernel_size))),
        "pool_or_token_inv": minmax(
            soft_or(pool_enhanced, box_filter(minmax(token, invert=True), kernel_size))
        ),
        "pool_or_token_enhanced": minmax(soft_or(pool_enhanced, token_enhanced)),
        "random": rng.random(pool.shape).astype(np.float32),
    }


def evaluate_attention_pool(
    model_dir: Path,
    n_scenes: int,
    n_objects: int,
    enhance_coe: float,
    kernel_size: int,
    batch_size: int = 64,
    seed: int = EVAL_SEED,
) -> dict:
    """As :func:`evaluate`, for a model whose image tower is pooled by attention (SigLIP style)."""
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{model_dir}")
    model.eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{model_dir}")
    decomposition = AttentionPoolDecomposition()
    reason = decomposition.unsupported_reason(model.visual)
    if reason is not None:
        raise SystemExit(
            f"error: {model_dir} cannot be explained by the attention-pool decomposition: {reason}"
        )
    n_blocks = decomposition.n_layers(model.visual)
    pairs = held_out_queries(n_scenes, n_objects, seed)
    with torch.no_grad():
        text = model.encode_text(
            tokenizer([phrase_caption([target.phrase]) for _, target in pairs])
        )
    text = torch.nn.functional.normalize(text.float(), dim=-1)
    pixels = torch.stack([preprocess(scene.image) for scene, _ in pairs])

    results: dict = {}
    for layer in range(n_blocks):
        rng = np.random.default_rng(seed + layer)
        scores = {method: [] for method in ATTENTION_POOL_METHODS}
        for start in range(0, len(pairs), batch_size):
            batch = slice(start, start + batch_size)
            parts = decomposition.run(model.visual, pixels[batch], text[batch], layer=layer)
            parts = {name: part.numpy() for name, part in parts.items()}
            for i, (scene, target) in enumerate(pairs[batch]):
                one = {name: part[i] for name, part in parts.items()}
                for method, grid_map in attention_pool_candidates(
                    one, enhance_coe, kernel_size, rng
                ).items():
                    scores[method].append(score(grid_map, target.box, scene.size))
        results[layer] = {
            method: {
                "pointing_game": float(np.mean([hit for hit, _ in values])),
                "mass_in_box": float(np.mean([mass for _, mass in values])),
            }
            for method, values in scores.items()
        }
    return {"n_blocks": n_blocks, "methods": list(ATTENTION_POOL_METHODS), "layers": results}


def score(grid_map: np.ndarray, box, image_size: int) -> tuple[float, float]:
    """(pointing-game hit, mass share inside the box) of one P×P map for one object box."""
    grid = grid_map.shape[0]
    cell = image_size / grid
    row, col = np.unravel_index(int(np.argmax(grid_map)), grid_map.shape)
    cx, cy = (col + 0.5) * cell, (row + 0.5) * cell
    x0, y0, x1, y1 = box
    half = cell / 2
    hit = float(x0 - half <= cx <= x1 + half and y0 - half <= cy <= y1 + half)
    pixels = np.kron(grid_map, np.ones((int(cell), int(cell)), dtype=np.float32))
    total = float(pixels.sum())
    inside = float(pixels[y0:y1, x0:x1].sum())
    return hit, (inside / total if total > 0 else 0.0)


def evaluate(
    model_dir: Path,
    n_scenes: int,
    n_objects: int,
    enhance: float,
    kernel_size: int,
    batch_size: int = 64,
    seed: int = EVAL_SEED,
) -> dict:
    """Per layer and method: mean pointing game and mass share over the held-out queries."""
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{model_dir}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{model_dir}")
    n_blocks = len(model.visual.transformer.resblocks)
    pairs = held_out_queries(n_scenes, n_objects, seed)
    images = [scene.image for scene, _ in pairs]
    queries = [phrase_caption([target.phrase]) for _, target in pairs]

    results: dict = {}
    for layer in range(n_blocks):
        attributor = CLIPAttributor(
            model,
            preprocess=preprocess,
            tokenizer=tokenizer,
            layer=layer,
            enhance=enhance,
            kernel_size=kernel_size,
            device="cpu",
            batch_size=batch_size,
        )
        maps = attributor(images, queries)
        rng = np.random.default_rng(seed + layer)
        scores = {method: [] for method in METHODS}
        for amap, (scene, target) in zip(maps, pairs):
            for method, grid_map in candidate_maps(amap, rng).items():
                scores[method].append(score(grid_map, target.box, scene.size))
        results[layer] = {
            method: {
                "pointing_game": float(np.mean([hit for hit, _ in values])),
                "mass_in_box": float(np.mean([mass for _, mass in values])),
            }
            for method, values in scores.items()
        }
    return {"n_blocks": n_blocks, "layers": results}


def decoder_question(phrase: str) -> str:
    """The question a decoder map is made for: it names the object (``Describe the red circle.``)."""
    return f"Describe the {phrase}."


def random_object_map(scene, grid: int, rng: np.random.Generator) -> np.ndarray:
    """A one-hot ``grid``×``grid`` map at the cell holding the centre of a random present object."""
    cx, cy = scene.objects[int(rng.integers(len(scene.objects)))].center
    cell = scene.size / grid
    out = np.zeros((grid, grid), dtype=np.float32)
    out[min(grid - 1, int(cy // cell)), min(grid - 1, int(cx // cell))] = 1.0
    return out


def on_any_object(grid_map: np.ndarray, scene) -> float:
    """1.0 when the map's arg-max cell centre is inside some object's box (grown by half a cell)."""
    return max(score(grid_map, obj.box, scene.size)[0] for obj in scene.objects)


def decoder_maps(
    attributor, images: list, queries: list[str], layers, tokens
) -> tuple[dict, list[str]]:
    """``{(layer, k): [map per image]}`` for every layer and generated-token count ``k``, from one
    greedy generation per batch with the backend's capture hook on every layer at once.

    It is exactly what ``LLaVAAttributor(model, processor, layer=layer, max_new_tokens=k)`` returns
    as ``parts["attention"]`` (the same prompt, passes and per-row stop at the end-of-sequence
    token; greedy decoding makes the first k passes of a longer run the same), at the cost of one
    run instead of one per (layer, k). Also returns the answers of the longest run.
    """
    from api_prompt.attribution.base import eval_mode, temporary_hooks
    from api_prompt.attribution.decoder.capture import (
        LastRowCapture,
        answer_length,
        generation_state,
    )

    out: dict = {(layer, k): [] for layer in layers for k in tokens}
    answers: list[str] = []
    longest = max(tokens)
    for start in range(0, len(images), attributor.batch_size):
        batch_images = [
            image.convert("RGB") for image in images[start : start + attributor.batch_size]
        ]
        batch_queries = queries[start : start + attributor.batch_size]
        inputs, geometry = attributor._prepare(batch_images, batch_queries)
        keys = attributor._image_keys(inputs, geometry)
        captures = {
            layer: LastRowCapture(
                attributor.decoder_layers[layer].self_attn,
                keys,
                inputs["input_ids"].shape[1],
                attributor._rotary,
            )
            for layer in layers
        }
        eos_ids = attributor._eos_ids()
        with (
            torch.inference_mode(),
            eval_mode(attributor.model),
            generation_state(attributor.model),
            temporary_hooks() as handles,
        ):
            for layer, capture in captures.items():
                handles.append(
                    attributor.decoder_layers[layer].self_attn.register_forward_pre_hook(
                        capture, with_kwargs=True
                    )
                )
            sequences = attributor.model.generate(
                **inputs,
                max_new_tokens=longest,
                do_sample=False,
                num_beams=1,
                use_cache=True,
                eos_token_id=eos_ids,
                pad_token_id=attributor._pad_id(eos_ids),
            )
        generated = sequences[:, inputs["input_ids"].shape[1] :].cpu()
        valid = keys.valid.cpu()
        for row in range(len(batch_images)):
            length = answer_length(generated[row], eos_ids, limit=longest)
            answers.append(
                attributor.processor.tokenizer.decode(
                    generated[row][:length], skip_special_tokens=True
                ).strip()
            )
            for layer, capture in captures.items():
                passes = torch.stack(capture.passes).float().cpu()[:, row][:, valid[row]]
                for k in tokens:
                    attention = passes[: min(k, length)].mean(dim=0)
                    parts, _, _ = attributor._to_map(attention, keys.layouts[row], geometry[row])
                    out[(layer, k)].append(np.asarray(parts["attention"], dtype=np.float32))
    return out, answers


def evaluate_decoder(
    model_dir: Path,
    n_scenes: int,
    n_objects: int,
    tokens=DECODER_TOKENS,
    batch_size: int = 50,
    seed: int = EVAL_SEED,
    layers=None,
) -> dict:
    """Per decoder layer and generated-token count: pointing game, mass in box, and the share of
    maps whose arg-max is on any object; plus the random-map and random-object baselines."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from api_prompt.attribution.llava import LLaVAAttributor

    model = LlavaForConditionalGeneration.from_pretrained(model_dir, local_files_only=True).eval()
    processor = AutoProcessor.from_pretrained(model_dir, local_files_only=True)
    n_layers = model.config.text_config.num_hidden_layers
    layers = list(range(n_layers) if layers is None else layers)
    pairs = held_out_queries(n_scenes, n_objects, seed)
    images = [scene.image for scene, _ in pairs]
    queries = [decoder_question(target.phrase) for _, target in pairs]
    attributor = LLaVAAttributor(model, processor, layer=layers[0], batch_size=batch_size)
    maps, answers = decoder_maps(attributor, images, queries, layers, tokens)

    results: dict = {}
    for layer in layers:
        results[layer] = {}
        for count in tokens:
            values = [
                (*score(grid_map, target.box, scene.size), on_any_object(grid_map, scene))
                for grid_map, (scene, target) in zip(maps[(layer, count)], pairs)
            ]
            results[layer][count] = {
                "pointing_game": float(np.mean([v[0] for v in values])),
                "mass_in_box": float(np.mean([v[1] for v in values])),
                "on_any_object": float(np.mean([v[2] for v in values])),
            }
    named = [
        target.color in words and target.shape in words
        for answer, (_, target) in zip(answers, pairs)
        for words in [answer.replace(".", " ").split()]
    ]
    grid = int(round(model.config.image_seq_length**0.5))
    rng = np.random.default_rng(seed)
    baselines = {}
    for name, make in (
        ("random", lambda scene: rng.random((grid, grid)).astype(np.float32)),
        ("random_object", lambda scene: random_object_map(scene, grid, rng)),
    ):
        values = [score(make(scene), target.box, scene.size) for scene, target in pairs]
        baselines[name] = {
            "pointing_game": float(np.mean([v[0] for v in values])),
            "mass_in_box": float(np.mean([v[1] for v in values])),
        }
    return {
        "n_layers": n_layers,
        "tokens": list(tokens),
        "layers": results,
        "baselines": baselines,
        "answer_names_object": float(np.mean(named)),
        "answers": answers[:5],
        "grid": grid,
    }


def decoder_markdown_table(results: dict, metric: str) -> str:
    tokens = results["tokens"]
    header = "| layer L' | " + " | ".join(f"{t} token{'s' if t > 1 else ''}" for t in tokens) + " |"
    rule = "|---" * (len(tokens) + 1) + "|"
    rows = [
        f"| {layer} | " + " | ".join(f"{by_count[t][metric]:.3f}" for t in tokens) + " |"
        for layer, by_count in results["layers"].items()
    ]
    return "\n".join([header, rule, *rows])


def markdown_table(results: dict, metric: str) -> str:
    methods = results.get("methods", METHODS)
    header = "| layer L' | " + " | ".join(methods) + " |"
    rule = "|---" * (len(methods) + 1) + "|"
    rows = [
        f"| {layer} | " + " | ".join(f"{scores[m][metric]:.3f}" for m in methods) + " |"
        for layer, scores in results["layers"].items()
    ]
    return "\n".join([header, rule, *rows])


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = list(results["layers"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, metric, title in zip(
        axes, ("pointing_game", "mass_in_box"), ("Pointing game", "Mass inside the box")
    ):
        for method in results.get("methods", METHODS):
            ax.plot(
                layers,
                [results["layers"][layer][method][metric] for layer in layers],
                marker="o",
                label=method,
            )
        ax.set_xlabel("layer L' (0-based block)")
        ax.set_title(title)
        ax.set_xticks(layers)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="center right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--backend",
        choices=("clip", "llava"),
        default="clip",
        help="clip: the open_clip model's maps; llava: a LLaVA folder's decoder maps",
    )
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="local-dir model folder (default: assets/synthshapes-clip, or "
        "assets/synthshapes-llava with --backend llava)",
    )
    parser.add_argument(
        "--clip-model",
        type=Path,
        default=MODEL_DIR,
        help="with --backend llava: the CLIP compared on the same scenes",
    )
    parser.add_argument(
        "--tokens",
        default=",".join(map(str, DECODER_TOKENS)),
        help="with --backend llava: generated-token counts, comma-separated",
    )
    parser.add_argument("--scenes", type=int, default=300, help="held-out scenes (one query each)")
    parser.add_argument("--objects", type=int, default=3, help="objects per scene")
    parser.add_argument("--enhance", type=float, default=10.0)
    parser.add_argument("--kernel-size", type=int, default=3)
    parser.add_argument("--seed", type=int, default=EVAL_SEED)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    started = time.perf_counter()
    if args.backend == "llava":
        run_decoder(args, started)
        return
    args.model = args.model or MODEL_DIR
    with open(args.model / "open_clip_config.json") as config:
        attention_pooled = "timm_model_name" in json.load(config)["model_cfg"]["vision_cfg"]
    run = evaluate_attention_pool if attention_pooled else evaluate
    results = run(
        args.model, args.scenes, args.objects, args.enhance, args.kernel_size, seed=args.seed
    )
    results["settings"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "localization.json").write_text(json.dumps(results, indent=2))
    plot(results, args.out / "localization.png")
    print(
        f"{args.scenes} held-out scenes with {args.objects} objects, coe {args.enhance}, k {args.kernel_size}"
        f" ({time.perf_counter() - started:.0f} s)\n"
    )
    print("Pointing game\n\n" + markdown_table(results, "pointing_game") + "\n")
    print("Mass inside the box\n\n" + markdown_table(results, "mass_in_box"))


def run_decoder(args, started: float) -> None:
    model = args.model or LLAVA_DIR
    tokens = tuple(int(t) for t in args.tokens.split(","))
    results = evaluate_decoder(model, args.scenes, args.objects, tokens, seed=args.seed)
    results["clip"] = evaluate(
        args.clip_model, args.scenes, args.objects, args.enhance, args.kernel_size, seed=args.seed
    )
    results["settings"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "localization.json").write_text(json.dumps(results, indent=2))
    clip_layers = results["clip"]["layers"]
    print(
        f"{args.scenes} held-out scenes with {args.objects} objects, decoder {model}, questions "
        f"'Describe the <color> <shape>.' ({time.perf_counter() - started:.0f} s)\n"
    )
    for metric in ("pointing_game", "on_any_object", "mass_in_box"):
        print(
            f"Decoder {metric} (layers x generated tokens)\n\n"
            + decoder_markdown_table(results, metric)
            + "\n"
        )
    base = results["baselines"]
    print("Baselines and CLIP on the same scenes (pointing game / mass in box)\n")
    print("| map | pointing game | mass in box |\n|---|---|---|")
    for name, entry in base.items():
        print(f"| {name} | {entry['pointing_game']:.3f} | {entry['mass_in_box']:.3f} |")
    for layer, scores in clip_layers.items():
        for method in ("psi_cls", "mask"):
            print(
                f"| CLIP {method} L'={layer} | {scores[method]['pointing_game']:.3f} | "
                f"{scores[method]['mass_in_box']:.3f} |"
            )
    print(
        f"\nshare of 20-token answers naming the queried object: {results['answer_names_object']:.3f}"
    )


if __name__ == "__main__":
    main()
