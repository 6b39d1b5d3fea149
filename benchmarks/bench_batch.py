"""End-to-end batch throughput vs. attribution alone (how much the pipeline costs on top).

Generates realistic JPEG photos (default 640×480), then measures at the same batch size:

- **attribution only**: ``prompter.attribute(images, queries)`` on images already decoded in
  memory (the model's own preprocessing included), batch after batch;
- **end to end**: :func:`api_prompt.batch.run` from a JSONL file: reading, decoding, the model,
  the overlay, encoding (``--format auto``: JPEG for these JPEG inputs) and atomic writes,
  manifest and run.json;
- with ``--ray``, **the command, local vs Ray engine**: ``api-prompt batch`` run as a user runs it
  (a fresh process that loads the model from its options; here a checkpoint of the same random
  weights), once with ``--engine local`` and once with ``--engine ray --address`` of a local Ray
  instance started before the timing, as a running cluster would be. Each Ray run starts its
  actor, which imports torch and loads the model. Timed at each of ``--ray-samples``; the
  samples/s between two sizes (the *marginal* rate) is the engines' throughput once running,
  the rest is the per-run start-up.

The ratio end-to-end / attribution-only says how well decoding and encoding hide behind the
model (1.0 = completely). Targets on CPU: >= 0.85; Ray / local >= 0.8.

With ``--ceiling``, **the pipeline's own ceiling**: the model's time set to zero (an instant
attributor returning a fixed 24×24 CLIP map, :class:`InstantAttributor`), ``api_prompt.batch.run``
against the bare loop over the same JPEGs (``PIL.Image.open(...).convert("RGB")``, the overlay of a
ready mask, JPEG encoding at quality 95 in memory: ``bare_item``), both on the same cores, the
process pinned with ``sched_setaffinity`` to 1, 2, ... and all cores (``--cores``), the bare loop
on as many threads as cores and the pipeline with its default ``workers`` for those cores
(``runner.default_workers``: one per core; the writes wait for fsync in threads of their own).
Target: pipeline / bare >= 0.85 at every core count. samples/s per core of the bare loop is what a
GPU's attribution rate divides by to give the cores it needs.

Usage::

    python benchmarks/bench_batch.py                        # random ViT-B-16, 64 images, CPU
    python benchmarks/bench_batch.py --model fixture        # the tiny test model
    python benchmarks/bench_batch.py --samples 32 --batch-size 16 --repeats 3
    python benchmarks/bench_batch.py --samples 32 --batch-size 16 --repeats 3 --ray --ray-samples 32,128
    python benchmarks/bench_batch.py --samples 256 --batch-size 32 --device cuda
    python benchmarks/bench_batch.py --ceiling --samples 128 --repeats 5 --cores 1,2,all
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
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

QUERIES = [
    "What color is the car?",
    "How many people are there?",
    "What is on the table?",
    "Is the dog sleeping?",
    "What does the sign say?",
]


def make_photo(index: int, size: tuple[int, int]) -> Image.Image:
    """A photo-like image: smooth colour gradients, shapes, blur and sensor noise."""
    rng = np.random.default_rng(index)
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack(
        [
            127 + 100 * np.sin(x / rng.uniform(40, 120) + rng.uniform(0, 6)),
            127 + 100 * np.cos(y / rng.uniform(40, 120) + rng.uniform(0, 6)),
            127 + 100 * np.sin((x + y) / rng.uniform(60, 200)),
        ],
        axis=-1,
    )
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
            handle.write(
                json.dumps(
                    {
                        "id": f"{i:05d}",
                        "image": f"images/{i:05d}.jpg",
                        "question": QUERIES[i % len(QUERIES)],
                    }
                )
                + "\n"
            )
    return folder / "questions.jsonl"


def build_prompter(model: str, device: str, batch_size: int) -> Prompter:
    import torch

    from api_prompt.attribution.clip import CLIPAttributor

    torch.manual_seed(0)  # the same random weights in every process (Ray actors build their own)
    if model == "fixture":
        attributor = CLIPAttributor(
            f"local-dir:{REPO / 'tests/fixtures/clip_reference/model'}",
            layer=4,
            device=device,
            batch_size=batch_size,
        )
        return Prompter(attributor=attributor)
    import open_clip

    network, _, preprocess = open_clip.create_model_and_transforms(model, pretrained=None)
    attributor = CLIPAttributor(
        network,
        preprocess=preprocess,
        tokenizer=open_clip.get_tokenizer(model),
        device=device,
        batch_size=batch_size,
    )
    return Prompter(attributor=attributor)


def attribution_only(
    prompter: Prompter, source: Path, batch_size: int, limit: int
) -> tuple[float, int]:
    rows = [json.loads(line) for line in source.read_text().splitlines()][:limit]
    images = []
    for row in rows:
        with Image.open(source.parent / row["image"]) as image:
            images.append(image.convert("RGB"))
    queries = [row["question"] for row in rows]
    started = time.perf_counter()
    for start in range(0, len(images), batch_size):
        prompter.attribute(images[start : start + batch_size], queries[start : start + batch_size])
    return time.perf_counter() - started, len(images)


class InstantAttributor:
    """No model: every image gets the same fixed 24×24 ``psi_cls``/``psi_comp`` (ViT-L-14-336's
    grid), so the pipeline runs as if the GPU took no time. The Prompter's recipe still runs."""

    name = "instant"
    default_recipe = "clip-soft-or"
    n_layers = None

    def __init__(self, grid: int = 24) -> None:
        rng = np.random.default_rng(0)
        self.parts = {
            "psi_cls": rng.random((grid, grid), dtype=np.float32),
            "psi_comp": rng.random((grid, grid), dtype=np.float32),
        }

    def attribute(self, images, queries):
        from api_prompt.attention_map import AttentionMap

        return [
            AttentionMap(
                None, dict(self.parts), image.size, (0.0, 0.0, *map(float, image.size)), query=query
            )
            for image, query in zip(images, queries)
        ]

    def describe(self) -> dict:
        return {"backend": self.name}


