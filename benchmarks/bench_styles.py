"""What each prompt style costs per image on the CPU (a benchmark, not a test).

For each style and image size, ``style.apply(image, map)`` on a PIL image with a 24×24 map
(LLaVA-1.5's grid), no model: the cost a style adds to the attribution. Repeats of all styles
are interleaved, so machine noise hits every style alike; medians in ms, and each style's
ratio to ``overlay`` measured in the same run::

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
        amap = AttentionMap(rng.random((24, 24)).astype(np.float32), {}, size, (0.0, 0.0, *map(float, size)))
        times: dict[str, list[float]] = {name: [] for name in names}
        for name in names:                                   # warm-up (tables, fonts)
            styles[name].apply(image, amap)
        for _ in range(args.repeats):
            for name in names:
                start = time.perf_counter()
                styles[name].apply(image, amap)
                times[name].append(time.perf_counter() - start)
        base = statistics.median(times["overlay"]) if "overlay" in times else None
        for name in names:
            median = statistics.median(times[name])
            ratio = f"{median / base:.2f}" if base else "–"
            rows.append(f"| {size[0]}×{size[1]} | `{name}` | {1000 * median:.1f} | {ratio} |")
    print("| image | style | ms per image (median) | × overlay |")
    print("|---|---|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
