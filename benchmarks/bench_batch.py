"""End-to-end batch throughput vs. attribution alone (how much the pipeline costs on top).

Generates realistic JPEG photos (default 640×480), then measures at the same batch size:

- **attribution only**: ``prompter.attribute(images, queries)`` on images already decoded in
  memory (the model's own preprocessing included), batch after batch;
- **end to end**: :func:`api_prompt.batch.run` from a JSONL file: reading, decoding, the model,
  the overlay, encoding (``--format auto``: JPEG for these JPEG inputs) and atomic writes,
  manifest and run.json;
- with ``--ray``, **end to end on Ray**: the same with ``engine="ray"`` on a local Ray instance
  started before the timing (each run starts its actors and loads their model: included).

The ratio end-to-end / attribution-only says how well decoding and encoding hide behind the
model (1.0 = completely). Targets on CPU: >= 0.85; Ray / local >= 0.8.

Usage::

    python benchmarks/bench_batch.py                        # random ViT-B-16, 64 images, CPU
    python benchmarks/bench_batch.py --model fixture        # the tiny test model
    python benchmarks/bench_batch.py --samples 32 --batch-size 16 --repeats 3 --ray
    python benchmarks/bench_batch.py --samples 256 --batch-size 32 --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from api_prompt.batch import run  # noqa: E402
from api_prompt.prompter import Prompter  # noqa: E402

QUERIES = ["What color is the car?", "How many people are there?", "What is on the table?",
           "Is the dog sleeping?", "What does the sign say?"]


def make_photo(index: int, size: tuple[int, int]) -> Image.Image:
    """A photo-like image: smooth colour gradients, shapes, blur and sensor noise."""
    rng = np.random.default_rng(index)
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([
        127 + 100 * np.sin(x / rng.uniform(40, 120) + rng.uniform(0, 6)),
        127 + 100 * np.cos(y / rng.uniform(40, 120) + rng.uniform(0, 6)),
        127 + 100 * np.sin((x + y) / rng.uniform(60, 200)),
    ], axis=-1)
    image = Image.fromarray(base.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        box = [x0, y0, x0 + rng.integers(20, width // 3), y0 + rng.integers(20, height // 3)]
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    image = image.filter(ImageFilter.GaussianBlur(1.5))
    noise = rng.normal(0, 6, (height, width, 3))
    return Image.fromarray((np.asarray(image, np.float32) + noise).clip(0, 255).astype(np.uint8))


def make_dataset(folder: Path, samples: int, size: tuple[int, int]) -> Path:
    (folder / "images").mkdir(parents=True)
    with open(folder / "questions.jsonl", "w") as handle:
        for i in range(samples):
            make_photo(i, size).save(folder / "images" / f"{i:05d}.jpg", quality=90)
            handle.write(json.dumps({"id": f"{i:05d}", "image": f"images/{i:05d}.jpg",
                                     "question": QUERIES[i % len(QUERIES)]}) + "\n")
    return folder / "questions.jsonl"


def build_prompter(model: str, device: str, batch_size: int) -> Prompter:
    import torch

    from api_prompt.attribution.clip import CLIPAttributor

    torch.manual_seed(0)   # the same random weights in every process (Ray actors build their own)
    if model == "fixture":
        attributor = CLIPAttributor(f"local-dir:{REPO / 'tests/fixtures/clip_reference/model'}",
                                    layer=4, device=device, batch_size=batch_size)
        return Prompter(attributor=attributor)
    import open_clip

    network, _, preprocess = open_clip.create_model_and_transforms(model, pretrained=None)
    attributor = CLIPAttributor(network, preprocess=preprocess, tokenizer=open_clip.get_tokenizer(model),
                                device=device, batch_size=batch_size)
    return Prompter(attributor=attributor)


def attribution_only(prompter: Prompter, source: Path, batch_size: int) -> tuple[float, int]:
    rows = [json.loads(line) for line in source.read_text().splitlines()]
    images = []
    for row in rows:
        with Image.open(source.parent / row["image"]) as image:
            images.append(image.convert("RGB"))
    queries = [row["question"] for row in rows]
    started = time.perf_counter()
    for start in range(0, len(images), batch_size):
        prompter.attribute(images[start:start + batch_size], queries[start:start + batch_size])
    return time.perf_counter() - started, len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ViT-B-16", help="open_clip name (random weights) or 'fixture'")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--size", default="640x480", help="WxH of the generated JPEGs")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--format", default="auto", choices=["auto", "png", "jpg"])
    parser.add_argument("--ray", action="store_true", help="also time engine='ray' on a local Ray instance")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats; medians are reported")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.lower().split("x"))

    import torch

    folder = Path(tempfile.mkdtemp(prefix="bench_batch_"))
    try:
        source = make_dataset(folder / "data", args.samples, size)
        prompter = build_prompter(args.model, args.device, args.batch_size)
        prompter.describe()                                   # hash the weights outside the timing
        warm = make_photo(0, size)
        prompter.attribute([warm] * min(args.batch_size, 4), QUERIES[:1] * min(args.batch_size, 4))

        if args.ray:
            import functools

            import ray

            from api_prompt.batch import LazyPrompter

            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
            lazy = LazyPrompter(functools.partial(build_prompter, args.model, args.device, args.batch_size), {})

        only_times, full_times, ray_times, ratios, ray_ratios = [], [], [], [], []
        for repeat in range(args.repeats):  # interleaved, so load drifts hit all alike
            only_seconds, count = attribution_only(prompter, source, args.batch_size)
            only_times.append(only_seconds)
            started = time.perf_counter()
            summary = run(source, folder / f"out{repeat}", prompter, batch_size=args.batch_size,
                          workers=args.workers, image_format=args.format, progress=False)
            full_times.append(time.perf_counter() - started)
            ratios.append(only_seconds / full_times[-1])
            assert summary.ok == count, summary.errors
            if args.ray:
                started = time.perf_counter()
                summary = run(source, folder / f"ray{repeat}", lazy, batch_size=args.batch_size,
                              workers=args.workers, image_format=args.format, progress=False, engine="ray")
                ray_times.append(time.perf_counter() - started)
                ray_ratios.append(full_times[-1] / ray_times[-1])
                assert summary.ok == count, summary.errors
        only_seconds, full_seconds = statistics.median(only_times), statistics.median(full_times)
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    only_rate, full_rate = count / only_seconds, count / full_seconds
    command = "python benchmarks/bench_batch.py " + " ".join(sys.argv[1:])
    workers = args.workers if args.workers is not None else min(8, os.cpu_count() or 1)
    print(f"`{command.strip()}`  \n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), device {args.device}, "
          f"model {args.model}, {count} JPEGs {size[0]}×{size[1]}, batch {args.batch_size}, "
          f"{workers} workers, output {args.format}, median of {args.repeats}\n")
    print("| mode | seconds | samples/s |")
    print("|---|---:|---:|")
    print(f"| attribution only (decoded images in memory) | {only_seconds:.2f} | {only_rate:.2f} |")
    print(f"| end to end (`api_prompt.batch.run`, files in, files out) | {full_seconds:.2f} | {full_rate:.2f} |")
    print(f"| **ratio** end to end / attribution only | | **{full_rate / only_rate:.3f}** |")
    if ray_times:
        ray_seconds = statistics.median(ray_times)
        print(f"| end to end, `engine=\"ray\"` (1 actor per machine, model load included) | {ray_seconds:.2f} | "
              f"{count / ray_seconds:.2f} |")
        print(f"| **ratio** Ray / local engine | | **{full_seconds / ray_seconds:.3f}** |")
    print()
    print("per repeat, end to end / attribution only: " + ", ".join(f"{r:.3f}" for r in ratios))
    if ray_ratios:
        print("per repeat, Ray / local: " + ", ".join(f"{r:.3f}" for r in ray_ratios))


if __name__ == "__main__":
    main()
