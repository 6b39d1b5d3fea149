"""Cost of the CLIP attribution over a plain CLIP forward of the same batch.

Builds random-weight open_clip models of the paper's shapes (``pretrained=None``: nothing is
downloaded) and compares, on the same images and queries:

- baseline: ``preprocess`` + ``encode_image`` + ``tokenize`` + ``encode_text``;
- attribution: ``CLIPAttributor.attribute`` (the same work, plus the hooks, the class-token row of
  one block, the decomposition and the combined mask), with its text cache cleared before every
  call so it encodes the text too;
- early exit (class-token towers): ``CLIPAttributor.attribute(..., exact_parts=False)``, what the
  Prompter (and so batch, eval, the proxy, the playground) runs: the tower stops after block L',
  the same mask, parts exact up to a positive affine map per image.

Time: median of ``--repeats`` calls after one warm-up, baseline and attribution interleaved so
load drifts hit both alike. Memory: the peak of memory allocated *during* the call above what was
allocated before it (so the weights, identical for both, are excluded and the ratio shows the
activations): on CUDA from ``torch.cuda.max_memory_allocated``; on the CPU from the allocation and
free events of ``torch.profiler`` (``profile_memory=True``), replayed in time order, which counts
every torch tensor (RSS sampling would miss short peaks and includes allocator caching).

    python benchmarks/bench_clip.py                                   # CPU and, if present, CUDA
    python benchmarks/bench_clip.py --models ViT-B-16 --batch-sizes 1 --repeats 5
    python benchmarks/bench_clip.py --models ViT-B-16-SigLIP --batch-sizes 1 8   # SigLIP rows
    # on open_clip's next major version, from the snapshot beside the repository:
    oc=$(mktemp -d) && tar -xzf ../shared/compat/open_clip-main-89fb801.tar.gz -C "$oc"
    PYTHONPATH="$oc/src" python benchmarks/bench_clip.py --repeats 5

Attention-pooled models (``ATTENTION_POOLED``, e.g. ``ViT-B-16-SigLIP``) are attributed by the
attention-pool decomposition (docs/design/attention_pool.md): the attribution call is
``preprocess`` + the decomposition's hooked ``encode_image`` forward and maps + ``tokenize`` +
``encode_text`` + the mask of its default recipe. Their Hugging Face tokenizer cannot be
downloaded here, so both calls use the same offline stand-in (:func:`stand_in_tokenizer`: word
hashes into the model's vocabulary, padded to its context length, so ``encode_text`` does the same
work); the tokenizer's own cost is therefore not measured for these rows.

Targets: full attribution time and memory ratio <= 1.10; early exit <= 0.93 on ViT-B-16 (batch
8), <= 0.97 on ViT-L-14-336-quickgelu (batch 2 and 8), memory <= 1.0.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import statistics
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import open_clip

from api_prompt.attribution.clip import CLIPAttributor
from api_prompt.attribution.clip.attention_pool import AttentionPoolDecomposition
from api_prompt.maps import combine_attention_pool

MODELS = ["ViT-B-16", "ViT-L-14-336-quickgelu"]
#: Models whose image tower is pooled by attention (timm AttentionPoolLatent): SigLIP rows.
ATTENTION_POOLED = ["ViT-B-16-SigLIP"]


def make_inputs(batch_size: int, seed: int = 0) -> tuple[list[Image.Image], list[str]]:
    """Random photos of mixed sizes and one distinct question each."""
    rng = np.random.default_rng(seed)
    sizes = [(640, 480), (480, 640), (500, 500), (800, 450)]
    images = [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for w, h in (sizes[i % len(sizes)] for i in range(batch_size))
    ]
    queries = [
        f"what is written on sign number {i} next to the red car?" for i in range(batch_size)
    ]
    return images, queries


def baseline_call(model, preprocess, tokenizer, device, dtype) -> Callable[[list, list], None]:
    def run(images, queries):
        with torch.no_grad():
            pixels = torch.stack([preprocess(image) for image in images]).to(device, dtype=dtype)
            model.encode_image(pixels)
            model.encode_text(tokenizer(queries).to(device))
        synchronize(device)

    return run


def attribution_call(
    attributor: CLIPAttributor, device, exact_parts: bool = True
) -> Callable[[list, list], None]:
    def run(images, queries):
        attributor._text_cache.clear()  # encode the text every time, as the baseline does
        attributor.attribute(images, queries, exact_parts=exact_parts)
        synchronize(device)

    return run


def stand_in_tokenizer(context_length: int, vocab_size: int) -> Callable[[list], torch.Tensor]:
    """Offline tokenizer of the right shape: each word hashed into the vocabulary, zero-padded."""
    import zlib

    def tokenize(texts: list) -> torch.Tensor:
        tokens = torch.zeros(len(texts), context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [
                1 + zlib.crc32(word.encode()) % (vocab_size - 1) for word in text.lower().split()
            ]
            ids = ids[:context_length]
            tokens[row, : len(ids)] = torch.tensor(ids)
        return tokens

    return tokenize


def attention_pool_attribution_call(
    model, preprocess, tokenizer, device, dtype
) -> Callable[[list, list], None]:
    """What the attributor does for an attention-pooled tower, batch by batch."""
    decomposition = AttentionPoolDecomposition()
    reason = decomposition.unsupported_reason(model.visual)
    if reason is not None:
        raise SystemExit(f"error: not an attention-pooled tower: {reason}")

    def run(images, queries):
        with torch.no_grad():
            pixels = torch.stack([preprocess(image) for image in images]).to(device, dtype=dtype)
            text = model.encode_text(tokenizer(queries).to(device)).float()
            text = text / text.norm(dim=-1, keepdim=True)
            parts = decomposition.run(model.visual, pixels, text)
            combine_attention_pool(
                parts["psi_pool"], parts["psi_token"], coe=10.0, kernel_size=3
            ).cpu()
        synchronize(device)

    return run


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_times(calls: dict[str, Callable], images, queries, repeats: int) -> dict[str, float]:
    for call in calls.values():  # warm-up
        call(images, queries)
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call(images, queries)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def peak_extra_memory(call: Callable, images, queries, device: torch.device) -> int:
    """Bytes allocated at the peak of ``call`` above what was allocated before it."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        call(images, queries)
        return torch.cuda.max_memory_allocated() - before
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        call(images, queries)
    # raw allocator events (bytes > 0 allocated, < 0 freed); prof.events() folds them into ops
    events = sorted(
        (event.start_ns(), event.nbytes())
        for event in prof.profiler.kineto_results.events()
        if event.name() == "[memory]" and event.device_type() == torch.autograd.DeviceType.CPU
    )
    live = peak = 0
    for _, delta in events:
        live += delta
        peak = max(peak, live)
    return peak


