"""Cost of the decoder-attention maps over plain ``generate`` with identical settings.

For each model family (LLaVA-1.5, LLaVA-NeXT, Qwen2-VL) builds a random-weight model of a realistic
shape (nothing is downloaded), then times the family's attributor (image preparation, processor,
greedy generation with the layer-L' capture, maps) against the same inputs
(``attributor.model_inputs``) followed by a plain ``model.generate``. Repeats are interleaved;
reports medians, their ratio, and peak memory (CUDA: ``max_memory_allocated``; CPU: peak resident
set size sampled during the call, weights included, as on the GPU). Prints a markdown table.

    python benchmarks/bench_decoder.py                                # CPU: reduced shapes, all families
    python benchmarks/bench_decoder.py --family qwen2-vl --batch-size 1
    python benchmarks/bench_decoder.py --preset 7b --batch-size 1 4   # the real 7B shapes, fp16, on a GPU

Targets: time ratio <= 1.15, peak-memory ratio <= 1.05.
"""

from __future__ import annotations

import argparse
import gc
import shlex
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from api_prompt.attribution.decoder import LLaVAAttributor, LLaVANextAttributor, Qwen2VLAttributor
from tiny_decoders import tiny_llava_next, tiny_qwen_vl
from tiny_hf import tiny_llava

# A reduced LLaMA-like decoder (hidden 1024, 8 layers) for the CPU rows: runs in seconds per call.
_SMALL_TEXT = dict(
    hidden_size=1024,
    num_hidden_layers=8,
    num_attention_heads=16,
    intermediate_size=2816,
    vocab_size=32064,
)
LLAVA_NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]

#: family -> preset -> (builder, builder options, layer). The CPU presets keep each family's real
#: image geometry (LLaVA-1.5: 576 tokens; LLaVA-NeXT: 336 px tiles with the real pinpoints, up to
#: 2880 image tokens; Qwen2-VL: the image's own size in 28 px merged cells) and shrink the widths.
PRESETS = {
    "llava": {
        "cpu-small": (
            tiny_llava,
            dict(
                image_size=336,
                patch_size=14,
                hidden_size=1024,
                num_layers=8,
                num_heads=16,
                num_kv_heads=16,
                vision_hidden_size=256,
                vision_layers=4,
                vision_heads=4,
                intermediate_size=2816,
                vocab_size=32064,
                initializer_range=0.02,
            ),
            6,
        ),
        # LLaVA-1.5-7B: Vicuna-7B (4096 wide, 32 layers, 32 heads) and CLIP ViT-L/14-336.
        "7b": (
            tiny_llava,
            dict(
                image_size=336,
                patch_size=14,
                hidden_size=4096,
                num_layers=32,
                num_heads=32,
                num_kv_heads=32,
                vision_hidden_size=1024,
                vision_layers=24,
                vision_heads=16,
                intermediate_size=11008,
                vocab_size=32064,
                initializer_range=0.02,
            ),
            20,
        ),
    },
    "llava-next": {
        "cpu-small": (
            tiny_llava_next,
            dict(
                image_size=336,
                patch_size=14,
                vision_hidden_size=256,
                vision_layers=4,
                pinpoints=LLAVA_NEXT_PINPOINTS,
                num_layers=8,
                num_attention_heads=16,
                num_key_value_heads=16,
                intermediate_size=2816,
                vocab_size=32064,
                hidden_size=1024,
            ),
            5,
        ),
        # LLaVA-v1.6-Mistral-7B: Mistral-7B (4096 wide, 32 layers, 32 heads, 8 KV heads), ViT-L/14-336.
        "7b": (
            tiny_llava_next,
            dict(
                image_size=336,
                patch_size=14,
                vision_hidden_size=1024,
                vision_layers=24,
                vision_heads=16,
                pinpoints=LLAVA_NEXT_PINPOINTS,
                num_layers=32,
                num_attention_heads=32,
                num_key_value_heads=8,
                intermediate_size=14336,
                vocab_size=32064,
                hidden_size=4096,
            ),
            20,
        ),
    },
    "qwen2-vl": {
        "cpu-small": (
            tiny_qwen_vl,
            dict(
                version="2",
                hidden_size=1024,
                num_layers=8,
                num_attention_heads=16,
                num_key_value_heads=2,
                intermediate_size=2816,
                vocab_size=32064,
                vision_hidden_size=256,
                vision_depth=4,
                vision_heads=4,
                min_pixels=56 * 56,
                max_pixels=16384 * 28 * 28,
            ),
            5,
        ),
        # Qwen2-VL-7B: 3584 wide, 28 layers, 28 heads, 4 KV heads; vision 1280 wide, 32 blocks.
        "7b": (
            tiny_qwen_vl,
            dict(
                version="2",
                hidden_size=3584,
                num_layers=28,
                num_attention_heads=28,
                num_key_value_heads=4,
                intermediate_size=18944,
                vocab_size=152064,
                vision_hidden_size=1280,
                vision_depth=32,
                vision_heads=16,
                vision_mlp_ratio=4,
                min_pixels=56 * 56,
                max_pixels=16384 * 28 * 28,
            ),
            17,
        ),
    },
}

