"""What each prompt style costs per image on the CPU (a benchmark, not a test).

For each style and image size, ``style.apply(image, map)`` on a PIL image with a 24×24 map
(LLaVA-1.5's grid), no model: the cost a style adds to the attribution. Repeats of all styles
are interleaved, so machine noise hits every style alike; medians in ms of wall time and of
the process's CPU time (on a shared machine the CPU time is the steadier of the two: it leaves
out the time spent waiting for a core), and each style's ratio to ``overlay`` in the same run::

    OMP_NUM_THREADS=1 python -m benchmarks.bench_styles --repeats 15
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from PIL import Image

from api_prompt import AttentionMap
from api_prompt.styles import STYLES, create_style

SIZES = ((640, 480), (4000, 3000))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--styles", default=",".join(STYLES))
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    names = args.styles.split(",")
    styles = {name: create_style(name) for name in names}
    rows = []
    for size in SIZES:
        image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
        amap = AttentionMap(
            rng.random((24, 24)).astype(np.float32), {}, size, (0.0, 0.0, *map(float, size))
        )
        wall: dict[str, list[float]] = {name: [] for name in names}
        cpu: dict[str, list[float]] = {name: [] for name in names}
        for name in names:  # warm-up (tables, fonts)
            styles[name].apply(image, amap)
        for _ in range(args.repeats):
            for name in names:
                start, start_cpu = time.perf_counter(), time.process_time()
                styles[name].apply(image, amap)
                cpu[name].append(time.process_time() - start_cpu)
                wall[name].append(time.perf_counter() - start)
        medians = {
            name: (statistics.median(wall[name]), statistics.median(cpu[name])) for name in names
        }
        base = medians.get("overlay")
        for name in names:
            (w, c) = medians[name]
            ratios = f"{w / base[0]:.2f} | {c / base[1]:.2f}" if base and base[1] > 0 else "– | –"
            rows.append(
                f"| {size[0]}×{size[1]} | `{name}` | {1000 * w:.1f} | {1000 * c:.1f} | {ratios} |"
            )
    print(
        "| image | style | ms wall (median) | ms CPU (median) | × overlay (wall) | × overlay (CPU) |"
    )
    print("|---|---|---:|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