def bare_item(path: Path, attention_map, overlay) -> int:
    """Decode, overlay, encode one image in memory: the floor under any pipeline (bytes out)."""
    from api_prompt.batch.runner import encode_image

    with Image.open(path) as image:
        rgb = image.convert("RGB")
    return len(encode_image(overlay.apply(rgb, attention_map), "JPEG", 95))


def pipeline_ceiling(source: Path, folder: Path, args: argparse.Namespace) -> None:
    """samples/s of ``api_prompt.batch.run`` with an instant model vs the bare loop, per core count."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from api_prompt.overlay import Overlay

    every = sorted(os.sched_getaffinity(0))
    counts = sorted({len(every) if v == "all" else int(v) for v in args.cores.split(",")})
    prompter = Prompter(attributor=InstantAttributor())
    paths = [source.parent / json.loads(line)["image"] for line in source.read_text().splitlines()][
        : args.samples
    ]
    with Image.open(paths[0]) as first:
        ready = prompter.combine(InstantAttributor().attribute([first], ["q"])[0])
    overlay = Overlay()
    times: dict[tuple[str, int], list[float]] = {}
    try:
        for repeat in range(args.repeats + 1):  # the first round warms up, not counted
            for cores in counts:
                os.sched_setaffinity(0, every[:cores])
                torch.set_num_threads(cores)
                with ThreadPoolExecutor(cores) as pool:
                    started = time.perf_counter()
                    list(pool.map(lambda path: bare_item(path, ready, overlay), paths))
                    bare = time.perf_counter() - started
                started = time.perf_counter()
                summary = run(
                    source,
                    folder / f"ceiling-{cores}-{repeat}",
                    prompter,
                    batch_size=args.batch_size,
                    limit=args.samples,
                    workers=args.workers,
                    image_format="auto",
                    progress=False,
                )
                piped = time.perf_counter() - started
                assert summary.ok == len(paths), summary.errors
                if repeat:
                    times.setdefault(("bare", cores), []).append(bare)
                    times.setdefault(("pipeline", cores), []).append(piped)
    finally:
        os.sched_setaffinity(0, every)
    print(
        f"\nPipeline ceiling (instant attributor: model time 0), {len(paths)} JPEGs, batch {args.batch_size}, "
        f"median of {args.repeats} interleaved repeats:\n"
    )
    print(
        "| cores | bare loop samples/s | per core | `batch.run` samples/s | per core | workers | **pipeline / bare** | per repeat |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---|")
    for cores in counts:
        bare, piped = (
            statistics.median(times["bare", cores]),
            statistics.median(times["pipeline", cores]),
        )
        ratios = [b / p for b, p in zip(times["bare", cores], times["pipeline", cores])]
        workers = args.workers or min(32, cores)  # default_workers() under this affinity
        print(
            f"| {cores} | {len(paths) / bare:.1f} | {len(paths) / bare / cores:.1f} | {len(paths) / piped:.1f} | "
            f"{len(paths) / piped / cores:.1f} | {workers} | **{bare / piped:.3f}** | "
            f"{', '.join(f'{r:.3f}' for r in ratios)} |"
        )


def save_model(model: str, folder: Path) -> list[str]:
    """``api-prompt batch`` options that load ``build_prompter``'s model (the same weights)."""
    if model == "fixture":
        return [
            "--model",
            f"local-dir:{REPO / 'tests/fixtures/clip_reference/model'}",
            "--layer",
            "4",
        ]
    from safetensors.torch import save_file

    network = build_prompter(model, "cpu", 1).attributor.model
    save_file(
        {k: v.contiguous() for k, v in network.state_dict().items()}, folder / "weights.safetensors"
    )
    return ["--model", model, "--pretrained", str(folder / "weights.safetensors")]