ATTRIBUTORS = {
    "llava": LLaVAAttributor,
    "llava-next": LLaVANextAttributor,
    "qwen2-vl": Qwen2VLAttributor,
}


class PeakMemory:
    """Peak memory of a block: CUDA allocator peak, or sampled resident set size on the CPU."""

    def __init__(self, device: torch.device):
        self.device, self.peak = device, 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            import psutil

            process, self._stop = psutil.Process(), threading.Event()
            self.peak = process.memory_info().rss

            def sample():
                while not self._stop.is_set():
                    self.peak = max(self.peak, process.memory_info().rss)
                    time.sleep(0.002)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()


def build(family: str, preset: str, device: torch.device, dtype: torch.dtype):
    builder, options, layer = PRESETS[family][preset]
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model, processor = builder(seed=0, **options)
    finally:
        torch.set_default_dtype(default_dtype)
    # Random weights: keep EOS out of reach so every run generates exactly max_new_tokens.
    with torch.no_grad():
        eos = model.generation_config.eos_token_id
        model.lm_head.weight[eos] = -model.lm_head.weight.abs().max()
    return model.to(device, dtype).eval(), processor, layer


def measure(family, args, device, dtype, rng):
    """Rows (family, batch, image tokens, times, peaks) for one family, repeats interleaved."""
    model, processor, layer = build(family, args.preset, device, dtype)
    attributor = ATTRIBUTORS[family](
        model,
        processor,
        layer=layer,
        max_new_tokens=args.max_new_tokens,
        batch_size=max(args.batch_size),
    )
    sizes = [(640, 480), (480, 640), (500, 500), (800, 450)]
    questions = [
        "What color is the car?",
        "How many people are there in the image?",
        "Describe the image in detail.",
        "Where is the dog?",
    ]

    def plain(images, queries):
        inputs = attributor.model_inputs(images, queries)
        with torch.inference_mode():
            return model.generate(
                **inputs,
                max_new_tokens=args.max_new_tokens,
                do_sample=False,
                num_beams=1,
                use_cache=True,
                pad_token_id=model.generation_config.pad_token_id,
            )

    rows = []
    for batch in args.batch_size:
        images = [
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            for w, h in (sizes[i % len(sizes)] for i in range(batch))
        ]
        queries = [questions[i % len(questions)] for i in range(batch)]
        inputs = attributor.model_inputs(images, queries)
        tokens = int((inputs["input_ids"] == attributor.image_token_id).sum()) // batch
        runs = {
            "generate": lambda: plain(images, queries),
            "api": lambda: attributor(images, queries),
        }
        for fn in runs.values():  # warm-up (lazy init, allocator)
            fn()
        times = {name: [] for name in runs}
        peaks = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, fn in runs.items():  # interleaved, so drift hits both alike
                gc.collect()
                with PeakMemory(device) as memory:
                    start = time.perf_counter()
                    fn()
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    times[name].append(time.perf_counter() - start)
                peaks[name].append(memory.peak)
        t = {name: statistics.median(v) for name, v in times.items()}
        m = {name: statistics.median(v) for name, v in peaks.items()}
        rows.append(
            (
                family,
                layer,
                batch,
                tokens,
                t["generate"],
                t["api"],
                t["api"] / t["generate"],
                m["generate"] / 2**20,
                m["api"] / 2**20,
                m["api"] / m["generate"],
            )
        )
        print(
            f"# {family} batch {batch}: time ratio {rows[-1][6]:.3f}, memory ratio {rows[-1][9]:.3f}",
            file=sys.stderr,
            flush=True,
        )
    del attributor, model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--family", choices=sorted(PRESETS), nargs="+", default=["llava", "llava-next", "qwen2-vl"]
    )
    parser.add_argument("--preset", choices=["cpu-small", "7b"], default="cpu-small")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default=None, help="default: fp16 on CUDA, fp32 on CPU")
    parser.add_argument("--batch-size", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else "cpu"
        if args.device == "auto"
        else args.device
    )
    dtype = {
        None: torch.float16 if device.type == "cuda" else torch.float32,
        "fp16": torch.float16,
        "bf16": torch.bfloat16,
        "fp32": torch.float32,
    }[args.dtype]
    rng = np.random.default_rng(0)
    rows = [row for family in args.family for row in measure(family, args, device, dtype, rng)]

    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *sys.argv[1:]])
    print(f"`{command}`\n")
    print(
        f"preset {args.preset}, {device.type} ({torch.get_num_threads()} threads), {str(dtype)[6:]}, "
        f"{args.max_new_tokens} new tokens, median of {args.repeats} interleaved repeats, "
        f"torch {torch.__version__}\n"
    )
    print(
        "| family | layer | batch | image tokens / row | generate s | api s | time ratio "
        "| generate peak MiB | api peak MiB | memory ratio |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for family, layer, batch, tokens, tg, ta, tr, mg, ma, mr in rows:
        print(
            f"| {family} | {layer} | {batch} | {tokens} | {tg:.3f} | {ta:.3f} | {tr:.3f} "
            f"| {mg:.0f} | {ma:.0f} | {mr:.3f} |"
        )


if __name__ == "__main__":
    main()
