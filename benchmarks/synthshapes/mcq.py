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


def make_question(index: int) -> tuple[dict, "object"]:
    """``(row, scene)`` for question ``index`` (a pure function of ``index``)."""
    template = "colour" if index % 2 == 0 else "shape"
    for attempt in range(1000):
        rng = np.random.default_rng((SEED, index, attempt))
        scene = make_scene(rng, size=IMAGE_SIZE, n_objects=N_OBJECTS)
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
            in_scene = list(dict.fromkeys(o.color for o in objects if o is not chosen and o.color != chosen.color))
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
            "id": f"ssmcq-{index:04d}",
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


def write_benchmark(out: Path, n_questions: int = N_QUESTIONS) -> Path:
    """Write the JSONL and the images under ``out``; returns the JSONL path."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    path = out / "synthshapes_mcq.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for index in range(n_questions):
            row, scene = make_question(index)
            scene.image.save(out / row["image"])
            handle.write(json.dumps(row) + "\n")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--n", type=int, default=N_QUESTIONS, help=f"questions (default {N_QUESTIONS})")
    args = parser.parse_args(argv)
    path = write_benchmark(args.out, args.n)
    print(f"wrote {args.n} questions to {path}")


if __name__ == "__main__":
    main()