def time_command(
    source: Path,
    out: Path,
    model_options: list[str],
    args: argparse.Namespace,
    limit: int,
    engine_options: list[str],
) -> float:
    """Wall time of one ``api-prompt batch`` command (a fresh process)."""
    command = [
        sys.executable,
        "-c",
        "from api_prompt.cli.app import main; main()",
        "batch",
        str(source),
        "--out",
        str(out),
        *model_options,
        "--device",
        args.device,
        "--batch-size",
        str(args.batch_size),
        "--format",
        args.format,
        "--limit",
        str(limit),
        "-q",
        *engine_options,
    ]
    if args.workers is not None:
        command += ["--workers", str(args.workers)]
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    done = sum(
        json.loads(line)["status"] == "ok"
        for line in (out / "manifest.jsonl").read_text().splitlines()
    )
    assert done == limit, f"{done} of {limit} samples done by {command}"
    return seconds


def compare_engines(source: Path, folder: Path, args: argparse.Namespace, sizes: list[int]) -> None:
    """Time ``api-prompt batch`` with each engine at each size; print the table."""
    import ray

    model_options = save_model(args.model, folder)
    started = time.perf_counter()
    ray.init(
        num_cpus=os.cpu_count(),
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    ray_start = time.perf_counter() - started
    engines = {
        "local": [],
        "ray": ["--engine", "ray", "--address", ray.get_runtime_context().gcs_address],
    }
    times: dict[tuple[str, int], list[float]] = {
        (engine, size): [] for engine in engines for size in sizes
    }
    try:
        for repeat in range(args.repeats):  # interleaved, so load drifts hit all alike
            for size in sizes:
                for engine, options in engines.items():
                    out = folder / f"cli-{engine}-{size}-{repeat}"
                    times[engine, size].append(
                        time_command(source, out, model_options, args, size, options)
                    )
    finally:
        ray.shutdown()
    median = {key: statistics.median(values) for key, values in times.items()}
    print(
        "\n`api-prompt batch`, model load included, Ray started once before (as a running cluster):\n"
    )
    print("| samples | local s | Ray s | Ray / local samples/s | per repeat |")
    print("|---:|---:|---:|---:|---|")
    for size in sizes:
        ratios = [local / remote for local, remote in zip(times["local", size], times["ray", size])]
        print(
            f"| {size} | {median['local', size]:.2f} | {median['ray', size]:.2f} | "
            f"**{median['local', size] / median['ray', size]:.3f}** | {', '.join(f'{r:.3f}' for r in ratios)} |"
        )
    if len(sizes) > 1:
        small, large = min(sizes), max(sizes)
        rate = {
            engine: (large - small) / (median[engine, large] - median[engine, small])
            for engine in engines
        }
        print(
            f"\nmarginal samples/s from {small} to {large} samples: local {rate['local']:.2f}, "
            f"Ray {rate['ray']:.2f}, **ratio {rate['ray'] / rate['local']:.3f}**"
        )
        fixed = {engine: median[engine, small] - small / rate[engine] for engine in engines}
        print(
            f"start-up per run (time at {small} samples less {small} / marginal rate): "
            f"local {fixed['local']:.1f} s, Ray {fixed['ray']:.1f} s"
        )
    print(f"starting Ray itself (`ray.init`, once, outside the runs): {ray_start:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", default="ViT-B-16", help="open_clip name (random weights) or 'fixture'"
    )
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--size", default="640x480", help="WxH of the generated JPEGs")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--format", default="auto", choices=["auto", "png", "jpg"])
    parser.add_argument(
        "--ray",
        action="store_true",
        help="also time `api-prompt batch` with --engine local and --engine ray",
    )
    parser.add_argument(
        "--ray-samples",
        default=None,
        help="comma-separated sample counts for --ray (default: --samples)",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="interleaved repeats; medians are reported"
    )
    parser.add_argument(
        "--ceiling",
        action="store_true",
        help="only the pipeline's ceiling: an instant attributor vs the bare decode/overlay/encode loop",
    )
    parser.add_argument(
        "--cores", default="1,2,all", help="core counts for --ceiling (comma-separated, 'all')"
    )
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    size = tuple(int(v) for v in args.size.lower().split("x"))
    ray_sizes = sorted({int(v) for v in (args.ray_samples or str(args.samples)).split(",")})

    import torch

    folder = Path(tempfile.mkdtemp(prefix="bench_batch_"))
    try:
        source = make_dataset(folder / "data", max([args.samples, *ray_sizes]), size)
        if args.ceiling:
            print(
                f"`python benchmarks/bench_batch.py {' '.join(sys.argv[1:])}`  \n{os.cpu_count()} CPUs, "
                f"load average {load_before:.2f} before the run, JPEGs {size[0]}×{size[1]}"
            )
            pipeline_ceiling(source, folder, args)
            return
        prompter = build_prompter(args.model, args.device, args.batch_size)
        prompter.describe()  # hash the weights outside the timing
        warm = make_photo(0, size)
        prompter.attribute([warm] * min(args.batch_size, 4), QUERIES[:1] * min(args.batch_size, 4))

        only_times, full_times, ratios = [], [], []
        for repeat in range(args.repeats):  # interleaved, so load drifts hit all alike
            only_seconds, count = attribution_only(prompter, source, args.batch_size, args.samples)
            only_times.append(only_seconds)
            started = time.perf_counter()
            summary = run(
                source,
                folder / f"out{repeat}",
                prompter,
                batch_size=args.batch_size,
                limit=args.samples,
                workers=args.workers,
                image_format=args.format,
                progress=False,
            )
            full_times.append(time.perf_counter() - started)
            ratios.append(only_seconds / full_times[-1])
            assert summary.ok == count, summary.errors
        only_seconds, full_seconds = statistics.median(only_times), statistics.median(full_times)

        only_rate, full_rate = count / only_seconds, count / full_seconds
        command = "python benchmarks/bench_batch.py " + " ".join(sys.argv[1:])
        from api_prompt.batch.runner import default_workers

        workers = args.workers if args.workers is not None else default_workers()
        print(
            f"`{command.strip()}`  \n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"load average {load_before:.2f} before the run, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"device {args.device}, model {args.model}, JPEGs {size[0]}×{size[1]}, batch {args.batch_size}, "
            f"{workers} workers, output {args.format}, median of {args.repeats}\n"
        )
        print(f"{count} samples:\n")
        print("| mode | seconds | samples/s |")
        print("|---|---:|---:|")
        print(
            f"| attribution only (decoded images in memory) | {only_seconds:.2f} | {only_rate:.2f} |"
        )
        print(
            f"| end to end (`api_prompt.batch.run`, files in, files out) | {full_seconds:.2f} | {full_rate:.2f} |"
        )
        print(f"| **ratio** end to end / attribution only | | **{full_rate / only_rate:.3f}** |")
        print()
        print("per repeat, end to end / attribution only: " + ", ".join(f"{r:.3f}" for r in ratios))
        if args.ray:
            compare_engines(source, folder, args, ray_sizes)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
