"""Every CUDA path checked against the CPU, and the GPU figures, in one command.

    python benchmarks/gpu_suite.py                       # on a GPU: checks + figures (H200: < 8 min)
    python benchmarks/gpu_suite.py --only checks         # the checks alone
    python benchmarks/gpu_suite.py --device cpu --tiny   # the same code on tiny models (CI, ~30 s)

**Checks** (part a): each backend runs on ``--device`` in each precision and is compared with
the same weights on the CPU in float32 (the reference), on tiny and on real-shape random models:

- CLIP (class token): the fixture's 6-block ViT; ViT-B-16 and ViT-L-14-336 shapes. Both the full
  computation and the early exit (``exact_parts=False``), which must give the same mask on the
  device too (≤ 1e-6).
- SigLIP (attention pool): ``assets/synthshapes-siglip``; the ViT-B-16-SigLIP shape (its
  Hugging Face tokenizer cannot be downloaded: an offline stand-in of the same shape).
- Decoders (LLaVA-1.5, LLaVA-NeXT, Qwen2-VL): tiny models, and the real image geometry with a
  reduced width (a float32 CPU reference of a 7B model would not fit the time), with SDPA, eager
  attention and, when ``flash_attn`` is installed, flash attention 2 (fp16/bf16 only). The maps are
  compared on the prefill pass (one new token: the whole prompt through every layer), and in
  float32 also over 4 generated tokens with the key/value cache (the answers must agree too).
- The overlay runs on the CPU only (numpy and Pillow: nothing of it runs on CUDA), so it has no
  CUDA path to check.

Tolerances. float32: masks and parts within 1e-4 (parts relative to their range), TF32 off
(``allow_tf32=False`` for matmuls and convolutions: TF32 keeps 10 mantissa bits, errors ~1e-3).
fp16 / bf16: every matmul rounds to 11 / 8 significant bits (unit roundoff u = 4.9e-4 / 3.9e-3),
the residual stream accumulates it over the blocks, and the mask's min-max + enhance (a sigmoid of
gain ``enhance / (4·std)``, ~10 on these maps) multiplies a part's error relative to its range
by up to ~10; so a part is asked to keep its *shape* (Pearson correlation with the float32 CPU part
≥ 0.999 fp16, ≥ 0.99 bf16) and the mask to stay within a mean |Δ| of 0.02 (fp16) / 0.05 (bf16)
of the float32 mask, i.e. ~5 / ~13 of 255 grey levels on average. ``--device cpu`` measured bf16
on the CPU against these (the table in docs/performance-gpu.md).

**Figures** (part b), medians of interleaved repeats:

- CLIP ViT-L-14-336 (random weights, ``--clip-dtype``): images/s of a plain forward
  (``encode_image`` + ``encode_text`` of pixels already on the device) and of the attribution on
  the same pixels, full and early exit, at batch 1, 8 and 64; and ``CLIPAttributor.attribute`` from
  PIL images (its CPU preprocessing included);
- the 7B decoder shapes (random weights built on the GPU in bf16; ``benchmarks/bench_decoder.py``'s
  ``7b`` presets): map vs ``generate`` time and peak memory;
- ``api_prompt.batch.run`` (what ``api-prompt batch`` runs) end to end vs attribution alone;
- the proxy (``api-prompt serve`` in front of a fast local upstream, as ``bench_serve.py``):
  requests/s.

Writes ``--out`` (JSON: every check and figure, the machine) and prints the README table.
Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import copy
import gc
import importlib.util
import json
import logging
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

import open_clip  # noqa: E402

from api_prompt.attribution.clip import CLIPAttributor  # noqa: E402

FIXTURE_MODEL = REPO / "tests" / "fixtures" / "clip_reference" / "model"
SIGLIP_ASSET = REPO / "assets" / "synthshapes-siglip"
CLIP_ASSET = REPO / "assets" / "synthshapes-clip"

#: dtype name -> (mask mean |Δ|, part correlation) bounds against the float32 CPU reference
LOW_PRECISION = {"fp16": (0.02, 0.999), "bf16": (0.05, 0.99)}
FP32_TOLERANCE = 1e-4
EARLY_EXIT_TOLERANCE = 1e-6
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
QUESTIONS = [
    "What color is the car?",
    "How many people are there?",
    "What does the sign say?",
    "Where is the dog?",
]
SIZES = [(640, 480), (480, 640), (500, 500), (800, 450)]


# -- helpers ---------------------------------------------------------------------------------------


def photos(count: int, seed: int = 0) -> list[Image.Image]:
    """Photo-like test images of mixed sizes (benchmarks/bench_batch.py's generator)."""
    from benchmarks.bench_batch import make_photo

    return [make_photo(seed + i, SIZES[i % len(SIZES)]) for i in range(count)]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@contextmanager
def no_tf32():
    """float32 means float32: TF32 off for matmuls and cuDNN convolutions (restored after)."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def dtypes_for(device: torch.device) -> list[str]:
    """fp32 always; fp16 only on CUDA (the CLIP backend refuses it on the CPU); bf16 everywhere."""
    return ["fp32", "fp16", "bf16"] if device.type == "cuda" else ["fp32", "bf16"]


def compare(reference: list, candidate: list, dtype: str, parts: tuple[str, ...]) -> dict[str, Any]:
    """Mask and part differences of two lists of maps, and whether they are within the tolerance."""
    mask_max = max(
        float(np.abs(r.mask - c.mask).max()) for r, c in zip(reference, candidate, strict=True)
    )
    mask_mean = max(float(np.abs(r.mask - c.mask).mean()) for r, c in zip(reference, candidate))
    part_error, correlation = 0.0, 1.0
    for r, c in zip(reference, candidate):
        for name in parts:
            a, b = r.parts[name].astype(np.float64), c.parts[name].astype(np.float64)
            span = float(np.ptp(a)) or 1.0
            part_error = max(part_error, float(np.abs(a - b).max()) / span)
            if a.std() > 0 and b.std() > 0:
                correlation = min(correlation, float(np.corrcoef(a.ravel(), b.ravel())[0, 1]))
    if dtype == "fp32":
        ok = mask_max <= FP32_TOLERANCE and part_error <= FP32_TOLERANCE
        tolerance = f"mask max |Δ| and part max |Δ|/range <= {FP32_TOLERANCE:g}"
    else:
        mean_bound, correlation_bound = LOW_PRECISION[dtype]
        ok = mask_mean <= mean_bound and correlation >= correlation_bound
        tolerance = f"mask mean |Δ| <= {mean_bound:g}, part correlation >= {correlation_bound:g}"
    return dict(
        mask_max=mask_max,
        mask_mean=mask_mean,
        part_max_rel=part_error,
        part_correlation=correlation,
        tolerance=tolerance,
        ok=bool(ok),
    )


class Report:
    """Checks and figures, printed as they come and written to JSON at the end."""

    def __init__(self) -> None:
        self.checks: list[dict] = []
        self.figures: dict[str, Any] = {}

    def check(self, **row: Any) -> None:
        self.checks.append(row)
        status = "ok  " if row["ok"] else "FAIL"
        detail = ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in row.items()
            if k not in ("ok", "tolerance")
        )
        print(f"  [{status}] {detail}", file=sys.stderr, flush=True)


# -- part a: checks --------------------------------------------------------------------------------


def stand_in_tokenizer(name: str):
    from benchmarks.bench_clip import stand_in_tokenizer as make

    text_cfg = open_clip.get_model_config(name)["text_cfg"]
    return make(text_cfg["context_length"], text_cfg["vocab_size"])


def clip_models(tiny: bool) -> list[tuple[str, Callable[[], tuple]]]:
    """(label, builder -> (model on CPU fp32, preprocess, tokenizer, layer)) for the CLIP checks."""

    def fixture():
        model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{FIXTURE_MODEL}")
        return model.eval(), preprocess, open_clip.get_tokenizer(f"local-dir:{FIXTURE_MODEL}"), 4

    def siglip_asset():
        model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{SIGLIP_ASSET}")
        return model.eval(), preprocess, open_clip.get_tokenizer(f"local-dir:{SIGLIP_ASSET}"), None

    def random(name: str, tokenizer=None):
        def build():
            torch.manual_seed(0)
            model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None)
            return model.eval(), preprocess, tokenizer or open_clip.get_tokenizer(name), None

        return build

    models = [("clip fixture (6 blocks)", fixture), ("siglip synthshapes", siglip_asset)]
    if not tiny:
        models += [
            ("clip ViT-B-16", random("ViT-B-16")),
            ("clip ViT-L-14-336-quickgelu", random("ViT-L-14-336-quickgelu")),
            (
                "siglip ViT-B-16-SigLIP",
                random("ViT-B-16-SigLIP", stand_in_tokenizer("ViT-B-16-SigLIP")),
            ),
        ]
    return models


def check_clip(report: Report, device: torch.device, tiny: bool) -> None:
    images = photos(2 if tiny else 3)
    queries = QUESTIONS[: len(images)]
    for label, build in clip_models(tiny):
        model, preprocess, tokenizer, layer = build()
        reference_attributor = CLIPAttributor(
            model, preprocess=preprocess, tokenizer=tokenizer, layer=layer
        )
        parts = reference_attributor.decomposition.parts
        reference = reference_attributor.attribute(images, queries)
        for dtype in dtypes_for(device):
            moved = copy.deepcopy(model).to(device, DTYPES[dtype])
            attributor = CLIPAttributor(
                moved, preprocess=preprocess, tokenizer=tokenizer, layer=layer
            )
            with no_tf32() if dtype == "fp32" else _nothing():
                full = attributor.attribute(images, queries)
                report.check(
                    kind="clip",
                    model=label,
                    device=device.type,
                    dtype=dtype,
                    path="full",
                    **compare(reference, full, dtype, parts),
                )
                if attributor.stops_early:
                    early = attributor.attribute(images, queries, exact_parts=False)
                    report.check(
                        kind="clip",
                        model=label,
                        device=device.type,
                        dtype=dtype,
                        path="early exit vs full on the device",
                        **compare_early(full, early),
                    )
                    report.check(
                        kind="clip",
                        model=label,
                        device=device.type,
                        dtype=dtype,
                        path="early exit vs CPU fp32",
                        **compare(reference, early, dtype, ()),
                    )
            del moved, attributor
            free(device)
        del model


@contextmanager
def _nothing():
    yield


def compare_early(full: list, early: list) -> dict[str, Any]:
    difference = max(float(np.abs(f.mask - e.mask).max()) for f, e in zip(full, early, strict=True))
    return dict(
        mask_max=difference,
        tolerance=f"mask max |Δ| <= {EARLY_EXIT_TOLERANCE:g}",
        ok=difference <= EARLY_EXIT_TOLERANCE,
    )


def decoder_builders(tiny: bool) -> list[tuple[str, str, Callable, dict, int]]:
    """(family, shape label, builder, options, layer) for the decoder checks."""
    from tiny_decoders import tiny_llava_next, tiny_qwen_vl
    from tiny_hf import tiny_llava

    # a wider weight init than the models' 0.02, so random attention has contrast to compare
    sharp = dict(initializer_range=0.2)
    rows = [
        ("llava", "tiny", tiny_llava, dict(sharp), 2),
        ("llava-next", "tiny", tiny_llava_next, dict(sharp), 2),
        ("qwen2-vl", "tiny", tiny_qwen_vl, dict(sharp), 2),
    ]
    if not tiny:
        from benchmarks.bench_decoder import PRESETS

        for family in ("llava", "llava-next", "qwen2-vl"):
            builder, options, layer = PRESETS[family]["cpu-small"]
            rows.append(
                (
                    family,
                    "real image geometry, width 1024, 8 layers",
                    builder,
                    {**options, "initializer_range": 0.05},
                    layer,
                )
            )
    return rows


def build_decoder(builder, options: dict, attention: str, device: torch.device, dtype: torch.dtype):
    model, processor = builder(seed=0, attn_implementation=attention, **options)
    with torch.no_grad():  # random weights: keep EOS out of reach so every run generates in full
        eos = model.generation_config.eos_token_id
        model.lm_head.weight[eos] = -model.lm_head.weight.abs().max()
    return model.to(device, dtype).eval(), processor


def check_decoders(report: Report, device: torch.device, tiny: bool) -> None:
    from api_prompt.attribution.decoder import (
        LLaVAAttributor,
        LLaVANextAttributor,
        Qwen2VLAttributor,
    )

    attributors = {
        "llava": LLaVAAttributor,
        "llava-next": LLaVANextAttributor,
        "qwen2-vl": Qwen2VLAttributor,
    }
    images = photos(1 if tiny else 2)
    queries = QUESTIONS[: len(images)]
    flash = device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None
    for family, shape, builder, options, layer in decoder_builders(tiny):
        cls = attributors[family]
        cpu = torch.device("cpu")
        model, processor = build_decoder(builder, options, "eager", cpu, torch.float32)
        reference = {
            n: cls(model, processor, layer=layer, max_new_tokens=n, kernel_size=1)(images, queries)
            for n in (1, 4)
        }
        del model
        for dtype in dtypes_for(device):
            implementations = ["sdpa", "eager"] if dtype == "fp32" or not tiny else ["sdpa"]
            implementations += ["flash_attention_2"] if flash and dtype != "fp32" else []
            for attention in implementations:
                model, processor = build_decoder(builder, options, attention, device, DTYPES[dtype])
                with no_tf32() if dtype == "fp32" else _nothing():
                    for new_tokens in (1, 4) if dtype == "fp32" else (1,):
                        attributor = cls(
                            model, processor, layer=layer, max_new_tokens=new_tokens, kernel_size=1
                        )
                        maps = attributor(images, queries)
                        result = compare(reference[new_tokens], maps, dtype, ("attention",))
                        answers_agree = [m.answer for m in maps] == [
                            m.answer for m in reference[new_tokens]
                        ]
                        result["ok"] = result["ok"] and (answers_agree or new_tokens == 1)
                        report.check(
                            kind="decoder",
                            model=f"{family} ({shape})",
                            device=device.type,
                            dtype=dtype,
                            path=f"{attention}, {new_tokens} new token(s)",
                            answers_agree=answers_agree,
                            **result,
                        )
                del model
                free(device)
        if not flash:
            report.check(
                kind="decoder",
                model=f"{family} ({shape})",
                device=device.type,
                dtype="-",
                path="flash_attention_2: not run ("
                + ("flash_attn is not installed" if device.type == "cuda" else "not on CUDA")
                + ")",
                ok=True,
            )


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# -- part b: figures -------------------------------------------------------------------------------


def interleaved_medians(
    calls: dict[str, Callable[[], Any]], repeats: int, device: torch.device
) -> dict[str, float]:
    for call in calls.values():  # warm-up
        call()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            synchronize(device)
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def figure_clip(report: Report, device: torch.device, tiny: bool, dtype: str, repeats: int) -> None:
    """images/s: plain forward vs attribution (full, early exit) on device pixels, and from PIL."""
    if tiny:
        name = "fixture (6 blocks)"
        model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{FIXTURE_MODEL}")
        tokenizer = open_clip.get_tokenizer(f"local-dir:{FIXTURE_MODEL}")
        batches, layer = [1, 2, 4], 4
    else:
        name = "ViT-L-14-336-quickgelu"
        torch.manual_seed(0)
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None)
        tokenizer = open_clip.get_tokenizer(name)
        batches, layer = [1, 8, 64], None
    model = model.to(device, DTYPES[dtype]).eval()
    attributor = CLIPAttributor(
        model, preprocess=preprocess, tokenizer=tokenizer, layer=layer, batch_size=max(batches)
    )
    rows = []
    for batch in batches:
        images = photos(batch)
        queries = [QUESTIONS[i % len(QUESTIONS)] + f" ({i})" for i in range(batch)]
        pixels = torch.stack([preprocess(image) for image in images]).to(device, DTYPES[dtype])
        tokens = tokenizer(queries).to(device)

        def plain():
            with torch.no_grad():
                model.encode_image(pixels)
                model.encode_text(tokens)

        def attribution(exact: bool):
            def run():
                attributor._text_cache.clear()  # encode the text each time, as the plain forward does
                parts = attributor.parts_from_pixels(pixels, queries, exact_parts=exact)
                from api_prompt.maps import combine_clip

                combine_clip(
                    parts["psi_cls"].double(), parts["psi_comp"].double(), coe=10.0, kernel_size=3
                ).cpu()

            return run

        def from_images():
            attributor._text_cache.clear()
            attributor.attribute(images, queries, exact_parts=False)

        times = interleaved_medians(
            {
                "plain": plain,
                "full": attribution(True),
                "early": attribution(False),
                "from_images": from_images,
            },
            repeats,
            device,
        )
        row = dict(
            model=name,
            device=device.type,
            dtype=dtype,
            batch=batch,
            layer=attributor.layer,
            **{f"{key}_images_per_s": batch / value for key, value in times.items()},
        )
        row["full_over_plain_time"] = times["full"] / times["plain"]
        row["early_over_plain_time"] = times["early"] / times["plain"]
        rows.append(row)
        print(
            f"  clip {name} batch {batch}: plain {row['plain_images_per_s']:.1f}/s, early exit "
            f"{row['early_images_per_s']:.1f}/s ({row['early_over_plain_time']:.3f}×)",
            file=sys.stderr,
            flush=True,
        )
    report.figures["clip"] = rows
    del model, attributor
    free(device)


def figure_decoders(report: Report, device: torch.device, tiny: bool, repeats: int) -> None:
    """Map vs generate time and peak memory: the 7B shapes in bf16 on a GPU, tiny models otherwise."""
    from benchmarks.bench_decoder import ATTRIBUTORS, PRESETS, PeakMemory

    rows = []
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    for family in ("llava", "llava-next", "qwen2-vl"):
        if tiny:
            _, shape, builder, options, layer = next(
                row for row in decoder_builders(True) if row[0] == family
            )
        else:
            builder, options, layer = PRESETS[family]["7b"]
            shape = "7b"
        default_dtype = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with torch.device(
                device
            ):  # built where it runs, in its dtype: no CPU copy of 7B weights
                model, processor = builder(seed=0, **options)
        finally:
            torch.set_default_dtype(default_dtype)
        with torch.no_grad():
            eos = model.generation_config.eos_token_id
            model.lm_head.weight[eos] = -model.lm_head.weight.abs().max()
        model = model.to(device, dtype).eval()
        attributor = ATTRIBUTORS[family](
            model, processor, layer=layer, max_new_tokens=20, batch_size=4
        )
        for batch in (1,) if tiny else (1, 4):
            images, queries = photos(batch), [QUESTIONS[i % len(QUESTIONS)] for i in range(batch)]

            def generate():
                inputs = attributor.model_inputs(images, queries)
                with torch.inference_mode():
                    model.generate(
                        **inputs,
                        max_new_tokens=20,
                        do_sample=False,
                        num_beams=1,
                        use_cache=True,
                        pad_token_id=model.generation_config.pad_token_id,
                    )

            def api_map():
                attributor(images, queries)

            times = interleaved_medians({"generate": generate, "map": api_map}, repeats, device)
            peaks = {}
            for name, call in (("generate", generate), ("map", api_map)):
                gc.collect()
                with PeakMemory(device) as memory:
                    call()
                peaks[name] = memory.peak
            rows.append(
                dict(
                    family=family,
                    shape=shape,
                    dtype=str(dtype).replace("torch.", ""),
                    batch=batch,
                    layer=layer,
                    generate_s=times["generate"],
                    map_s=times["map"],
                    time_ratio=times["map"] / times["generate"],
                    generate_peak_mib=peaks["generate"] / 2**20,
                    map_peak_mib=peaks["map"] / 2**20,
                    memory_ratio=peaks["map"] / peaks["generate"],
                )
            )
            print(
                f"  decoder {family} {shape} batch {batch}: time {rows[-1]['time_ratio']:.3f}×, "
                f"memory {rows[-1]['memory_ratio']:.3f}×",
                file=sys.stderr,
                flush=True,
            )
        del model, attributor
        free(device)
    report.figures["decoders"] = rows


def clip_prompter_options(
    tiny: bool, device: torch.device, dtype: str, folder: Path
) -> tuple[Any, list[str]]:
    """A Prompter for the batch figure and the matching ``api-prompt`` model options."""
    from api_prompt.prompter import Prompter

    if tiny:
        model = f"local-dir:{CLIP_ASSET}"
        return Prompter(model=model, device=str(device), dtype=dtype), ["--model", model]
    from safetensors.torch import save_file

    torch.manual_seed(0)
    name = "ViT-L-14-336-quickgelu"
    network, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None)
    save_file(
        {k: v.contiguous() for k, v in network.state_dict().items()}, folder / "weights.safetensors"
    )
    attributor = CLIPAttributor(
        network.to(device, DTYPES[dtype]),
        preprocess=preprocess,
        tokenizer=open_clip.get_tokenizer(name),
        batch_size=64,
    )
    options = [
        "--model",
        name,
        "--pretrained",
        str(folder / "weights.safetensors"),
        "--dtype",
        dtype,
    ]
    return Prompter(attributor=attributor), options


def figure_batch_and_proxy(
    report: Report, device: torch.device, tiny: bool, dtype: str, repeats: int
) -> None:
    """samples/s of ``api_prompt.batch.run`` vs attribution alone; requests/s of the proxy."""
    from api_prompt.batch import run
    from benchmarks.bench_batch import attribution_only, make_dataset

    samples, batch_size = (8, 4) if tiny else (256, 64)
    folder = Path(tempfile.mkdtemp(prefix="gpu_suite_"))
    try:
        source = make_dataset(folder / "data", samples, (640, 480))
        prompter, model_options = clip_prompter_options(tiny, device, dtype, folder)
        prompter.describe()
        attribution_only(prompter, source, batch_size, batch_size)  # warm-up
        alone, end_to_end = [], []
        for repeat in range(repeats):
            seconds, count = attribution_only(prompter, source, batch_size, samples)
            alone.append(count / seconds)
            started = time.perf_counter()
            summary = run(
                source, folder / f"out{repeat}", prompter, batch_size=batch_size, progress=False
            )
            end_to_end.append(summary.ok / (time.perf_counter() - started))
            assert summary.ok == samples, summary.errors
        report.figures["batch"] = dict(
            samples=samples,
            batch=batch_size,
            cpus=os.cpu_count(),
            attribution_samples_per_s=statistics.median(alone),
            end_to_end_samples_per_s=statistics.median(end_to_end),
            ratio=statistics.median(end_to_end) / statistics.median(alone),
        )
        print(f"  batch: {report.figures['batch']}", file=sys.stderr, flush=True)
        del prompter
        free(device)
        report.figures["proxy"] = proxy_rate(
            source, model_options, device, tiny, batch_size, repeats
        )
        print(f"  proxy: {report.figures['proxy']}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def proxy_rate(
    source: Path,
    model_options: list[str],
    device: torch.device,
    tiny: bool,
    batch: int,
    repeats: int,
) -> dict[str, Any]:
    """requests/s through ``api-prompt serve`` (a subprocess) in front of bench_serve's fast upstream."""
    from benchmarks.bench_serve import _wait_until_serving, chat_body, drive, free_port

    rows = [json.loads(line) for line in source.read_text().splitlines()]
    bodies = [
        chat_body(
            "data:image/jpeg;base64,"
            + base64.b64encode((source.parent / row["image"]).read_bytes()).decode(),
            row["question"],
        )
        for row in rows
    ]
    clients = 4 if tiny else 128
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("API_PROMPT_UPSTREAM_KEY", None)
    upstream_port, proxy_port = free_port(), free_port()
    processes = []
    try:
        upstream = subprocess.Popen(
            [
                sys.executable,
                str(REPO / "benchmarks" / "bench_serve.py"),
                "--upstream-port",
                str(upstream_port),
            ],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        processes.append(upstream)
        upstream.stdout.readline()
        api_prompt = Path(sys.executable).with_name("api-prompt")
        processes.append(
            subprocess.Popen(
                [
                    str(api_prompt if api_prompt.exists() else "api-prompt"),
                    "serve",
                    "--upstream",
                    f"http://127.0.0.1:{upstream_port}/v1",
                    "--port",
                    str(proxy_port),
                    *model_options,
                    "--device",
                    device.type,
                    "--max-batch",
                    str(batch),
                    "--max-queue",
                    str(max(256, len(bodies))),
                    "-q",
                ],
                stderr=subprocess.DEVNULL,
                env=env,
            )
        )
        url = f"http://127.0.0.1:{proxy_port}/v1/chat/completions"
        _wait_until_serving(url)
        asyncio.run(drive(url, bodies[:clients], clients))  # warm-up
        rates = []
        for _ in range(repeats):
            seconds, _ = asyncio.run(drive(url, bodies, clients))
            rates.append(len(bodies) / seconds)
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
    return dict(
        requests=len(bodies),
        clients=clients,
        max_batch=batch,
        requests_per_s=statistics.median(rates),
    )


# -- output ----------------------------------------------------------------------------------------


def machine(device: torch.device) -> dict[str, Any]:
    info = dict(
        device=device.type,
        torch=torch.__version__,
        open_clip=open_clip.__version__,
        cpus=os.cpu_count(),
        cpu=platform.processor() or platform.machine(),
        load_average=os.getloadavg()[0],
        flash_attn=importlib.util.find_spec("flash_attn") is not None,
    )
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    import transformers

    info["transformers"] = transformers.__version__
    return info


def readme_table(report: Report, info: dict[str, Any]) -> str:
    where = info.get("gpu") or f"CPU ({info['cpus']} cores; no GPU)"
    failed = [c for c in report.checks if not c["ok"]]
    lines = [
        f"GPU suite on {where}, torch {info['torch']}, open_clip {info['open_clip']}: "
        f"{len(report.checks) - len(failed)} of {len(report.checks)} checks passed.",
        "",
        "| measure | value |",
        "|---|---:|",
    ]
    for row in report.figures.get("clip", []):
        lines.append(
            f"| CLIP {row['model']} {row['dtype']} batch {row['batch']}: plain / full / early-exit "
            f"images/s | {row['plain_images_per_s']:.0f} / {row['full_images_per_s']:.0f} / "
            f"{row['early_images_per_s']:.0f} |"
        )
        lines.append(
            f"| … early-exit / plain time; from PIL images (CPU preprocessing) images/s | "
            f"{row['early_over_plain_time']:.3f}; {row['from_images_images_per_s']:.0f} |"
        )
    for row in report.figures.get("decoders", []):
        lines.append(
            f"| {row['family']} {row['shape']} {row['dtype']} batch {row['batch']}: map / generate time; "
            f"peak memory | {row['time_ratio']:.3f}; {row['memory_ratio']:.3f} "
            f"({row['map_peak_mib']:.0f} MiB) |"
        )
    if "batch" in report.figures:
        b = report.figures["batch"]
        lines.append(
            f"| `api-prompt batch` samples/s end to end / attribution alone (batch {b['batch']}, "
            f"{b['cpus']} CPUs) | {b['end_to_end_samples_per_s']:.0f} / "
            f"{b['attribution_samples_per_s']:.0f} = {b['ratio']:.3f} |"
        )
    if "proxy" in report.figures:
        p = report.figures["proxy"]
        lines.append(
            f"| proxy requests/s ({p['clients']} clients, max batch {p['max_batch']}) | "
            f"{p['requests_per_s']:.0f} |"
        )
    if failed:
        lines += ["", "Failed checks:"] + [
            f"- {c['kind']} {c['model']} {c['dtype']} {c['path']}: {c}" for c in failed
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--tiny", action="store_true", help="tiny models only (CI: --device cpu --tiny)"
    )
    parser.add_argument("--only", choices=["checks", "figures"], default=None)
    parser.add_argument(
        "--clip-dtype",
        default=None,
        help="dtype of the CLIP figures (default fp16 on CUDA, else fp32)",
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="interleaved repeats (default 3, 1 with --tiny)"
    )
    parser.add_argument("--out", type=Path, default=Path("gpu_suite.json"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(
            "--device cuda but CUDA is not available here (use --device cpu --tiny to try the suite)"
        )
    repeats = args.repeats or (1 if args.tiny else 3)
    clip_dtype = args.clip_dtype or ("fp16" if device.type == "cuda" else "fp32")
    logging.getLogger("api_prompt").setLevel(logging.ERROR)  # random-weight warnings are expected
    started = time.perf_counter()
    report = Report()
    info = machine(device)
    timings = {}
    steps = []
    if args.only != "figures":
        steps += [
            ("checks: clip and siglip", lambda: check_clip(report, device, args.tiny)),
            ("checks: decoders", lambda: check_decoders(report, device, args.tiny)),
        ]
    if args.only != "checks":
        steps += [
            ("figures: clip", lambda: figure_clip(report, device, args.tiny, clip_dtype, repeats)),
            ("figures: decoders", lambda: figure_decoders(report, device, args.tiny, repeats)),
            (
                "figures: batch and proxy",
                lambda: figure_batch_and_proxy(report, device, args.tiny, clip_dtype, repeats),
            ),
        ]
    for label, step in steps:
        print(f"# {label}", file=sys.stderr, flush=True)
        step_started = time.perf_counter()
        step()
        timings[label] = time.perf_counter() - step_started
    info["seconds"] = time.perf_counter() - started
    info["step_seconds"] = timings
    command = "python benchmarks/gpu_suite.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    args.out.write_text(
        json.dumps(
            dict(
                command=command.strip(), machine=info, checks=report.checks, figures=report.figures
            ),
            indent=2,
            default=str,
        )
    )
    print(f"`{command.strip()}` ({info['seconds']:.0f} s; JSON: {args.out})\n")
    print(readme_table(report, info))
    return 0 if all(check["ok"] for check in report.checks) else 1


if __name__ == "__main__":
    sys.exit(main())
