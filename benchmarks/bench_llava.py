"""Cost of the LLaVA attribution over plain ``generate`` with identical settings.

Builds a random-weight LLaVA of a realistic shape (nothing is downloaded), then times
``LLaVAAttributor`` (padding, processor, greedy generation with the layer-L' capture, map) against
the same preprocessing followed by a plain ``model.generate``. Reports medians of a few repeats,
their ratio, and peak memory (CUDA: ``max_memory_allocated``; CPU: peak resident set size
sampled during the call, weights included, as on the GPU). Prints a markdown table.

    python benchmarks/bench_llava.py                       # CPU: reduced LLaMA, 336 px CLIP tower
    python benchmarks/bench_llava.py --preset llava-7b     # the real 7B shape, fp16, on a GPU

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

from api_prompt.attribution.llava import PROMPT_TEMPLATE, LLaVAAttributor, pad_to_square  # noqa: E402
from tiny_hf import tiny_llava  # noqa: E402

PRESETS = {
    # A reduced LLaMA (hidden 1024, 8 layers) behind a 336 px / patch-14 CLIP tower (576 image
    # tokens, as LLaVA-1.5) of reduced width: runs on a laptop CPU in seconds per call.
    "cpu-small": dict(
        image_size=336, patch_size=14, hidden_size=1024, num_layers=8, num_heads=16, num_kv_heads=16,
        vision_hidden_size=256, vision_layers=4, vision_heads=4, intermediate_size=2816, vocab_size=32064, layer=6,
    ),
    # LLaVA-1.5-7B: Vicuna-7B (4096 wide, 32 layers, 32 heads) and CLIP ViT-L/14-336.
    "llava-7b": dict(
        image_size=336, patch_size=14, hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=32,
        vision_hidden_size=1024, vision_layers=24, vision_heads=16, intermediate_size=11008, vocab_size=32064, layer=20,
    ),
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


def build(preset: str, device: torch.device, dtype: torch.dtype):
    options = dict(PRESETS[preset])
    layer = options.pop("layer")
    intermediate = options.pop("intermediate_size")
    vision = {k: options.pop(k) for k in ("vision_hidden_size", "vision_layers", "vision_heads")}
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model, processor = tiny_llava(
                seed=0, **options, **vision, intermediate_size=intermediate, initializer_range=0.02
            )
    finally:
        torch.set_default_dtype(default_dtype)
    # Random weights: keep EOS out of reach so every run generates exactly max_new_tokens.
    with torch.no_grad():
        eos = model.generation_config.eos_token_id
        model.lm_head.weight[eos] = -model.lm_head.weight.abs().max()
    return model.to(device, dtype).eval(), processor, layer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu-small")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default=None, help="default: fp16 on CUDA, fp32 on CPU")
    parser.add_argument("--batch-size", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    dtype = {None: torch.float16 if device.type == "cuda" else torch.float32,
             "fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    model, processor, layer = build(args.preset, device, dtype)
    attributor = LLaVAAttributor(model, processor, layer=layer, max_new_tokens=args.max_new_tokens,
                                 batch_size=max(args.batch_size))
    rng = np.random.default_rng(0)
    sizes = [(640, 480), (480, 640), (500, 500), (800, 450)]
    questions = ["What color is the car?", "How many people are there in the image?",
                 "Describe the image in detail.", "Where is the dog?"]

    def plain(images, queries):
        squares = [pad_to_square(image)[0] for image in images]
        processor.tokenizer.padding_side = "left"
        inputs = processor(images=squares, text=[PROMPT_TEMPLATE.format(question=q) for q in queries],
                           return_tensors="pt", padding=True)
        inputs = {k: v.to(device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        with torch.inference_mode():
            return model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False,
                                  num_beams=1, use_cache=True,
                                  pad_token_id=model.generation_config.pad_token_id)

    rows = []
    for batch in args.batch_size:
        images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
                  for w, h in (sizes[i % len(sizes)] for i in range(batch))]
        queries = [questions[i % len(questions)] for i in range(batch)]
        runs = {"generate": lambda: plain(images, queries), "api": lambda: attributor(images, queries)}
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
        rows.append((batch, t["generate"], t["api"], t["api"] / t["generate"],
                     m["generate"] / 2**20, m["api"] / 2**20, m["api"] / m["generate"]))

    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *sys.argv[1:]])
    print(f"`{command}`\n")
    print(f"preset {args.preset}, {device.type} ({torch.get_num_threads()} threads), {str(dtype)[6:]}, "
          f"layer {layer}, {args.max_new_tokens} new tokens, median of {args.repeats}, "
          f"torch {torch.__version__}\n")
    print("| batch | generate s | api s | time ratio | generate peak MiB | api peak MiB | memory ratio |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for batch, tg, ta, tr, mg, ma, mr in rows:
        print(f"| {batch} | {tg:.3f} | {ta:.3f} | {tr:.3f} | {mg:.0f} | {ma:.0f} | {mr:.3f} |")


if __name__ == "__main__":
    main()
