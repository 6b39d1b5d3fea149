"""What the evaluation harness itself costs (a benchmark, not a test).

1. **Harness cost per sample**: ``evaluate()`` on synthshapes-mcq questions with a target that
   answers instantly, conditions ``original,api``, batch 16, the shipped small CLIP as the
   auxiliary model. The harness cost is the run's wall time minus the time spent inside the
   Prompter and inside the target; it is compared with the attribution time per sample
   (``Prompter.attribute`` alone, batch 16, same images). Torch runs on one thread; the harness
   decodes the next batch's images in its own thread meanwhile. The end-of-run summary
   (metrics, bootstrap, report, chart) is a fixed cost per run, reported separately.
2. **Scoring plus statistics for 100,000 predictions** on one core: ``summarize()`` (official
   scores, metrics, 2,000-resample paired bootstrap, McNemar) on 100,000 synthetic samples per
   benchmark family; for the judge-scored ones (mmvet, llava-bench) on 100,000 synthetic grades
   (the judge itself is not timed). Wall and CPU seconds are both reported: on a shared machine
   the CPU time is the steadier of the two.

Repeats are interleaved; medians are reported::

    OMP_NUM_THREADS=1 python -m benchmarks.bench_eval --repeats 5
    OMP_NUM_THREADS=1 python -m benchmarks.bench_eval --statistics-only --repeats 5
    OMP_NUM_THREADS=1 python -m benchmarks.bench_eval --model ViT-L-14-336 --questions 32 \
        --repeats 1 --skip-statistics      # the paper's architecture (random weights: same cost)
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CLIP = f"local-dir:{REPO / 'assets' / 'synthshapes-clip'}"


class Timed:
    """Wraps a callable object (or its ``batch``) and adds up the seconds spent inside."""

    def __init__(self, inner):
        self.inner, self.seconds = inner, 0.0
        self.batched_target = getattr(inner, "batched_target", False)  # used as it is by as_target

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.inner(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start

    def batch(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.inner.batch(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start

    def describe(self):
        return {"timed": True}


def instant_target(images, questions, **generation):
    return ["A"] * len(questions)


instant_target.batched_target = True


def harness_run(data: Path, prompter, n: int, batch: int) -> dict:
    from api_prompt.evaluation import evaluate, runner

    timed_prompter, timed_target = Timed(prompter), Timed(instant_target)
    end_of_run = []
    summary_step, write_step = runner._summary, runner.EvalFolder.write_outputs

    def timed(step):
        def call(*args, **kwargs):
            start = time.perf_counter()
            try:
                return step(*args, **kwargs)
            finally:
                end_of_run.append(time.perf_counter() - start)

        return call

    runner._summary, runner.EvalFolder.write_outputs = timed(summary_step), timed(write_step)
    try:
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            summary = evaluate(
                data,
                "synthshapes-mcq",
                timed_target,
                out,
                prompter=timed_prompter,
                batch_size=batch,
                limit=n,
                target_name="instant",
            )
            total = time.perf_counter() - start
    finally:
        runner._summary, runner.EvalFolder.write_outputs = summary_step, write_step
    assert summary["conditions"]["api"]["n"] == n
    assert summary["conditions"]["original"]["metrics"]["accuracy"] > 0  # the answers were "A"
    return {
        "total": total,
        "prompter": timed_prompter.seconds,
        "target": timed_target.seconds,
        "report": sum(end_of_run),
    }


def attribution_run(images, queries, prompter, batch: int) -> float:
    # Prompter.attribute (v2) where it exists; the attributor itself before that
    attribute = getattr(prompter, "attribute", None) or prompter.attributor.attribute
    start = time.perf_counter()
    for i in range(0, len(images), batch):
        attribute(images[i : i + batch], queries[i : i + batch])
    return time.perf_counter() - start


def statistics_run(n: int, benchmark: str, rng) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of ``summarize`` on ``n`` synthetic samples."""
    from api_prompt.evaluation import summarize

    if benchmark == "llava-bench":  # the judge's two scores (1-10) per answer, three categories
        samples = [
            {"category": ("conv", "detail", "complex")[i % 3], "gpt_answer": "r"} for i in range(n)
        ]
        answers = {
            c: rng.integers(1, 11, size=(n, 2)).astype(float).tolist() for c in ("original", "api")
        }
    elif benchmark == "mmvet":  # grades 0.0-1.0 in tenths, capabilities as in MM-Vet
        samples = [
            {"capability": ("rec", "ocr,rec", "know,rec", "gen,rec", "spat,ocr", "math,ocr")[i % 6]}
            for i in range(n)
        ]
        answers = {c: (rng.integers(0, 11, size=n) / 10).tolist() for c in ("original", "api")}
    if benchmark in ("llava-bench", "mmvet"):
        errors = {c: [None] * n for c in ("original", "api")}
        start, cpu = time.perf_counter(), time.process_time()
        summarize(benchmark, samples, answers, errors)
        return time.perf_counter() - start, time.process_time() - cpu
    if benchmark == "pope":
        samples = [
            {
                "answer": "yes" if rng.random() < 0.5 else "no",
                "category": ("random", "popular", "adversarial")[i % 3],
            }
            for i in range(n)
        ]
        pool = ["Yes.", "No, there is not.", "yes", "no"]
    elif benchmark == "mcq":
        samples = [
            {
                "answer": "ABCD"[i % 4],
                "A": "red",
                "B": "blue",
                "C": "green",
                "D": "yellow",
                "index": i % (n // 4) + 1_000_000 * (i // (n // 4)),
                "category": f"c{i % 20}",
            }
            for i in range(n)
        ]
        pool = ["A", "(B) blue", "The answer is C", "yellow", ""]
    else:  # textvqa
        samples = [{"answers": [str(rng.integers(0, 4)) for _ in range(10)]} for _ in range(n)]
        pool = ["1", "two", "three", "0", "a 3"]
    answers = {c: [pool[k] for k in rng.integers(0, len(pool), n)] for c in ("original", "api")}
    errors = {c: [None] * n for c in ("original", "api")}
    start, cpu = time.perf_counter(), time.process_time()
    summarize(benchmark, samples, answers, errors)
    return time.perf_counter() - start, time.process_time() - cpu


def statistics_only(args, all_cores) -> None:
    stats = {name: [] for name in ("pope", "mcq", "textvqa", "mmvet", "llava-bench")}
    rng = np.random.default_rng(0)
    if all_cores is not None:  # scoring and statistics on one core
        os.sched_setaffinity(0, {min(all_cores)})
    for _ in range(args.repeats):
        for name in stats:
            stats[name].append(statistics_run(args.predictions, name, rng))
    print(
        f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; pinned to one core"
    )
    print_statistics(args, stats)


def print_statistics(args, stats) -> None:
    print(
        f"scoring + statistics for {args.predictions:,} predictions x 2 conditions (one core, median of "
        f"{args.repeats}, wall / CPU seconds):"
    )
    for name, times in stats.items():
        if times:
            wall, cpu = (statistics.median(t[i] for t in times) for i in (0, 1))
            print(f"  {name:12s} {wall:6.2f} s  / {cpu:6.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=256, help="samples per harness run")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--predictions", type=int, default=100_000)
    parser.add_argument(
        "--model",
        default=CLIP,
        help="auxiliary CLIP (default: the shipped small one); an open_clip architecture "
        "name without weights, e.g. ViT-L-14-336, costs what the paper's model costs",
    )
    parser.add_argument("--skip-statistics", action="store_true", help="only the harness part")
    parser.add_argument(
        "--statistics-only", action="store_true", help="only the scoring + statistics part"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="interleaved repeats; medians are reported"
    )
    args = parser.parse_args()
    all_cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    if args.statistics_only:
        return statistics_only(args, all_cores)
    import torch

    torch.set_num_threads(1)
    from api_prompt import Prompter
    from api_prompt.batch.sources import Sample
    from api_prompt.evaluation.data import auxiliary_query, read_samples
    from benchmarks.synthshapes.mcq import write_benchmark

    folder = Path(tempfile.mkdtemp())
    data = write_benchmark(folder, args.questions)
    prompter = Prompter(model=args.model, device="cpu", batch_size=args.batch_size)
    source, samples = read_samples(data)
    images = [source.load_image(Sample(s.index, s.id, s.image, s.question)) for s in samples]
    queries = [auxiliary_query("synthshapes-mcq", s) for s in samples]
    attribution_run(images[:32], queries[:32], prompter, args.batch_size)  # warm-up

    harness, attribution, report = [], [], []
    stats = {name: [] for name in ("pope", "mcq", "textvqa", "mmvet", "llava-bench")}
    rng = np.random.default_rng(0)
    for _ in range(args.repeats):
        run = harness_run(data, prompter, args.questions, args.batch_size)
        loop = run["total"] - run["report"]
        harness.append((loop - run["prompter"] - run["target"]) / args.questions)
        report.append(run["report"])
        attribution.append(
            attribution_run(images, queries, prompter, args.batch_size) / args.questions
        )
        if all_cores is not None:  # scoring and statistics on one core
            os.sched_setaffinity(0, {min(all_cores)})
        for name in stats if not args.skip_statistics else ():
            stats[name].append(statistics_run(args.predictions, name, rng))
        if all_cores is not None:
            os.sched_setaffinity(0, all_cores)

    h, a = statistics.median(harness), statistics.median(attribution)
    print(
        f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; torch on 1 thread, image decoding "
        "in the harness's own thread; statistics pinned to one core"
    )
    print(
        f"harness ({args.questions} questions x 2 conditions, batch {args.batch_size}, instant target, "
        f"median of {args.repeats}):"
    )
    print(f"  attribution per sample      {a * 1e3:8.2f} ms   (Prompter.attribute, {args.model})")
    print(f"  harness per sample          {h * 1e3:8.2f} ms   = {100 * h / a:.2g}% of attribution")
    print(f"  end-of-run summary+report   {statistics.median(report):8.2f} s    (once per run)")
    print_statistics(args, stats)


if __name__ == "__main__":
    main()