def bench_model(
    name: str, device: torch.device, batch_sizes: list[int], repeats: int
) -> list[dict]:
    dtype = torch.float32
    model, _, preprocess = open_clip.create_model_and_transforms(
        name, pretrained=None, device=device
    )
    model.eval()
    if name in ATTENTION_POOLED:
        text_cfg = open_clip.get_model_config(name)["text_cfg"]
        tokenizer = stand_in_tokenizer(text_cfg["context_length"], text_cfg["vocab_size"])
        attributor = types.SimpleNamespace(
            layer=AttentionPoolDecomposition().default_layer(model.visual)
        )
        attribute = attention_pool_attribution_call(model, preprocess, tokenizer, device, dtype)
    else:
        tokenizer = open_clip.get_tokenizer(name)
        attributor = CLIPAttributor(
            model, preprocess=preprocess, tokenizer=tokenizer, batch_size=max(batch_sizes)
        )
        attribute = attribution_call(attributor, device)
    calls = {
        "baseline": baseline_call(model, preprocess, tokenizer, device, dtype),
        "attribution": attribute,
    }
    if getattr(attributor, "stops_early", False):
        calls["early"] = attribution_call(attributor, device, exact_parts=False)
    rows = []
    for batch_size in batch_sizes:
        images, queries = make_inputs(batch_size)
        times = median_times(calls, images, queries, repeats)
        memory = {
            key: peak_extra_memory(call, images, queries, device) for key, call in calls.items()
        }
        rows.append(
            dict(
                model=name,
                device=device.type,
                batch=batch_size,
                layer=attributor.layer,
                **{
                    "base_s": times["baseline"],
                    "attr_s": times["attribution"],
                    "time_ratio": times["attribution"] / times["baseline"],
                    "base_mib": memory["baseline"] / 2**20,
                    "attr_mib": memory["attribution"] / 2**20,
                    "mem_ratio": memory["attribution"] / memory["baseline"],
                    **(
                        {
                            "early_s": times["early"],
                            "early_ratio": times["early"] / times["baseline"],
                            "early_mib": memory["early"] / 2**20,
                            "early_mem_ratio": memory["early"] / memory["baseline"],
                        }
                        if "early" in calls
                        else {}
                    ),
                },
            )
        )
        print(f"  {name} {device.type} batch {batch_size}: done", file=sys.stderr, flush=True)
        print(markdown_table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    del model, attributor
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def markdown_table(rows: list[dict]) -> str:
    header = (
        "| model | device | batch | L' | baseline s | attribution s | time ratio | "
        "baseline peak MiB | attribution peak MiB | memory ratio | early-exit s | **early time ratio** | "
        "early peak MiB | **early memory ratio** |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )

    def early(r: dict) -> str:
        if "early_s" not in r:
            return "— | — | — | —"
        return f"{r['early_s']:.3f} | **{r['early_ratio']:.3f}** | {r['early_mib']:.1f} | **{r['early_mem_ratio']:.3f}**"

    lines = [
        f"| {r['model']} | {r['device']} | {r['batch']} | {r['layer']} | {r['base_s']:.3f} | "
        f"{r['attr_s']:.3f} | {r['time_ratio']:.3f} | {r['base_mib']:.1f} | {r['attr_mib']:.1f} | "
        f"{r['mem_ratio']:.3f} | {early(r)} |"
        for r in rows
    ]
    return "\n".join([header, *lines])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--devices", nargs="+", default=None, help="default: cpu, and cuda if available"
    )
    args = parser.parse_args(argv)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    logging.getLogger("api_prompt").setLevel(logging.ERROR)  # random-weight warnings are expected

    load_before = os.getloadavg()[0]
    rows = []
    for device in devices:
        for name in args.models:
            rows.extend(bench_model(name, torch.device(device), args.batch_sizes, args.repeats))
    command = " ".join(
        shlex.quote(part) for part in ["python", "benchmarks/bench_clip.py", *sys.argv[1:]]
    )
    print(
        f"`{command}` (open_clip {open_clip.__version__}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU threads, median of {args.repeats} interleaved, random weights, fp32; "
        f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after)\n"
    )
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
