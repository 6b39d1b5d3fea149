"""synthshapes-mcq: multiple-choice questions about one named object in a cluttered scene.

Writes ``OUT/synthshapes_mcq.jsonl`` (one question a line, VLMEvalKit's multiple-choice columns:
``question``, ``A``..``D``, ``answer`` (the letter), ``category`` (the template)) and the scenes
as ``OUT/images/NNNN.png``. Evaluate it with::

    python -m benchmarks.synthshapes.mcq --out data/synthshapes-mcq
    api-prompt eval data/synthshapes-mcq/synthshapes_mcq.jsonl --benchmark synthshapes-mcq \\
        --target clip-zeroshot:local-dir:assets/synthshapes-clip \\
        --model local-dir:assets/synthshapes-clip --out runs/synthshapes-mcq

The design (fixed before the first measurement; see README.md, "synthshapes-mcq"):

- ``N_QUESTIONS`` = 600 questions, one scene each, 64x64 px, ``N_OBJECTS`` = 3 to 5 objects,
  every phrase at most once per scene, backgrounds as the scene generator picks them;
- question ``i`` uses the *colour* template when ``i`` is even, the *shape* template when odd:
  - colour: "What colour is the {shape}?" about an object whose shape no other object in the
    scene has; four options "a {colour} {shape}": the right colour, then the colours of the
    other objects in the scene, then other colours drawn at random;
  - shape: "What shape is the {colour} object?" about an object whose colour no other object
    has; three options, "a {colour} circle / square / triangle";
- option order shuffled; a scene with no object the template can ask about is redrawn;
- everything drawn from ``numpy.random.default_rng((SEED, i, attempt))``, ``SEED`` = 20240917.

The *small-object* variant (``--variant small``; design fixed on 2026-12-03 before its first
measurement, for comparing prompt styles where zooming in should matter): the same 600 questions'
templates and option rules, but each scene is ``SMALL["size"]`` = 160 px with 4 to 6 objects
whose boxes are 12 to 20 px (each object ~0.6-1.6% of the image, against 3.5-14% in the default
variant), seed ``SMALL_SEED`` = 20261203, written as ``synthshapes_mcq_small.jsonl``. A 64 px
target (the shipped CLIP) sees these objects at 5-8 px, below the 12-24 px it was trained on;
a crop of the attended region brings them back to its scale. The comparison uses
``crop_size`` = 64 (the target's input side, as ViCrop takes the target's input resolution).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from .scenes import COLORS, SHAPES, make_scene, phrase_caption

SEED = 20240917
N_QUESTIONS = 600
N_OBJECTS = (3, 5)
IMAGE_SIZE = 64
N_COLOUR_OPTIONS = 4
LETTERS = "ABCD"
#: The small-object variant (see the module docstring): scene size, objects, box sides, seed.
SMALL = {"size": 160, "n_objects": (4, 6), "min_side": 12, "max_side": 20}
SMALL_SEED = 20261203
VARIANTS = ("default", "small")


def make_question(index: int, variant: str = "default") -> tuple[dict, object]:
    """``(row, scene)`` for question ``index`` of ``variant`` (a pure function of both)."""
    template = "colour" if index % 2 == 0 else "shape"
    seed, scene_options = (
        (SEED, {"size": IMAGE_SIZE, "n_objects": N_OBJECTS})
        if variant == "default"
        else (SMALL_SEED, SMALL)
    )
    for attempt in range(1000):
        rng = np.random.default_rng((seed, index, attempt))
        scene = make_scene(rng, **scene_options)
        objects = scene.objects
        if template == "colour":
            shapes = [o.shape for o in objects]
            candidates = [o for o in objects if shapes.count(o.shape) == 1]
        else:
            colours = [o.color for o in objects]
            candidates = [o for o in objects if colours.count(o.color) == 1]
        if not candidates:
            continue
        chosen = candidates[int(rng.integers(len(candidates)))]
        if template == "colour":
            question = f"What colour is the {chosen.shape}?"
            in_scene = list(
                dict.fromkeys(
                    o.color for o in objects if o is not chosen and o.color != chosen.color
                )
            )
            others = [c for c in COLORS if c != chosen.color and c not in in_scene]
            rng.shuffle(others)
            distractors = (in_scene + others)[: N_COLOUR_OPTIONS - 1]
            values = [chosen.color] + distractors
            captions = [phrase_caption([f"{colour} {chosen.shape}"]) for colour in values]
        else:
            question = f"What shape is the {chosen.color} object?"
            values = [chosen.shape] + [s for s in SHAPES if s != chosen.shape]
            captions = [phrase_caption([f"{chosen.color} {shape}"]) for shape in values]
        order = rng.permutation(len(captions))
        options = {LETTERS[i]: captions[j] for i, j in enumerate(order)}
        answer = LETTERS[int(np.flatnonzero(order == 0)[0])]
        row = {
            "id": f"ssmcq-{index:04d}" if variant == "default" else f"ssmcq-small-{index:04d}",
            "image": f"images/{index:04d}.png",
            "question": question,
            **options,
            "answer": answer,
            "category": template,
            "n_objects": len(objects),
            "background": scene.background,
        }
        return row, scene
    raise RuntimeError(f"no usable scene for question {index}")  # pragma: no cover


def write_benchmark(out: Path, n_questions: int = N_QUESTIONS, variant: str = "default") -> Path:
    """Write the JSONL and the images under ``out``; returns the JSONL path."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of: {', '.join(VARIANTS)}")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    path = out / (
        "synthshapes_mcq.jsonl" if variant == "default" else "synthshapes_mcq_small.jsonl"
    )
    with open(path, "w", encoding="utf-8") as handle:
        for index in range(n_questions):
            row, scene = make_question(index, variant)
            scene.image.save(out / row["image"])
            handle.write(json.dumps(row) + "\n")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--n", type=int, default=N_QUESTIONS, help=f"questions (default {N_QUESTIONS})"
    )
    parser.add_argument(
        "--variant",
        choices=VARIANTS,
        default="default",
        help="default (64 px scenes) or small (160 px scenes, small objects)",
    )
    args = parser.parse_args(argv)
    path = write_benchmark(args.out, args.n, args.variant)
    print(f"wrote {args.n} questions to {path}")


if __name__ == "__main__":
    main()
