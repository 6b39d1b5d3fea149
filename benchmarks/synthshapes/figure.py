"""The README's picture: input → attention map → prompted image, from the shipped synthetic CLIP.

python -m benchmarks.synthshapes.figure --out docs/images/pipeline.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from api_prompt import Prompter, render_heatmap
from api_prompt.figures import side_by_side

from .scenes import make_scene, phrase_caption

MODEL_DIR = Path(__file__).resolve().parents[2] / "assets" / "synthshapes-clip"
DISPLAY_SIZE = 256


def figure(model_dir: Path = MODEL_DIR, seed: int = 23, n_queries: int = 2) -> Image.Image:
    """One scene, one row per query: the input, the heat map, and the prompted image."""
    scene = make_scene(np.random.default_rng(seed), size=64, n_objects=3)
    prompter = Prompter(model=f"local-dir:{model_dir}", device="cpu", background=0)
    big = scene.image.resize((DISPLAY_SIZE, DISPLAY_SIZE), Image.Resampling.NEAREST)
    rows = []
    for target in scene.objects[:n_queries]:
        query = phrase_caption([target.phrase])
        result = prompter(big, query)
        heat = render_heatmap(big, result.map, colorbar=False)
        rows.append(
            side_by_side([big, heat, result.image], ["input", f'map: "{query}"', "prompted image"])
        )
    canvas = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows)), "white")
    top = 0
    for row in rows:
        canvas.paste(row, (0, top))
        top += row.height
    return canvas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=MODEL_DIR)
    parser.add_argument("--seed", type=int, default=23)
    parser.add_argument("--out", type=Path, default=Path("docs/images/pipeline.png"))
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure(args.model, args.seed).save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
