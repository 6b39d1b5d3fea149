"""The README's decoder heat maps: the grid each family's map lives on, over a non-square image.

Tiny random-weight models (tests/tiny_hf.py, tests/tiny_decoders.py) with each family's real
image geometry (LLaVA-1.5: 336 px padded square, 24×24; LLaVA-NeXT: 336 px tiles with the real
``image_grid_pinpoints``; Qwen2-VL: 28 px merged cells within the real pixel budget). The weights
are random, so *where* the heat is means nothing; the figures show the geometry: which grid the
map has and which box of the image it covers (``--geometry fit``, cells drawn).

    python benchmarks/decoder_figure.py            # writes docs/images/decoder_*.png
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from api_prompt.attribution.base import AttentionMap  # noqa: E402
from api_prompt.attribution.decoder import LLaVAAttributor, LLaVANextAttributor, Qwen2VLAttributor  # noqa: E402
from api_prompt.figures import render_heatmap  # noqa: E402
from tiny_decoders import tiny_llava_next, tiny_qwen_vl  # noqa: E402
from tiny_hf import tiny_llava  # noqa: E402

PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
QUERY = "Where is the red square?"


def scene(size=(480, 270)) -> Image.Image:
    """A wide synthetic scene: three shapes on a gray-green background."""
    image = Image.new("RGB", size, (180, 200, 185))
    draw = ImageDraw.Draw(image)
    w, h = size
    draw.rectangle((0.08 * w, 0.3 * h, 0.25 * w, 0.6 * h), fill=(220, 30, 30))
    draw.ellipse((0.45 * w, 0.1 * h, 0.6 * w, 0.37 * h), fill=(30, 170, 60))
    draw.rectangle((0.72 * w, 0.55 * h, 0.9 * w, 0.92 * h), fill=(140, 50, 190))
    return image


def with_cells(heatmap: Image.Image, grid: tuple[int, int], region, image_size) -> Image.Image:
    """Draw the map's cells (clipped to the image) and label the grid."""
    out = heatmap.copy()
    draw = ImageDraw.Draw(out)
    sx, sy = out.width / image_size[0], out.height / image_size[1]
    left, top, right, bottom = region[0] * sx, region[1] * sy, region[2] * sx, region[3] * sy
    rows, cols = grid
    for i in range(cols + 1):
        x = left + i * (right - left) / cols
        if 0 <= x <= out.width:
            draw.line(
                [(x, max(top, 0)), (x, min(bottom, out.height))], fill=(255, 255, 255), width=1
            )
    for j in range(rows + 1):
        y = top + j * (bottom - top) / rows
        if 0 <= y <= out.height:
            draw.line(
                [(max(left, 0), y), (min(right, out.width), y)], fill=(255, 255, 255), width=1
            )
    return out


def panel(image, amap: AttentionMap, title: str) -> Image.Image:
    heat = render_heatmap(image, amap, geometry="fit", resample="nearest", alpha=0.55)
    heat = with_cells(heat, amap.mask.shape, amap.region, amap.image_size)
    canvas = Image.new("RGB", (heat.width, heat.height + 22), (255, 255, 255))
    canvas.paste(heat, (0, 22))
    ImageDraw.Draw(canvas).text((4, 5), title, fill=(0, 0, 0))
    return canvas


def row(panels: list[Image.Image]) -> Image.Image:
    width = sum(p.width for p in panels) + 8 * (len(panels) - 1)
    out = Image.new("RGB", (width, max(p.height for p in panels)), (255, 255, 255))
    x = 0
    for p in panels:
        out.paste(p, (x, 0))
        x += p.width + 8
    return out


def main() -> None:
    out_dir = ROOT / "docs" / "images"
    image = scene()
    small = dict(hidden_size=64)

    model, processor = tiny_llava(image_size=336, patch_size=14, **small)
    [amap] = LLaVAAttributor(model, processor, layer=2, max_new_tokens=4)([image], [QUERY])
    panel(
        image, amap, f"LLaVA-1.5: {amap.mask.shape[0]}x{amap.mask.shape[1]} over the padded square"
    ).save(out_dir / "decoder_llava.png")

    model, processor = tiny_llava_next(image_size=336, patch_size=14, pinpoints=PINPOINTS, **small)
    [amap] = LLaVANextAttributor(model, processor, layer=2, max_new_tokens=4)([image], [QUERY])
    stitched = panel(
        image,
        amap,
        f"LLaVA-NeXT: stitched tiles, unpadded, {amap.mask.shape[0]}x{amap.mask.shape[1]}",
    )
    base = amap.extra["base_attention"]
    lo, hi = float(base.min()), float(base.max())
    base_map = AttentionMap(
        mask=((base - lo) / (hi - lo or 1)).astype(np.float32),
        parts={},
        image_size=amap.image_size,
        region=amap.extra["base_region"],
    )
    row([stitched, panel(image, base_map, f"base view {base.shape[0]}x{base.shape[1]}")]).save(
        out_dir / "decoder_llava_next.png"
    )

    model, processor = tiny_qwen_vl(
        version="2", min_pixels=56 * 56, max_pixels=16384 * 28 * 28, **small
    )
    [amap] = Qwen2VLAttributor(model, processor, layer=2, max_new_tokens=4)([image], [QUERY])
    panel(
        image,
        amap,
        f"Qwen2-VL: {amap.mask.shape[0]}x{amap.mask.shape[1]} merged tokens, whole image",
    ).save(out_dir / "decoder_qwen2_vl.png")
    print("wrote", *sorted(p.name for p in out_dir.glob("decoder_*.png")))


if __name__ == "__main__":
    main()
