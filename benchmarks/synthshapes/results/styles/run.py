"""The prompt-style comparison on synthshapes-mcq and its small-object variant, as fixed in
benchmarks/synthshapes/README.md ("Prompt styles on synthshapes-mcq") before it was run.

Equivalent to ``api-prompt eval DATA --benchmark synthshapes-mcq
--conditions original,overlay,crop,blur,box --target clip-zeroshot:local-dir:assets/synthshapes-clip
-m synthshapes --style-option crop_size=64 --out OUT`` (the Python API, because the eval command
did not take ``--style-option`` when this was run). From the repository root::

    python -m benchmarks.synthshapes.mcq --out data/synthshapes-mcq
    python -m benchmarks.synthshapes.mcq --variant small --out data/synthshapes-mcq-small
    python benchmarks/synthshapes/results/styles/run.py data/synthshapes-mcq/synthshapes_mcq.jsonl \\
        benchmarks/synthshapes/results/styles/default
    python benchmarks/synthshapes/results/styles/run.py data/synthshapes-mcq-small/synthshapes_mcq_small.jsonl \\
        benchmarks/synthshapes/results/styles/small
"""

import sys
import time

from api_prompt import Prompter
from api_prompt.evaluation import evaluate

CONDITIONS = "original,overlay,crop,blur,box"
TARGET = "clip-zeroshot:local-dir:assets/synthshapes-clip"
CROP_SIZE = 64  # the target's input side (fixed in the design before measuring)


def main(data: str, out: str) -> None:
    prompter = Prompter(model="synthshapes", device="cpu", style_options={"crop_size": CROP_SIZE})
    start = time.monotonic()
    summary = evaluate(data, "synthshapes-mcq", TARGET, out, conditions=CONDITIONS, prompter=prompter,
                       batch_size=16, progress=lambda done, total: print(
                           f"{done}/{total} {time.monotonic() - start:.0f}s", flush=True))
    for name, condition in summary["conditions"].items():
        print(name, condition["metrics"]["accuracy"], condition["ci95"]["accuracy"])


if __name__ == "__main__":
    main(*sys.argv[1:])
